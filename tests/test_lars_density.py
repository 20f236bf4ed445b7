"""LARS densities (Eq. A.7, Eq. A.14): normalisation by quadrature, first principles,
high-precision references at extreme Z, and the state of the Z buffer."""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import grid_1d, grid_2d, strong_acceptance

from larsvae.distributions import AcceptanceMLP, ResampledPrior, StandardNormal, lars_log_density

TRUNCATIONS = [1, 2, 10, 100, None]


def quadrature_log_z(prior: ResampledPrior, pts: torch.Tensor, w: torch.Tensor) -> float:
    with torch.no_grad():
        integrand = prior.proposal.log_prob(pts).exp() * torch.sigmoid(prior.acceptance(pts))
    return math.log(float((integrand * w).sum()))


def make_prior(dim: int, truncation) -> ResampledPrior:
    return ResampledPrior(StandardNormal(dim).double(), strong_acceptance(dim), truncation)


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("truncation", TRUNCATIONS)
def test_density_integrates_to_one(dim, truncation):
    pts, w = grid_1d() if dim == 1 else grid_2d()
    prior = make_prior(dim, truncation)
    log_z = quadrature_log_z(prior, pts, w)
    assert 0.02 < math.exp(log_z) < 0.5  # a non-trivial acceptance
    prior.set_log_z(log_z)
    with torch.no_grad():
        total = float((prior.log_prob(pts).exp() * w).sum())
    assert total == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("truncation", [10, None])
def test_wrong_z_breaks_normalisation(truncation):
    pts, w = grid_1d()
    prior = make_prior(1, truncation)
    prior.set_log_z(quadrature_log_z(prior, pts, w) + math.log(1.2))
    with torch.no_grad():
        total = float((prior.log_prob(pts).exp() * w).sum())
    assert abs(total - 1.0) > 0.01


def test_truncation_at_two_from_first_principles():
    # T = 2: accept z_1 with prob a(z_1), else take z_2: p(z) = pi(z) a(z) + (1 - Z) pi(z).
    prior = make_prior(2, 2)
    prior.set_log_z(math.log(0.3))
    z = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pi = prior.proposal.log_prob(z).exp()
        a = torch.sigmoid(prior.acceptance(z))
        expected = torch.log(pi * a + 0.7 * pi)
        torch.testing.assert_close(prior.log_prob(z), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("truncation", [3, 10])
def test_truncated_density_series_form(truncation):
    # p(z) = pi(z) [sum_{t<T} (1-Z)^(t-1) a(z) + (1-Z)^(T-1)]: accepted at step t < T, or forced.
    prior = make_prior(1, truncation)
    Z = 0.37
    prior.set_log_z(math.log(Z))
    z = torch.linspace(-4, 4, 33, dtype=torch.float64)[:, None]
    with torch.no_grad():
        pi = prior.proposal.log_prob(z).exp()
        a = torch.sigmoid(prior.acceptance(z))
        series = sum((1 - Z) ** (t - 1) for t in range(1, truncation)) * a + (1 - Z) ** (
            truncation - 1
        )
        torch.testing.assert_close(prior.log_prob(z), torch.log(pi * series), rtol=0, atol=1e-12)


def _mp_reference(log_pi: float, log_a: float, log_z: float, truncation) -> float:
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(60):
        lp, la, lz = mpmath.mpf(log_pi), mpmath.mpf(log_a), mpmath.mpf(log_z)
        if truncation is None:
            return float(lp + la - lz)
        Z = mpmath.exp(lz)
        log_tail = (truncation - 1) * mpmath.log1p(-Z)
        head = -mpmath.expm1(log_tail)
        return float(lp + mpmath.log(mpmath.exp(la) * head / Z + mpmath.exp(log_tail)))


@pytest.mark.parametrize("truncation", [2, 10, 100, 10**6, None])
@pytest.mark.parametrize("log_z", [-1000.0, -50.0, -20.5, -19.5, -3.0, -0.7, -0.69, -1e-6, -1e-11])
def test_log_space_formula_matches_high_precision(truncation, log_z):
    log_pi = torch.tensor([-1.3, -7.0, -1.3], dtype=torch.float64)
    log_a = torch.tensor([-0.01, -5.0, -40.0], dtype=torch.float64)
    got = lars_log_density(log_pi, log_a, torch.tensor(log_z, dtype=torch.float64), truncation)
    assert torch.isfinite(got).all()
    for i in range(3):
        ref = _mp_reference(float(log_pi[i]), float(log_a[i]), log_z, truncation)
        assert float(got[i]) == pytest.approx(ref, rel=1e-11, abs=1e-11)


def test_underflowing_z_gives_finite_log_prob_and_gradients():
    prior = make_prior(2, None)
    prior.set_log_z(-1000.0)
    z = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    lp = prior.log_prob(z)
    with torch.no_grad():
        expected = prior.proposal.log_prob(z) + torch.nn.functional.logsigmoid(prior.acceptance(z))
    torch.testing.assert_close(lp, expected + 1000.0, rtol=0, atol=1e-9)
    for truncation, log_z in [(100, -1000.0), (100, -1e-15), (100, 0.0), (2, 0.0)]:
        prior = make_prior(2, truncation)
        prior.set_log_z(log_z)
        lp = prior.log_prob(z)
        lp.sum().backward()
        assert torch.isfinite(lp).all()
        assert all(torch.isfinite(p.grad).all() for p in prior.acceptance.parameters())


def test_z_equal_one_limit():
    # Z = 1 means a = 1 almost everywhere; with a(z) = 1 the density is pi for every T.
    log_pi = torch.tensor([-2.0, -3.0], dtype=torch.float64)
    log_a = torch.zeros(2, dtype=torch.float64)
    for truncation in [2, 10, None]:
        got = lars_log_density(log_pi, log_a, torch.tensor(0.0, dtype=torch.float64), truncation)
        torch.testing.assert_close(got, log_pi, rtol=0, atol=1e-11)


def test_truncation_one_is_exactly_the_proposal():
    prior = ResampledPrior(StandardNormal(3), AcceptanceMLP(3), truncation=1)
    prior.set_log_z(math.log(0.01))
    z = torch.randn(100, 3)
    assert torch.equal(prior.log_prob(z), prior.proposal.log_prob(z))
    assert torch.equal(prior.train_log_prob(z, torch.zeros(100)), prior.proposal.log_prob(z))


def test_per_example_log_z_matches_scalar_calls():
    log_pi = torch.randn(5, dtype=torch.float64)
    log_a = -torch.rand(5, dtype=torch.float64) * 5
    log_z = torch.tensor([-0.1, -1.0, -5.0, -30.0, -300.0], dtype=torch.float64)
    for truncation in [10, None]:
        batched = lars_log_density(log_pi, log_a, log_z, truncation)
        for i in range(5):
            single = lars_log_density(log_pi[i : i + 1], log_a[i : i + 1], log_z[i], truncation)
            assert float(batched[i]) == float(single[0])


def test_log_prob_keeps_input_dtype_and_never_moves_z():
    prior = ResampledPrior(StandardNormal(2), AcceptanceMLP(2), truncation=10)
    prior.set_log_z(-1.5)
    z = torch.randn(8, 2)
    assert prior.log_prob(z).dtype == torch.float32
    prior.eval()
    prior.train_log_prob(z, torch.zeros(8))
    assert float(prior.log_z) == -1.5


def test_log_prob_without_estimate_uses_transient_one():
    torch.manual_seed(3)
    prior = ResampledPrior(
        StandardNormal(2), strong_acceptance(2).float(), None, num_z_samples=4096
    )
    z = torch.randn(4, 2)
    lp = prior.log_prob(z)
    assert not bool(prior.log_z_initialised) and float(prior.log_z) == 0.0
    pts, w = grid_2d()
    prior_q = make_prior(2, None)
    log_z = quadrature_log_z(prior_q, pts, w)
    with torch.no_grad():
        ref = prior.proposal.log_prob(z) + torch.nn.functional.logsigmoid(prior.acceptance(z))
    # 4096 samples: log Z to within ~10 %.
    assert torch.allclose(lp, ref - log_z, atol=0.1)


def test_log_z_buffer_state():
    prior = ResampledPrior(StandardNormal(2), AcceptanceMLP(2), truncation=None)
    v = math.log(1.2345678901234567e-7)
    prior.set_log_z(v)
    prior.float()
    assert prior.log_z.dtype == torch.float64 and float(prior.log_z) == v
    sd = prior.state_dict()
    assert {"log_z", "log_z_initialised"} <= set(sd)
    other = ResampledPrior(StandardNormal(2), AcceptanceMLP(2), truncation=None)
    other.load_state_dict(sd)
    assert float(other.log_z) == v and bool(other.log_z_initialised)
    assert other.z == pytest.approx(1.2345678901234567e-7, rel=1e-15)
    for bad in [0.1, math.nan, math.inf]:
        with pytest.raises(ValueError, match="log_z"):
            prior.set_log_z(bad)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"truncation": 0}, "truncation"),
        ({"truncation": 2.0}, "truncation"),
        ({"truncation": True}, "truncation"),
        ({"eps": 0.0}, "eps"),
        ({"eps": 1.5}, "eps"),
        ({"num_z_samples": 0}, "num_z_samples"),
    ],
)
def test_constructor_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ResampledPrior(StandardNormal(2), AcceptanceMLP(2), **kwargs)


@pytest.mark.parametrize("truncation", [1, 2, 7, 100, None])
@pytest.mark.parametrize("Z", [1e-12, 0.03, 0.5, 1.0])
def test_expected_num_proposals(truncation, Z):
    prior = ResampledPrior(StandardNormal(1), AcceptanceMLP(1), truncation=truncation)
    prior.set_log_z(math.log(Z))
    if truncation is None:
        expected = 1 / Z
    else:  # E[N] = sum_{t=1}^T P(N >= t) = sum_{t=1}^T (1-Z)^(t-1)
        expected = math.fsum((1 - Z) ** (t - 1) for t in range(1, truncation + 1))
    assert prior.expected_num_proposals() == pytest.approx(expected, rel=1e-9)
    assert prior.acceptance_rate == pytest.approx(Z, rel=1e-15)


def test_acceptance_mlp_architecture_and_glorot_init():
    torch.manual_seed(0)
    acc = AcceptanceMLP(50)
    linears = [m for m in acc.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(50, 100), (100, 100), (100, 1)]
    assert sum(isinstance(m, torch.nn.Tanh) for m in acc.net) == 2
    for m in linears:
        bound = math.sqrt(6.0 / (m.in_features + m.out_features))
        assert float(m.weight.detach().abs().max()) <= bound
        assert torch.count_nonzero(m.bias) == 0
        if m.weight.numel() >= 1000:  # uniform(-b, b) has sd b / sqrt(3)
            assert float(m.weight.detach().std()) == pytest.approx(bound / math.sqrt(3), rel=0.05)
    z = torch.randn(7, 50)
    assert acc(z).shape == (7,)
