# Two commands on a fresh machine: `make run` (the main job) and `make test` (the test suite).
# Both create the virtual environment in .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/carousel: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

.PHONY: install run test lint format
install: $(BIN)/carousel

run: install  ## the main job: an RNN learns binary addition (lecture 7c)
	$(BIN)/carousel train binary-addition

test: install  ## the default (fast) test suite
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
