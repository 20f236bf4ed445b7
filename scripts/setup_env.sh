#!/usr/bin/env bash
# Create (or reuse) the project virtual environment in .venv and install larsvae with
# everything the CLI, the pipeline and the tests need. Idempotent: a venv whose
# requirements stamp matches is reused as is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${LARSVAE_VENV:-.venv}
stamp="$VENV/.larsvae-requirements.sha256"
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: reusing $VENV (requirements unchanged)"
  exit 0
fi
echo "setup: installing into $VENV (torch is a large wheel: this takes a few minutes)"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r requirements.txt
"$VENV/bin/python" -m pip install -q --no-deps -e .
"$VENV/bin/python" -c "import torch, torchvision, snakemake, dvc, larsvae; print('setup: torch', torch.__version__, '| cuda available:', torch.cuda.is_available())"
echo "$want" > "$stamp"
