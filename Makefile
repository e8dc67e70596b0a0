# The two commands of this project: `make run` and `make test`.
# Both create .venv when missing and install the project into it. torch is installed first and pinned to the
# CPU wheel (an unpinned torch would pull a multi-GB CUDA build).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0

# Flower: never reinstall the app's dependencies per run, never phone home.
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1

.PHONY: install run centralized test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install "$(TORCH)"
	$(BIN)/python -m pip install -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The default job: federated SASRec on Beauty via `flwr run .` (private simulation SuperLink, 4 SuperNodes);
# exits non-zero unless the Flower run completed. The centralized baseline: `make centralized`.
run: $(STAMP)
	$(BIN)/python -m lsc4rec.simulations.federated

centralized: $(STAMP)
	$(BIN)/python -m lsc4rec.simulations.centralized

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) outputs .pytest_cache
