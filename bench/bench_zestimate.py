"""Z estimation throughput by batch size, and antithetic vs plain Monte Carlo efficiency.

    python bench/bench_zestimate.py [--dim 50] [--samples 1000000] [--device cpu]

Efficiency is 1 / (variance of the estimate x seconds): the number of "equivalent samples"
per second. The acceptance is an AcceptanceMLP[d-100-100-1] with random (non-zero) biases,
so that a(z) + a(-z) is not constant (at Glorot init with zero biases the MLP is odd and the
antithetic estimate would be exact, which flatters it).
"""

from __future__ import annotations

import argparse
import time

import torch

from larsvae.distributions import AcceptanceMLP, StandardNormal
from larsvae.zestimate import estimate_z


def run(acc, prop, n, batch, antithetic, device):
    t0 = time.perf_counter()
    est = estimate_z(acc, prop, n, batch, antithetic=antithetic, seed=0, device=device)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return est, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=50)
    p.add_argument("--samples", type=int, default=1_000_000)
    p.add_argument("--batches", default="1000,10000,100000")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    torch.manual_seed(0)
    acc = AcceptanceMLP(args.dim)
    with torch.no_grad():
        for m in acc.net:
            if isinstance(m, torch.nn.Linear):
                m.bias.uniform_(-1.0, 1.0)
    prop = StandardNormal(args.dim)

    print(f"dim={args.dim} samples={args.samples} device={args.device}")
    print(f"{'batch':>9} {'mode':>10} {'Z':>10} {'stderr':>10} {'s':>7} {'samples/s':>11}")
    results = {}
    for batch in (int(b) for b in args.batches.split(",")):
        for anti in (False, True):
            est, dt = run(acc, prop, args.samples, batch, anti, args.device)
            results[batch, anti] = (est, dt)
            mode = "antithetic" if anti else "plain"
            print(
                f"{batch:>9} {mode:>10} {est.mean:10.6f} {est.stderr:10.2e} {dt:7.2f} "
                f"{args.samples / dt:11.0f}"
            )
    best = max(results, key=lambda k: 1 / (results[k][0].stderr ** 2 * results[k][1]))
    for batch in sorted({b for b, _ in results}):
        (ep, tp), (ea, ta) = results[batch, False], results[batch, True]
        ratio = (ep.stderr**2 * tp) / (ea.stderr**2 * ta)
        print(f"batch {batch:>9}: antithetic / plain efficiency (1/(var*s)) = x{ratio:.2f}")
    small = min(b for b, _ in results)
    print(
        f"best: batch {best[0]}, {'antithetic' if best[1] else 'plain'}; throughput "
        f"x{results[small, False][1] / results[best][1]:.1f} vs batch {small} plain"
    )


if __name__ == "__main__":
    main()
