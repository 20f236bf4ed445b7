"""Figures D.5-D.9: samples ranked by the learned acceptance, drawn, and the whole ranking
job for one checkpoint.

Reference: M. Bauer and A. Mnih, "Resampled Priors for Variational Autoencoders",
AISTATS 2019 (arXiv:1810.11428), Appendix D. The scores come from the library
(:mod:`larsvae.ranking` for a(z) of the latent proposal,
:func:`larsvae.models.resampled_outputs.rank_outputs` for a(x) of decoded samples); this
module only draws and writes them:

    plot_grids(r, "grid.png")               # k highest / k random / k lowest a(z)
    plot_sorted_acceptance(r, "acc.png")    # sorted a(z), log axis
    rank_checkpoint(ckpt, out_dir)          # Figs. D.5-D.8 for one checkpoint (pipeline / CLI)
    write_output_ranking(model, out_dir)    # Fig. D.9 for a model with resampled outputs
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import memory
from ..checkpoint import load_checkpoint, model_from_checkpoint
from ..models.resampled_outputs import ResampledOutputsVAE, rank_outputs
from ..ranking import (
    PANEL_TAG,
    PathLike,
    Ranked,
    accept_mask,
    acceptance_stats,
    at_least,
    generator,
    log_mean,
    log_median,
    rank_samples,
    save_samples,
)
from ..utils import UserError, atomic_write_text, choose_device, file_sha256
from .figures import save_png

#: file names written by :func:`rank_checkpoint` inside ``out_dir``
OUTPUTS = ("grid.png", "acceptance.png", "samples.npz", "summary.json")
_LN10 = math.log(10.0)
#: below this log a(z), exp() loses precision (subnormals) and then gives 0
_LOG_A_PLOTTABLE = -700.0


def panel_indices(r: Ranked, k: int, seed: int) -> dict[str, np.ndarray]:
    """Sample indices of the three panels of :func:`plot_grids`, each sorted by decreasing a(z).

    ``highest``: the k largest a(z); ``random``: k drawn without replacement from all n
    (``derive_seed(seed, PANEL_TAG)``); ``lowest``: the k smallest. k is capped at n.
    """
    k = min(int(k), r.n)
    order = r.order()
    perm = torch.randperm(r.n, generator=generator(seed, PANEL_TAG, "cpu")).numpy()
    rand = perm[:k]
    rand = rand[np.argsort(-r.log_a[rand], kind="stable")]
    return {"highest": order[:k], "random": rand, "lowest": order[r.n - k :]}


def format_a(log_a: float) -> str:
    """a = exp(log_a) as text, also far below float64's range: -184.2 -> '1.07e-80'."""
    if not math.isfinite(log_a):
        return "0" if log_a < 0 else str(log_a)
    e10 = log_a / _LN10
    exponent = math.floor(e10)
    mantissa = 10.0 ** (e10 - exponent)
    if mantissa >= 9.995:  # rounding would print '10.00'
        mantissa, exponent = 1.0, exponent + 1
    return f"{mantissa:.2f}e{exponent:+03d}"


def _mosaic(x: np.ndarray, pad: int = 2) -> np.ndarray:
    """(k, 784) images -> one (H, W) array, row-major on a ceil(sqrt(k)) square, white gaps."""
    k = x.shape[0]
    side = max(1, math.ceil(math.sqrt(k)))
    cell = 28 + pad
    out = np.ones((side * cell + pad, side * cell + pad), dtype=np.float32)
    for i in range(k):
        row, col = divmod(i, side)
        y0, x0 = pad + row * cell, pad + col * cell
        out[y0 : y0 + 28, x0 : x0 + 28] = x[i].reshape(28, 28)
    return out


#: what a ranking scores: the proposal's latents (Figs. D.5-D.8) by default
PROPOSAL_SAMPLES = (
    "z",
    "Decoded proposal samples z ~ pi ranked by a(z)",
    "proposal samples z ~ pi",
    "Bernoulli means of p(x|z)",
)


def plot_grids(
    r: Ranked,
    out_png: PathLike,
    k: int = 25,
    seed: int = 0,
    scored: tuple[str, str, str, str] = PROPOSAL_SAMPLES,
) -> None:
    """Three image grids side by side: the k highest a(z), k random, the k lowest.

    Each grid reads row-major in decreasing a(z); its title gives the a(z) range it spans.
    Pixels are ``r.x`` (0 black, 1 white; white gaps between images): for proposal samples
    the decoder's Bernoulli means. Panels are chosen by :func:`panel_indices`. ``scored``:
    (the acceptance's variable, the title, the samples' name, what the pixels are), e.g.
    the resampled outputs' ("x", ...) for Fig. D.9. Written atomically
    (``larsvae.reports.figures.save_png``).
    """
    var, title, _, pixels = scored
    import matplotlib  # imported when a figure is drawn: the CLI starts without it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = panel_indices(r, k, seed)
    a = f"a({var})"
    titles = {"highest": f"highest {a}", "random": "random", "lowest": f"lowest {a}"}
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.8), layout="constrained")
    for ax, (name, idx) in zip(axes, panels.items(), strict=True):
        lo, hi = r.log_a[idx].min(), r.log_a[idx].max()
        ax.imshow(_mosaic(r.x[idx]), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"{len(idx)} {titles[name]}\n{a} in [{format_a(lo)}, {format_a(hi)}]")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"row-major, {a} decreasing")
    fig.suptitle(f"{title} (n = {r.n}, seed {r.seed}): {pixels}")
    save_png(fig, out_png, dpi=110)


def plot_sorted_acceptance(
    r: Ranked, out_png: PathLike, scored: tuple[str, str, str, str] = PROPOSAL_SAMPLES
) -> None:
    """a(z) of all n samples in decreasing order against their rank, on a log axis.

    If some a(z) lies below float64's range (a = 0 after exp), log10 a(z) is plotted on a
    linear axis with 10^k tick labels instead, so those samples are still drawn. The dashed
    line is the mean a(z), the Monte Carlo estimate of Z (Eq. 2). ``scored`` as for
    :func:`plot_grids`.
    """
    var, _, samples, _ = scored
    a = f"a({var})"
    import matplotlib  # imported when a figure is drawn: the CLI starts without it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    log_y = np.sort(r.log_a)[::-1]
    log_z = log_mean(r.log_a)
    rank = np.arange(1, r.n + 1)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    mean = f"mean {a} = {format_a(log_z)}"
    if log_y[-1] > _LOG_A_PLOTTABLE:  # every a(z) is a float64 > 0: a plain log axis
        ax.plot(rank, np.exp(log_y), lw=1.2, label=f"{a}, sorted")
        ax.axhline(math.exp(log_z), color="C3", ls="--", lw=1, label=mean)
        ax.set_yscale("log")
    else:  # log10 a(z) on a linear axis labelled 10^k: no underflow to 0
        ax.plot(rank, log_y / _LN10, lw=1.2, label=f"{a}, sorted")
        ax.axhline(log_z / _LN10, color="C3", ls="--", lw=1, label=mean)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"$10^{{{int(round(v))}}}$"))
    ax.set_xlabel(f"rank (1 = highest {a})")
    ax.set_ylabel(f"acceptance probability {a} (log scale)")
    ax.set_title(
        f"{a} of n = {r.n} {samples}\n"
        f"min {format_a(r.log_a.min())}, median {format_a(log_median(r.log_a))}, "
        f"max {format_a(r.log_a.max())}",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_png(fig, out_png, dpi=110)


def _check_threshold(threshold: float | None) -> None:
    if threshold is None:
        return
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not (0.0 <= threshold <= 1.0)
    ):
        raise UserError(f"--threshold: expected a number in [0, 1], got {threshold!r}")


def rank_checkpoint(
    checkpoint: PathLike,
    out_dir: PathLike,
    *,
    n: int = 10_000,
    seed: int = 0,
    threshold: float | None = None,
    accepted_only: bool = False,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """The whole ranking job for one LARS checkpoint (Appendix D, Figs. D.5-D.8).

    Writes into ``out_dir``: ``samples.npz`` (:func:`save_samples`, filtered by
    ``threshold`` and, with ``accepted_only``, by :func:`accept_mask`), ``grid.png``,
    ``acceptance.png`` (always of all n samples) and last ``summary.json``, which is also
    returned. Every file is written atomically. Inputs are checked before anything is
    written: a missing/corrupt checkpoint or a non-LARS prior raises a one-line
    :class:`~larsvae.utils.UserError` naming the file.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"--n: expected an integer >= 1, got {n!r}")
    _check_threshold(threshold)
    dev = choose_device(device) if isinstance(device, str) else torch.device(device)
    ckpt = load_checkpoint(checkpoint)
    memory.check_load(ckpt, checkpoint, dev)
    model = model_from_checkpoint(ckpt, checkpoint, dev)
    meta = ckpt["meta"]
    if not meta.is_lars:
        raise UserError(
            f"--checkpoint {checkpoint}: prior {meta.prior!r} has no acceptance "
            f"function a(z) to rank by (expected a LARS or post-hoc LARS model)"
        )
    r = rank_samples(model, n, seed)
    mask = accept_mask(r, seed)
    out = Path(out_dir)
    n_kept = save_samples(
        r, out / "samples.npz", threshold=threshold, accepted=mask if accepted_only else None
    )
    plot_grids(r, out / "grid.png", seed=seed)
    plot_sorted_acceptance(r, out / "acceptance.png")

    log_a_mean = log_mean(r.log_a)
    above = None if threshold is None else float(at_least(r, threshold).mean())
    summary: dict[str, Any] = {
        "dataset": meta.dataset,
        "arch": meta.arch,
        "prior": meta.prior,
        "mode": meta.mode,
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "n": n,
        "seed": seed,
        "device": str(dev),
        "proposal": type(model.top_prior.proposal).__name__,
        **acceptance_stats(r),
        "log_a_mean": log_a_mean,
        "threshold": threshold,
        "fraction_above_threshold": above,
        "accepted_fraction": float(mask.mean()),
        "accepted_only": bool(accepted_only),
        "n_kept": n_kept,
        "files": {name: str(out / name) for name in OUTPUTS},
    }
    atomic_write_text(
        out / "summary.json", json.dumps(summary, indent=2, sort_keys=True, allow_nan=True) + "\n"
    )
    return summary


#: what Fig. D.9 ranks (:func:`plot_grids` / :func:`plot_sorted_acceptance`)
DECODED_SAMPLES = (
    "x",
    "Binary samples x ~ pi(x) of the VAE ranked by the output acceptance a(x)",
    "decoded samples x ~ pi(x)",
    "the binary images a(x) scored",
)


def write_output_ranking(
    model: ResampledOutputsVAE,
    out_dir,
    *,
    n: int = 10_000,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole Fig. D.9 job for a loaded model: ``grid.png``, ``acceptance.png``,
    ``samples.npz`` (:func:`larsvae.ranking.save_samples`, rank order) and last
    ``summary.json`` in ``out_dir`` (the names of :data:`OUTPUTS`), all atomic.
    ``extra`` (e.g. dataset, arch, checkpoint) is merged into the summary, returned too."""
    r = rank_outputs(model, n, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_samples(r, out / "samples.npz")
    plot_grids(r, out / "grid.png", seed=seed, scored=DECODED_SAMPLES)  # Fig. D.9, left
    plot_sorted_acceptance(r, out / "acceptance.png", scored=DECODED_SAMPLES)  # right
    summary: dict[str, Any] = {
        **(extra or {}),
        "n": n,
        "seed": seed,
        "scored": "binary decoded samples x ~ pi(x)",
        **acceptance_stats(r),  # a_mean: the Monte Carlo estimate of Z = E_pi[a(x)]
        "files": {name: str(out / name) for name in ("grid.png", "acceptance.png", "samples.npz")},
    }
    atomic_write_text(
        out / "summary.json", json.dumps(summary, indent=2, sort_keys=True, allow_nan=True) + "\n"
    )
    return summary


__all__ = [
    "DECODED_SAMPLES",
    "OUTPUTS",
    "PROPOSAL_SAMPLES",
    "format_a",
    "panel_indices",
    "plot_grids",
    "plot_sorted_acceptance",
    "rank_checkpoint",
    "write_output_ranking",
]
