# seamline — make run: the quickstart; make test: the whole suite; make bench: the benchmarks.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: run test bench lint typecheck docs clean install install-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e '.[test]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	$(BIN)/python examples/quickstart/prepare.py
	$(BIN)/seamline run examples/quickstart/flows --until-idle

test: install-test
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy src/seamline/core
	$(BIN)/pytest

bench: install-test
	$(BIN)/python bench/pipeline.py --rss 1000000
	$(BIN)/python bench/mapping.py
	$(BIN)/python bench/resilience.py
	-@for b in brokers sql_sink http_sink webhook; do \
		if [ -f bench/$$b.py ]; then echo "== bench/$$b.py"; $(BIN)/python bench/$$b.py; fi; done

docs: install
	$(BIN)/seamline docs reference --out docs/reference
	$(BIN)/seamline schema --output schema/flow.schema.json

clean:
	rm -rf $(VENV) .seamline examples/*/out .pytest_cache .mypy_cache .ruff_cache
