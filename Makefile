# The two commands of the README: `make demo` and `make test`.
# Each installs what it needs: Debian packages when missing, a virtualenv.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test deps venv clean

deps:
	@bash scripts/install-deps.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: deps $(STAMP)

# make demo ARGS=--keep-running: leave the fleet and its web dashboard up until Ctrl-C.
demo: venv
	$(PY) examples/demo/run_demo.py $(ARGS)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .build .pytest_cache
