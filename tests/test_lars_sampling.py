"""Exact vectorised (truncated) rejection sampling: samples follow log_prob (KS tests against
quadrature CDFs), and the number of proposals follows its closed form."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch
from _helpers import rank_one_acceptance, strong_acceptance
from scipy import stats

from larsvae.distributions import AcceptanceMLP, ResampledPrior, StandardNormal
from larsvae.distributions.lars import (
    _acceptance_logits,
    _AcceptanceLogits,
    _cut_rows,
    _FusedMLPLogits,
)

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


# -- the stream sampler's parts --------------------------------------------------------------


def _sequential_rows(accepted: list[bool], truncation) -> list[tuple[int, int]]:
    """Reference: (stream position where a row ends, its proposals), one proposal at a time."""
    rows, count = [], 0
    for i, a in enumerate(accepted):
        count += 1
        if a or count == truncation:
            rows.append((i, count))
            count = 0
    return rows


@pytest.mark.parametrize("truncation", [1, 2, 5, 100, None])
@pytest.mark.parametrize("rate", [0.003, 0.05, 0.6])
def test_cut_rows_is_sequential_rejection_sampling(truncation, rate):
    """Cutting a stream block by block (any block sizes) gives the rows of the textbook loop."""
    stream = torch.rand(20_000, generator=torch.Generator().manual_seed(0)) < rate
    rng = random.Random(1)
    got, pos, carry = [], 0, 0
    while pos < stream.numel():
        block = stream[pos : pos + rng.choice([1, 2, 3, 17, 99, 100, 101, 250, 4000])]
        ends, num, carry = _cut_rows(block, carry, truncation)
        got += [(pos + int(e), int(c)) for e, c in zip(ends, num, strict=True)]
        pos += block.numel()
    assert got == _sequential_rows(stream.tolist(), truncation)
    if truncation is not None:
        assert carry < truncation


@pytest.mark.parametrize("hidden", [(), (16,), (100, 100)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_acceptance_logits_match_the_module(hidden, dtype):
    torch.manual_seed(0)
    acc = AcceptanceMLP(7, hidden).to(dtype)
    with torch.no_grad():
        for m in acc.net:
            if isinstance(m, torch.nn.Linear):
                m.bias.uniform_(-2.0, 2.0)
    z = 2.0 * torch.randn(5000, 7, dtype=dtype)
    ev = _acceptance_logits(acc)
    assert isinstance(ev, _FusedMLPLogits)
    with torch.no_grad():
        ref = copy.deepcopy(acc).double()(torch.cat([z, -z]).double())
    tol = 2e-5 if dtype == torch.float32 else 1e-12
    scale = 1.0 + float(ref.abs().max())
    assert float((ev(z).double() - ref[:5000]).abs().max()) < tol * scale
    assert float((ev.pm(z).double() - ref).abs().max()) < tol * scale
    assert float((ev.chunked(torch.cat([z, -z])).double() - ref).abs().max()) < tol * scale


def test_fused_logits_only_for_a_plain_acceptance_mlp():
    class Scaled(AcceptanceMLP):
        def forward(self, z):
            return 2.0 * super().forward(z)

    assert type(_acceptance_logits(Scaled(3))) is _AcceptanceLogits
    assert type(_acceptance_logits(torch.nn.Linear(3, 1))) is _AcceptanceLogits


def rank_one_prior(dim: int, hidden, truncation, target_z: float, seed: int = 0):
    """A float32 LARS prior whose acceptance depends on z through t = v.z only (|v| = 1):
    then t's LARS density is 1-D (Eq. A.14 with pi = N(0, 1)) and Z is a quadrature."""
    acc, v = rank_one_acceptance(dim, hidden, seed, uniform_biases=False)
    t = torch.arange(-10.0, 10.0 + 5e-4, 1e-3, dtype=torch.float64)
    phi = torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)

    def log_z_at(bias: float) -> float:
        ref = copy.deepcopy(acc).double()
        with torch.no_grad():
            ref.net[-1].bias.fill_(bias)
            a = torch.sigmoid(ref(t[:, None] * v.double()))
        return math.log(float((phi * a).sum()) * 1e-3)

    lo, hi = -30.0, 30.0  # the output bias that gives Z = target_z, by bisection
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if log_z_at(mid) < math.log(target_z) else (lo, mid)
    with torch.no_grad():
        acc.net[-1].bias.fill_(lo)
    prior = ResampledPrior(StandardNormal(dim), acc, truncation)
    prior.set_log_z(log_z_at(lo))
    ref = copy.deepcopy(acc).double()
    with torch.no_grad():
        a = torch.sigmoid(ref(t[:, None] * v.double()))
    z = prior.z
    if truncation is None:
        dens = phi * a / z
    else:
        tail = (1 - z) ** (truncation - 1)
        dens = phi * (a * (1 - tail) / z + tail)
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(dens, 0)[1:] * 1e-3])
    cdf = (cdf / cdf[-1]).numpy()
    return prior, v, lambda x: np.interp(x, t.numpy(), cdf)


@pytest.mark.parametrize("truncation", [100, None])
def test_float32_mlp_prior_in_high_dimension_ks(truncation):
    """The fused float32 path, with Z ~ 0.02 (about 50 proposals a row): t = v.z follows its
    1-D LARS density, a direction orthogonal to v stays N(0, 1)."""
    prior, v, cdf = rank_one_prior(20, (32, 32), truncation, 0.02)
    z, counts = prior.sample(
        20_000, generator=torch.Generator().manual_seed(3), return_num_proposals=True
    )
    assert z.dtype == torch.float32 and z.shape == (20_000, 20)
    t = (z.double() @ v.double()).numpy()
    assert stats.kstest(t, cdf).pvalue > 1e-3
    w = torch.randn(20, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    w -= (w @ v.double()) * v.double()
    assert stats.kstest((z.double() @ (w / w.norm())).numpy(), "norm").pvalue > 1e-3
    c = counts.double()
    assert abs(float(c.mean()) - prior.expected_num_proposals()) < 4 * float(c.std()) / 141.0


@pytest.mark.parametrize("max_block", [2, 150])
def test_tiny_blocks_are_still_exact(max_block):
    prior = make_prior(1, 10)
    z = prior.sample(5_000, generator=torch.Generator().manual_seed(8), max_block=max_block)
    assert stats.kstest(z[:, 0].numpy(), quadrature_cdf(prior)).pvalue > 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sampler_ks():
    """On the GPU (device generator, large blocks): the same 1-D LARS marginal."""
    prior, v, cdf = rank_one_prior(20, (32, 32), 100, 0.02)
    prior.to("cuda")
    gen = torch.Generator(device="cuda").manual_seed(3)
    z, counts = prior.sample(50_000, generator=gen, return_num_proposals=True)
    assert z.device.type == "cuda" and counts.device.type == "cuda"
    t = (z.double() @ v.double().cuda()).cpu().numpy()
    assert stats.kstest(t, cdf).pvalue > 1e-3
    c = counts.double()
    assert abs(float(c.mean()) - prior.expected_num_proposals()) < 4 * float(c.std()) / 223.0


def test_sampler_with_underflowing_z_and_no_truncation_does_not_overflow():
    """T = inf and a stored Z far below float64's reciprocal range: the block-size guess
    1/Z is inf; the sampler must still draw (here a(z) is not tiny everywhere, so it ends)."""
    import math as _math

    from larsvae.distributions import AcceptanceMLP, ResampledPrior, StandardNormal

    torch.manual_seed(0)
    prior = ResampledPrior(StandardNormal(2), AcceptanceMLP(2, (4,)), truncation=None)
    prior.set_log_z(-800.0)  # exp(-800) = 0 in float64
    assert not _math.isfinite(prior.expected_num_proposals())
    z = prior.sample(16, generator=torch.Generator().manual_seed(1))
    assert z.shape == (16, 2) and torch.isfinite(z).all()
