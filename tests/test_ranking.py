"""Ranking proposal samples by a(z) (larsvae.ranking; paper Appendix D, Figs. D.5-D.8).

The checkpoints are tiny VAEs whose acceptance network is set by hand to a known function
of z_1, logit(z) = A tanh(c z_1) + B (one hidden tanh unit), so log a(z), Z = E_pi[a(z)]
(Eq. 2, by Gauss-Hermite quadrature) and the accepted distribution are known exactly.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import SMALL_MODEL
from scipy import stats

from larsvae import ranking
from larsvae.checkpoint import load_model, save_checkpoint
from larsvae.config import model_config, to_dict
from larsvae.models import build_model
from larsvae.reports import acceptance
from larsvae.utils import UserError, file_sha256

pytestmark = pytest.mark.usefixtures("single_thread")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: logit = A tanh(c z_1) + B: a(z) in (0.007, 0.95), Z about 0.4
MODERATE = (4.0, 1.0, -1.0)
#: logit in (-250, -50): most a(z) far below 1e-45 (float32's smallest subnormal)
DEEP = (100.0, 0.5, -150.0)


def closed_form_log_a(z: np.ndarray, acc: tuple[float, float, float]) -> np.ndarray:
    A, c, B = acc
    logit = A * np.tanh(c * z[:, 0].astype(np.float64)) + B
    return -np.logaddexp(0.0, -logit)  # log sigmoid, float64


def quadrature_z(acc: tuple[float, float, float]) -> float:
    """Z = E_{z_1 ~ N(0,1)}[sigmoid(A tanh(c z_1) + B)] by 200-node Gauss-Hermite (Eq. 2)."""
    x, w = np.polynomial.hermite_e.hermegauss(200)
    A, c, B = acc
    return float(np.sum(w / (1.0 + np.exp(-(A * np.tanh(c * x) + B)))) / math.sqrt(2 * math.pi))


def write_checkpoint(path, prior="lars", acc=MODERATE, **model):
    """A 'final' checkpoint of an untrained tiny VAE; LARS priors get the acceptance ``acc``."""
    cfg = model_config(SMALL_MODEL | {"acceptance_hidden": [1], "truncation": None} | model)
    torch.manual_seed(0)
    m = build_model("vae", prior, cfg)
    state = m.state_dict()
    if prior != "gaussian":
        A, c, B = acc
        d = cfg.latent_dim
        state["top_prior.acceptance.net.0.weight"] = torch.tensor([[c] + [0.0] * (d - 1)])
        state["top_prior.acceptance.net.0.bias"] = torch.zeros(1)
        state["top_prior.acceptance.net.2.weight"] = torch.tensor([[A]])
        state["top_prior.acceptance.net.2.bias"] = torch.tensor([B])
    meta = {
        "arch": "vae",
        "prior": prior,
        "mode": "standard",
        "dataset": "synthetic",
        "seed": 0,
        "model_config": to_dict(cfg),
    }
    save_checkpoint(
        {"kind": "final", "version": "test", "meta": meta, "model": state, "step": 0}, path
    )
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranking")
    return {
        "moderate": write_checkpoint(root / "moderate" / "model.pt"),
        "deep": write_checkpoint(root / "deep" / "model.pt", acc=DEEP),
        "deep_realnvp": write_checkpoint(
            root / "deep_realnvp" / "model.pt", prior="lars_realnvp", acc=DEEP
        ),
        "gaussian": write_checkpoint(root / "gaussian" / "model.pt", prior="gaussian"),
    }


@pytest.fixture(scope="module")
def moderate(ckpts):
    model, _ = load_model(ckpts["moderate"])
    return model, ranking.rank_samples(model, 20_000, seed=7)


def test_order_is_by_a_exactly_and_panels_pick_the_extremes(moderate):
    _, r = moderate
    o = r.order()
    assert sorted(o.tolist()) == list(range(r.n))
    assert np.all(np.diff(r.log_a[o]) <= 0)
    assert np.array_equal(r.rank()[o], np.arange(r.n))
    # the closed form ranks the samples the same way (a(z) is monotone in z_1 here)
    assert np.array_equal(np.argsort(-closed_form_log_a(r.z, MODERATE), kind="stable"), o)
    p = acceptance.panel_indices(r, 25, seed=7)
    assert set(p["highest"]) == set(o[:25]) and set(p["lowest"]) == set(o[-25:])
    assert len(set(p["random"])) == 25
    for idx in p.values():
        assert np.all(np.diff(r.log_a[idx]) <= 0)
    # the random panel is a uniform draw: its mean rank is ~ (n - 1) / 2 (sd n / sqrt(12 k))
    assert abs(r.rank()[p["random"]].mean() - (r.n - 1) / 2) < 4 * r.n / math.sqrt(12 * 25)


@pytest.mark.parametrize("name", ["deep", "deep_realnvp"])
def test_log_a_matches_the_closed_form_far_below_1e45(ckpts, name):
    model, _ = load_model(ckpts[name])
    r = ranking.rank_samples(model, 4000, seed=1)
    assert r.log_a.dtype == np.float64 and r.x.dtype == np.float32 and r.x.shape == (4000, 784)
    expected = closed_form_log_a(r.z, DEEP)
    np.testing.assert_allclose(r.log_a, expected, rtol=1e-12, atol=0)
    tiny = r.a < 1e-45
    assert tiny.mean() > 0.5  # the test exercises the range float32 would flush to zero
    assert np.all(r.a[tiny] > 0)  # ... and float64 keeps them (log a > -250 >> -745)
    assert r.log_a.min() < math.log(1e-80)
    # the decoded images are the model's: x = decode(z)
    with torch.no_grad():
        x = model.decode(torch.from_numpy(np.array(r.z[:50]))).numpy()
    np.testing.assert_allclose(r.x[:50], x, rtol=0, atol=1e-6)


def test_samples_come_from_the_proposal_not_the_lars_sampler(moderate):
    model, r = moderate
    assert stats.kstest(r.z[:, 0], "norm").pvalue > 1e-3  # pi = N(0, I)
    assert stats.kstest(r.z[:, 3], "norm").pvalue > 1e-3
    # power: the LARS sampler's z_1 is far from N(0, 1) with this a(z)
    g = torch.Generator().manual_seed(0)
    lars = model.top_prior.sample(5000, generator=g).numpy()
    assert stats.kstest(lars[:, 0], "norm").pvalue < 1e-10


def test_mean_a_and_accept_mask_estimate_z_and_keep_the_lars_prior(moderate):
    model, r = moderate
    z_true = quadrature_z(MODERATE)
    assert 0.2 < z_true < 0.6
    a = r.a
    assert abs(a.mean() - z_true) < 4 * a.std() / math.sqrt(r.n)  # Eq. 2, Monte Carlo
    mask = ranking.accept_mask(r, seed=7)
    assert mask.dtype == np.bool_ and mask.shape == (r.n,)
    # each sample kept with probability a(z): unconditionally Bernoulli(Z)
    assert abs(mask.mean() - z_true) < 4 * math.sqrt(z_true * (1 - z_true) / r.n)
    # and conditionally on a: fraction kept among the top and bottom halves
    half = r.order()[: r.n // 2], r.order()[r.n // 2 :]
    for idx in half:
        p = a[idx]
        assert abs(mask[idx].mean() - p.mean()) < 4 * math.sqrt((p * (1 - p)).sum()) / len(idx)
    # the kept z follow p(z) = pi a / Z (Eq. A.7; T = None): compare with the exact sampler
    lars = model.top_prior.sample(5000, generator=torch.Generator().manual_seed(1)).numpy()
    assert stats.ks_2samp(r.z[mask, 0], lars[:, 0]).pvalue > 1e-3
    assert stats.ks_2samp(r.z[mask, 0], r.z[:, 0]).pvalue < 1e-10  # power of that test
    # a different seed gives a different draw
    assert not np.array_equal(mask, ranking.accept_mask(r, seed=8))


def test_save_samples_filters_exactly(moderate, tmp_path):
    _, r = moderate
    t = float(np.median(r.a))
    mask = ranking.accept_mask(r, seed=7)
    files = {
        "all": ranking.save_samples(r, tmp_path / "all.npz"),
        "thr": ranking.save_samples(r, tmp_path / "thr.npz", threshold=t),
        "acc": ranking.save_samples(r, tmp_path / "acc.npz", accepted=mask),
        "both": ranking.save_samples(r, tmp_path / "both.npz", threshold=t, accepted=mask),
    }
    expected = {
        "all": np.ones(r.n, bool),
        "thr": r.a >= t,
        "acc": mask,
        "both": (r.a >= t) & mask,
    }
    for name, keep in expected.items():
        f = np.load(tmp_path / f"{name}.npz")
        assert files[name] == len(f["index"]) == keep.sum()
        assert set(f["index"].tolist()) == set(np.flatnonzero(keep).tolist()), name
        assert np.all(np.diff(f["log_a"]) <= 0) and np.all(np.diff(f["rank"]) > 0)
        idx = f["index"]
        np.testing.assert_array_equal(f["rank"], r.rank()[idx])
        np.testing.assert_array_equal(f["log_a"], r.log_a[idx])
        np.testing.assert_array_equal(f["a"], np.exp(r.log_a[idx]))
        np.testing.assert_array_equal(f["z"], r.z[idx])
        assert f["x"].dtype == np.uint8
        assert np.abs(f["x"] / 255.0 - r.x[idx]).max() <= 0.5 / 255 + 1e-6
        assert int(f["n_total"]) == r.n and bool(f["accepted_only"]) == (name in ("acc", "both"))
    assert abs(files["thr"] - r.n / 2) <= 1  # the median splits the sample in half
    with pytest.raises(ValueError, match="accepted"):
        ranking.save_samples(r, tmp_path / "bad.npz", accepted=mask[:-1])
    assert not (tmp_path / "bad.npz").exists()


def test_rank_checkpoint_writes_the_figures_samples_and_summary(ckpts, tmp_path):
    ckpt, out = ckpts["moderate"], tmp_path / "out"
    s = acceptance.rank_checkpoint(ckpt, out, n=3000, seed=5, threshold=0.2, accepted_only=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(acceptance.OUTPUTS)
    for png in ("grid.png", "acceptance.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    assert json.loads((out / "summary.json").read_text()) == s
    assert s["checkpoint"] == str(ckpt) and s["checkpoint_sha256"] == file_sha256(ckpt)
    assert (s["n"], s["seed"], s["prior"], s["proposal"]) == (3000, 5, "lars", "StandardNormal")
    # the same draw again, in-process: the job is a function of (checkpoint, n, seed)
    r = ranking.rank_samples(load_model(ckpt)[0], 3000, seed=5)
    keep = (r.a >= 0.2) & ranking.accept_mask(r, seed=5)
    assert s["n_kept"] == keep.sum() == len(np.load(out / "samples.npz")["index"])
    assert s["fraction_above_threshold"] == pytest.approx((r.a >= 0.2).mean(), abs=0)
    assert s["a_min"] == r.a.min() and s["a_max"] == r.a.max()
    assert s["a_min"] <= s["a_median"] <= s["a_max"]
    assert s["a_median"] == pytest.approx(np.median(r.a), rel=1e-12)
    assert s["a_mean"] == pytest.approx(r.a.mean(), rel=1e-12)
    z_true = quadrature_z(MODERATE)
    assert abs(s["a_mean"] - z_true) < 4 * s["a_mean_stderr"]
    assert abs(s["accepted_fraction"] - z_true) < 4 * math.sqrt(z_true * (1 - z_true) / 3000)


def test_rank_checkpoint_refuses_bad_inputs_and_writes_nothing(ckpts, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError) as e:
        acceptance.rank_checkpoint(ckpts["gaussian"], out, n=100)
    msg = str(e.value)
    assert str(ckpts["gaussian"]) in msg and "'gaussian'" in msg and "\n" not in msg
    with pytest.raises(UserError, match="no such file"):
        acceptance.rank_checkpoint(tmp_path / "nowhere.pt", out, n=100)
    with pytest.raises(UserError, match="--n"):
        acceptance.rank_checkpoint(ckpts["moderate"], out, n=0)
    with pytest.raises(UserError, match="--threshold"):
        acceptance.rank_checkpoint(ckpts["moderate"], out, n=100, threshold=1.5)
    assert not out.exists()


def test_a_below_float64_range_is_ranked_saved_and_plotted_by_log_a(tmp_path):
    """log a(z) down to -2000 (a = 0.0 in float64): order, threshold and files use log a."""
    rng = np.random.default_rng(0)
    log_a = np.concatenate([-rng.uniform(0, 5, 50), -rng.uniform(800, 2000, 50)])
    r = ranking.Ranked(
        z=rng.standard_normal((100, 3)).astype(np.float32),
        log_a=log_a,
        x=rng.random((100, 784), dtype=np.float32),
        seed=0,
    )
    assert np.array_equal(r.order(), np.argsort(-log_a))  # no ties although half of a == 0
    assert np.count_nonzero(r.a == 0) == 50
    assert ranking.save_samples(r, tmp_path / "s.npz", threshold=1e-300) == 50
    ranking.save_samples(r, tmp_path / "all.npz")
    f = np.load(tmp_path / "all.npz")
    np.testing.assert_array_equal(f["log_a"], np.sort(log_a)[::-1])
    assert np.all(f["a"][50:] == 0) and np.all(f["log_a"][50:] < -745)
    acceptance.plot_grids(r, tmp_path / "grid.png")
    acceptance.plot_sorted_acceptance(r, tmp_path / "acc.png")  # its log10 fallback axis
    for name in ("grid.png", "acc.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="read-only"):
        r.log_a[0] = 0.0  # Ranked is frozen, its arrays too


def test_format_a_reaches_below_float64():
    assert acceptance.format_a(math.log(1e-80)) == "1.00e-80"
    assert acceptance.format_a(math.log(0.5)) == "5.00e-01"
    assert acceptance.format_a(-2000.0) == "2.58e-869"  # exp(-2000) = 0.0 in float64
    assert acceptance.format_a(math.log(9.999e-5)) == "1.00e-04"
