"""CPU chunk sizes for evaluation: large chunks vs cache/allocator-friendly ones, side by side.

IWAE (K = 1000) and Z estimation both stream over chunks; the chunk size is a params choice
(`evaluate.iwae_batch`, `iwae_k_chunk`, `z_batch`). On a CPU, tensors above glibc's mmap
threshold (32 MB) are mapped and unmapped on every chunk, and the page faults show up as
system time. This reports the speed ratio of the quick budget's chunks against the
GPU-oriented defaults, in the same process, on a paper-size VAE / acceptance network.

    python bench/bench_chunking.py [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from larsvae.config import EvalConfig, ModelConfig
from larsvae.evaluation import iwae_log_likelihood
from larsvae.models import build_model
from larsvae.zestimate import estimate_z


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("vae", "lars", ModelConfig()).eval()
    prior = model.top_prior
    prior.set_log_z(-4.0)
    x = (torch.rand(200, 784) < 0.2).float()
    d = EvalConfig()

    def iwae(bs, kc):
        return lambda: iwae_log_likelihood(model, x, k=1000, batch_size=bs, k_chunk=kc, seed=0)

    def z(b):
        return lambda: estimate_z(prior.acceptance, prior.proposal, 2_000_000, b, seed=0)

    with torch.no_grad():
        rows = [
            ("IWAE K=1000, 200 points", f"{d.iwae_batch}x{d.iwae_k_chunk}", "25x200",
             best_of(iwae(d.iwae_batch, d.iwae_k_chunk), args.repeats),
             best_of(iwae(25, 200), args.repeats)),
            ("Z, 2e6 samples", f"batch {d.z_batch}", "batch 20000",
             best_of(z(d.z_batch), args.repeats), best_of(z(20_000), args.repeats)),
        ]
    print(f"threads={args.threads}, best of {args.repeats}")
    for what, base, new, tb, tn in rows:
        print(f"{what:26s} baseline {base:>14s} {tb:7.2f}s | {new:>11s} {tn:7.2f}s | speed-up x{tb / tn:.2f}")


if __name__ == "__main__":
    main()
