# The two commands of this project: `make run` and `make test`.
# Both create .venv when missing and install the project into it. torch is installed first and pinned to the
# CPU wheel (an unpinned torch would pull a multi-GB CUDA build).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.docs-installed
TORCH := torch==2.13.0

# Flower: never reinstall the app's dependencies per run, never phone home.
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1

.PHONY: install run centralized test test-fast lint docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The last step encodes the shipped catalogue's item text into the text-vector cache (about a minute on 2
# cores, once per machine), so no run pays for it (lsc4rec/simulations/prepare_text.py).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install "$(TORCH)"
	$(BIN)/python -m pip install -e ".[test]"
	$(BIN)/python -m lsc4rec.simulations.prepare_text
	touch $(STAMP)

install: $(STAMP)

# The default job: the whole system on Beauty via `flwr run .` (private simulation SuperLink, 2 SuperNodes;
# docs/whole_system.md); exits non-zero unless the Flower run completed. ARGS adds overrides, e.g.
# `make run ARGS=system=sasrec` (the plain federated SASRec). The centralized baseline: `make centralized`.
ARGS ?=
run: $(STAMP)
	$(BIN)/python -m lsc4rec.simulations.federated $(ARGS)

centralized: $(STAMP)
	$(BIN)/python -m lsc4rec.simulations.centralized

# The full suite (what CI runs), then the 25 slowest tests.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q --durations=25

# Everyday work: everything but the tests marked slow (whole runs, subprocesses, real Flower).
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

# The documentation site (mkdocs.yml, docs/) into site/. Strict: a broken link or anchor, or a page missing from
# the nav, fails the build. The docs extra (MkDocs + Material) is installed into .venv on first use.
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) outputs .pytest_cache
