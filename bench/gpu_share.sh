#!/usr/bin/env bash
# How many VAE trainings one GPU takes: k concurrent `larsvae train` processes (paper VAE,
# d=50, H=300, batch 128, gaussian prior, CUDA graphs) on one device, k = 1, 2, 4, 8; prints
# the aggregate training steps per second. Needs data/processed/dynamic_mnist.{npz,json}.
# Usage (GPU machine): bash bench/gpu_share.sh [iterations]   -> $OUT/gpu_share.txt
set -euo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-./gpu_out}; mkdir -p "$OUT"
ITERS=${1:-10000}
TP="{\"iterations\":$ITERS,\"batch_size\":128,\"checkpoint_every\":1000000,\"log_every\":1000,\"warmup_steps\":1000,\"lr_decay_step\":$((ITERS/2))}"
tmp=$(mktemp -d)
for k in 1 2 4 8; do
  start=$(date +%s.%N)
  for i in $(seq 1 "$k"); do
    python3 -m larsvae train --dataset-file data/processed/dynamic_mnist.npz --arch vae \
      --prior gaussian --seed "$i" --model-params '{}' --train-params "$TP" \
      --out "$tmp/k$k/$i/model.pt" --no-progress --device cuda > "$tmp/k$k.$i.log" 2>&1 &
  done
  wait
  end=$(date +%s.%N)
  python3 - "$k" "$start" "$end" "$ITERS" "$tmp" <<'PY' | tee -a "$OUT/gpu_share.txt"
import json, re, sys
k, t0, t1, iters, tmp = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
sps = []
for i in range(1, k + 1):
    line = [l for l in open(f"{tmp}/k{k}.{i}.log") if "done:" in l][-1]
    s = json.loads(line.split("done: ", 1)[1])
    sps.append(s["sec_per_step"])
wall = t1 - t0
print(f"k={k}: wall {wall:.1f} s for {k} x {iters} steps (incl. start-up); per-process "
      f"{1e3 * sum(sps) / k:.3f} ms/step; aggregate {k / (sum(sps) / k):.0f} steps/s")
PY
done
nvidia-smi --query-gpu=name,memory.used --format=csv | tee -a "$OUT/gpu_share.txt"
