# Every target creates .venv and installs the project on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch==2.13.0's CPU wheel lies in /opt/wheels on these machines; uv ignores pip's config,
# so it is named here (a missing folder is harmless).
WHEELS ?= /opt/wheels
export RNN_DATA_MIRROR ?= $(abspath ../shared/datasets)
export PREFECT_HOME ?= $(abspath .prefect)
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export MLFLOW_DISABLE_TELEMETRY ?= true
export UV_COMPILE_BYTECODE ?= 1

.PHONY: install run test test-fast prepare ui serve lint clean

$(BIN)/rnnflow: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv pip install --python $(BIN)/python --find-links $(WHEELS) -e '.[dev]'
	touch $@

install: $(BIN)/rnnflow

# Two Dask worker processes: the default grid trains two configurations at a time on 2 cores.
WORKERS ?= 2

run: install  ## the whole pipeline on the default profile, tracked under mlruns/
	$(BIN)/rnnflow run --profile default --workers $(WORKERS)

prepare: install  ## download, preprocess and bucket the four datasets
	$(BIN)/rnnflow prepare

test: install  ## the whole test suite (slow tests included), as CI runs it
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

ui: install  ## Prefect (:4200) and MLflow (:5000) UIs on 127.0.0.1 with the project's stores; Ctrl-C stops both
	$(BIN)/rnnflow ui

serve: install  ## register the deployments (nightly pipeline + each experiment) and run them; needs `make ui`
	PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:4200/api} $(BIN)/rnnflow serve

lint: install
	$(BIN)/ruff check rnn_core tasks flows tests benchmarks

clean:
	rm -rf data/raw data/processed .prefect checkpoints
