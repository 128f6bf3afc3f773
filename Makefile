# Three commands do everything on a fresh machine:
#   make study   set up, then run the default study and its confirmation (Fashion-MNIST, CPU, about 30 minutes)
#   make test    set up, then ruff and every test that does not start Ray (the quick loop, a few minutes)
#   make test-all  set up, then ruff and the whole suite, Ray tests included (what CI runs: .ci/run; about 50 min)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= --durations=30   # the 30 slowest tests, printed after the run (where the suite's time goes)

.PHONY: setup study test test-all lint bench bench-quick clean

$(STAMP): setup.cfg pyproject.toml
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

study: $(STAMP)
	$(PY) study/run.py --space hardneg.yaml $(ARGS)

test: $(STAMP)
	$(PY) -m ruff check moco study analysis bench tests
	$(PY) -m pytest -m "not ray" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m ruff check moco study analysis bench tests
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check moco study analysis bench tests

bench: $(STAMP)
	$(PY) bench/run.py

bench-quick: $(STAMP)
	$(PY) bench/run.py --quick

clean:
	rm -rf $(VENV) runs .pytest_cache
