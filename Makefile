# Two commands do all the set-up on a fresh clone:
#   make repro   create .venv, install everything, run `dvc repro` on the simulated Instagram
#   make test    create .venv, install everything, run ruff, mypy, the test suite and the docs build
# Paths may hold spaces (a clone in "~/My Projects/imgrate"): every path in a command is quoted.
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
export NO_MKDOCS_2_WARNING := 1

# The tests' MongoDB wire-protocol server (tests/mongo_server.py) is PyPI mongoeco, which needs
# Python >= 3.13: it gets its own venv. PYTHON313=/path/to/python3.13 overrides the search.
MONGO_VENV ?= .venv-mongo
MONGOECO ?= mongoeco[wire]==4.11.0
MONGO_STAMP := $(MONGO_VENV)/.installed
PY313_CANDIDATES = $(PYTHON313) python3.13 python3.14 python3 \
	$(wildcard $(HOME)/.pyenv/versions/3.1[3-9]*/bin/python3 /root/.pyenv/versions/3.1[3-9]*/bin/python3) \
	/usr/local/bin/python3.13 /usr/bin/python3.13

.PHONY: setup mongo-venv repro test docs bench bench-incremental clean-cache plots-template lineage

$(STAMP): pyproject.toml
	@echo "make setup: a virtual environment in $(VENV), then torch, imgrate and its test tools (a few minutes the first time)"
	$(PYTHON) -m venv "$(VENV)"
	"$(BIN)/python" -m pip install -q --upgrade pip
	@echo "make setup: installing $(TORCH) (the largest download)"
	"$(BIN)/python" -m pip install -q $(TORCH)
	@echo "make setup: installing imgrate with its test extra (dvc, ruff, mypy, pytest, mkdocs-material)"
	"$(BIN)/python" -m pip install -q -e '.[test]'
	touch "$(STAMP)"
	@echo "make setup: done; \`source $(VENV)/bin/activate\` puts dvc and imgrate on your PATH"

setup: $(STAMP)

# No Python >= 3.13: a warning, no venv; the MongoDB tests then skip (and fail under CI=true).
$(MONGO_STAMP):
	@py=""; for c in $(PY313_CANDIDATES); do \
	  if "$$c" -c 'import sys; sys.exit(sys.version_info < (3, 13))' >/dev/null 2>&1; then py="$$c"; break; fi; \
	done; \
	if [ -z "$$py" ]; then \
	  echo "warning: no Python >= 3.13 found (set PYTHON313=...); the MongoDB tests need $(MONGO_VENV)" >&2; exit 0; \
	fi; \
	echo "$(MONGO_VENV): $(MONGOECO) on $$py"; \
	"$$py" -m venv "$(MONGO_VENV)" && "$(MONGO_VENV)/bin/python" -m pip install -q '$(MONGOECO)' && touch "$(MONGO_STAMP)"

mongo-venv: $(MONGO_STAMP)

repro: setup
	dvc repro

# dvc.yaml, generated from each stage's declaration and the registries (imgrate/lineage.py):
# run it after adding a model, a baseline that reads new data, or a stage, or changing imports
lineage: setup
	python -m imgrate.lineage

# lint and types first (config in pyproject.toml; both come with the test extra), then the suite
# (tests/test_docs.py runs the docs' commands and builds the site), then the site on its own
test: setup mongo-venv
	ruff check .
	mypy
	python -m pytest -q $(PYTEST_ARGS)
	mkdocs build --strict --quiet

# the docs site (mkdocs.yml, docs/) into site/: a broken link or anchor fails the build
docs: setup
	mkdocs build --strict

# each bench prints JSON and saves it under bench/results/ (bench/README.md: what each measures)
SEEDS ?= 1 2 3 4 5  # bench/quality.py's world seeds
bench: setup
	python bench/preprocess.py
	python bench/crawl.py
	python bench/labels.py
	python bench/train.py
	python bench/featurize.py
	python bench/limits.py
	python bench/rank.py
	python bench/quality.py --seeds $(SEEDS)

# the data stages after +1% posts against a full rebuild, and a no-op repro, at the paper's
# scale (~71,000 posts: a crawl of 15-40 minutes); POSTS=10000 for a quicker look
POSTS ?= 72000
bench-incremental: setup
	python bench/incremental.py --posts $(POSTS)

# .dvc/plots-offline.html: `dvc plots show`'s page with Vega inlined (offline), from npm at the
# versions pinned in tools/plots_template.py
VEGA_PACKAGES = vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0
plots-template: setup
	tmp=$$(mktemp -d) && (cd $$tmp && npm pack --silent $(VEGA_PACKAGES) >/dev/null) && \
	  python tools/plots_template.py $$tmp/*.tgz && rm -rf $$tmp

clean-cache:
	rm -rf .imgrate-cache
