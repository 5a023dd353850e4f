# Two commands on a fresh clone: `make render` and `make test` (both create the venv first).
PYTHON ?= python3
VENV   := venv
BIN    := $(VENV)/bin
STACK  ?= staging

.PHONY: setup render render-all test unit integration lint format typecheck bench clean

$(BIN)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

setup: $(BIN)/.installed

render: setup
	$(BIN)/python -m tools.render --stack $(STACK)

render-all: setup
	$(BIN)/python -m tools.render --stack staging
	$(BIN)/python -m tools.render --stack prod

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: setup
	$(BIN)/mypy .

unit: setup
	$(BIN)/pytest -m unit

integration: render-all
	$(BIN)/pytest -m integration

test: lint typecheck render-all
	$(BIN)/pytest

bench: setup
	$(BIN)/python tools/bench_render.py

clean:
	rm -rf build .mypy_cache .ruff_cache .pytest_cache
