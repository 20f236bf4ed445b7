"""Exact vectorised (truncated) rejection sampling: samples follow log_prob (KS tests against
quadrature CDFs), and the number of proposals follows its closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _helpers import strong_acceptance
from scipy import stats

from larsvae.distributions import AcceptanceMLP, ResampledPrior, StandardNormal

N = 100_000


def make_prior(dim: int, truncation, seed: int = 0) -> ResampledPrior:
    """A prior with the exact Z (by quadrature for dim 1 and 2) installed."""
    prior = ResampledPrior(StandardNormal(dim).double(), strong_acceptance(dim, seed), truncation)
    h = 1e-3 if dim == 1 else 0.025
    x = torch.arange(-10.0, 10.0 + h / 2, h, dtype=torch.float64)
    pts = x[:, None] if dim == 1 else torch.cartesian_prod(x, x)
    with torch.no_grad():
        z = (prior.proposal.log_prob(pts).exp() * torch.sigmoid(prior.acceptance(pts))).sum()
    prior.set_log_z(math.log(float(z) * h**dim))
    return prior


def quadrature_cdf(prior: ResampledPrior):
    """CDF of the 1-D prior from the trapezoid rule on exp(log_prob)."""
    x = torch.arange(-10.0, 10.0 + 5e-4, 1e-3, dtype=torch.float64)
    with torch.no_grad():
        p = prior.log_prob(x[:, None]).exp().numpy()
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * 1e-3)])
    assert cdf[-1] == pytest.approx(1.0, abs=1e-6)
    cdf /= cdf[-1]
    xs = x.numpy()
    return lambda v: np.interp(v, xs, cdf)


@pytest.mark.parametrize("truncation", [2, 10, None])
@pytest.mark.parametrize("max_block", [1 << 20, 64])
def test_samples_follow_log_prob_ks(truncation, max_block):
    prior = make_prior(1, truncation)
    gen = torch.Generator().manual_seed(123)
    z, counts = prior.sample(N, generator=gen, return_num_proposals=True, max_block=max_block)
    assert z.shape == (N, 1) and counts.shape == (N,) and counts.dtype == torch.long
    result = stats.kstest(z[:, 0].numpy(), quadrature_cdf(prior))
    assert result.pvalue > 1e-3, result

    # Number of proposals: E[N] = (1 - (1-Z)^T) / Z (1/Z for T = None), within 4 SE.
    c = counts.double()
    se = float(c.std()) / math.sqrt(N)
    assert abs(float(c.mean()) - prior.expected_num_proposals()) < 4 * se
    assert int(counts.min()) == 1
    if truncation is not None:
        assert int(counts.max()) == truncation
        # P(N = T) = (1 - Z)^(T-1): every earlier proposal rejected.
        p_forced = (1 - prior.z) ** (truncation - 1)
        frac = float((counts == truncation).double().mean())
        assert abs(frac - p_forced) < 4 * math.sqrt(p_forced * (1 - p_forced) / N)
    else:
        # N is geometric: P(N = 1) = Z.
        frac = float((counts == 1).double().mean())
        assert abs(frac - prior.z) < 4 * math.sqrt(prior.z * (1 - prior.z) / N)


def test_ks_test_has_power_against_wrong_truncation():
    # Samples with T = 2 are clearly not distributed as the T = None density.
    z = make_prior(1, 2).sample(N, generator=torch.Generator().manual_seed(5))
    assert stats.kstest(z[:, 0].numpy(), quadrature_cdf(make_prior(1, None))).pvalue < 1e-6


def test_2d_moments_match_quadrature():
    prior = make_prior(2, 10, seed=1)
    h = 0.025
    x = torch.arange(-10.0, 10.0 + h / 2, h, dtype=torch.float64)
    pts = torch.cartesian_prod(x, x)
    with torch.no_grad():
        w = prior.log_prob(pts).exp() * h * h
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-6)
    feats_q = torch.cat([pts, pts**2, pts[:, :1] * pts[:, 1:]], 1)  # (G, 5)
    expected = (feats_q * w[:, None]).sum(0)
    z = prior.sample(N, generator=torch.Generator().manual_seed(7))
    feats = torch.cat([z, z**2, z[:, :1] * z[:, 1:]], 1)
    se = feats.std(0) / math.sqrt(N)
    assert ((feats.mean(0) - expected).abs() < 4 * se).all(), (feats.mean(0), expected, se)


def test_sampling_is_reproducible_and_respects_dtype():
    prior = make_prior(2, 10).float()
    a = prior.sample(1000, generator=torch.Generator().manual_seed(9))
    b = prior.sample(1000, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b) and a.dtype == torch.float32 and a.shape == (1000, 2)
    assert prior.sample(0).shape == (0, 2)


def test_truncation_one_samples_the_proposal():
    prior = ResampledPrior(StandardNormal(3), AcceptanceMLP(3), truncation=1)
    z, counts = prior.sample(
        50, generator=torch.Generator().manual_seed(1), return_num_proposals=True
    )
    ref = prior.proposal.sample(50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(z, ref) and torch.equal(counts, torch.ones(50, dtype=torch.long))


def test_sampling_does_not_touch_z_or_build_graphs():
    prior = make_prior(1, None)
    before = float(prior.log_z)
    z = prior.sample(100)
    assert not z.requires_grad and float(prior.log_z) == before
