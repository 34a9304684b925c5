# Every target creates .venv from nothing when it is missing or pyproject.toml changed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint fuzz

$(BIN)/cardiomegaly: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

demo: $(BIN)/cardiomegaly
	$(BIN)/cardiomegaly demo

test: $(BIN)/cardiomegaly
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest

lint: $(BIN)/cardiomegaly
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
