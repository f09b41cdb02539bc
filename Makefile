# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: demo test soak lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sidecar demo

test: $(STAMP)
	$(VENV)/bin/pytest

# The randomized convergence suite (tests/sim/) for SIDECAR_SIM_DURATION seconds of faults
# (default 600; `make test` runs it for 10). SIDECAR_SIM_SEED=<seed> replays a schedule.
SIDECAR_SIM_DURATION ?= 600
soak: $(STAMP)
	SIDECAR_SIM_DURATION=$(SIDECAR_SIM_DURATION) $(VENV)/bin/pytest tests/sim -x -q -s -p no:randomly

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(VENV)/bin/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
