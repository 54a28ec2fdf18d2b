# Two entry points: `make run` (the default campaign through `dvc repro`) and `make test`.
# Both first set up whatever is missing (virtual environment, install, default model); with the
# set-up done they go straight to the work.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
DEFAULT_MODEL := models/SmolLM2-135M-Instruct.Q4_1.gguf

# Stages run `python -m stages.…`: put the venv first so DVC's shell finds it.
export PATH := $(BIN):$(PATH)
# Offline and quiet: nothing here calls out to the internet or sends telemetry.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: setup run test lint bench clean-runs
setup: $(STAMP) $(DEFAULT_MODEL)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@rm -f $(VENV)/.installed-* && touch $@

$(DEFAULT_MODEL): | $(STAMP)
	$(BIN)/python scripts/fetch_default_model.py --out $@

run: setup
	$(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/python bench/retrieval.py
	$(BIN)/python bench/agent.py
