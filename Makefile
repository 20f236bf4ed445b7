# The two commands of the README:
#   make main   set up .venv and run the headline experiment (quick CPU budget) into reports/quick/
#   make test   set up .venv and run the whole test suite (lint, DAG lint, unit, e2e smoke DAG, dvc repro, SLURM)
# Everything else here is a convenience around those.
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup main test lint format bench reliability clean-smoke mutate

setup:
	bash scripts/setup_env.sh

main: setup
	bash scripts/run_main.sh

lint: setup
	$(BIN)/ruff check src tests bench workflow/scripts workflow/plan.py
	$(BIN)/ruff format --check src tests bench workflow/scripts workflow/plan.py
	$(BIN)/snakemake --lint --configfile params/quick.yaml

format: setup
	$(BIN)/ruff format src tests bench workflow/scripts workflow/plan.py

# regenerate the committed reports/reliability.md from real runs (the test suite never writes it)
reliability: setup
	LARSVAE_WRITE_REPORTS=1 $(BIN)/python -m pytest -q tests/test_reliability_report.py

test: setup lint
	$(BIN)/python -m pytest -q --timeout=1500 $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/run.py

# mutation testing of the maths and provenance core ([tool.mutmut] in pyproject.toml):
# writes reports/mutation.md. Not part of `make test` (an hour on one core); mutants/ keeps
# the verdicts, so a rerun tests only what changed (rm -rf mutants to start over).
mutate: setup
	OMP_NUM_THREADS=1 $(BIN)/python scripts/mutation_report.py run
