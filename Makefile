# Two commands on a fresh machine: `make run` and `make test`. Both create .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The CPU build of torch: install it first so that nothing pulls the multi-GB CUDA build.
TORCH_WHEEL ?= $(firstword $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl))
TORCH_SPEC := $(if $(TORCH_WHEEL),$(TORCH_WHEEL),torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)

# Keep every tool offline and its state inside the project.
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export WANDB_DIR := $(CURDIR)/.wandb
export WANDB_MODE ?= offline
export WANDB_SILENT := true
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test venv demo-data bench clean constraints
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_SPEC)
	# ray: the Ray executor is tested too (tests/test_flow.py), not only documented.
	# constraints.txt: the tested resolution, so unpinned transitive dependencies cannot move under a fresh machine.
	$(PIP) install -q -c constraints.txt -e ".[dev,pretrained,ray]"
	touch $@

data/demo/reviews.csv: | venv
	$(VENV)/bin/foldstack demo-data --out data/demo/reviews.csv

demo-data: data/demo/reviews.csv

# The main pipeline as a Prefect flow on the embedded server (state in .prefect/): validate, folds, every
# (model x fold) in parallel, OOF, stack, evaluate, bundle, register (gate), version (dvc commit + push).
run: venv data/demo/reviews.csv
	PREFECT_LOGGING_LEVEL=INFO $(PY) -m flows.train --params params.yaml
	@cat artifacts/eval/leaderboard.md

test: venv
	$(PIP) check
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=disabled $(VENV)/bin/pytest -q

bench: venv
	$(PY) bench/quality.py

clean:
	rm -rf artifacts .cache .prefect .wandb reports

# Re-resolve after a change to pyproject.toml: the venv's resolution becomes the new constraints.txt.
constraints: venv
	{ sed -n 1,2p constraints.txt; $(PIP) freeze --exclude-editable | grep -viE '^(torch|nvidia-|triton)'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
