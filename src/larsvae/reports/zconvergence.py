"""Convergence of the Monte Carlo estimate of Z (cf. Bauer & Mnih 2019, Fig. A.2).

The test log-likelihoods of a LARS prior need Z = E_pi[a(z)] (Eq. 2), estimated from
S = 1e10 proposal samples (Section 5, Appendix A.4). The reduced ``z.json`` that
:func:`larsvae.steps.reduce_z` writes keeps every batch's float64 sufficient statistics
(:class:`~larsvae.zestimate.BatchPartial`), so the whole path Z_S of the running estimate can
be recomputed from it exactly, without new evaluations of a(z) and without resampling.

Batch order is the order of the random streams: batch ``b`` draws from a generator seeded
with ``derive_seed(seed, Z_STREAM, b)`` whatever shard computed it, so the estimate after the
first m batches is the one a single sequential run over batches 0, 1, ..., m - 1 would have
printed, and it equals ``ZEstimate.merge`` of those batches bit for bit. The resolution of
the curve is one batch (``z_batch`` evaluations): within a batch only its sums are kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..zestimate import ZEstimate
from .figures import save_png


def _batch_grid(num_batches: int, points: int) -> np.ndarray:
    """Distinct batch counts m in [1, num_batches], roughly log-spaced, both ends included."""
    grid = np.geomspace(1, num_batches, num=max(2, points))
    return np.unique(np.rint(grid).astype(np.int64).clip(1, num_batches))


def convergence(est: ZEstimate, points: int = 60) -> dict[str, np.ndarray]:
    """The running estimate Z_S after the first m batches, on a log-spaced grid of m.

    Batches are taken in index order, i.e. the order of their (seed, batch)-derived random
    streams, so the curve is what a sequential estimator would have printed after each of
    those batches. Each point is the :class:`ZEstimate` of the first m batches' partials
    (exactly-rounded prefix sums, the same formula as the full estimate), so the last point
    is ``est.mean`` / ``est.stderr`` exactly and the point at m equals ``ZEstimate.merge`` of
    batches 0..m-1. An antithetic pair is one unit of the standard error and two samples.

    Args:
        est: a (normally complete, merged) estimate; its batch indices must be contiguous
            (a shard's range is fine: its curve then starts at its first batch).
        points: at most this many grid points (fewer when there are fewer batches).

    Returns:
        numpy arrays of one length: ``batches`` (m), ``samples`` (S: a(z) evaluations in
        the first m batches, int64), ``units`` (i.i.d. units behind the SE, int64), ``mean``
        (Z_S) and ``stderr`` (its standard error, float64; NaN from a single unit).
    """
    if isinstance(points, bool) or not isinstance(points, int) or points < 1:
        raise ValueError(f"points: expected an integer >= 1, got {points!r}")
    parts = est.partials  # sorted by batch index
    if not parts:
        raise ValueError("convergence: the estimate holds no batches")
    idx = [p.index for p in parts]
    if idx != list(range(idx[0], idx[0] + len(idx))):
        raise ValueError(
            f"convergence: batch indices {idx[0]}..{idx[-1]} have gaps ({len(idx)} batches); "
            "a running estimate needs consecutive batches"
        )
    ms = _batch_grid(len(parts), points) if points > 1 else np.array([len(parts)])
    prefixes = [
        ZEstimate(parts[:m], est.seed, est.batch_size, est.num_samples, est.antithetic)
        for m in ms.tolist()
    ]
    return {
        "batches": ms,
        "samples": np.array([e.samples for e in prefixes], dtype=np.int64),
        "units": np.array([e.n for e in prefixes], dtype=np.int64),
        "mean": np.array([e.mean for e in prefixes], dtype=np.float64),
        "stderr": np.array([e.stderr for e in prefixes], dtype=np.float64),
    }


def plot_z_convergence(
    curves: Mapping[str, ZEstimate], out_png: str | Path, points: int = 60
) -> None:
    """Z_S against S (log x) with a +-2 SE band, one panel per label (e.g. 'LARS joint',
    'LARS post-hoc'), each with its own y scale so that its band stays legible; the final
    estimate is drawn as a dashed line and written in the panel. Saved atomically."""
    if not curves:
        raise ValueError("plot_z_convergence: no curves given")
    import matplotlib  # loaded when a figure is drawn: the CLI starts without it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(curves), 1, figsize=(7.0, 2.6 * len(curves) + 0.8), sharex=True, squeeze=False
    )
    for i, (ax, (label, est)) in enumerate(zip(axes[:, 0], curves.items(), strict=True)):
        c = convergence(est, points)
        color = f"C{i % 10}"
        band = 2.0 * np.nan_to_num(c["stderr"], nan=0.0)
        ax.fill_between(
            c["samples"],
            c["mean"] - band,
            c["mean"] + band,
            color=color,
            alpha=0.25,
            lw=0,
            label="±2 SE",
        )
        ax.plot(c["samples"], c["mean"], color=color, lw=1.3, marker=".", ms=3, label=label)
        ax.axhline(est.mean, color=color, ls="--", lw=0.8)
        unit = "antithetic pairs" if est.antithetic else "samples"
        ax.text(
            0.98,
            0.95,
            f"final Z = {est.mean:.7g} ± {est.stderr:.2g} (1 SE)\n"
            f"log Z = {est.log_mean:.6f}, S = {est.samples:.3g} ({est.n:.3g} {unit})",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=8,
            bbox={"boxstyle": "round", "fc": "white", "alpha": 0.8, "lw": 0.5},
        )
        ax.set_xscale("log")
        ax.set_ylabel("$Z_S$ (running estimate of Z)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="lower right", fontsize=8)
    axes[-1, 0].set_xlabel("$S$ (proposal samples: evaluations of a(z))")
    fig.suptitle("Convergence of the Z estimate (cf. Fig. A.2)")
    fig.tight_layout()
    save_png(fig, out_png, dpi=110)


__all__ = ["convergence", "plot_z_convergence"]
