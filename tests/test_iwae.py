"""IWAE log-likelihood (larsvae.evaluation) against closed forms.

A linear-Gaussian model p(z) = N(0, I), p(x|z) = N(Wz + b, sigma^2 I) has
log p(x) = log N(x; b, W W^T + sigma^2 I), an exact Gaussian posterior and a closed-form
ELBO for any Gaussian q, so the IWAE estimator's bias, monotonicity in K and exactness
under the true posterior can all be checked against exact numbers. The Z-sensitivity of
the NLL for LARS priors is checked against finite differences.
"""

from __future__ import annotations

import math
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from larsvae.config import ModelConfig
from larsvae.distributions import AcceptanceMLP, ResampledPrior, StandardNormal
from larsvae.evaluation import (
    dlogp_dlogz,
    iwae_log_likelihood,
    nll_summary,
    nll_z_error,
)
from larsvae.models import VAE, build_model

LOG_2PI = math.log(2 * math.pi)


pytestmark = pytest.mark.usefixtures("single_thread")


class LinearGaussian(nn.Module):
    """p(z) = N(0, I_d), p(x|z) = N(Wz + b, sigma^2 I_D) with q(z|x) either the exact
    posterior or a deliberately imperfect diagonal Gaussian (shifted mean, inflated std).

    Same ``log_weights(x, k, generator=None, noise=None)`` interface as the VAE family.
    """

    num_layers = 1

    def __init__(self, d=2, D=4, sigma=0.5, exact=False, shift=0.5, std_scale=1.3, seed=0):
        super().__init__()
        self.latent_dim = d
        g = torch.Generator().manual_seed(seed)
        dt = torch.float64
        self.register_buffer("W", torch.randn(D, d, generator=g, dtype=dt))
        self.register_buffer("b", torch.randn(D, generator=g, dtype=dt))
        self.sigma = sigma
        self.d, self.D = d, D
        post_cov = torch.linalg.inv(torch.eye(d, dtype=dt) + self.W.T @ self.W / sigma**2)
        self.register_buffer("post_cov", post_cov)
        if exact:
            self.register_buffer("q_tril", torch.linalg.cholesky(post_cov))
            self.q_shift = 0.0
        else:  # ignores posterior correlations; mean off by `shift` posterior std's
            post_std = post_cov.diagonal().sqrt()
            self.register_buffer("q_tril", torch.diag(std_scale * post_std))
            self.q_shift = shift * post_std

    def q_mean(self, x):  # (B, D) -> (B, d)
        return (x - self.b) @ self.W @ self.post_cov / self.sigma**2 + self.q_shift

    def log_joint(self, x, z):  # (B, D), (B, K, d) -> (B, K)
        mean_x = z @ self.W.T + self.b
        log_px_z = (
            -0.5 * ((x.unsqueeze(1) - mean_x) ** 2).sum(-1) / self.sigma**2
            - self.D * math.log(self.sigma)
            - 0.5 * self.D * LOG_2PI
        )
        log_pz = -0.5 * (z**2).sum(-1) - 0.5 * self.d * LOG_2PI
        return log_px_z + log_pz

    def q(self, x):
        return torch.distributions.MultivariateNormal(
            self.q_mean(x).unsqueeze(1), scale_tril=self.q_tril
        )

    def log_weights(self, x, k, generator=None, *, noise=None):
        if noise is None:
            eps = torch.randn(x.shape[0], k, self.d, generator=generator, dtype=x.dtype)
        else:
            eps = noise[:, 0]  # (B, k, d)
        z = self.q_mean(x).unsqueeze(1) + eps @ self.q_tril.T  # (B, K, d)
        return self.log_joint(x, z) - self.q(x).log_prob(z)

    def exact_log_px(self, x):
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.D, dtype=x.dtype)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)

    def exact_elbo(self, x):
        """E_q[log p(x|z) + log p(z) - log q(z|x)] in closed form."""
        m, S = self.q_mean(x), self.q_tril @ self.q_tril.T
        resid = x - m @ self.W.T - self.b
        e_log_px = (
            -0.5 * ((resid**2).sum(-1) + torch.trace(self.W @ S @ self.W.T)) / self.sigma**2
            - self.D * math.log(self.sigma)
            - 0.5 * self.D * LOG_2PI
        )
        e_log_pz = -0.5 * ((m**2).sum(-1) + torch.trace(S)) - 0.5 * self.d * LOG_2PI
        entropy = 0.5 * self.d * (1 + LOG_2PI) + 0.5 * torch.logdet(S)
        return e_log_px + e_log_pz + entropy


def _data(model, n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, model.d, generator=g, dtype=torch.float64)
    return (
        z @ model.W.T
        + model.b
        + model.sigma * torch.randn(n, model.D, generator=g, dtype=torch.float64)
    )


def test_exact_posterior_gives_exact_log_likelihood_for_any_k():
    model = LinearGaussian(exact=True)
    x = _data(model)
    exact = model.exact_log_px(x)
    for k, k_chunk, batch in ((1, 1, 5), (3, 2, 2), (1000, 64, 3)):
        est = iwae_log_likelihood(model, x, k=k, batch_size=batch, k_chunk=k_chunk, seed=0)
        assert est.dtype == torch.float64 and est.shape == (5,)
        torch.testing.assert_close(est, exact, rtol=0, atol=1e-10)


def test_iwae_bias_shrinks_with_k_and_never_exceeds_log_px():
    model = LinearGaussian()
    x = _data(model)
    exact = model.exact_log_px(x)
    elbo = model.exact_elbo(x)
    assert (exact - elbo > 0.1).all()  # q is far enough off for the test to have teeth
    reps = 2000
    x_rep = x.repeat_interleave(reps, 0)  # every row an independent IWAE estimate
    means, bias = {}, {}
    for k in (1, 10, 100):
        est = iwae_log_likelihood(model, x_rep, k=k, batch_size=2000, k_chunk=50, seed=k)
        est = est.view(5, reps)
        mean, se = est.mean(1), est.std(1) / math.sqrt(reps)
        means[k] = mean
        bias[k] = exact - mean
        # Jensen: E[IWAE_K] <= log p(x); allow 4 standard errors of Monte Carlo noise.
        assert (mean <= exact + 4 * se).all(), (k, mean - exact, se)
        # ... and E[IWAE_K] >= ELBO (= E[IWAE_1]).
        assert (mean >= elbo - 4 * se).all(), (k, mean - elbo, se)
        if k == 1:  # K = 1 is an unbiased estimate of the closed-form ELBO
            assert ((mean - elbo).abs() <= 4 * se).all(), (mean - elbo, se)
    # The bias decreases with K (asymptotically ~ Var(w)/(2K)).
    assert (bias[10] < 0.5 * bias[1]).all() and (bias[100] < 0.5 * bias[10]).all(), bias
    # K = 1e4 per data point: within a tight tolerance of the exact value.
    est = iwae_log_likelihood(model, x, k=10_000, batch_size=5, k_chunk=2048, seed=7)
    assert (est - exact).abs().max() < 0.03, est - exact  # SD ~ sqrt(Var(w/p)/K) ~ 0.007
    assert abs(float((est - exact).mean())) < 0.015
    assert bias[1].min() > 0.3  # vs ~0.42 nats ELBO gap


def test_iwae_is_seeded_and_restores_training_mode():
    model = LinearGaussian()
    x = _data(model)
    model.train()
    a = iwae_log_likelihood(model, x, k=50, k_chunk=16, seed=3)
    b = iwae_log_likelihood(model, x, k=50, k_chunk=16, generator=torch.Generator().manual_seed(3))
    c = iwae_log_likelihood(model, x, k=50, k_chunk=16, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert model.training
    with pytest.raises(ValueError, match="k_chunk"):
        iwae_log_likelihood(model, x, k=50, k_chunk=0)


class ShiftedLinearGaussian(LinearGaussian):
    """Every log weight shifted by ``shift``: log p(x) shifts by exactly the same."""

    def __init__(self, shift):
        super().__init__(exact=True)
        self.shift = shift

    def log_weights(self, x, k, generator=None, *, noise=None):
        return super().log_weights(x, k, generator, noise=noise) + self.shift


@pytest.mark.parametrize("shift", [-1e4, 2e3])
def test_logsumexp_keeps_extreme_weights(shift):
    """All weights tiny (log w ~ -1e4: exp underflows) or huge: the float64 log-sum-exp
    is exact."""
    model = ShiftedLinearGaussian(shift)
    x = _data(model, n=3)
    est = iwae_log_likelihood(model, x, k=200, batch_size=2, k_chunk=30, seed=0)
    torch.testing.assert_close(est, model.exact_log_px(x) + shift, rtol=0, atol=1e-9)


def _vae(arch="vae", seed=0, prior="gaussian"):
    cfg = ModelConfig(latent_dim=8, hidden=32, acceptance_hidden=(16, 16))
    torch.manual_seed(seed)
    return build_model(arch, prior, cfg)


@pytest.mark.parametrize("arch", ["vae", "hvae"])
def test_iwae_matches_the_per_point_loop_for_any_chunking(arch):
    """The noise is drawn point by point, so chunking never changes the estimate: every
    (batch_size, k_chunk) gives the numbers of log_weights(x_i, k, generator) called point
    after point with the same generator (k * L * d = 64 * 8 * L, a multiple of 16), up to
    float32 rounding: the encoder runs on several points at once here (another BLAS
    kernel than for one point; at K = 1000 on the CPU it is one point per call, bitwise)."""
    model = _vae(arch).eval()
    x = _x(5).float()
    k = 64
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        loop = torch.stack(
            [
                torch.logsumexp(model.log_weights(x[i : i + 1], k, generator=g)[0].double(), 0)
                for i in range(5)
            ]
        ) - math.log(k)
    for batch, chunk in ((1, 1), (2, 7), (5, 64), (100, 1000)):
        est = iwae_log_likelihood(model, x, k=k, batch_size=batch, k_chunk=chunk, seed=3)
        torch.testing.assert_close(est, loop, rtol=1e-6, atol=0)  # |log p| ~ 540 here


def test_evaluation_path_equals_the_training_path_up_to_rounding():
    """Without autograd the VAE sums log p(x|z) another way (x.l from the last hidden layer,
    tanh via sigmoid on the CPU, cache-sized tiles); it is the same function of the noise,
    also for logits far beyond the softplus threshold."""
    model = _vae().eval()
    with torch.no_grad():
        model.decoder[-1].weight.mul_(40.0)  # logits of several hundred
    x = _x(3).float()
    noise = torch.randn(3, 1, 300, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast = model.log_weights(x, 300, noise=noise)
    plain = model.log_weights(x, 300, noise=noise).detach()  # autograd on: the modules as is
    assert plain.abs().max() > 1e3
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-4)


# -- Z sensitivity (LARS) ----------------------------------------------------------------


def _lars_prior(dim, truncation, log_z, seed=0):
    torch.manual_seed(seed)
    prior = ResampledPrior(StandardNormal(dim), AcceptanceMLP(dim, (16, 16)), truncation=truncation)
    # A larger last layer gives a(z) values spread over (0, 1).
    with torch.no_grad():
        prior.acceptance.net[-1].weight.mul_(4.0)
    prior.double()
    prior.set_log_z(log_z)
    return prior


@pytest.mark.parametrize("truncation", [1, 2, 5, 100, None])
@pytest.mark.parametrize("z", [1e-3, 0.3, 0.9])
def test_dlogp_dlogz_matches_finite_difference_of_log_prob(truncation, z):
    prior = _lars_prior(3, truncation, math.log(z))
    zs = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = dlogp_dlogz(prior, zs)
    h = 1e-5
    prior.set_log_z(math.log(z) + h)
    up = prior.log_prob(zs)
    prior.set_log_z(math.log(z) - h)
    down = prior.log_prob(zs)
    torch.testing.assert_close(g, (up - down) / (2 * h), rtol=1e-6, atol=1e-8)
    if truncation is None:
        assert torch.equal(g, -torch.ones_like(g))
    if truncation == 5 and z == 0.3:  # finite T: the sensitivity depends on a(z)
        assert g.std() > 1e-3


def _small_lars_vae(truncation):
    cfg = ModelConfig(latent_dim=4, hidden=32, acceptance_hidden=(16, 16), truncation=truncation)
    torch.manual_seed(0)
    model = build_model("vae", "lars", cfg).double()
    with torch.no_grad():
        model.top_prior.acceptance.net[-1].weight.mul_(4.0)
    model.top_prior.set_log_z(math.log(0.3))
    return model


def _x(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 784, generator=g) < 0.3).double()


@pytest.mark.parametrize("truncation", [3, None])
def test_nll_z_sensitivity_matches_finite_difference(truncation):
    model = _small_lars_vae(truncation)
    x = _x()
    s = nll_summary(model, x, k=64, batch_size=4, k_chunk=24, seed=0)
    torch.testing.assert_close(
        s.log_px, iwae_log_likelihood(model, x, k=64, batch_size=4, k_chunk=24, seed=0)
    )
    assert s.nll == pytest.approx(float(-s.log_px.mean()), rel=1e-12)
    assert s.nll_stderr == pytest.approx(float(s.log_px.std() / math.sqrt(6)), rel=1e-12)
    h = 1e-5
    nll = {}
    for sign in (1, -1):
        model.top_prior.set_log_z(math.log(0.3) + sign * h)
        lp = iwae_log_likelihood(model, x, k=64, batch_size=4, k_chunk=24, seed=0)
        nll[sign] = float(-lp.mean())
    fd = (nll[1] - nll[-1]) / (2 * h)
    assert s.dnll_dlogz == pytest.approx(fd, rel=1e-5, abs=1e-8)
    if truncation is None:
        assert s.dnll_dlogz == pytest.approx(1.0, abs=1e-12)  # Eq. A.7: log p = ... - log Z
    else:  # with T = 3 a rejected run is cut short, so Z matters less than for T = inf
        assert 0.0 < s.dnll_dlogz < 0.95


def test_nll_summary_propagates_z_stderr_and_checks_installed_z():
    model = _small_lars_vae(3)
    x = _x()
    z_est = SimpleNamespace(mean=0.3, stderr=0.003)
    s = nll_summary(model, x, k=16, seed=0, z_estimate=z_est)
    assert s.z_rel_stderr == pytest.approx(0.01)
    assert s.nll_z_stderr == pytest.approx(abs(s.dnll_dlogz) * 0.01)
    assert s.nll_z_stderr == pytest.approx(nll_z_error(s.dnll_dlogz, 0.3, 0.003))
    assert set(s.to_dict()) >= {"nll", "nll_stderr", "dnll_dlogz", "nll_z_stderr"}
    with pytest.raises(ValueError, match="set_log_z"):
        nll_summary(model, x, k=16, seed=0, z_estimate=SimpleNamespace(mean=0.5, stderr=0.01))


def test_gaussian_prior_has_no_z_sensitivity():
    cfg = ModelConfig(latent_dim=4, hidden=32)
    torch.manual_seed(0)
    model = VAE(StandardNormal(4), cfg)
    s = nll_summary(model, _x().float(), k=8, seed=0)
    assert s.dnll_dlogz == 0.0 and s.nll_z_stderr == 0.0 and math.isfinite(s.nll)


def test_lars_model_without_z_estimate_is_rejected():
    cfg = ModelConfig(latent_dim=4, hidden=32, acceptance_hidden=(16, 16))
    torch.manual_seed(0)
    model = build_model("vae", "lars", cfg)
    with pytest.raises(ValueError, match="set_log_z"):
        iwae_log_likelihood(model, _x().float(), k=4, seed=0)
    model.top_prior.set_log_z(-0.7)
    ll = iwae_log_likelihood(model, _x().float(), k=4, seed=0, progress=True)
    assert torch.isfinite(ll).all()


def test_progress_bar_without_tqdm(monkeypatch):
    """tqdm is optional (CLI extra): progress=True then runs without a bar, same numbers."""
    model = LinearGaussian()
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = iwae_log_likelihood(model, x, k=8, k_chunk=3, seed=0)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    ll = iwae_log_likelihood(model, x, k=8, k_chunk=3, seed=0, progress=True)
    assert torch.equal(ll, ref)


def test_iwae_of_an_snis_prior_follows_its_seed_not_the_global_rng():
    """SNIS's log p(z) draws auxiliary proposals: iwae_log_likelihood draws them, tile after
    tile, from its one seeded generator, so a seed fixes the estimate whatever the global RNG
    holds."""
    cfg = ModelConfig(latent_dim=3, hidden=16, snis_proposals=8, energy_hidden=(8,))
    torch.manual_seed(0)
    model = build_model("vae", "snis", cfg)
    x = (torch.rand(5, 784, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    runs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        runs.append(iwae_log_likelihood(model, x, k=16, batch_size=2, k_chunk=8, seed=3))
    assert torch.equal(runs[0], runs[1])
    other = iwae_log_likelihood(model, x, k=16, batch_size=2, k_chunk=8, seed=4)
    assert not torch.equal(runs[0], other)
