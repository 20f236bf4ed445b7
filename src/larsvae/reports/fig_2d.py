"""Figure: LARS on 2-D toy densities (the paper's illustrative example, Fig. 2-style).

For each target (rows) a LARS prior p(z) = pi(z) a(z) / Z (Eq. 1, truncated: Eq. A.14) is
fitted by maximum likelihood (Eq. 5, :func:`larsvae.fit2d.fit_density`); the columns show
the target samples, the proposal density pi(z) (N(0, I), or a jointly trained RealNVP with
``--proposal realnvp``), the learned acceptance a(z) and the resulting LARS density on a grid.

    python -m larsvae.reports.fig_2d --out reports/figures/fig2d.png --steps 2000

matplotlib is imported lazily (Agg backend) so the library does not depend on it.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from larsvae.distributions import AcceptanceMLP, RealNVP, ResampledPrior, StandardNormal
from larsvae.fit2d import average_log_likelihood, fit_density
from larsvae.reports.figures import save_png
from larsvae.targets2d import TARGETS, get_target


def build_lars_2d(proposal: str, truncation: int | None, num_z_samples: int) -> ResampledPrior:
    """LARS over N(0, I) (``proposal='gaussian'``) or over a RealNVP (``'realnvp'``)."""
    prop = StandardNormal(2) if proposal == "gaussian" else RealNVP(2)
    return ResampledPrior(
        prop, AcceptanceMLP(2), truncation=truncation, eps=0.1, num_z_samples=num_z_samples
    )


@torch.no_grad()
def grid_panels(prior: ResampledPrior, extent: float, n: int = 200) -> dict[str, torch.Tensor]:
    """(n, n) grids of pi(z), a(z) and the LARS density p(z) on [-extent, extent]^2."""
    g = torch.linspace(-extent, extent, n)
    x, y = torch.meshgrid(g, g, indexing="xy")
    pts = torch.stack([x.reshape(-1), y.reshape(-1)], -1)
    prior.eval()
    return {
        "proposal": prior.proposal.log_prob(pts).exp().view(n, n),
        "acceptance": torch.sigmoid(prior.acceptance(pts)).view(n, n),
        "lars": prior.log_prob(pts).exp().view(n, n),
    }


def make_figure(
    out: Path,
    targets: list[str],
    steps: int,
    proposal: str = "gaussian",
    seed: int = 0,
    batch_size: int = 256,
    lr: float = 3e-3,
    truncation: int | None = 100,
    num_z_samples: int = 1024,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Fit one LARS prior per target, save the figure as PNG at ``out``; return per-target
    test log-likelihoods (nats/point) of the target itself, N(0, I) and the fitted LARS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(targets), 4, figsize=(12, 3 * len(targets)), squeeze=False)
    summary: dict[str, dict[str, float]] = {}
    for row, name in enumerate(targets):
        target = get_target(name)
        torch.manual_seed(seed)
        prior = build_lars_2d(proposal, truncation, num_z_samples)
        hist = fit_density(
            prior, target.sample, steps, batch_size=batch_size, lr=lr, seed=seed, progress=progress
        )
        test_x = target.sample(10_000, torch.Generator().manual_seed(seed + 10_000))
        summary[name] = {
            "true": target.log_prob(test_x.double()).mean().item(),
            "gaussian": average_log_likelihood(StandardNormal(2), test_x),
            "lars": average_log_likelihood(prior, test_x),
            "Z": math.exp(hist.final_log_z),
        }
        e = target.extent
        panels = grid_panels(prior, e)
        show = target.sample(2000, torch.Generator().manual_seed(seed + 1))
        ax = axes[row]
        ax[0].scatter(show[:, 0], show[:, 1], s=1, alpha=0.5, color="k")
        ax[0].set_xlim(-e, e)
        ax[0].set_ylim(-e, e)
        for a, key in zip(ax[1:], ("proposal", "acceptance", "lars"), strict=True):
            a.imshow(panels[key].numpy(), origin="lower", extent=(-e, e, -e, e), cmap="viridis")
        ax[0].set_ylabel(name)
        s = summary[name]
        ax[3].set_title(f"LARS  ({s['lars']:.2f} nats; N(0,I) {s['gaussian']:.2f})", fontsize=9)
        if row == 0:
            ax[0].set_title("target samples")
            ax[1].set_title(f"proposal pi(z) [{proposal}]")
            ax[2].set_title("acceptance a(z)")
        for a in ax:
            a.set_aspect("equal")
            a.set_xticks([])
            a.set_yticks([])
    fig.tight_layout()
    save_png(fig, out, dpi=100)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m larsvae.reports.fig_2d", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--steps", type=int, default=2000, help="Adam steps per target")
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--proposal", choices=("gaussian", "realnvp"), default="gaussian")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--truncation", type=int, default=100, help="T (0 = no truncation)")
    p.add_argument("--z-samples", type=int, default=1024, help="S proposal samples per step")
    args = p.parse_args(argv)
    if args.steps < 0 or args.batch_size < 1 or args.lr <= 0 or args.truncation < 0:
        p.error("--steps >= 0, --batch-size >= 1, --lr > 0 and --truncation >= 0 required")
    if args.out.suffix.lower() != ".png":
        p.error(f"--out {args.out}: the figure is written as PNG; name it *.png")
    summary = make_figure(
        args.out,
        args.targets,
        args.steps,
        proposal=args.proposal,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        truncation=args.truncation or None,
        num_z_samples=args.z_samples,
    )
    for name, s in summary.items():
        print(
            f"{name}: test log-lik true {s['true']:.3f}  N(0,I) {s['gaussian']:.3f}  "
            f"LARS {s['lars']:.3f}  (Z = {s['Z']:.4f})"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
