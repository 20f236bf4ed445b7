#!/usr/bin/env bash
# How many trainings of each architecture one GPU takes: k concurrent `larsvae train`
# processes (the paper's VAE, HVAE or ConvHVAE, d=50, H=300, batch 128, gaussian prior, CUDA
# graphs) on one device, k = 1, 2, 4, 8; prints the aggregate training steps per second.
# Needs data/processed/dynamic_mnist.{npz,json}.
# Usage (GPU machine): [ARCHS="vae hvae convhvae"] bash bench/gpu_share.sh [iterations]
# (ARCHS defaults to vae alone, as in reports/gpu/gpu_share_h100.txt)
#   -> $OUT/gpu_share.txt
set -euo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-./gpu_out}; mkdir -p "$OUT"
ITERS=${1:-10000}
TP="{\"iterations\":$ITERS,\"batch_size\":128,\"checkpoint_every\":1000000,\"log_every\":1000,\"warmup_steps\":1000,\"lr_decay_step\":$((ITERS/2))}"
ARCHS=${ARCHS:-vae}
tmp=$(mktemp -d)
for arch in $ARCHS; do
for k in 1 2 4 8; do
  start=$(date +%s.%N)
  for i in $(seq 1 "$k"); do
    python3 -m larsvae train --dataset-file data/processed/dynamic_mnist.npz --arch "$arch" \
      --prior gaussian --seed "$i" --model-params '{}' --train-params "$TP" \
      --out "$tmp/$arch/k$k/$i/model.pt" --no-progress --device cuda \
      > "$tmp/$arch.k$k.$i.log" 2>&1 &
  done
  wait
  end=$(date +%s.%N)
  python3 - "$arch" "$k" "$start" "$end" "$ITERS" "$tmp" <<'PY' | tee -a "$OUT/gpu_share.txt"
import json, sys
arch, k, t0, t1, iters, tmp = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:5]), int(sys.argv[5]), sys.argv[6]
sps = []
for i in range(1, k + 1):
    line = [l for l in open(f"{tmp}/{arch}.k{k}.{i}.log") if "done:" in l][-1]
    s = json.loads(line.split("done: ", 1)[1])
    sps.append(s["sec_per_step"])
wall = t1 - t0
print(f"{arch} k={k}: wall {wall:.1f} s for {k} x {iters} steps (incl. start-up); per-process "
      f"{1e3 * sum(sps) / k:.3f} ms/step; aggregate {k / (sum(sps) / k):.0f} steps/s")
PY
done
done
nvidia-smi --query-gpu=name,memory.used --format=csv | tee -a "$OUT/gpu_share.txt"
