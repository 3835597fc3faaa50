# JARVIS developer entry points. `make demo` and `make test` do setup as needed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.jarvis-setup

.PHONY: setup demo test lab bench clean-venv

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

# Two phases: everything but the timing tests on TEST_WORKERS pytest-xdist workers (a file stays on one worker,
# so its module fixtures are shared), then the tests marked serial alone.  Both phases run; either failing fails.
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -m "not serial" -n $(TEST_WORKERS) --dist loadfile; parallel=$$?; \
	$(BIN)/python -m pytest -m serial; serial=$$?; \
	test $$parallel -eq 0 && test $$serial -eq 0

# JupyterLab on notebooks/ (each notebook reads the latest run under runs/ unless told otherwise).
# LAB_ARGS passes options through, e.g. make lab LAB_ARGS="--no-browser --port=8899".
lab: setup
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root,) $(LAB_ARGS)

bench: setup
	$(BIN)/python benchmarks/chain_latency.py
	$(BIN)/python benchmarks/failover.py
	$(BIN)/python benchmarks/analysis_load.py
	$(BIN)/python benchmarks/emu_updown.py

clean-venv:
	rm -rf $(VENV)
