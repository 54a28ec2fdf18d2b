# Two entry points: `make run` (the default campaign through `dvc repro`) and `make test`.
# Both first set up whatever is missing (virtual environment, install, default model); with the
# set-up done they go straight to the work. The install is the tested versions pinned in
# requirements.lock, then the project itself without dependencies; a changed lock or
# pyproject.toml reinstalls.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
LOCK := requirements.lock
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | cksum | cut -d' ' -f1)
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

.PHONY: setup run test test-llama lint bench lock
setup: $(STAMP) $(DEFAULT_MODEL)

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@rm -f $(VENV)/.installed-* && touch $@

# Re-resolve the lock from pyproject.toml, keeping its pins where they still fit (UPGRADE=--upgrade
# for the newest versions). torch's CPU wheel comes from $$PIP_FIND_LINKS (uv ignores pip's
# settings), or from the PyTorch CPU index if it is unset.
FIND_LINKS := $(if $(PIP_FIND_LINKS),--find-links "$(PIP_FIND_LINKS)",--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
lock: | $(STAMP)
	$(BIN)/python -m pip install --quiet "uv>=0.5"
	$(BIN)/uv pip compile pyproject.toml --extra dev $(FIND_LINKS) --python-version 3.11 $(UPGRADE) -o $(LOCK)

$(DEFAULT_MODEL): | $(STAMP)
	$(BIN)/python scripts/fetch_default_model.py --out $@

run: setup
	$(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest

# The openai backend against llama.cpp's server (docs/serving.md): compiles llama-cpp-python
# the first time (minutes), portable flags (a -march=native build can crash in AMX kernels).
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
test-llama: setup
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet -c $(LOCK) \
		"llama-cpp-python[server]==0.3.36"
	$(BIN)/python -m pytest tests/test_llama_server.py

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/python bench/retrieval.py
	$(BIN)/python bench/agent.py
