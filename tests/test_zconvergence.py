"""Convergence curve of the Z estimate (Fig. A.2): exact prefixes of the batch partials,
the same streams as a shorter sequential run, and consistency with a closed-form Z."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from _helpers import GaussianAcceptance

from larsvae.distributions import StandardNormal
from larsvae.reports.zconvergence import convergence, plot_z_convergence
from larsvae.zestimate import ZEstimate, estimate_z

D = 3


ACC = GaussianAcceptance(0.8, 1.2)
BATCH = 4_000
NUM = 99 * BATCH + 2_000  # 100 batches, the last one half full (even: antithetic pairs)


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "antithetic"])
def est(request) -> ZEstimate:
    return estimate_z(ACC, StandardNormal(D), NUM, BATCH, antithetic=request.param, seed=11)


def test_last_point_is_the_full_estimate_exactly(est):
    c = convergence(est)
    assert {"samples", "mean", "stderr", "batches", "units"} <= c.keys()
    assert c["batches"][-1] == len(est.partials) == 100
    assert c["samples"][-1] == est.samples == NUM
    assert c["units"][-1] == est.n
    assert c["mean"][-1] == est.mean and c["stderr"][-1] == est.stderr  # bitwise


def test_grid_is_increasing_and_log_spaced(est):
    c = convergence(est, points=30)
    m = c["batches"]
    assert m[0] == 1 and m[-1] == 100 and len(m) <= 30
    assert np.all(np.diff(m) > 0) and np.all(np.diff(c["samples"]) > 0)
    assert c["samples"][0] == BATCH
    per_unit = 2 if est.antithetic else 1
    assert np.array_equal(c["samples"], np.minimum(m * BATCH, NUM))
    assert np.array_equal(c["units"] * per_unit, c["samples"])
    # Log-spaced: the ratios between neighbours are far more even than the differences.
    r = np.diff(np.log(m[m >= 10]))
    assert r.max() < 2.5 * r.min()
    # A grid finer than the batches gives every batch count once.
    assert np.array_equal(convergence(est, points=500)["batches"], np.arange(1, 101))


@pytest.mark.parametrize("m", [1, 7, 40, 99])
def test_point_at_m_batches_is_the_shorter_run_and_the_merge_of_its_batches(est, m):
    c = convergence(est, points=500)  # every m on the grid
    # A sequential run of m batches with the same seed draws the same streams...
    short = estimate_z(ACC, StandardNormal(D), m * BATCH, BATCH, antithetic=est.antithetic, seed=11)
    assert short.partials == est.partials[:m]
    # ...and the curve is what it printed, as is the merge of the first m one-batch shards.
    shards = [
        ZEstimate((p,), est.seed, est.batch_size, est.num_samples, est.antithetic)
        for p in est.partials[:m]
    ]
    merged = ZEstimate.merge(shards[::-1])
    for e in (short, merged):
        assert c["mean"][m - 1] == e.mean and c["stderr"][m - 1] == e.stderr
        assert c["samples"][m - 1] == e.samples


def test_curve_agrees_with_closed_form_z(est):
    """Statistical: the running estimate stays within a few of its own SE of the true Z, and
    the SE is sd / sqrt(units) of the closed form (an antithetic pair of this symmetric
    a(z) is one unit: counting samples instead would shrink the SE by sqrt 2)."""
    z_true, var_true = ACC.closed_form(D)
    c = convergence(est)
    t = (c["mean"] - z_true) / c["stderr"]
    assert np.all(np.abs(t) < 4.5), t
    assert np.mean(t**2) < 6.0  # cumulative points are correlated; E[t^2] = 1 at each
    want = np.sqrt(var_true / c["units"])
    big = c["units"] >= 40_000  # enough units for a ~1 % SE of the SE
    assert big.sum() >= 5
    np.testing.assert_allclose(c["stderr"][big], want[big], rtol=0.05)
    # Z_S converges: the error at the end is well below the first batch's SE.
    assert abs(c["mean"][-1] - z_true) < c["stderr"][0]


def test_curve_from_the_json_round_trip(est, tmp_path):
    """z.json stores partials as float.hex: the curve from the file is the same bits."""
    back = ZEstimate.from_dict(json.loads(json.dumps(est.to_dict())))
    a, b = convergence(est), convergence(back)
    for k in a:
        assert np.array_equal(a[k], b[k], equal_nan=True), k


def test_rejects_gaps_and_empty_estimates(est):
    gappy = ZEstimate(
        est.partials[:3] + est.partials[4:], est.seed, BATCH, est.num_samples, est.antithetic
    )
    with pytest.raises(ValueError, match="gaps"):
        convergence(gappy)
    with pytest.raises(ValueError, match="no batches"):
        convergence(ZEstimate((), est.seed, BATCH, est.num_samples, est.antithetic))
    with pytest.raises(ValueError, match="points"):
        convergence(est, points=0)
    # A shard (consecutive batches that do not start at 0) is a valid running estimate.
    shard = ZEstimate(est.partials[50:], est.seed, BATCH, est.num_samples, est.antithetic)
    c = convergence(shard)
    assert c["mean"][-1] == shard.mean and c["samples"][0] == BATCH


def test_plot_writes_one_png_and_nothing_else(est, tmp_path):
    other = estimate_z(GaussianAcceptance(0.3, 0.8), StandardNormal(D), 40 * BATCH, BATCH, seed=3)
    out = tmp_path / "fig" / "z_convergence.png"
    plot_z_convergence({"LARS joint": est, "LARS post-hoc": other}, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(out.parent) == ["z_convergence.png"]
    with pytest.raises(ValueError, match="no curves"):
        plot_z_convergence({}, tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()
