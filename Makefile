# Two commands on a fresh machine:  `make demo` (simulate -> fit -> edit -> evaluate, with a report)
# and `make test` (every test: Python, R, rpy2, vignette, docs). Both install what they need.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
OUT ?= out/demo

.PHONY: setup setup-python setup-r demo test test-python test-r test-shared vignette docs lint bench clean

setup:
	scripts/setup.sh all

setup-python:
	scripts/setup.sh python

setup-r:
	scripts/setup.sh r

demo: setup-python
	$(PY) -m sccbgm demo --out $(OUT) --overwrite

# the documentation site (docs/ + API pages from the docstrings), offline, strict -> out/docs/
docs: setup-python
	scripts/run_tests.sh docs

lint: setup-python
	$(VENV)/bin/ruff check python shared_tests data_scripts

test: setup
	scripts/run_tests.sh

test-python: setup-python
	$(PY) -m pytest -q python/tests

test-r: setup-r
	scripts/run_tests.sh r

test-shared: setup-r
	scripts/run_tests.sh shared

vignette: setup-r
	scripts/run_tests.sh vignette

clean:
	rm -rf out .pytest_cache r-package/*.tar.gz *.Rcheck
