"""Shared test settings: small thread count so the suite behaves on a 2-core machine."""

import os
import socket

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


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection fails, as on a machine without a network; the list of attempts is returned."""
    attempts = []
    monkeypatch.setenv("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations asks online for a newer version on import

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network blocked in this test (connect to {address!r})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts
