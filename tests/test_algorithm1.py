"""Algorithm 1 (Appendix A.4): smoothed per-example Z in the forward pass, gradient of the
current Monte Carlo estimate in the backward pass, and the running <Z>."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from larsvae.distributions import AcceptanceMLP, ResampledPrior, StandardNormal, lars_log_density

S, B, D = 64, 12, 2


def make_prior(truncation, eps=0.1, seed=0) -> ResampledPrior:
    torch.manual_seed(seed)
    acc = AcceptanceMLP(D, hidden=(8,)).double()
    with torch.no_grad():
        acc.net[2].bias.fill_(-1.0)
    return ResampledPrior(StandardNormal(D).double(), acc, truncation, eps=eps, num_z_samples=S)


def data(seed=1):
    g = torch.Generator().manual_seed(seed)
    z = 0.5 + 0.8 * torch.randn(B, D, generator=g, dtype=torch.float64)
    # log q of a Gaussian "posterior" N(0.5, 0.8^2 I) that produced z
    log_q = (
        -0.5 * ((z - 0.5) / 0.8).pow(2).sum(1) - D * math.log(0.8) - 0.5 * D * math.log(2 * math.pi)
    )
    return z, log_q


def reference(prior, z, log_q, z_old, gen_seed):
    """Algorithm 1 written directly in Z space (not log space), float64.

    Returns (log density with straight-through Z_r, Z_curr, Z_smooth)."""
    zs = prior.proposal.sample(S, generator=torch.Generator().manual_seed(gen_seed))
    z_s = torch.sigmoid(prior.acceptance(zs)).mean()
    log_pi = prior.proposal.log_prob(z)
    a = torch.sigmoid(prior.acceptance(z))
    if log_q is None:
        z_curr = z_s.expand(B)
    else:
        w = torch.exp(log_pi - log_q).detach()
        z_curr = (S * z_s + w * a) / (S + 1)
    z_smooth = (1 - prior.eps) * z_old + prior.eps * z_curr.detach()
    z_r = z_curr + (z_smooth - z_curr).detach()
    T = prior.truncation
    if T is None:
        g = a / z_r
    else:
        tail = (1 - z_r) ** (T - 1)
        g = a * (1 - tail) / z_r + tail
    return log_pi + torch.log(g), z_curr.detach(), z_smooth


def grads(prior, loss):
    params = list(prior.acceptance.parameters())
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("truncation", [2, 10, 100, None])
@pytest.mark.parametrize("use_log_q", [True, False])
def test_forward_uses_smoothed_z_and_gradient_uses_current_z(truncation, use_log_q):
    prior = make_prior(truncation)
    z_old = 0.3
    prior.set_log_z(math.log(z_old))
    z, log_q = data()
    log_q = log_q if use_log_q else None

    out = prior.train_log_prob(z, log_q, generator=torch.Generator().manual_seed(42))
    ref, z_curr, z_smooth = reference(prior, z, log_q, z_old, 42)

    # Forward: the density evaluated at the per-example smoothed Z.
    with torch.no_grad():
        log_pi = prior.proposal.log_prob(z)
        log_a = F.logsigmoid(prior.acceptance(z))
        at_smooth = lars_log_density(log_pi, log_a, z_smooth.log(), truncation)
    torch.testing.assert_close(out.detach(), at_smooth, rtol=0, atol=1e-10)
    torch.testing.assert_close(out.detach(), ref.detach(), rtol=0, atol=1e-10)
    if use_log_q:
        assert float(z_curr.std()) > 1e-4  # the per-example correction is really exercised

    # Backward: the gradient flows through Z_curr (straight-through), matching the reference...
    weights = torch.linspace(0.5, 1.5, B, dtype=torch.float64)  # a generic linear functional
    g_out = grads(prior, (weights * out).sum())
    g_ref = grads(prior, (weights * ref).sum())
    for a, b in zip(g_out, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # ... and differs from the gradient with Z held fixed (so the check above can fail).
    held = lars_log_density(
        prior.proposal.log_prob(z), F.logsigmoid(prior.acceptance(z)), z_smooth.log(), truncation
    )
    g_held = grads(prior, (weights * held).sum())
    assert max(float((a - b).abs().max()) for a, b in zip(g_out, g_held, strict=True)) > 1e-4

    # Running <Z>: the mean of the smoothed values, kept in float64.
    assert prior.log_z.dtype == torch.float64
    assert prior.z == pytest.approx(float(z_smooth.mean()), rel=1e-12)


def test_log_q_none_uses_proposal_estimate_only():
    prior = make_prior(10, eps=1.0)
    prior.set_log_z(math.log(0.9))
    z, _ = data()
    prior.train_log_prob(z, None, generator=torch.Generator().manual_seed(3))
    zs = prior.proposal.sample(S, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        z_s = float(torch.sigmoid(prior.acceptance(zs)).mean())
    # eps = 1: <Z> is just the current estimate, which is Z_S for every example.
    assert prior.z == pytest.approx(z_s, rel=1e-12)


def test_first_call_initialises_running_z_with_current_estimate():
    prior = make_prior(10)
    assert not bool(prior.log_z_initialised)
    z, log_q = data()
    _, z_curr, _ = reference(prior, z, log_q, 0.0, 11)
    zs = prior.proposal.sample(S, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        z_s = float(torch.sigmoid(prior.acceptance(zs)).mean())
    prior.train_log_prob(z, log_q, generator=torch.Generator().manual_seed(11))
    assert bool(prior.log_z_initialised)
    expected = (1 - prior.eps) * z_s + prior.eps * float(z_curr.mean())
    assert prior.z == pytest.approx(expected, rel=1e-12)


def test_log_prob_and_eval_mode_never_move_running_z():
    prior = make_prior(10)
    prior.set_log_z(math.log(0.25))
    z, log_q = data()
    prior.log_prob(z)
    prior.eval()
    prior.train_log_prob(z, log_q)
    assert float(prior.log_z) == math.log(0.25)
    prior.train()
    prior.train_log_prob(z, log_q)
    assert float(prior.log_z) != math.log(0.25)


def test_running_z_converges_to_true_z():
    # With a fixed acceptance, <Z> is an exponential moving average of unbiased estimates.
    prior = make_prior(None, eps=0.05)
    h = 0.02
    x = torch.arange(-9.0, 9.0 + h / 2, h, dtype=torch.float64)
    pts = torch.cartesian_prod(x, x)
    with torch.no_grad():
        true_z = float(
            (prior.proposal.log_prob(pts).exp() * torch.sigmoid(prior.acceptance(pts))).sum()
        ) * (h * h)
    prior.num_z_samples = 1024
    z, _ = data()
    torch.manual_seed(0)
    trace = []
    for step in range(400):
        prior.train_log_prob(z, None)
        if step >= 100:
            trace.append(prior.z)
    # The EMA's sd is about sd(a)/sqrt(1024) * sqrt(eps / (2 - eps)) ~ 1e-3; the trace mean
    # is much tighter, but its samples are correlated, so allow a generous margin.
    assert sum(trace) / len(trace) == pytest.approx(true_z, abs=2e-3)


def test_huge_importance_weights_stay_finite():
    for truncation in [None, 10]:
        prior = make_prior(truncation)
        prior.set_log_z(math.log(0.3))
        z, log_q = data()
        log_q = log_q - 1e4  # w_r = pi/q ~ exp(1e4): overflows float64 outside log space
        if truncation is None:
            out = prior.train_log_prob(z, log_q)
        else:
            with pytest.warns(RuntimeWarning, match="exceed 1"):
                out = prior.train_log_prob(z, log_q)
        assert torch.isfinite(out).all()
        assert all(torch.isfinite(g).all() for g in grads(prior, out.sum()))
        assert math.isfinite(float(prior.log_z)) and float(prior.log_z) > 9000


class LearnableGaussian(torch.nn.Module):
    """N(mu, I) with a learnable mean and a reparameterised sampler."""

    symmetric = False

    def __init__(self, dim):
        super().__init__()
        self.dim = dim
        self.mu = torch.nn.Parameter(torch.full((dim,), 0.3, dtype=torch.float64))

    def log_prob(self, z):
        return -0.5 * (z - self.mu).pow(2).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)

    def rsample(self, n, generator=None):
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.mu + eps

    def sample(self, n, generator=None):
        with torch.no_grad():
            return self.rsample(n, generator)


def test_trainable_proposal_gets_pathwise_gradient_of_z():
    acc = make_prior(None).acceptance
    prior = ResampledPrior(LearnableGaussian(D), acc, None, num_z_samples=S)
    prior.set_log_z(math.log(0.3))
    z, _ = data()
    out = prior.train_log_prob(z, None, generator=torch.Generator().manual_seed(8))
    (g_mu,) = torch.autograd.grad(out.sum(), [prior.proposal.mu])
    # Reference: d/dmu [sum_r log pi_mu(z_r) + B * (-Z_curr(mu) / Z_smooth)], Z_curr pathwise.
    eps = torch.randn(S, D, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    mu = prior.proposal.mu
    z_curr = torch.sigmoid(acc(mu + eps)).mean()
    z_smooth = float(z_curr.detach()) * prior.eps + 0.3 * (1 - prior.eps)
    ref = prior.proposal.log_prob(z).sum() - B * z_curr / z_smooth
    (g_ref,) = torch.autograd.grad(ref, [mu])
    torch.testing.assert_close(g_mu, g_ref, rtol=1e-9, atol=1e-12)
