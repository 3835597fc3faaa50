# JARVIS developer entry points. `make demo` and `make test` do setup as needed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.jarvis-setup

.PHONY: setup demo test bench clean-venv

setup: $(STAMP)

$(STAMP): requirements.lock requirements-nodeps.txt pyproject.toml scripts/system-packages.sh
	bash scripts/system-packages.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

demo: setup
	$(BIN)/fab experiment --scenario scenarios/demo.yaml

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/chain_latency.py
	$(BIN)/python benchmarks/failover.py
	$(BIN)/python benchmarks/analysis_load.py
	$(BIN)/python benchmarks/emu_updown.py

clean-venv:
	rm -rf $(VENV)
