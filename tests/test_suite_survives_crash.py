"""The suite's own configuration survives a native crash: the test that crashed fails by
name with faulthandler's traceback, the tests after it still run, and pytest prints its
summary line (what `make test` and CI rely on when a oneDNN kernel corrupts the heap)."""

import subprocess
import sys
import textwrap
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_a_segfaulting_test_fails_by_name_and_the_run_ends_with_its_summary(tmp_path):
    (tmp_path / "test_crash.py").write_text(textwrap.dedent("""
        import ctypes

        def test_before():
            assert 1 + 1 == 2

        def test_segfaults():
            ctypes.string_at(0)  # reads address 0: SIGSEGV, as a corrupted heap would

        def test_after():
            assert "after".upper() == "AFTER"
    """))
    result = subprocess.run([sys.executable, "-m", "pytest", "-c", str(PYPROJECT), "--rootdir", str(tmp_path), "-q",
                             "-p", "no:cacheprovider", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-3000:]
    assert "crashed while running 'test_crash.py::test_segfaults'" in out
    assert "Fatal Python error: Segmentation fault" in out  # faulthandler names where it died
    assert "1 failed, 2 passed" in result.stdout.strip().splitlines()[-1]
