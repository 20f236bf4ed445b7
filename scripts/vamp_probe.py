"""Why the VampPrior's posterior collapses at the grid schedule: a short training probe.

    python scripts/vamp_probe.py [--steps 600] [--warmup 1500] [--every 100]

Trains the dynamicMNIST VAE (d = 50, H = 300, K = 500 pseudo-inputs, batch 128, Adam 3e-4,
the grid's KL warm-up) from one initialisation, four ways, and prints the training batch's
reconstruction and KL every ``--every`` steps:

- ``coupled``: the VampPrior as published (the encoder's weights get gradients through the
  prior's components q(z | u_k));
- ``data init``: the same, pseudo-inputs initialised from 500 training images;
- ``fast u``: the same, the pseudo-inputs at 100x the learning rate;
- ``stop-gradient``: ``vamp_sg``, the encoder's weights detached in the components;
- ``N(0, I)``: the same VAE with the standard prior, for reference.

``--warmup 1000000000 --steps 100`` keeps beta at 0: what the encoders do without the KL.

Needs ``data/processed/dynamic_mnist.npz`` (``larsvae prepare-data``). One CPU thread;
about a minute per variant at the defaults.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from larsvae.config import ModelConfig
from larsvae.models import build_model
from larsvae.objectives import kl_beta

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("coupled", "data init", "fast u", "stop-gradient", "N(0, I)")
PRIOR = {"stop-gradient": "vamp_sg", "N(0, I)": "gaussian"}


def make(variant: str, grey: torch.Tensor) -> tuple[torch.nn.Module, torch.optim.Adam]:
    torch.manual_seed(1)
    prior = PRIOR.get(variant, "vamp")
    model = build_model("vae", prior, ModelConfig(latent_dim=50, hidden=300))
    u = getattr(model.top_prior, "pseudo_logits", None)
    if variant == "data init":
        pick = torch.randperm(grey.shape[0], generator=torch.Generator().manual_seed(0))[:500]
        with torch.no_grad():
            u.copy_(torch.logit(grey[pick].clamp(0.05, 0.95)))
    rest = [p for p in model.parameters() if p is not u]
    fast = 100.0 if variant == "fast u" else 1.0
    groups = [{"params": rest}] + ([{"params": [u], "lr": 3e-4 * fast}] if u is not None else [])
    opt = torch.optim.Adam(groups, lr=3e-4)
    return model, opt


def probe(variant: str, grey: torch.Tensor, steps: int, warmup: int, every: int) -> list:
    model, opt = make(variant, grey)
    gen = torch.Generator().manual_seed(2)  # the same batches for every variant
    rows = []
    for t in range(steps):
        idx = torch.randint(0, grey.shape[0], (128,), generator=gen)
        x = (torch.rand(128, 784, generator=gen) < grey[idx]).float()
        out = model.loss(x, kl_beta(t, warmup))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        if (t + 1) % every == 0:
            rows.append(
                (t + 1, float(out["rec"].detach().mean()), float(out["kl"].detach().mean()))
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--warmup", type=int, default=1500)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--data", type=Path, default=REPO / "data/processed/dynamic_mnist.npz")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with np.load(args.data) as z:
        grey = torch.from_numpy(z["train"]).float() / 255
    table = {}
    for variant in VARIANTS:
        t0 = time.perf_counter()
        table[variant] = probe(variant, grey, args.steps, args.warmup, args.every)
        print(f"{variant}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\n| step | beta | {' | '.join(f'{v}: rec / KL' for v in VARIANTS)} |")
    print(f"|---:|---:|{'---|' * len(VARIANTS)}")
    for i, (step, _, _) in enumerate(table[VARIANTS[0]]):
        cells = [f"{table[v][i][1]:.1f} / {table[v][i][2]:.2f}" for v in VARIANTS]
        print(f"| {step} | {kl_beta(step - 1, args.warmup):.3f} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
