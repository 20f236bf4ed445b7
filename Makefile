# The two commands of the README:
#   make main   set up .venv and run the headline experiment (quick CPU budget) into reports/
#   make test   set up .venv and run the whole test suite (lint, DAG lint, unit, e2e smoke DAG, dvc repro, SLURM)
# Everything else here is a convenience around those.
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup main test lint bench clean-smoke

setup:
	bash scripts/setup_env.sh

main: setup
	bash scripts/run_main.sh

lint: setup
	$(BIN)/ruff check src tests bench workflow/scripts
	$(BIN)/snakemake --lint --configfile params/quick.yaml

test: setup lint
	$(BIN)/python -m pytest -q --timeout=1500 $(PYTEST_ARGS)

bench: setup
	for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done
