"""The 2-D illustrative example: toy targets and maximum-likelihood fitting (Eq. 5)."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from scipy import stats

from larsvae.distributions import AcceptanceMLP, RealNVP, ResampledPrior, StandardNormal
from larsvae.fit2d import average_log_likelihood, fit_density
from larsvae.targets2d import TARGETS, get_target, ring_log_prob, ring_sample

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
    with pytest.raises(ValueError, match="'spiral'.*ring"):
        get_target("spiral")


def _lars(seed: int = 0, proposal=None, num_z_samples: int = 256) -> ResampledPrior:
    torch.manual_seed(seed)
    proposal = StandardNormal(2) if proposal is None else proposal
    return ResampledPrior(
        proposal, AcceptanceMLP(2), truncation=100, eps=0.1, num_z_samples=num_z_samples
    )


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

    torch.manual_seed(0)
    frozen = _lars(proposal=RealNVP(2, hidden=(32, 32)), num_z_samples=64)
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

    torch.manual_seed(0)
    joint = _lars(proposal=RealNVP(2, hidden=(32, 32)), num_z_samples=64)
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


def test_fig_2d_main_writes_png_with_normalised_lars_panel(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from larsvae.reports.fig_2d import build_lars_2d, grid_panels, main

    out = tmp_path / "fig" / "fig2d.png"
    assert main(["--out", str(out), "--steps", "30", "--targets", "ring", "--z-samples", "64"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ring: test log-lik" in capsys.readouterr().out

    torch.manual_seed(0)
    prior = build_lars_2d("gaussian", truncation=100, num_z_samples=64)
    prior.set_log_z(prior.monte_carlo_log_z(1 << 16, generator=torch.Generator().manual_seed(0)))
    panels = grid_panels(prior, extent=6.0, n=241)
    h = 12.0 / 240
    assert panels["proposal"].sum().item() * h * h == pytest.approx(1.0, abs=1e-3)
    assert panels["lars"].sum().item() * h * h == pytest.approx(1.0, abs=1e-2)
    assert 0 < panels["acceptance"].min() and panels["acceptance"].max() < 1
