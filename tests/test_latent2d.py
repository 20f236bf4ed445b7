"""The 2-D latent analysis (Figs. D.10-D.14, larsvae.reports.latent2d).

Statistical where the claim is: the cell masses of a Gaussian and of a mixture equal the
closed form (erf), the quadrature KL equals the closed-form KL of two Gaussians, and on a
tiny random 2-D VAE the report's KL(q || p) agrees with an independent Monte Carlo estimate
E_q[log q - log p] (exact mixture log q over all training points, the library's log p), and
its quadrature Z with the pipeline's Monte Carlo z.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_dataset

from larsvae.checkpoint import load_model, save_checkpoint
from larsvae.config import model_config, to_dict
from larsvae.models import build_model
from larsvae.reports.latent2d import (
    Grid,
    aggregate_posterior_mass,
    encode,
    gaussian_cell_masses,
    kl_on_grid,
    latent2d_report,
    prior_log_prob,
    prior_panels,
)
from larsvae.utils import TMP_PREFIX, UserError, file_sha256

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {"latent_dim": 2, "hidden": 16, "train_z_samples": 64}
LABELS = ("standard", "joint (large a)", "joint (small a)", "post-hoc")
FILES = (
    "fig_latent2d_densities.png",
    "fig_latent2d_aggregate.png",
    "fig_latent2d_scatter.png",
    "table_latent2d.md",
    "latent2d.json",
)


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


# ---------------------------------------------------------------------------------------
# quadrature


def test_cell_masses_of_a_mixture_equal_the_closed_form():
    g = Grid(50, 3.0)
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(300, 2, generator=gen, dtype=torch.float64) * 1.5
    std = torch.rand(300, 2, generator=gen, dtype=torch.float64) * 0.8 + 0.02
    m = aggregate_posterior_mass(mean, std, g, chunk=37)  # chunking must not matter
    assert m.shape == (50, 50) and (m >= 0).all()
    inside = [
        math.prod(_phi((3 - mu) / s) - _phi((-3 - mu) / s) for mu, s in zip(mn, sd, strict=True))
        for mn, sd in zip(mean.tolist(), std.tolist(), strict=True)
    ]
    assert float(m.sum()) == pytest.approx(sum(inside) / 300, abs=1e-12)
    assert torch.allclose(m, aggregate_posterior_mass(mean, std, g), rtol=1e-12, atol=1e-18)
    # one cell against erf directly; row i is z2, column j is z1
    e = g.edges().tolist()
    i, j = 31, 12
    cell = sum(
        (_phi((e[j + 1] - a) / s) - _phi((e[j] - a) / s))
        * (_phi((e[i + 1] - b) / t) - _phi((e[i] - b) / t))
        for (a, b), (s, t) in zip(mean.tolist(), std.tolist(), strict=True)
    )
    assert float(m[i, j]) == pytest.approx(cell / 300, rel=1e-9)


def test_aggregate_posterior_integrates_to_one_on_a_wide_grid():
    gen = torch.Generator().manual_seed(1)
    mean = torch.rand(1000, 2, generator=gen, dtype=torch.float64) * 4 - 2  # in [-2, 2]^2
    std = torch.rand(1000, 2, generator=gen, dtype=torch.float64) * 0.5 + 0.01
    mass = float(aggregate_posterior_mass(mean, std, Grid(120, 6.0)).sum())
    assert 1 - 1e-9 < mass <= 1 + 1e-12  # the nearest edge is >= 8 std away
    # tail cells keep their relative precision (difference of upper-tail probabilities)
    far = gaussian_cell_masses(
        torch.zeros(1, dtype=torch.float64),
        torch.ones(1).double(),
        torch.tensor([9.0, 9.5], dtype=torch.float64),
    )
    exact = 0.5 * (math.erfc(9 / math.sqrt(2)) - math.erfc(9.5 / math.sqrt(2)))
    assert float(far) == pytest.approx(exact, rel=1e-9)


def _gauss_kl(m1, s1, m2, s2) -> float:
    """KL(N(m1, diag s1^2) || N(m2, diag s2^2)), closed form."""
    return sum(
        math.log(b / a) + (a * a + (u - v) ** 2) / (2 * b * b) - 0.5
        for u, a, v, b in zip(m1, s1, m2, s2, strict=True)
    )


@pytest.mark.parametrize(
    "m1, s1, m2, s2",
    [
        ((0.5, -1.0), (0.7, 0.4), (0.0, 0.0), (1.0, 1.0)),
        ((1.5, 0.3), (0.3, 1.2), (0.5, -0.2), (1.4, 0.8)),
        ((0.0, 0.0), (1.0, 1.0), (0.0, 0.0), (1.0, 1.0)),
    ],
)
def test_quadrature_kl_equals_the_closed_form(m1, s1, m2, s2):
    g = Grid(400, 8.0)
    q = aggregate_posterior_mass(torch.tensor([m1]).double(), torch.tensor([s1]).double(), g)
    pts = g.points()
    log_p = sum(
        -0.5 * ((pts[:, d] - m2[d]) / s2[d]) ** 2 - math.log(s2[d]) - 0.5 * math.log(2 * math.pi)
        for d in range(2)
    ).view(g.n, g.n)
    want = _gauss_kl(m1, s1, m2, s2)
    # O(h^2) quadrature, h = 0.04: error ~ h^2 / 24 * (curvatures) < 1e-3
    assert kl_on_grid(q, log_p, g.cell_area) == pytest.approx(want, abs=1e-3)
    # a wrong p (shifted) gives a clearly different KL: the test can fail
    shifted = kl_on_grid(q, log_p.roll(5, 1), g.cell_area)
    assert abs(shifted - want) > 0.02


# ---------------------------------------------------------------------------------------
# a tiny random 2-D VAE, end to end


def _meta(prior: str, cfg, dataset_sha: str, mode: str = "standard") -> dict:
    meta = {
        "arch": "vae",
        "prior": prior,
        "mode": mode,
        "dataset": "dynamic_mnist",
        "dataset_sha256": dataset_sha,
        "seed": 0,
        "model_config": to_dict(cfg),
    }
    if mode == "posthoc":
        meta["base_prior"] = "gaussian"
    return meta


def _sharpen(model, seed: int) -> None:
    """Spread the encoder means and give a(z) structure, so the densities are not all N(0, I)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.encoder_head.mean.weight.mul_(2.0)
        model.encoder_head.log_std.bias.fill_(-1.0)
        acc = getattr(model.top_prior, "acceptance", None)
        if acc is not None:
            last = acc.net[-1]
            last.weight.copy_(3.0 * torch.randn(last.weight.shape, generator=gen))
            last.bias.fill_(-1.0)


def _save(model, meta, path: Path, step: int = 0) -> Path:
    save_checkpoint(
        {
            "kind": "final",
            "version": "test",
            "meta": meta,
            "model": model.state_dict(),
            "step": step,
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent2d")
    data = make_tiny_dataset(root / "data", n_train=256, n_eval=64)
    rng = np.random.default_rng(0)
    labels = root / "data" / "dynamic_mnist.labels.npz"
    np.savez_compressed(
        labels,
        y_train=rng.integers(0, 10, 256).astype(np.uint8),
        y_valid=rng.integers(0, 10, 64).astype(np.uint8),
        y_test=rng.integers(0, 10, 64).astype(np.uint8),
    )
    sha = file_sha256(data)
    ckpts = {}
    cfg = model_config(TINY)
    torch.manual_seed(0)
    std = build_model("vae", "gaussian", cfg)
    _sharpen(std, 0)
    ckpts["standard"] = _save(std, _meta("gaussian", cfg, sha), root / "std.pt", step=7)
    for label, hidden, seed in (("joint (large a)", [16, 16], 1), ("joint (small a)", [4], 1)):
        c = model_config(TINY | {"acceptance_hidden": hidden})
        torch.manual_seed(seed)
        m = build_model("vae", "lars", c)
        _sharpen(m, seed)
        ckpts[label] = _save(m, _meta("lars", c, sha), root / f"lars{len(hidden)}.pt")
    c = model_config(TINY | {"truncation": None})
    post = build_model("vae", "gaussian", c)
    post.load_state_dict(std.state_dict())
    post.make_posthoc(c)
    _sharpen(post, 3)
    with torch.no_grad():  # undo the second encoder sharpening: post-hoc keeps std's encoder
        post.encoder_head.load_state_dict(std.encoder_head.state_dict())
    post.top_prior.set_log_z(math.log(0.3))  # a stored running <Z>
    ckpts["post-hoc"] = _save(post, _meta("lars", c, sha, "posthoc"), root / "post.pt")
    return root, data, labels, ckpts


@pytest.fixture(scope="module")
def z_file(cells):
    """A z.json as ``larsvae reduce-z`` writes it (the fields ``zestimate.read_z`` checks), from
    the library's Monte Carlo estimator, 2^18 proposals."""
    from larsvae.zestimate import estimate_z

    root, _, _, ckpts = cells
    path = ckpts["joint (large a)"]
    model, _ = load_model(path)
    prior = model.top_prior
    with torch.no_grad():
        est = estimate_z(prior.acceptance, prior.proposal, 1 << 18, 1 << 14, seed=0)
    obj = {
        "checkpoint": str(path),
        "checkpoint_sha256": file_sha256(path),
        "num_shards": 1,
        "seed": 0,
        "z_samples": 1 << 18,
        "antithetic": est.antithetic,
        "estimate": est.to_dict(),
        "z": est.mean,
        "z_stderr": est.stderr,
        "log_z": est.log_mean,
    }
    (root / "z.json").write_text(json.dumps(obj))
    return root / "z.json"


@pytest.fixture(scope="module")
def report(cells, z_file):
    root, data, labels, ckpts = cells
    kw = dict(z_files={"joint (large a)": z_file}, grid=64, extent=4.0, seed=5, budget="smoke")
    a = latent2d_report(ckpts, data, labels, root / "a", **kw)
    b = latent2d_report(ckpts, data, labels, root / "b", **kw)
    return a, b, root


def test_report_writes_every_file_deterministically(report):
    a, b, root = report
    for name in FILES:
        fa, fb = root / "a" / name, root / "b" / name
        assert fa.is_file() and fa.stat().st_size > 0, name
        if name != "latent2d.json":  # which records its own output paths
            assert fa.read_bytes() == fb.read_bytes(), name
    assert {k: v for k, v in a.items() if k != "files"} == {
        k: v for k, v in b.items() if k != "files"
    }
    assert json.loads((root / "a" / "latent2d.json").read_text())["models"] == a["models"]
    assert not list((root / "a").glob(TMP_PREFIX + "*"))
    table = (root / "a" / "table_latent2d.md").read_text()
    for label in LABELS:
        assert f"| {label} |" in table
    assert "0.40" in table and "0.15" in table and "0.20" in table  # the paper's column
    assert "ordering" in table and a["comparison"]["total"] == 6
    assert "Budget: smoke" in table and a["dataset_sha256"][:16] in table


def test_report_numbers_are_consistent(report):
    a, _, _ = report
    rows = a["models"]
    std, post = rows["standard"], rows["post-hoc"]
    # the post-hoc model has the standard model's encoder: the same aggregate posterior
    assert post["entropy_q"] == pytest.approx(std["entropy_q"], abs=1e-9)
    assert post["q_grid_mass"] == pytest.approx(std["q_grid_mass"], abs=1e-12)
    assert std["z_quad"] is None and std["step"] == 7
    assert post["z_running"] == pytest.approx(0.3)
    for r in rows.values():
        assert 0.97 < r["q_grid_mass"] <= 1.0 + 1e-12
        assert 0.999 < r["pi_grid_mass"] < 1.0 + 1e-3  # N(0, I) on [-4, 4]^2
        assert abs(r["p_grid_mass"] - 1.0) < 2e-3
        assert r["kl_quad_z"] > 0


def test_quadrature_z_agrees_with_the_pipelines_monte_carlo_z(report):
    r = report[0]["models"]["joint (large a)"]
    # Z_true is within [Z_quad, Z_quad + (1 - pi mass)] up to the midpoint rule's O(h^2)
    slack = (1.0 - r["pi_grid_mass"]) + 2e-3
    assert abs(r["z_mc"] - r["z_quad"]) < 4 * r["z_mc_stderr"] + slack
    assert r["kl_mc_z"] == pytest.approx(r["kl_quad_z"], abs=0.02)


def test_quadrature_kl_agrees_with_an_independent_monte_carlo_estimate(cells, report):
    """E_q[log q(z) - log p(z)] with z ~ q: log q the exact mixture over all 256 training
    posteriors, log p the library's log_prob with the report's Z installed."""
    _, data, _, ckpts = cells
    a, _, _ = report
    grid = Grid(64, 4.0)
    for label in ("joint (large a)", "standard"):
        model, _ = load_model(ckpts[label])
        with np.load(data) as z:
            train = z["train"]
        mean, std = encode(model, train, seed=5)  # the report's binarisation
        gen = torch.Generator().manual_seed(11)
        n = 20_000
        idx = torch.randint(0, len(mean), (n,), generator=gen)
        zs = mean[idx] + std[idx] * torch.randn(n, 2, generator=gen, dtype=torch.float64)
        comp = (
            -0.5 * (((zs[:, None] - mean[None]) / std[None]) ** 2).sum(-1)
            - torch.log(std).sum(-1)[None]
            - math.log(2 * math.pi)
        )  # (n, N)
        log_q = torch.logsumexp(comp, 1) - math.log(len(mean))
        prior = model.top_prior
        lz = prior_panels(prior, grid)["log_z_quad"] if hasattr(prior, "acceptance") else None
        prior_log_prob(prior, grid, lz)  # installs Z quad
        with torch.no_grad():
            log_p = prior.log_prob(zs.float()).double()
        terms = log_q - log_p
        inside = (zs.abs() <= 4).all(1)
        terms = torch.where(inside, terms, torch.zeros_like(terms))  # the grid's restriction
        mc, se = float(terms.mean()), float(terms.std() / math.sqrt(n))
        kl = a["models"][label]["kl_quad_z"]
        assert abs(mc - kl) < 4 * se + 0.02, (label, mc, se, kl)


def test_bad_inputs_give_one_clear_error(cells, tmp_path):
    root, data, labels, ckpts = cells
    cfg = model_config(TINY | {"latent_dim": 3})
    m = build_model("vae", "gaussian", cfg)
    bad = _save(m, _meta("gaussian", cfg, file_sha256(data)), root / "d3.pt")
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"d3\.pt \('three'\) has latent_dim = 3.*latent_dim = 2"):
        latent2d_report({"standard": ckpts["standard"], "three": bad}, data, labels, out)
    assert not out.exists()
    # labels of another dataset (wrong counts), a checkpoint of another dataset file
    short = tmp_path / "short.labels.npz"
    np.savez_compressed(
        short, **{f"y_{s}": np.zeros(10, np.uint8) for s in ("train", "valid", "test")}
    )
    with pytest.raises(UserError, match="not its labels"):
        latent2d_report({"standard": ckpts["standard"]}, data, short, out)
    other = make_tiny_dataset(tmp_path / "other", seed=1)
    with pytest.raises(UserError, match="trained on a dataset file with sha256"):
        latent2d_report({"standard": ckpts["standard"]}, other, labels, out)
    with pytest.raises(UserError, match="no LARS prior"):
        latent2d_report(ckpts, data, labels, out, z_files={"standard": root / "z.json"})
    assert not out.exists()
