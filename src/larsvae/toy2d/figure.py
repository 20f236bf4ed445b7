"""Plotting for the 2-D example (Fig. 2-style): one row per target, four panels.

Columns: target samples, the proposal density pi(z), the acceptance a(z) and the LARS density
p(z) = pi(z) a(z) / Z (Eq. 1; truncated: Eq. A.14) on a square grid. Fitting lives in
:mod:`larsvae.toy2d.fit`, the end-to-end step in :func:`larsvae.toy2d.make_figure`.

matplotlib is imported lazily (Agg backend) so the library does not depend on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from larsvae.distributions import ResampledPrior
from larsvae.reports.figures import save_png

PANELS = ("proposal", "acceptance", "lars")


@dataclass(frozen=True)
class Row:
    """One target's row: its samples (n, 2), the (G, G) grids of :func:`grid_panels` on
    [-extent, extent]^2 and the caption over the LARS panel."""

    name: str
    samples: Tensor
    panels: dict[str, Tensor]
    extent: float
    caption: str


@torch.no_grad()
def grid_panels(prior: ResampledPrior, extent: float, n: int = 200) -> dict[str, Tensor]:
    """(n, n) grids of pi(z), a(z) and the LARS density p(z) on [-extent, extent]^2.

    Row i, column j is the point (x_j, y_i), as ``imshow(origin="lower")`` expects. Uses the
    Z installed in ``prior``; leaves it in eval mode.
    """
    g = torch.linspace(-extent, extent, n)
    x, y = torch.meshgrid(g, g, indexing="xy")
    pts = torch.stack([x.reshape(-1), y.reshape(-1)], -1)  # (n * n, 2)
    prior.eval()
    return {
        "proposal": prior.proposal.log_prob(pts).exp().view(n, n),
        "acceptance": torch.sigmoid(prior.acceptance(pts)).view(n, n),
        "lars": prior.log_prob(pts).exp().view(n, n),
    }


def plot_rows(out_png: str | Path, rows: Sequence[Row], proposal_label: str) -> None:
    """Draw one row of four panels per target and write the PNG atomically."""
    import matplotlib  # loaded when a figure is drawn: the CLI starts without it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 4, figsize=(12, 3 * len(rows)), squeeze=False)
    for ax, row in zip(axes, rows, strict=True):
        e = row.extent
        ax[0].scatter(row.samples[:, 0], row.samples[:, 1], s=1, alpha=0.5, color="k")
        ax[0].set_xlim(-e, e)
        ax[0].set_ylim(-e, e)
        for a, key in zip(ax[1:], PANELS, strict=True):
            a.imshow(row.panels[key].numpy(), origin="lower", extent=(-e, e, -e, e), cmap="viridis")
        ax[0].set_ylabel(row.name)
        ax[3].set_title(row.caption, fontsize=9)
        for a in ax:
            a.set_aspect("equal")
            a.set_xticks([])
            a.set_yticks([])
    axes[0, 0].set_title("target samples")
    axes[0, 1].set_title(f"proposal pi(z) [{proposal_label}]")
    axes[0, 2].set_title("acceptance a(z)")
    fig.tight_layout()
    save_png(fig, out_png, dpi=100)


__all__ = ["PANELS", "Row", "grid_panels", "plot_rows"]
