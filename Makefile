# faket: one-command set-up, demo and tests on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
# An interpreter that already has faket and its test tools (the GPU image after
# `bash .gpu/env.sh`, where nothing can be downloaded) runs as it is; otherwise a venv.
READY  := $(shell $(PYTHON) -c "import faket, pytest, ray, zarr" 2>/dev/null && echo yes)
ifeq ($(READY),yes)
PY     := $(PYTHON)
INSTALL :=
else
PY     := $(VENV)/bin/python
INSTALL := $(VENV)/.installed
endif
# A CPU build of torch, pinned: an unpinned torch pulls a multi-GB CUDA build.
# On a GPU machine install the matching CUDA build of torch first; it is kept.
TORCH  ?= torch==2.13.0

.PHONY: install demo test lint bench bench-gpu clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,lint]"
	touch $@

install: $(INSTALL)

demo: install
	RAY_USAGE_STATS_ENABLED=0 $(PY) -m faket_cluster demo --out-dir demo_out

test: install
	$(PY) -m pytest -q -n 3   # three workers on 2 cores: the Ray tests mostly wait

# On a CUDA machine: per-tilt time and memory per precision, deviations, the
# network's share of GPU time, the engine against in-process; writes
# benchmarks/results/gpu-<device>-<date>.json and .md
bench-gpu: install
	RAY_USAGE_STATS_ENABLED=0 $(PY) benchmarks/bench_gpu.py

# ruff (lint and format) and mypy over faket/ and cluster/ (settings in pyproject.toml)
lint: install
	$(VENV)/bin/ruff check faket cluster
	$(VENV)/bin/ruff format --check faket cluster
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) demo_out .pytest_cache
