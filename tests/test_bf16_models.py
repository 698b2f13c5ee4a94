"""bf16 training of every registered model, each case in a child process (bf16_worker.py).

A native crash (oneDNN's bf16 backward corrupts the heap on some CPUs) kills only the child:
the case it was running fails with the model, the input shape and the signal, and the
remaining cases go on in a fresh child. The same checks run again for a subset with oneDNN
limited to lower CPU classes (``ONEDNN_MAX_CPU_ISA``), so one machine covers AVX2 (bf16
emulated) and AVX512-BF16 (no AMX) as well as what it has itself.
"""

import functools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pixelwise import list_models
from pixelwise.registry import INSTANCE_MODELS
from zoo_configs import BF16_KNOWN_FAILURES, TINY, TINY_INSTANCE, TINY_VOLUMETRIC

WORKER = Path(__file__).with_name("bf16_worker.py")
SRC = Path(__file__).resolve().parents[1] / "src"
ALL_CASES = sorted(TINY) + sorted(TINY_VOLUMETRIC) + sorted(TINY_INSTANCE) + ["fcn8s_full"]
SUBSET = ["unet", "deeplabv3plus", "fcn8s", "pspnet"]  # skip-concat, ASPP, score fusion, pyramid pooling
ISAS = {"AVX2": SUBSET, "AVX512_CORE_BF16": SUBSET + ["fcn8s_full"]}


def run_cases(cases: tuple[str, ...], isa: str | None) -> dict[str, dict]:
    """Results per case; a child that dies is restarted on the cases after the one it died in."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "MALLOC_CHECK_": "3"}
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
        env["BF16_SHAPES"] = "32x96"  # the shape class of the known bugs; the full run covers odd sizes
    results: dict[str, dict] = {}
    todo = list(cases)
    while todo:
        proc = subprocess.run([sys.executable, str(WORKER), *todo], env=env, capture_output=True, text=True,
                              timeout=2700)
        running = None
        for line in proc.stdout.splitlines():
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if "start" in record:
                running = record
            elif "case" in record:
                results[record["case"]] = record
                running = None
        if running is not None or proc.returncode != 0:
            died = signal.Signals(-proc.returncode).name if proc.returncode < 0 else f"exit {proc.returncode}"
            case = running["start"] if running else next(c for c in todo if c not in results)
            shape = running["shape"] if running else "?"
            results[case] = {"case": case, "status": "crash",
                             "detail": f"the child died ({died}) in {case} at input shape {shape}: "
                                       + " ".join(proc.stderr.strip().splitlines()[-3:])[-600:]}
        todo = [c for c in todo if c not in results]
    return results


@functools.cache
def results_for(isa: str | None) -> dict[str, dict]:
    return run_cases(tuple(ALL_CASES if isa is None else ISAS[isa]), isa)


def test_every_registered_model_has_a_bf16_case():
    assert set(list_models()) | set(INSTANCE_MODELS) <= set(ALL_CASES)


# The first case of each group runs the whole group (one child for all, cached): on a busy
# 2-core machine that can take well over pytest's default 600 s.
@pytest.mark.timeout(3000)
@pytest.mark.parametrize("case", ALL_CASES)
def test_bf16_training_step_of_each_model(case):
    result = results_for(None)[case]
    if case in BF16_KNOWN_FAILURES and result["status"] != "ok":
        pytest.xfail(f"{BF16_KNOWN_FAILURES[case]} ({result['detail']})")
    assert result["status"] == "ok", result["detail"]


@pytest.mark.timeout(3000)
@pytest.mark.parametrize("isa, case", [(isa, case) for isa, cases in ISAS.items() for case in cases])
def test_bf16_training_step_on_lower_cpu_classes(isa, case):
    result = results_for(isa)[case]
    assert result["status"] == "ok", f"ONEDNN_MAX_CPU_ISA={isa}: {result['detail']}"


def test_a_crash_fails_its_own_case_and_the_others_still_run(tmp_path, monkeypatch):
    # A worker that dies of SIGSEGV in its second case: the runner names it and finishes the rest.
    fake = tmp_path / "bf16_worker.py"
    fake.write_text(
        "import json, os, signal, sys\n"
        "for case in sys.argv[1:]:\n"
        "    print(json.dumps({'start': case, 'shape': [32, 96]}), flush=True)\n"
        "    if case == 'b':\n"
        "        os.kill(os.getpid(), signal.SIGSEGV)\n"
        "    print(json.dumps({'case': case, 'status': 'ok', 'detail': ''}), flush=True)\n")
    monkeypatch.setattr(sys.modules[__name__], "WORKER", fake)
    results = run_cases(("a", "b", "c"), None)
    assert results["a"]["status"] == results["c"]["status"] == "ok"
    assert results["b"]["status"] == "crash"
    assert "SIGSEGV" in results["b"]["detail"] and "in b at input shape [32, 96]" in results["b"]["detail"]
