# Two commands do all the set-up on a fresh clone:
#   make repro   create .venv, install everything, run `dvc repro` on the simulated Instagram
#   make test    create .venv, install everything, run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch 2.13.0; with a GPU, install the CUDA build first, e.g.
#   make setup TORCH="torch --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup repro test bench clean-cache

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

repro: setup
	dvc repro

test: setup
	python -m pytest -q $(PYTEST_ARGS)

bench: setup
	python bench/preprocess.py

clean-cache:
	rm -rf .imgrate-cache
