# The README's first two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test lint docs clean

$(VENV)/.base: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PIP) -e '.[dev]'
	touch $@

demo: $(VENV)/.base
	$(VENV)/bin/segdist demo

test: lint docs
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.dev  # the import-linter contracts in pyproject.toml: layers, forbidden imports, no cycle
	$(VENV)/bin/lint-imports

docs: $(VENV)/.dev  # the site (mkdocs.yml) into site/, strict: a broken link or anchor, or a page not in the nav, fails
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) shards/demo runs/demo site
