# make reproduce            the full replication on the demo profile (PROFILE=ci|demo|full; STAGES="00_quickstart"
#                           runs only the named dvc stages and what they depend on)
# make test                 unit + integration tests and nbval over every notebook
# make bench                throughput benchmark on the current device
# Each target creates .venv and installs the pinned requirements on first use.
PROFILE ?= demo
STAGES ?=
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= $(shell command -v python3.11 || command -v python3)
STAMP := $(VENV)/.installed

.PHONY: reproduce test bench lab clean-results

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

reproduce: $(STAMP)
	printf 'profile: %s\n' $(PROFILE) > profile.yaml
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH dvc repro $(STAGES)
	@echo "outputs (profile $(PROFILE)): reports/*/  (table.md, table.csv, figure.png, metrics.json, executed.ipynb)"

test: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest -q --nbval-lax --nbval-current-env notebooks tests

bench: $(STAMP)
	$(PY) -m mmlib bench

lab: $(STAMP)
	$(PY) -m pip install -q jupyterlab
	$(VENV)/bin/jupyter lab notebooks

clean-results:
	rm -rf results
