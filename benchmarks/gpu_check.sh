#!/usr/bin/env bash
# One GPU session, prepared to the minute (issue 22, item 5). On a machine with an NVIDIA GPU
# and no network, in under 8 minutes:
#   1. env      python, torch, CUDA, the GPU (nvidia-smi)
#   2. deps     import what the checks need; install only what is missing, offline, from the
#               wheels carried in the tree (wheels/ or $GPU_CHECK_WHEELS; torch itself is too big
#               to carry and must be on the machine)
#   3. tests    the CUDA tests (tests/test_cuda.py: AMP fp16/bf16 + channels_last, sliding
#               window, Segmenter, torch.compile, DDP over NCCL on one GPU)
#   4. train    benchmarks/bench_train.py --device cuda vs smp, batch 32 of 512x512, bf16
#   5. latency  benchmarks/bench_latency.py --device cuda vs smp, 1x512 and 32x512
#   6. summary  summary.md / summary.tsv: every step, its status and time, the result tables
#               and the fraction of the GPU's measured peak
# Everything goes to $OUT if set (the device tool's folder that comes back), else
# benchmarks/results/gpu/. A failing step is recorded and the next one still runs.
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run   # the same steps on the CPU, tiny sizes (~1-2 min)
#
# Settings (environment): PYTHON (default python3), GPU_CHECK_MODELS (default
# unet_resnet34,deeplabv3plus_resnet50), GPU_CHECK_BATCH (32), GPU_CHECK_SIZE (512),
# GPU_CHECK_AMP_DTYPE (bf16), GPU_CHECK_WHEELS (default <repo>/wheels), GPU_CHECK_ORT=1 (also the
# ONNX Runtime contender, if onnxruntime-gpu is there), GPU_CHECK_TESTS (default tests/test_cuda.py).
set -u
set -m  # job control: each step in its own process group (see run_step)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,24p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$arg'; use --dry-run or --help" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
OUTDIR=${OUT:-$ROOT/benchmarks/results/gpu}
mkdir -p "$OUTDIR/logs"
OUTDIR=$(cd "$OUTDIR" && pwd)
WHEELS=${GPU_CHECK_WHEELS:-$ROOT/wheels}
AMP_DTYPE=${GPU_CHECK_AMP_DTYPE:-bf16}
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export PIXELWISE_BENCH_RESULTS="$OUTDIR"   # benchmarks/common.py writes its results here
export PYTHONUNBUFFERED=1

if [ "$DRY" = 1 ]; then
  DEVICE=cpu
  MODELS=${GPU_CHECK_MODELS:-unet_resnet34}
  TRAIN_ARGS=(--batch 1 --size 64 --repeats 1 --steps 1 --warmup 0 --threads 1)
  LAT_ARGS=(--sizes 1x64 --rounds 1 --warmup 0 --threads 1 --no-ort all --no-int8)
  export OMP_NUM_THREADS=1
else
  DEVICE=cuda
  MODELS=${GPU_CHECK_MODELS:-unet_resnet34,deeplabv3plus_resnet50}
  B=${GPU_CHECK_BATCH:-32}; S=${GPU_CHECK_SIZE:-512}
  TRAIN_ARGS=(--batch "$B" --size "$S" --repeats 1 --steps 5 --warmup 2)
  LAT_ARGS=(--sizes "1x$S,${B}x$S" --rounds 5 --warmup 2)
  # The ONNX export (torch.export + dynamo) costs tens of seconds per model and size: opt in.
  [ "${GPU_CHECK_ORT:-0}" = 1 ] || LAT_ARGS+=(--no-ort all)
fi
# Per-step limits (seconds); they add up to under 8 minutes on the GPU.
if [ "$DRY" = 1 ]; then T_ENV=60 T_DEPS=60 T_TESTS=120 T_TRAIN=240 T_LAT=240
else T_ENV=20 T_DEPS=40 T_TESTS=120 T_TRAIN=200 T_LAT=90; fi

SUMMARY_TSV="$OUTDIR/summary.tsv"
printf 'step\tstatus\tseconds\tlog\n' > "$SUMMARY_TSV"
START=$(date +%s)

# run_step NAME LIMIT CMD...: run CMD under `timeout`, log to logs/NAME.log, record the status.
run_step() {
  local name=$1 limit=$2; shift 2
  local log="$OUTDIR/logs/$name.log" t0 rc status
  t0=$(date +%s)
  echo "== $name (limit ${limit}s): $*" | tee "$log"
  # The step runs as a background job (its own process group, set -m), so a watchdog can end
  # it and every process it started (pytest, the benchmarks' subprocesses) at the limit.
  rm -f "$OUTDIR/.timed_out"
  "$@" >>"$log" 2>&1 &
  local pid=$!
  ( sleep "$limit"; touch "$OUTDIR/.timed_out"; kill -TERM -- -"$pid" 2>/dev/null; sleep 10
    kill -KILL -- -"$pid" 2>/dev/null ) >/dev/null 2>&1 &
  local dog=$!
  wait "$pid"; rc=$?
  kill -- -"$dog" 2>/dev/null; wait "$dog" 2>/dev/null
  if [ -e "$OUTDIR/.timed_out" ]; then status="timeout after ${limit}s"; rc=124; rm -f "$OUTDIR/.timed_out"
  elif [ $rc = 0 ]; then status=ok
  else status="failed (exit $rc)"; fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - t0 ))" "logs/$name.log" >> "$SUMMARY_TSV"
  echo "== $name: $status ($(( $(date +%s) - t0 )) s)"
  tail -n 5 "$log"
  return $rc
}

skip_step() {  # skip_step NAME REASON
  printf '%s\t%s\t0\t-\n' "$1" "skipped: $2" >> "$SUMMARY_TSV"
  echo "== $1: skipped: $2"
}

# --- 1. env -------------------------------------------------------------------------------------
env_check() {
  command -v "$PY" || { echo "no '$PY' on PATH; set PYTHON=/path/to/python"; return 1; }
  "$PY" - "$DEVICE" <<'EOF'
import platform, sys
print("python", platform.python_version(), sys.executable)
try:
    import torch
except ImportError:
    sys.exit("torch is not importable: the wheel is too big to carry, it must be on the machine "
             "(or put it under wheels/ and rerun)")
print("torch", torch.__version__, "built with CUDA", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("cuda available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name} {p.total_memory / 2**30:.0f} GiB sm_{p.major}{p.minor}, bf16 {torch.cuda.is_bf16_supported()}")
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    sys.exit("no usable CUDA device (driver, CUDA_VISIBLE_DEVICES?); --dry-run runs the steps on the CPU")
EOF
  local rc=$?
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
    --format=csv || echo "nvidia-smi: not on PATH"
  lscpu 2>/dev/null | grep -E "Model name|^CPU\(s\)" || true
  return $rc
}

# --- 2. deps --------------------------------------------------------------------------------------
# import name -> distribution name; only what the tests and the two benchmarks import.
DEPS="torch:torch torchvision:torchvision numpy:numpy scipy:scipy PIL:pillow cv2:opencv-python-headless
yaml:pyyaml safetensors:safetensors tqdm:tqdm matplotlib:matplotlib timm:timm albumentations:albumentations
pytest:pytest segmentation_models_pytorch:segmentation-models-pytorch"
deps_check() {
  local missing
  # One interpreter for all the imports (torch alone takes seconds to import).
  missing=$("$PY" - $DEPS <<'EOF'
import importlib, sys
missing = []
for pair in sys.argv[1:]:
    mod, dist = pair.split(":")
    try:
        importlib.import_module(mod)
        print("have", mod, file=sys.stderr)
    except Exception as err:  # ImportError, or a broken install that fails on import
        print(f"MISSING {mod} ({dist}): {err}", file=sys.stderr)
        missing.append(dist)
print(" ".join(missing))
EOF
) || return 1
  if [ -n "$missing" ]; then
    if [ -d "$WHEELS" ]; then
      echo "installing offline from $WHEELS: $missing"
      # shellcheck disable=SC2086
      "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" $missing || return 1
    else
      echo "missing: $missing; no wheel folder at $WHEELS (and no network on the GPU machine)"
      return 1
    fi
  fi
  "$PY" -c "import pixelwise; print('pixelwise', pixelwise.__version__, 'from', pixelwise.__file__)"
}

# --- 3.-5. ----------------------------------------------------------------------------------------
tests() {
  # -o addopts='': the project's addopts need pytest-xdist, which a bare GPU machine may lack.
  "$PY" -m pytest -q -o addopts="" -rs -p no:cacheprovider --junitxml="$OUTDIR/tests.xml" \
    ${GPU_CHECK_TESTS:-tests/test_cuda.py}
}
bench_train() {  # one invocation per model, so that a timeout keeps the models already done
  local model rc=0
  for model in ${MODELS//,/ }; do
    "$PY" "$ROOT/benchmarks/bench_train.py" --device "$DEVICE" --models "$model" --amp-dtype "$AMP_DTYPE" \
      "${TRAIN_ARGS[@]}" --out "gpu_train_$model" || rc=$?
  done
  return $rc
}
bench_latency() {  # per model too
  local model rc=0
  for model in ${MODELS//,/ }; do
    "$PY" "$ROOT/benchmarks/bench_latency.py" --device "$DEVICE" --models "$model" --amp-dtype "$AMP_DTYPE" \
      "${LAT_ARGS[@]}" --out "gpu_latency_$model" || rc=$?
  done
  return $rc
}

cd "$ROOT" || exit 1
echo "gpu_check: $([ $DRY = 1 ] && echo "DRY RUN on the CPU" || echo "GPU run"), models $MODELS, out $OUTDIR"
if run_step env "$T_ENV" env_check; then
  if run_step deps "$T_DEPS" deps_check; then
    run_step tests "$T_TESTS" tests
    run_step bench_train "$T_TRAIN" bench_train
    run_step bench_latency "$T_LAT" bench_latency
  else
    for s in tests bench_train bench_latency; do skip_step $s "deps failed"; done
  fi
else
  for s in deps tests bench_train bench_latency; do skip_step $s "env failed"; done
fi

# --- 6. summary -----------------------------------------------------------------------------------
TOTAL=$(( $(date +%s) - START ))
{
  echo "# gpu_check $([ $DRY = 1 ] && echo "(dry run, CPU, tiny sizes)" || echo "(GPU)")"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -n), device $DEVICE, models $MODELS, total ${TOTAL} s."
  echo
  echo "| step | status | seconds | log |"
  echo "|---|---|---:|---|"
  tail -n +2 "$SUMMARY_TSV" | while IFS=$'\t' read -r s st sec lg; do echo "| $s | $st | $sec | $lg |"; done
  echo
  grep -E "^(python|torch|cuda available|  cuda:)" "$OUTDIR/logs/env.log" 2>/dev/null | sed 's/^ */- /'
  tail -n 3 "$OUTDIR/logs/tests.log" 2>/dev/null | grep -E "passed|failed|skipped|error" | sed 's/^/- tests: /'
  # The result tables bench_train / bench_latency wrote, with the fraction of the measured peak.
  "$PY" - "$OUTDIR" <<'EOF' 2>/dev/null
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for train in sorted(out.glob("gpu_train_*.json")):
    r = json.loads(train.read_text())
    print("\n## Training step (bench_train.py)\n\n" + r["benchmark"] + "; peak: "
          + ", ".join(f"{k} {v['gflops']:.0f} GFLOP/s" for k, v in r["peak"].items()) + "\n")
    print("| model | contender | step ms | images/s | vs peer fp32 | GFLOP/s | of peak |\n|---|---|---:|---:|---:|---:|---:|")
    for row in r["rows"]:
        print(f"| {row['title']} | {row['contender']} | {row['median_step_ms']:.1f} | {row['images_per_s']:.1f} | "
              f"{row['speedup_vs_peer_fp32']:.2f}x | {row['gflop_per_s']:.0f} | {100 * row['fraction_of_peak']:.1f}% |")
    for title in dict.fromkeys(row["title"] for row in r["rows"]):
        mine = [x for x in r["rows"] if x["title"] == title and x["library"] == "pixelwise" and x["amp"] != "none"]
        peer = [x for x in r["rows"] if x["title"] == title and x["library"] == "peer" and x["amp"] != "none"]
        if mine and peer:
            print(f"\n- {title}: pixelwise {mine[0]['amp']}+channels_last is "
                  f"{peer[0]['median_step_ms'] / mine[0]['median_step_ms']:.2f}x the peer at equal settings, "
                  f"{100 * mine[0]['fraction_of_peak']:.1f}% of the measured {mine[0]['amp']} peak "
                  "(targets: ahead of the peer, >= 40% for U-Net-ResNet34)")
for lat in sorted(out.glob("gpu_latency_*.md")):
    print("\n## Inference latency (bench_latency.py)\n\n" + lat.read_text())
EOF
} > "$OUTDIR/summary.md"
cat "$OUTDIR/summary.md"
echo "gpu_check: ${TOTAL} s; results in $OUTDIR"
! grep -qE $'\t(failed|timeout)' "$SUMMARY_TSV"
