"""Shared test settings: small thread count so the suite behaves on a 2-core machine."""

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def real_bf16(monkeypatch):
    """Run bf16 autocast even on a CPU without native bf16, where pixelwise would fall back to
    fp32 (slow there, but the tests' models are tiny): the bf16 code path itself is under test."""
    import pixelwise.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
