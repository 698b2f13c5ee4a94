"""benchmarks/gpu_check.sh, the prepared GPU session, in its CPU dry-run mode: every step runs
(so the script cannot rot before a GPU is lent), each is recorded in the summary with its
status, and the results land in the output folder given by $OUT."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ["env", "deps", "tests", "bench_train", "bench_latency"]


def run_check(out, **env):
    full = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPT), "--dry-run"], env=full, capture_output=True, text=True,
                          timeout=400, cwd=ROOT)


def summary_rows(out):
    lines = (out / "summary.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["step", "status", "seconds", "log"]
    return [line.split("\t") for line in lines[1:]]


def test_dry_run_runs_every_step_on_the_cpu_and_writes_the_summary(tmp_path):
    out = tmp_path / "gpu"
    done = run_check(out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    rows = summary_rows(out)
    assert [r[0] for r in rows] == STEPS
    assert all(r[1] == "ok" for r in rows), rows
    summary = (out / "summary.md").read_text()
    assert "dry run" in summary
    for step in STEPS:
        assert f"| {step} | ok |" in summary
        assert (out / "logs" / f"{step}.log").exists()
    # the CUDA tests ran and skipped (no GPU here)
    assert "skipped" in (out / "logs" / "tests.log").read_text() and (out / "tests.xml").exists()
    # the benchmarks wrote into $OUT, not into benchmarks/results, on the CPU at the tiny size
    train = json.loads((out / "gpu_train_unet_resnet34.json").read_text())
    assert train["device"] == "cpu" and "1x3x64x64" in train["benchmark"]
    contenders = [r["contender"] for r in train["rows"]]
    assert contenders[0] == "pixelwise fp32" and contenders[-1] == "smp fp32"
    assert all(r["median_step_ms"] > 0 and r["fraction_of_peak"] > 0 for r in train["rows"])
    latency = json.loads((out / "gpu_latency_unet_resnet34.json").read_text())
    assert {r["contender"] for r in latency["rows"]} >= {"pixelwise eager fp32", "smp eager fp32"}
    assert "## Training step" in summary and "## Inference latency" in summary


def test_a_failed_step_is_recorded_and_the_dependent_steps_are_skipped(tmp_path):
    out = tmp_path / "gpu"
    done = run_check(out, PYTHON=str(tmp_path / "no-such-python"))
    assert done.returncode != 0
    rows = summary_rows(out)
    assert [r[0] for r in rows] == STEPS
    assert rows[0][1].startswith("failed")
    assert all(r[1] == "skipped: env failed" for r in rows[1:])
    assert "| env | failed" in (out / "summary.md").read_text()
