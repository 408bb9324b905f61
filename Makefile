# make reproduce            the full replication: `dvc repro` on params.yaml's profile (demo); PROFILE=ci|demo|full
#                           runs another through `dvc exp run -S profile=...`; STAGES="00_quickstart" runs only the
#                           named dvc stages and what they depend on
# make test                 unit + integration tests and nbval over every notebook
# make bench                throughput benchmark on the current device
# make lab                  JupyterLab on notebooks/
# Each target creates .venv and installs the pinned requirements on first use.
PROFILE ?=
STAGES ?=
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= $(shell command -v python3.11 || command -v python3)
STAMP := $(VENV)/.installed
RUN := PATH=$(CURDIR)/$(VENV)/bin:$$PATH

.PHONY: reproduce test bench lab clean-results

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

reproduce: $(STAMP)
ifeq ($(PROFILE),)
	$(RUN) dvc repro $(STAGES)
else
	$(RUN) dvc exp run -S profile=$(PROFILE) $(STAGES)
endif
	@echo "outputs: reports/<profile>/  (table.md, table.csv, figure.png, metrics.json, details.json, executed.ipynb)"

test: $(STAMP)
	$(RUN) $(PY) -m pytest -q --nbval-lax --nbval-current-env notebooks tests

bench: $(STAMP)
	$(PY) -m mmlib bench

lab: $(STAMP)
	$(RUN) jupyter lab notebooks

clean-results:
	rm -rf results
