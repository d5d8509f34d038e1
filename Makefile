# The README's first two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test lint clean

$(VENV)/.base: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PIP) -e '.[dev]'
	touch $@

demo: $(VENV)/.base
	$(VENV)/bin/segdist demo

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.dev  # the import-linter contracts in pyproject.toml: layers, forbidden imports, no cycle
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) shards/demo runs/demo
