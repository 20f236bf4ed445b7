"""Training-curve figure from the ``curve.tsv`` files ``larsvae train`` writes, and the
atomic PNG writer the other figures share."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..utils import atomic_write


def read_curve(path: str | Path) -> dict[str, list[float]]:
    """TSV with a header row -> {column: values} (floats; 'nan' allowed)."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    if not rows:
        return {}
    cols = rows[0]
    data: dict[str, list[float]] = {c: [] for c in cols}
    for r in rows[1:]:
        for c, v in zip(cols, r, strict=False):
            data[c].append(float(v))
    return data


#: (column, panel title, y label); a panel is drawn when some cell has finite values in it.
PANELS = (
    ("neg_elbo", "-ELBO (training batches)", "-ELBO (nats)"),
    ("valid_nll", "validation NLL", "NLL (nats)"),
    ("kl", "KL", "KL (nats)"),
    ("log_z", "log Z (running <Z>)", "log Z"),
)
#: Fraction of each run (by steps) that the main view shows: the first quarter is the
#: initial drop of hundreds of nats, which would otherwise set the y-range.
TAIL = 0.75


def _finite_xy(steps: Any, values: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(steps, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


def smooth(values: Any, frac: float = 0.02) -> np.ndarray:
    """Centred moving average over ``frac`` of the points (an odd window; the window shrinks
    at the ends, so no point is invented): the training -ELBO is a per-window batch mean
    whose noise hides differences of a nat or less."""
    y = np.asarray(values, dtype=np.float64)
    h = int(frac * y.size) // 2
    if h == 0:
        return y.copy()
    c = np.concatenate([[0.0], np.cumsum(y)])
    i = np.arange(y.size)
    lo, hi = np.maximum(i - h, 0), np.minimum(i + h + 1, y.size)
    return (c[hi] - c[lo]) / (hi - lo)


def converged_view(
    series: list[tuple[Any, Any]],
    tail: float = TAIL,
    quantiles: tuple[float, float] = (0.01, 0.99),
    pad: float = 0.08,
) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """Axis limits ``((x0, x1), (y0, y1))`` that show the converged part of some curves.

    Each series ``(steps, values)`` contributes its last ``tail`` fraction of steps (its own
    range, so a run that stopped early still counts); the y-range spans the lowest lower
    and the highest upper ``quantiles`` of those parts over all series, widened by ``pad``
    of the span on both sides; the x-range runs from the earliest tail start to the last
    step. Non-finite points are ignored; ``None`` when no series has a finite point.
    """
    if not 0.0 < tail <= 1.0:
        raise ValueError(f"tail: expected a fraction in (0, 1], got {tail!r}")
    x0, x1, y0, y1 = math.inf, -math.inf, math.inf, -math.inf
    for steps, values in series:
        x, y = _finite_xy(steps, values)
        if x.size == 0:
            continue
        start = x.min() + (1.0 - tail) * (x.max() - x.min())
        part = y[x >= start]
        x0, x1 = min(x0, start), max(x1, x.max())
        y0 = min(y0, float(np.quantile(part, quantiles[0])))
        y1 = max(y1, float(np.quantile(part, quantiles[1])))
    if not math.isfinite(x0):
        return None
    # A flat curve (e.g. a fixed log Z) gets a span of 1e-3 of its size: rounding noise of
    # the smoothing must not fill the panel.
    mid = 0.5 * (y0 + y1)
    half = max(0.5 * (y1 - y0), 5e-4 * max(1.0, abs(mid))) * (1.0 + 2.0 * pad)
    if x1 <= x0:  # a single step
        x0, x1 = x0 - 0.5, x1 + 0.5
    return (float(x0), float(x1)), (mid - half, mid + half)


def plot_training_curves(
    spec: dict[str, Any], out: str | Path, root: str | Path = "."
) -> dict[str, dict[str, tuple[float, float]]]:
    """Training curves of a budget: one column per quantity (-ELBO, validation NLL, KL,
    log Z), one colour per cell and seed.

    Top row (main view): the last ``TAIL`` of each run, raw values faint and a
    :func:`smooth` line on top, y-range from :func:`converged_view` of the smoothed lines,
    so that differences of a nat between converged models are visible. Bottom row: the
    whole run on a log step axis (the initial drop), the main view's steps shaded.

    Returns ``{column: {"xlim": ..., "ylim": ...}}``, the main views' axis limits as drawn.
    """
    import matplotlib  # loaded when a figure is drawn: the CLI starts without it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = []  # (label, colour, curve) of the cells that have a curve
    for i, c in enumerate(spec["cells"]):  # one colour per cell across all panels
        curve = read_curve(Path(root) / c["curve"])
        if "step" in curve:
            label = f"{c['dataset']}/{c['arch']}/{c['prior']}/{c['mode']}/seed{c['seed']}"
            cells.append((label, f"C{i % 10}", curve))
    series = {  # column -> [(label, colour, steps, values)], finite points only
        key: [
            (label, color, *_finite_xy(curve["step"], curve[key]))
            for label, color, curve in cells
            if key in curve
        ]
        for key, _, _ in PANELS
    }
    panels = [p for p in PANELS if p[0] == "neg_elbo" or any(s[2].size for s in series[p[0]])]

    fig, axes = plt.subplots(
        2,
        len(panels),
        figsize=(4.8 * len(panels), 6.6),
        gridspec_kw={"height_ratios": [2, 1]},
        squeeze=False,
    )
    limits: dict[str, dict[str, tuple[float, float]]] = {}
    for j, (key, title, ylabel) in enumerate(panels):
        main, whole = axes[0, j], axes[1, j]
        smoothed = []
        for label, color, x, y in series[key]:
            if x.size == 0:
                continue
            ys = smooth(y)
            smoothed.append((x, ys))
            main.plot(x, y, color=color, lw=0.5, alpha=0.2)
            main.plot(x, ys, color=color, lw=1.4, label=label)
            pos = x > 0  # a log axis cannot show step 0
            whole.plot(x[pos], y[pos], color=color, lw=0.8)
        view = converged_view(smoothed)
        if view is not None:
            (x0, x1), (y0, y1) = view
            main.set_xlim(x0, x1)
            main.set_ylim(y0, y1)
            whole.axvspan(max(x0, 1.0), x1, color="0.85", zorder=0)  # the main view
            whole.set_xscale("log")
        else:
            main.text(0.5, 0.5, "no data", transform=main.transAxes, ha="center")
        limits[key] = {
            "xlim": tuple(float(v) for v in main.get_xlim()),
            "ylim": tuple(float(v) for v in main.get_ylim()),
        }
        main.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        main.ticklabel_format(axis="y", useOffset=False)
        main.set_title(f"{title}: last {TAIL:.0%} of each run")
        whole.set_title(f"{title}: whole run")
        for ax in (main, whole):
            ax.set_xlabel("iteration")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"Training curves, budget '{spec['name']}' (smoothed: moving average)")
    fig.tight_layout()
    save_png(fig, out, dpi=110)
    return limits


def save_png(fig: Any, out: str | Path, dpi: int) -> None:
    """Write a matplotlib figure as PNG to ``out`` atomically (a half-written figure never
    appears under the final name) and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_write(out, "wb") as fh:
            fig.savefig(fh, dpi=dpi, format="png")
    finally:
        plt.close(fig)
