# Two commands set everything up on a new machine:
#   make run        installs into .venv (once), then runs the default experiment
#   make test       installs into .venv (once), then runs every test and doctest (what CI runs)
# and one is for the edit-test loop:
#   make test-fast  the same minus tests marked slow, cifar10 or processes (subprocesses/servers)
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# The shipped CIFAR-10 archive, when it lies beside the clone and no other is named.
FSJAX_CIFAR10_ZIP ?= $(wildcard $(abspath ../shared/data/cifar10-jpeg.zip))
export FSJAX_CIFAR10_ZIP

.PHONY: install run test test-fast bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalls when pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/fsjax run experiments/cifar10_demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not cifar10 and not processes" $(PYTEST_ARGS)

# Benchmarks need the PyTorch baseline (CPU build), kept out of `make test`.
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python -m bench.round --quick
	$(BIN)/python -m bench.allocation --quick

clean:
	rm -rf $(VENV) .pytest_cache .cache/jax build *.egg-info
