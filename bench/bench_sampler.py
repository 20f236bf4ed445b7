"""Vectorised truncated rejection sampling vs a naive per-row Python loop (same process).

    python bench/bench_sampler.py [--dim 50] [--truncation 100] [--n-naive 500] [--n 100000]

Both samplers draw from the same LARS prior (N(0, I) proposal, AcceptanceMLP[d-100-100-1] with
its output bias set so that Z is about --target-z). Prints samples/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from larsvae.distributions import AcceptanceMLP, ResampledPrior, StandardNormal
from larsvae.zestimate import estimate_prior_z


@torch.no_grad()
def naive_sample(prior: ResampledPrior, n: int, generator: torch.Generator) -> torch.Tensor:
    """Baseline: one proposal at a time, one row at a time (the textbook loop)."""
    out = []
    for _ in range(n):
        t = 0
        while True:
            t += 1
            z = prior.proposal.sample(1, generator=generator)
            a = torch.sigmoid(prior.acceptance(z).double())
            u = torch.rand(1, dtype=torch.float64, generator=generator, device=z.device)
            if bool(u < a) or t == prior.truncation:
                out.append(z)
                break
    return torch.cat(out)


def timed(fn, repeats: int = 1) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=50)
    p.add_argument("--truncation", type=int, default=100)
    p.add_argument("--target-z", type=float, default=0.2)
    p.add_argument("--n-naive", type=int, default=500)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    torch.manual_seed(0)
    prior = ResampledPrior(StandardNormal(args.dim), AcceptanceMLP(args.dim), args.truncation)
    with torch.no_grad():
        prior.acceptance.net[-1].bias.fill_(math.log(args.target_z / (1 - args.target_z)))
    prior.to(args.device)
    est = estimate_prior_z(prior, 200_000, 50_000, seed=0)
    prior.set_log_z(est.log_mean)
    print(
        f"dim={args.dim} T={args.truncation} Z={prior.z:.4f} "
        f"E[proposals]={prior.expected_num_proposals():.2f} device={args.device}"
    )

    gen = torch.Generator(device=args.device)
    gen.manual_seed(1)
    t_naive = timed(lambda: naive_sample(prior, args.n_naive, gen))
    gen.manual_seed(1)
    t_vec_small = timed(lambda: prior.sample(args.n_naive, generator=gen), repeats=3)
    gen.manual_seed(1)
    t_vec = timed(lambda: prior.sample(args.n, generator=gen), repeats=3)

    r_naive = args.n_naive / t_naive
    r_small = args.n_naive / t_vec_small
    r_vec = args.n / t_vec
    print(f"naive loop       n={args.n_naive:>7}: {r_naive:12.0f} samples/s")
    print(
        f"vectorised       n={args.n_naive:>7}: {r_small:12.0f} samples/s  "
        f"(x{r_small / r_naive:.0f} vs naive)"
    )
    print(
        f"vectorised       n={args.n:>7}: {r_vec:12.0f} samples/s  "
        f"(x{r_vec / r_naive:.0f} vs naive)"
    )


if __name__ == "__main__":
    main()
