# Two entry points for a fresh machine: `make demo` and `make test` (each sets up .venv when missing).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint setup clean bench app-check

$(BIN)/rcdm: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/rcdm

setup: $(BIN)/rcdm

demo: setup
	$(BIN)/rcdm demo --out demo-out

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/shellcheck --severity=warning scripts/*.sh
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/speed.py

clean:
	rm -rf $(VENV) demo-out app-check.png

# Release check for a person: start `rcdm app`, screenshot it with headless Chromium (Debian: apt-get install
# chromium), fail unless the page shows rendered images. MODEL=path (repeatable via ARGS) overrides the pack.
app-check: setup
	$(BIN)/pip install --quiet -e '.[app]'
	$(BIN)/python scripts/app_check.py $(if $(MODEL),--model $(MODEL)) $(ARGS) --out app-check.png
