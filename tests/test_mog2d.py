"""Figure 2 / D.3 / D.4 (larsvae.toy2d.mog): the calibrated 2-D mixture, the KL(q || p)
estimators and the experiment's entry point."""

from __future__ import annotations

import math

import pytest
import torch

from larsvae.config import ConfigError
from larsvae.distributions import AcceptanceMLP, ResampledPrior, StandardNormal
from larsvae.toy2d import mog
from larsvae.toy2d.mog import (
    KL_STANDARD_NORMAL,
    MODELS,
    RingMixture,
    kl_monte_carlo,
    kl_of_prior,
    kl_quadrature,
    kl_to_standard_normal,
    midpoint_grid,
    mog_experiment,
    paper_mixture,
)
from larsvae.utils import TMP_PREFIX, TrainingDiverged, UserError


def test_mixture_is_normalised_and_its_sampler_matches_its_moments():
    q = paper_mixture()
    grid, h = midpoint_grid(6.0, 600)
    dens = q.log_prob(grid).exp()
    assert dens.sum().item() * h * h == pytest.approx(1.0, abs=1e-9)

    x = q.sample(50_000, torch.Generator().manual_seed(0)).double()
    sq = x.pow(2).sum(-1)
    # E|z|^2 = r^2 + 2 std^2 and E z = 0, to 4 standard errors
    se = sq.std().item() / math.sqrt(x.shape[0])
    assert sq.mean().item() == pytest.approx(q.radius**2 + 2 * q.std**2, abs=4 * se)
    assert x.mean(0).abs().max().item() < 4 * x.std(0).max().item() / math.sqrt(x.shape[0])
    # every sample sits near one of the 8 modes, and they are equally used
    d = torch.cdist(x, q.centres())
    assert d.min(1).values.max().item() < 6 * q.std
    counts = torch.bincount(d.argmin(1), minlength=8).double()
    assert (counts / x.shape[0] - 1 / 8).abs().max().item() < 4 * math.sqrt(1 / 8 / x.shape[0])


def test_calibrated_kl_to_standard_normal_is_1_8():
    q = paper_mixture()
    assert q.radius > 6 * q.std  # the separated-modes branch, not a blob at the origin
    assert kl_to_standard_normal(q) == pytest.approx(KL_STANDARD_NORMAL, abs=1e-9)
    # independent check: midpoint quadrature on a grid
    grid, h = midpoint_grid(6.0, 600)
    kl_grid = kl_quadrature(q.log_prob(grid), StandardNormal(2).log_prob(grid), h)
    assert kl_grid == pytest.approx(KL_STANDARD_NORMAL, abs=1e-3)


def test_gauss_hermite_kl_against_closed_form():
    # radius 0: all modes coincide, q = N(0, s^2 I), KL = s^2 - 1 - 2 log s (d = 2)
    s = 0.4
    assert kl_to_standard_normal(RingMixture(8, 0.0, s)) == pytest.approx(
        s * s - 1 - 2 * math.log(s), abs=1e-10
    )


def test_kl_monte_carlo_analytic_cases():
    q = paper_mixture()
    x = q.sample(40_000, torch.Generator().manual_seed(1))
    lq = q.log_prob(x.double())
    same = kl_monte_carlo(lq, lq)
    assert same.kl == 0.0 and same.se == 0.0

    est = kl_of_prior(StandardNormal(2), q.log_prob, x)
    assert 0 < est.se < 0.05 and est.se_z == 0.0
    assert est.kl == pytest.approx(KL_STANDARD_NORMAL, abs=4 * est.se)

    with pytest.raises(ValueError, match="n >= 2"):
        kl_monte_carlo(lq[:1], lq[:1])


def _constant_lars(truncation: int | None) -> ResampledPrior:
    """LARS over N(0, I) with a(z) = 1/2 everywhere: p = N(0, I) for every T, Z = 1/2."""
    acc = AcceptanceMLP(2, (4,))
    with torch.no_grad():
        acc.net[-1].weight.zero_()
        acc.net[-1].bias.zero_()
    prior = ResampledPrior(StandardNormal(2), acc, truncation=truncation)
    prior.set_log_z(math.log(0.5))
    return prior


@pytest.mark.parametrize(
    ("truncation", "dkl_dz"),
    # dKL/dZ = -E_q[d log p / dZ] at Z = a: 1/Z for Eq. A.7, (1 - (1-a)^(T-1)) / a for Eq. A.14
    [(None, 2.0), (3, 1.5), (100, 2.0 * (1 - 0.5**99))],
)
def test_kl_of_lars_propagates_the_z_error(truncation, dkl_dz):
    q = paper_mixture()
    x = q.sample(20_000, torch.Generator().manual_seed(2))
    prior = _constant_lars(truncation)
    est = kl_of_prior(prior, q.log_prob, x, z_stderr=0.01)
    assert est.dkl_dz == pytest.approx(dkl_dz, rel=1e-6)
    assert est.se_z == pytest.approx(0.01 * dkl_dz, rel=1e-6)
    assert est.se == pytest.approx(math.hypot(est.se_mc, est.se_z))
    assert est.kl == pytest.approx(KL_STANDARD_NORMAL, abs=4 * est.se_mc)
    gauss = kl_of_prior(StandardNormal(2), q.log_prob, x)
    assert est.kl == pytest.approx(gauss.kl, abs=1e-5)  # same samples, same density


def test_a_wrong_z_shifts_the_kl_by_its_log_ratio():
    # T = inf: log p = log pi + log a - log Z, so installing Z' shifts KL by log(Z' / Z)
    q = paper_mixture()
    x = q.sample(5_000, torch.Generator().manual_seed(3))
    prior = _constant_lars(None)
    right = kl_of_prior(prior, q.log_prob, x).kl
    prior.set_log_z(math.log(0.25))
    assert kl_of_prior(prior, q.log_prob, x).kl == pytest.approx(right + math.log(0.5), abs=1e-5)


def test_valley_ratio_tells_separated_modes_from_a_blob():
    q = paper_mixture()
    assert mog._valley_ratio(lambda z: q.log_prob(z).exp(), q) < 0.05
    gauss = StandardNormal(2)
    assert mog._valley_ratio(lambda z: gauss.log_prob(z).exp(), q) > 1.0


@pytest.fixture
def small_grids(monkeypatch):
    """Coarser quadrature and plot grids: the fast runs test plumbing and determinism."""
    monkeypatch.setattr(mog, "_QUAD_N", 200)
    monkeypatch.setattr(mog, "_PLOT_N", 40)


def _run(tmp_path, name, seed=0, **kw):
    table, fig = tmp_path / name / "mog.md", tmp_path / name / "mog.png"
    args = dict(steps=3, seed=seed, z_samples=1 << 12, test_samples=2000, train_z_samples=64)
    summary = mog_experiment(table, fig, **{**args, **kw})
    return table, fig, summary


def test_fast_run_writes_table_and_figure_deterministically(tmp_path, small_grids):
    table, fig, summary = _run(tmp_path, "a")
    text = table.read_text()
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "steps=3" in text and "seed=0" in text and "S=4096" in text
    assert "| 0.68 |" in text and "| 1.8 |" in text
    assert set(summary) == {"gaussian", *(m.key for m in MODELS)}
    for m in MODELS:
        s = summary[m.key]
        assert f"| {m.label} | {s['kl']:.4f} | {s['kl_se']:.4f} |" in text
        assert s["kl_quad"] == pytest.approx(s["kl"], abs=5 * s["kl_se"] + 0.02)
        assert (s["Z"] is None) == (m.prior == "realnvp")
    assert summary["gaussian"]["kl_quad"] == pytest.approx(KL_STANDARD_NORMAL, abs=1e-3)
    assert text.count("| yes |") + text.count("| no |") == 8  # every claim is judged
    assert not list(tmp_path.rglob(TMP_PREFIX + "*"))

    table_b, _, _ = _run(tmp_path, "b")
    assert table_b.read_bytes() == table.read_bytes()


def test_bad_arguments_fail_before_training(tmp_path):
    ok = dict(steps=1, seed=0, z_samples=16, test_samples=16)
    with pytest.raises(UserError, match=r"\*\.png"):
        mog_experiment(tmp_path / "t.md", tmp_path / "f.pdf", **ok)
    with pytest.raises(UserError, match=r"\*\.md"):
        mog_experiment(tmp_path / "t.txt", tmp_path / "f.png", **ok)
    for key, bad in [("steps", 0), ("seed", -1), ("z_samples", 1), ("test_samples", 1.5)]:
        with pytest.raises(ConfigError, match=key):
            mog_experiment(tmp_path / "t.md", tmp_path / "f.png", **{**ok, key: bad})
    with pytest.raises(ConfigError, match="lr"):
        mog_experiment(tmp_path / "t.md", tmp_path / "f.png", **ok, lr=0.0)
    assert not list(tmp_path.iterdir())


def test_a_failed_fit_names_the_model_and_writes_nothing(tmp_path, monkeypatch):
    def diverge(*args, **kwargs):
        raise FloatingPointError("fit_density: non-finite loss nan at step 7")

    monkeypatch.setattr(mog, "fit_density", diverge)
    with pytest.raises(TrainingDiverged, match=r"MLP\[10\], T = 100.*step 7"):
        mog_experiment(
            tmp_path / "t.md", tmp_path / "f.png", steps=1, seed=0, z_samples=16, test_samples=16
        )
    assert not (tmp_path / "t.md").exists() and not (tmp_path / "f.png").exists()
