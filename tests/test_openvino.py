"""The OpenVINO backend tests (tests/openvino_checks.py), run in a child pytest.

OpenVINO and NNCF bring their own thread pools and native libraries (TBB, a oneDNN build of their
own) into the process that imports them; in the long-lived test worker that already holds
PyTorch's and ONNX Runtime's, the worker died shortly after these tests, in whichever test ran
next (twice in a row, never when the files ran alone). A child interpreter keeps them out of it.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openvino", reason="openvino (the openvino extra, in dev) runs the backend")
ROOT = Path(__file__).resolve().parents[1]


def test_openvino_backends_in_a_child_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
                           "--basetemp", str(tmp_path / "t"), str(ROOT / "tests" / "openvino_checks.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "4 passed" in done.stdout, done.stdout[-3000:]
