#!/usr/bin/env bash
# One-shot GPU check, at most 9 minutes and 10 s on one H100 (the sum of its timeouts; its
# arch rows have not yet run on a GPU): the CUDA benchmarks (reports/benchmarks.*,
# section "cuda", merged next to the CPU one) and the CUDA tests. Plain python3, no venv:
#
#   bash bench/gpu_check.sh              # copies the reports and logs to $OUT (or ./gpu_out)
#
# Z from S = 1e10 samples: bench_z times S = $LARSVAE_BENCH_Z_BIG (here 1e10, about 20 s on
# an H100; anything smaller is extrapolated linearly, and the report row says so).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export LARSVAE_BENCH_Z_BIG="${LARSVAE_BENCH_Z_BIG:-1e10}"
PY="${PYTHON:-python3}"
DEST="${OUT:-gpu_out}"
mkdir -p "$DEST"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$DEST/gpu.txt"
"$PY" -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0)); sys.exit(not torch.cuda.is_available())" || exit 2

# this checkout's Z and sampler benchmarks first; the IWAE and training ones in a second
# call (their rows merge into the same report), each under its own time limit
timeout 170 "$PY" bench/run.py --device cuda --only z,sampler 2>&1 | tee "$DEST/bench_z_sampler.log"
rc_bench=${PIPESTATUS[0]}
timeout 90 "$PY" bench/run.py --device cuda --only iwae,train 2>&1 | tee "$DEST/bench_iwae_train.log"
rc_rest=${PIPESTATUS[0]}
# every architecture of Table 1 (VAE, HVAE, ConvHVAE; N(0, I) and LARS): the training step
# (one CUDA graph) and IWAE K = 1000 against their FLOP limits
timeout 140 "$PY" bench/run.py --device cuda --only arch 2>&1 | tee "$DEST/bench_arch.log"
rc_arch=${PIPESTATUS[0]}

# tests/conftest.py hashes git's tracked files; a copy of the tree without .git gets one
git rev-parse --git-dir >/dev/null 2>&1 || {
    git init -q && git add -A && git -c user.name=gpu -c user.email=gpu@localhost commit -qm tree
}
timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_zestimate.py \
    tests/test_lars_sampling.py tests/test_models.py -k cuda -rs 2>&1 | tee "$DEST/pytest_cuda.log"
rc_test=${PIPESTATUS[0]}

cp reports/benchmarks.json reports/benchmarks.md "$DEST"/ 2>/dev/null
echo "bench z,sampler rc=$rc_bench  bench iwae,train rc=$rc_rest  bench arch rc=$rc_arch" \
    " pytest -k cuda rc=$rc_test"
[ "$rc_bench" -eq 0 ] && [ "$rc_rest" -eq 0 ] && [ "$rc_arch" -eq 0 ] && [ "$rc_test" -eq 0 ]
