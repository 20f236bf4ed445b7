"""The 2-D illustrative example (larsvae.toy2d): targets, maximum-likelihood fitting (Eq. 5)
and the pipeline step ``make_figure``."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from scipy import stats

from larsvae.config import ConfigError, ModelConfig
from larsvae.distributions import RealNVP, ResampledPrior, StandardNormal, build_prior
from larsvae.toy2d import (
    TARGETS,
    average_log_likelihood,
    fit_density,
    get_target,
    grid_panels,
    make_figure,
)
from larsvae.toy2d.targets import ring_log_prob, ring_sample
from larsvae.utils import UserError

# A ring of 8 modes inside the bulk of N(0, I): LARS over N(0, I) can represent it well.
RING = {"radius": 1.5, "std": 0.3}


def _grid(half_width: float, n: int) -> tuple[torch.Tensor, float]:
    g = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    x, y = torch.meshgrid(g, g, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], -1), float(g[1] - g[0])


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_log_prob_normalised_and_matches_sampler(name):
    target = get_target(name)
    # Midpoint grid with spacing 0.1: exact for the checkerboard (cells aligned) and
    # spectrally accurate for Gaussian bumps of std >= 0.15 (error ~ exp(-2 pi^2 s^2 / h^2)).
    m = 2 * int(target.extent) + 2
    n_side = 10 * m
    mid = -m / 2 + (torch.arange(n_side, dtype=torch.float64) + 0.5) * (m / n_side)
    x, y = torch.meshgrid(mid, mid, indexing="ij")
    dens = target.log_prob(torch.stack([x.reshape(-1), y.reshape(-1)], -1)).exp()
    h = m / n_side
    assert dens.sum().item() * h * h == pytest.approx(1.0, abs=1e-3)

    # chi-square: sample counts in cells of side 0.5 vs the quadrature masses
    cells = 2 * m
    mass = dens.view(cells, 5, cells, 5).sum((1, 3)).reshape(-1) * h * h
    n = 40_000
    s = target.sample(n, torch.Generator().manual_seed(0)).double()
    assert s.shape == (n, 2) and torch.isfinite(target.log_prob(s[:2000])).all()
    ij = ((s + m / 2) / 0.5).floor().long().clamp(0, cells - 1)
    counts = torch.bincount(ij[:, 0] * cells + ij[:, 1], minlength=cells * cells).double()
    keep = mass * n > 5  # pool sparse cells (the checkerboard's light squares hold none)
    assert counts[mass == 0].sum() == 0
    obs = torch.cat([counts[keep], counts[~keep].sum().reshape(1)])
    exp = torch.cat([mass[keep], mass[~keep].sum().reshape(1)]) * n
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    p = stats.chisquare(obs.numpy(), (exp * obs.sum() / exp.sum()).numpy()).pvalue
    assert p > 1e-3, f"{name}: sampler disagrees with log_prob (p = {p:.2e})"


def test_unknown_target_is_named():
    with pytest.raises(ConfigError, match="'spiral'.*ring"):
        get_target("spiral")


def _lars(seed: int = 0, num_z_samples: int = 256, **model) -> ResampledPrior:
    """LARS over N(0, I) (``prior="lars"``) through the one factory, T = 100."""
    prior = model.pop("prior", "lars")
    torch.manual_seed(seed)
    cfg = ModelConfig(latent_dim=2, truncation=100, train_z_samples=num_z_samples, **model)
    return build_prior(prior, 2, cfg)


def test_lars_over_gaussian_beats_gaussian_and_is_normalised():
    """Eq. 5 fitting: LARS(N(0, I)) on a ring mixture gains > 0.3 nats/point over N(0, I),
    and with the installed high-precision Z its density (Eq. A.14) integrates to one."""
    sampler = partial(ring_sample, **RING)
    test_x = sampler(20_000, torch.Generator().manual_seed(123))
    prior = _lars()
    hist = fit_density(
        prior, sampler, steps=300, batch_size=256, lr=3e-3, seed=1, z_samples=1 << 18
    )
    assert len(hist.loss) == 300 and len(hist.log_z) == 300
    assert sum(hist.loss[-30:]) / 30 < sum(hist.loss[:30]) / 30 - 0.2

    ll_lars = average_log_likelihood(prior, test_x)
    ll_gauss = average_log_likelihood(StandardNormal(2), test_x)
    ll_true = ring_log_prob(test_x.double(), **RING).mean().item()
    assert ll_lars > ll_gauss + 0.3, (ll_lars, ll_gauss)
    assert ll_lars < ll_true + 0.05  # nothing beats the true density on fresh test data

    # Z installed from 2^18 antithetic proposals agrees with Z = int pi(z) a(z) dz (quadrature)
    pts, h = _grid(7.0, 281)
    with torch.no_grad():
        pts32 = pts.float()
        a = torch.sigmoid(prior.acceptance(pts32)).double()
        z_quad = (a * prior.proposal.log_prob(pts32).double().exp()).sum().item() * h * h
        dens = prior.log_prob(pts32).double().exp()
    assert hist.final_log_z == pytest.approx(
        math.log(z_quad), abs=5 * hist.final_z_stderr / z_quad + 1e-4
    )
    assert 0.05 < z_quad < 0.95  # a(z) is neither trivial nor degenerate
    assert dens.sum().item() * h * h == pytest.approx(1.0, abs=5e-3)


def test_fit_is_deterministic_given_the_seed():
    def run(seed):
        prior = _lars(seed=0, num_z_samples=64)
        rng_before = torch.get_rng_state()
        hist = fit_density(
            prior,
            partial(ring_sample, **RING),
            steps=15,
            batch_size=32,
            seed=seed,
            z_samples=1 << 12,
            z_batch=1 << 10,
        )
        assert torch.equal(torch.get_rng_state(), rng_before)  # caller's RNG untouched
        return prior.state_dict(), hist

    (sd1, h1), (sd2, h2), (sd3, _) = run(7), run(7), run(8)
    assert h1.loss == h2.loss and h1.final_log_z == h2.final_log_z
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert not all(torch.equal(sd1[k], sd3[k]) for k in sd1)


def test_joint_realnvp_proposal_training_and_acceptance_only_mode():
    data = ring_sample(2048, torch.Generator().manual_seed(0), **RING)

    def proposal_params(prior):
        return [p.detach().clone() for p in prior.proposal.parameters()]

    frozen = _lars(prior="lars_realnvp", flow_hidden=(32, 32), num_z_samples=64)
    before = proposal_params(frozen)
    fit_density(
        frozen,
        data,
        steps=20,
        batch_size=64,
        seed=0,
        train_proposal=False,
        z_samples=1 << 12,
        z_batch=1 << 10,
    )
    assert all(torch.equal(a, b) for a, b in zip(before, proposal_params(frozen), strict=True))

    joint = _lars(prior="lars_realnvp", flow_hidden=(32, 32), num_z_samples=64)
    hist = fit_density(
        joint,
        data,
        steps=20,
        batch_size=64,
        seed=0,
        train_proposal=True,
        z_samples=1 << 12,
        z_batch=1 << 10,
    )
    assert not all(torch.equal(a, b) for a, b in zip(before, proposal_params(joint), strict=True))
    assert hist.final_log_z is not None and hist.final_log_z < 0


def test_realnvp_fit_improves_likelihood():
    """A flow fitted with fit_density (plain log_prob, no Z) also beats N(0, I)."""
    sampler = partial(ring_sample, **RING)
    test_x = sampler(5000, torch.Generator().manual_seed(9))
    torch.manual_seed(0)
    flow = RealNVP(2, hidden=(32, 32))
    before = average_log_likelihood(flow, test_x)
    hist = fit_density(flow, sampler, steps=150, batch_size=128, lr=3e-3, seed=0)
    assert hist.final_log_z is None and hist.log_z == []
    assert average_log_likelihood(flow, test_x) > before + 0.2


def test_grid_panels_are_densities_on_the_grid():
    """pi(z) and the LARS density (Eq. A.14, Z installed) integrate to one over the grid."""
    prior = _lars(num_z_samples=64)
    prior.set_log_z(prior.monte_carlo_log_z(1 << 16, generator=torch.Generator().manual_seed(0)))
    panels = grid_panels(prior, extent=6.0, n=241)
    h = 12.0 / 240
    assert panels["proposal"].sum().item() * h * h == pytest.approx(1.0, abs=1e-3)
    assert panels["lars"].sum().item() * h * h == pytest.approx(1.0, abs=1e-2)
    assert 0 < panels["acceptance"].min() and panels["acceptance"].max() < 1


def test_make_figure_fits_the_ring_and_writes_the_png(tmp_path):
    """The pipeline step: 150 Eq. 5 steps already beat N(0, I) by > 0.5 nats on fresh
    samples, stay above the true density's NLL, and install a non-trivial Z."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "fig" / "fig2d.png"
    summary = make_figure(
        out, steps=150, seed=0, targets=("ring",), z_samples=1 << 16, test_samples=5000
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["fig2d.png"]  # no temporaries left
    s = summary["ring"]
    assert set(summary) == {"ring"}
    assert s["nll"] < s["nll_gaussian"] - 0.5, s
    assert s["nll"] > s["nll_true"] - 0.05, s  # nothing beats the true density
    assert 0.02 < s["Z"] < 0.98 and 0 < s["Z_stderr"] < 0.01 * s["Z"], s


def test_make_figure_seeds_per_target_and_leaves_the_global_rng_alone(tmp_path):
    pytest.importorskip("matplotlib")

    def run(seed, targets):
        return make_figure(
            tmp_path / f"{seed}-{len(targets)}.png",
            steps=10,
            seed=seed,
            targets=targets,
            batch_size=32,
            model=ModelConfig(acceptance_hidden=(16,), train_z_samples=64),
            z_samples=1 << 12,
            test_samples=500,
        )

    rng_before = torch.get_rng_state()
    ring_only = run(3, ("ring",))
    assert torch.equal(torch.get_rng_state(), rng_before)
    # A target's numbers depend on (seed, target), not on which other targets are drawn.
    assert run(3, ("checkerboard", "ring"))["ring"] == ring_only["ring"]
    assert run(4, ("ring",))["ring"]["nll"] != ring_only["ring"]["nll"]


def test_make_figure_refuses_bad_arguments_before_training(tmp_path):
    with pytest.raises(UserError, match=r"\*\.png"):
        make_figure(tmp_path / "fig.pdf", steps=10, seed=0)
    with pytest.raises(ConfigError, match="prior: unknown value 'realnvp'"):
        make_figure(tmp_path / "fig.png", steps=10, seed=0, prior="realnvp")
    with pytest.raises(ConfigError, match="target: unknown value 'spiral'"):
        make_figure(tmp_path / "fig.png", steps=10, seed=0, targets=("ring", "spiral"))
    assert list(tmp_path.iterdir()) == []
