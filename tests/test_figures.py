"""Training-curve figure: the main view's y-range is set by the converged part of the runs,
so a 1-nat difference between models survives an initial drop of 300 nats."""

from __future__ import annotations

import os

import numpy as np
import pytest

from larsvae.reports.figures import converged_view, plot_training_curves, read_curve, smooth
from larsvae.train import CURVE_COLUMNS, write_curve_tsv

STEPS = np.arange(100, 100_001, 100)  # log_every = 100, 1000 rows


def synthetic_neg_elbo(end: float, seed: int, noise: float = 2.0) -> np.ndarray:
    """300 nats above ``end`` at step 0, within 0.01 nat of it after 10 % of the run, plus
    the batch noise of a training -ELBO."""
    rng = np.random.default_rng(seed)
    return end + 300.0 * np.exp(-STEPS / 2_000.0) + noise * rng.standard_normal(STEPS.size)


def test_converged_view_ignores_the_initial_drop():
    ends = (90.0, 91.0)
    series = [(STEPS, smooth(synthetic_neg_elbo(e, i))) for i, e in enumerate(ends)]
    assert np.ptp(np.concatenate([v for _, v in series])) > 200  # what autoscale would show
    (x0, x1), (y0, y1) = converged_view(series)
    assert y1 - y0 < 20
    assert y0 < min(ends) and max(ends) < y1
    assert (max(ends) - min(ends)) / (y1 - y0) > 0.1  # the 1-nat gap is a visible fraction
    assert x0 == pytest.approx(100 + 0.25 * (100_000 - 100)) and x1 == 100_000


def test_converged_view_is_robust_and_per_run():
    rng = np.random.default_rng(0)
    y = 50.0 + rng.standard_normal(STEPS.size)
    y[-300] = 1e4  # one diverged batch
    y[::7] = np.nan  # e.g. validation columns before the first evaluation
    (_, _), (y0, y1) = converged_view([(STEPS, y)])
    assert 40 < y0 < 50 < y1 < 60
    # A run that stopped early (at 20 % of the others) keeps its own converged part in view.
    short = STEPS[:200]
    (x0, _), (y0, y1) = converged_view([(STEPS, 50.0 + 0 * y), (short, 70.0 + 0 * short)])
    assert y0 < 50 and 70 < y1 and x0 == pytest.approx(short[0] + 0.25 * (short[-1] - short[0]))
    # Constant curves get a small non-empty range; no finite point at all gives None.
    (_, _), (y0, y1) = converged_view([(STEPS, np.full(STEPS.size, 3.0))])
    assert y0 < 3.0 < y1 and y1 - y0 < 0.1
    assert converged_view([(STEPS, np.full(STEPS.size, np.nan))]) is None
    assert converged_view([]) is None
    with pytest.raises(ValueError, match="tail"):
        converged_view([(STEPS, y)], tail=0.0)


def test_smooth_keeps_lines_and_reduces_noise():
    line = 3.0 * STEPS + 1.0
    s = smooth(line)
    assert s.shape == line.shape
    h = int(0.02 * STEPS.size) // 2
    np.testing.assert_allclose(s[h:-h], line[h:-h], rtol=1e-12)  # exact in the interior
    noise = np.random.default_rng(1).standard_normal(100_000)
    assert np.std(smooth(noise)) < 0.1  # window of 2001 points: sd ~ 1 / sqrt(2001)
    assert np.array_equal(smooth([1.0, 2.0]), [1.0, 2.0])  # too short to smooth


def _write_cell(root, name: str, end: float, seed: int, log_z: bool, valid: bool):
    neg_elbo = synthetic_neg_elbo(end, seed)
    kl = 20.0 + 5.0 * np.exp(-STEPS / 5_000.0) + 0.3 * seed
    rows = []
    for i, (t, ne, k) in enumerate(zip(STEPS, neg_elbo, kl, strict=True)):
        row = [int(t), ne, ne - k, k, ne, min(1.0, t / 10_000), 1e-3]
        row.append(-1.5 - 0.1 * seed if log_z else float("nan"))
        if valid:
            row.append(end + 2.0 + 100 * np.exp(-t / 2_000.0) if i >= 9 else float("nan"))
        rows.append(row)
    columns = list(CURVE_COLUMNS) + (["valid_nll"] if valid else [])
    write_curve_tsv(root / name / "curve.tsv", columns, rows)
    return {
        "curve": f"{name}/curve.tsv",
        "dataset": "dynamic_mnist",
        "arch": "vae",
        "prior": name,
        "mode": "joint",
        "seed": seed,
    }


def test_training_curves_figure_shows_a_one_nat_difference(tmp_path):
    cells = [
        _write_cell(tmp_path, "gaussian", 91.0, 0, log_z=False, valid=True),
        _write_cell(tmp_path, "lars", 90.0, 1, log_z=True, valid=True),
    ]
    assert list(read_curve(tmp_path / cells[0]["curve"])) == [*CURVE_COLUMNS, "valid_nll"]
    out = tmp_path / "report" / "training_curves.png"
    limits = plot_training_curves({"name": "test", "cells": cells}, out, tmp_path)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(out.parent) == ["training_curves.png"]
    assert list(limits) == ["neg_elbo", "valid_nll", "kl", "log_z"]
    y0, y1 = limits["neg_elbo"]["ylim"]
    assert y1 - y0 < 20 and y0 < 90.0 and 91.0 < y1
    y0, y1 = limits["valid_nll"]["ylim"]
    assert y1 - y0 < 5 and y0 < 92.0 and 93.0 < y1
    y0, y1 = limits["log_z"]["ylim"]  # only the LARS cell has a log Z
    assert y0 < -1.6 < y1 < 0


def test_training_curves_figure_drops_empty_panels(tmp_path):
    cells = [_write_cell(tmp_path, "gaussian", 91.0, 0, log_z=False, valid=False)]
    out = tmp_path / "curves.png"
    limits = plot_training_curves({"name": "test", "cells": cells}, out, tmp_path)
    assert list(limits) == ["neg_elbo", "kl"]
    assert out.read_bytes()[:4] == b"\x89PNG"
