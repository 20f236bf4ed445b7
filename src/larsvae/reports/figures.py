"""Training-curve figure from the ``curve.tsv`` files ``larsvae train`` writes."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

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


def plot_training_curves(spec: dict[str, Any], out: str | Path, root: str | Path = ".") -> None:
    """One panel per quantity (-ELBO, KL, log Z), one line per cell and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("neg_elbo", "-ELBO (nats, training batches)"),
        ("kl", "KL (nats)"),
        ("log_z", "log Z (running <Z>)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8))
    for i, c in enumerate(spec["cells"]):  # one colour per cell across all panels
        curve = read_curve(Path(root) / c["curve"])
        if "step" not in curve:
            continue
        label = f"{c['dataset']}/{c['arch']}/{c['prior']}/{c['mode']}/seed{c['seed']}"
        for ax, (key, _) in zip(axes, panels, strict=True):
            if key in curve and any(v == v for v in curve[key]):  # skip all-NaN columns
                ax.plot(curve["step"], curve[key], label=label, lw=1, color=f"C{i % 10}")
    for ax, (_, title) in zip(axes, panels, strict=True):
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Training curves, budget '{spec['name']}'")
    fig.tight_layout()
    save_png(fig, out, dpi=110)


def save_png(fig: Any, out: str | Path, dpi: int) -> None:
    """Write a matplotlib figure as PNG to ``out`` atomically (a half-written figure never
    appears under the final name) and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_write(out, "wb") as fh:
            fig.savefig(fh, dpi=dpi, format="png")
    finally:
        plt.close(fig)
