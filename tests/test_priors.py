"""The comparison priors (VampPrior, mixture of Gaussians, TRS, SNIS, dimension-wise LARS):
normalisation by quadrature, samplers against their densities, the bounds' direction and
tightness, hand-derived identities and gradients, and a VAE built with each prior."""

from __future__ import annotations

import math

import plan
import pytest
import torch
from _helpers import grid_1d, grid_2d, strong_acceptance
from scipy import stats

import larsvae
from larsvae import config as C
from larsvae.distributions import (
    DimwiseResampledPrior,
    MixtureOfGaussians,
    SNISPrior,
    StandardNormal,
    TRSPrior,
    VampPrior,
    build_prior,
    lars_log_density,
)
from larsvae.distributions.energy import trs_expected_rejections, trs_log_bound
from larsvae.models import build_model, top_posterior

NEW_PRIORS = ("vamp", "vamp_sg", "mog", "trs", "snis", "lars_dim")


def integral(prior, pts, w, **kw) -> float:
    with torch.no_grad():
        return float((prior.log_prob(pts, **kw).exp() * w).sum())


def cdf_of(log_density: torch.Tensor, x: torch.Tensor):
    """CDF by cumulative trapezoid of a density tabulated on the 1-D grid x."""
    p = log_density.exp()
    c = torch.cat([p.new_zeros(1), torch.cumsum((p[1:] + p[:-1]) / 2 * torch.diff(x), 0)])
    c = (c / c[-1]).numpy()
    xs = x.numpy()
    return lambda v: torch.from_numpy(__import__("numpy").interp(v, xs, c)).numpy()


def fixed_mog(dim: int) -> MixtureOfGaussians:
    torch.manual_seed(0)
    mog = MixtureOfGaussians(dim, num_components=3).double()
    with torch.no_grad():
        mog.means.copy_(torch.tensor([[-2.0, 1.0], [0.5, -1.0], [2.5, 2.0]])[:, :dim])
        mog.log_stds.copy_(torch.tensor([[-0.7, 0.2], [0.3, -0.5], [-1.2, 0.0]])[:, :dim])
        mog.logits.copy_(torch.tensor([0.0, 1.0, -0.5]))
    return mog


class LinearEncoder(torch.nn.Module):
    """x (K, P) -> a Gaussian on R^dim: a fixed linear map, so the VampPrior's components
    are known in closed form."""

    def __init__(self, data_dim: int, dim: int):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.wm = torch.randn(data_dim, dim, generator=g, dtype=torch.float64)
        self.ws = 0.5 * torch.randn(data_dim, dim, generator=g, dtype=torch.float64)

    def forward(self, x):
        return 3.0 * (x - 0.5) @ self.wm, (x - 0.5) @ self.ws - 0.5


def fixed_vamp(dim: int) -> VampPrior:
    torch.manual_seed(0)
    vamp = VampPrior(dim, num_components=4, data_dim=6).double()
    vamp.bind_encoder(LinearEncoder(6, dim))
    with torch.no_grad():
        vamp.pseudo_logits.normal_(0.0, 2.0)
    return vamp


# -- the key sets of the existing cells ------------------------------------------------------

#: model keys of the five priors before the comparison priors were added (arch "vae")
EXISTING_MODEL_KEYS = {
    "gaussian": ("latent_dim", "hidden"),
    "lars": ("latent_dim", "hidden", "acceptance_hidden", "truncation", "eps", "train_z_samples"),
    "realnvp": ("latent_dim", "hidden", "flow_hidden", "realnvp_couplings"),
    "maf": ("latent_dim", "hidden", "flow_hidden", "maf_blocks"),
    "lars_realnvp": (
        "latent_dim",
        "hidden",
        "acceptance_hidden",
        "truncation",
        "eps",
        "train_z_samples",
        "flow_hidden",
        "realnvp_couplings",
    ),
}


@pytest.mark.parametrize("arch", C.ARCHS)
@pytest.mark.parametrize("prior", sorted(EXISTING_MODEL_KEYS))
def test_existing_priors_read_the_same_keys(prior, arch):
    want = EXISTING_MODEL_KEYS[prior]
    if arch in C.OUTPUT_LARS_ARCHS:
        want += tuple(k for k in C.OUTPUT_LARS_KEYS if k not in want)
    assert C.model_keys(prior, arch) == want
    assert plan.step_keys("train", prior, arch)["model"] == want
    assert plan.step_keys("train_posthoc", prior, arch)["model"] == EXISTING_MODEL_KEYS["lars"]
    assert C.has_z(prior, arch, "standard") == (
        prior in ("lars", "lars_realnvp") or arch == "vae_rx"
    )


def test_new_priors_are_wired_into_config_factory_and_top_level():
    assert set(NEW_PRIORS) <= set(C.PRIORS) and set(C.PRIORS) == set(C.PRIOR_GROUPS)
    # TRS is the LARS sampler: a Z to estimate; the others have exact densities or bounds
    assert [C.has_z(p, "vae", "standard") for p in NEW_PRIORS] == [
        False,
        False,
        False,
        True,
        False,
        False,
    ]
    assert (
        C.model_keys("vamp")
        == C.model_keys("vamp_sg")
        == C.model_keys("mog")
        == ("latent_dim", "hidden", "mixture_components")
    )
    assert C.model_keys("trs") == EXISTING_MODEL_KEYS["lars"]
    assert set(C.model_keys("snis")) == {"latent_dim", "hidden", "snis_proposals", "energy_hidden"}
    assert set(C.model_keys("lars_dim")) == {
        "latent_dim",
        "hidden",
        "dimwise_hidden",
        "dimwise_truncation",
    }
    cfg = C.model_config({"mixture_components": 7, "snis_proposals": 5, "dimwise_truncation": None})
    kinds = {p: type(build_prior(p, 3, cfg)) for p in NEW_PRIORS}
    assert kinds == {
        "vamp": VampPrior,
        "vamp_sg": VampPrior,
        "mog": MixtureOfGaussians,
        "trs": TRSPrior,
        "snis": SNISPrior,
        "lars_dim": DimwiseResampledPrior,
    }
    assert build_prior("vamp", 3, cfg).encoder_gradient
    assert not build_prior("vamp_sg", 3, cfg).encoder_gradient
    assert build_prior("mog", 3, cfg).num_components == 7
    assert build_prior("snis", 3, cfg).num_proposals == 5
    assert build_prior("lars_dim", 3, cfg).truncation is None
    for name in (
        "VampPrior",
        "MixtureOfGaussians",
        "TRSPrior",
        "SNISPrior",
        "DimwiseResampledPrior",
    ):
        assert name in larsvae.__all__ and getattr(larsvae, name).__name__ == name
    with pytest.raises(C.ConfigError, match=r"^model\.mixture_components"):
        C.model_config({"mixture_components": 0})


# -- mixtures ---------------------------------------------------------------------------------


def test_mixture_of_gaussians_matches_torch_distributions_and_integrates_to_one():
    mog = fixed_mog(2)
    pts, w = grid_2d()
    assert integral(mog, pts, w) == pytest.approx(1.0, abs=1e-6)
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=mog.logits.detach()),
        torch.distributions.Independent(
            torch.distributions.Normal(mog.means.detach(), mog.log_stds.detach().exp()), 1
        ),
    )
    z = torch.randn(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 3
    with torch.no_grad():
        assert torch.allclose(mog.log_prob(z), ref.log_prob(z), atol=1e-10, rtol=0)


def test_mixture_log_prob_is_exact_for_narrow_components_far_from_the_origin():
    mog = MixtureOfGaussians(1, num_components=1).double()
    with torch.no_grad():
        mog.means.fill_(1000.0)
        mog.log_stds.fill_(math.log(1e-3))
    z = torch.tensor([[1000.0005]], dtype=torch.float64)
    want = -0.5 * 0.5**2 - math.log(1e-3) - 0.5 * math.log(2 * math.pi)
    with torch.no_grad():
        assert float(mog.log_prob(z)) == pytest.approx(want, abs=1e-9)


def test_mixture_gradient_of_the_weights_is_the_responsibility_minus_the_weight():
    # d log p(z) / d logit_k = r_k(z) - w_k (hand-derived softmax gradient)
    mog = fixed_mog(2)
    z = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    mog.log_prob(z).sum().backward()
    with torch.no_grad():
        w = torch.softmax(mog.logits, 0)
        comp = torch.distributions.Normal(mog.means, mog.log_stds.exp()).log_prob(z).sum(-1)
        r = torch.softmax(comp + w.log(), 0)
    assert torch.allclose(mog.logits.grad, r - w, atol=1e-12)


@pytest.mark.parametrize("make", [fixed_mog, fixed_vamp], ids=["mog", "vamp"])
def test_mixture_sampler_matches_its_density(make):
    prior = make(1)
    x, _ = grid_1d(lim=14.0, h=2e-3)
    with torch.no_grad():
        cdf = cdf_of(prior.log_prob(x), x[:, 0])
    z = prior.sample(4000, generator=torch.Generator().manual_seed(0))
    assert z.shape == (4000, 1)
    assert stats.kstest(z[:, 0].numpy(), cdf).pvalue > 1e-3
    # the test can fail: a sampler that ignores the weights/components is rejected
    shifted = z[:, 0].numpy() + 0.3
    assert stats.kstest(shifted, cdf).pvalue < 1e-6


def test_vamp_prior_is_the_mean_of_the_encoders_posteriors_and_integrates_to_one():
    vamp = fixed_vamp(2)
    pts, w = grid_2d(lim=12.0, h=0.03)
    assert integral(vamp, pts, w) == pytest.approx(1.0, abs=1e-4)
    with torch.no_grad():
        mean, log_std = vamp._encoder(torch.sigmoid(vamp.pseudo_logits))
        comp = torch.distributions.Normal(mean, log_std.exp())
        z = torch.randn(300, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        want = torch.logsumexp(comp.log_prob(z[:, None]).sum(-1), 1) - math.log(4)
        assert torch.allclose(vamp.log_prob(z), want, atol=1e-10, rtol=0)


def test_vamp_prior_needs_an_encoder_and_build_model_binds_the_models_own():
    with pytest.raises(RuntimeError, match="no encoder bound"):
        VampPrior(2, num_components=3).log_prob(torch.zeros(1, 2))
    cfg = C.model_config({"latent_dim": 3, "hidden": 16, "mixture_components": 5})
    torch.manual_seed(0)
    for arch in ("vae", "hvae", "convhvae"):
        model = build_model(arch, "vamp", cfg)
        prior = model.top_prior
        assert [k for k in model.state_dict() if k.startswith("top_prior.")] == [
            "top_prior.pseudo_logits"
        ]
        u = prior.pseudo_inputs()
        m, s = prior.components()
        m2, s2 = top_posterior(model, u)
        assert torch.equal(m, m2) and torch.equal(s, s2)
        # the components are the posterior of the top latent that _terms draws from
        x = u[:2].detach()
        t = model._terms(x, 1, torch.Generator().manual_seed(0))
        eps = torch.randn(2, 1, 3, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(t.z_top, m2[:2, None] + s2[:2, None].exp() * eps, atol=1e-6)


# -- TRS ------------------------------------------------------------------------------------


def brute_force_trs_bound(log_pi, log_a, zt, log_1mz, T):
    """E_r[log p(t, z)] + H[r] summed term by term over t = 1..T."""
    t = torch.arange(1, T + 1, dtype=torch.float64)
    log_w = (t - 1) * math.log1p(-zt) + torch.where(t < T, log_a[:, None], 0.0)  # (B, T)
    log_r = log_w - torch.logsumexp(log_w, 1, keepdim=True)
    log_p = log_pi[:, None] + torch.where(t < T, log_a[:, None], 0.0) + (t - 1) * log_1mz
    return (log_r.exp() * (log_p - log_r)).sum(1)


@pytest.mark.parametrize("T", [2, 5, 100])
@pytest.mark.parametrize("zt", [0.03, 0.5, 0.97])
def test_trs_bound_closed_form_equals_the_sum_over_the_accepted_index(T, zt):
    log_pi = torch.tensor([-1.0, -3.0, -0.2], dtype=torch.float64)
    log_a = torch.tensor([-0.01, -2.0, -9.0], dtype=torch.float64)
    log_1mz = torch.tensor(math.log(0.6), dtype=torch.float64)
    log_zt = torch.tensor(math.log(zt), dtype=torch.float64)
    got = trs_log_bound(log_pi, log_a, log_zt, log_1mz, T)
    assert torch.allclose(got, brute_force_trs_bound(log_pi, log_a, zt, log_1mz, T), atol=1e-9)
    # T = None: the geometric limit (E_r[t-1] = (1-Zt)/Zt)
    rej = trs_expected_rejections(log_a, log_zt, None)
    assert torch.allclose(rej, torch.full_like(rej, (1 - zt) / zt))


def test_trs_bound_is_tight_at_the_true_z_and_its_zt_gradient_vanishes_there():
    # Exact rejection term (log_1mz = log(1 - Z)): the bound is the ELBO over the index t,
    # maximised by the exact posterior, i.e. at Zt = Z, where it equals Eq. A.14.
    T, Z = 10, 0.3
    log_pi = torch.tensor([-1.3, -0.4], dtype=torch.float64)
    log_a = torch.tensor([-0.2, -4.0], dtype=torch.float64)
    log_1mz = torch.tensor(math.log1p(-Z), dtype=torch.float64)
    exact = lars_log_density(log_pi, log_a, torch.tensor(math.log(Z), dtype=torch.float64), T)
    logit = torch.tensor(math.log(Z / (1 - Z)), dtype=torch.float64, requires_grad=True)
    bound = trs_log_bound(log_pi, log_a, torch.nn.functional.logsigmoid(logit), log_1mz, T)
    assert torch.allclose(bound, exact, atol=1e-12)
    (grad,) = torch.autograd.grad(bound.sum(), logit)
    assert abs(float(grad)) < 1e-10
    for other in (0.05, 0.8):  # any other Zt: strictly below
        log_zt = torch.tensor(math.log(other), dtype=torch.float64)
        assert bool((trs_log_bound(log_pi, log_a, log_zt, log_1mz, T) < exact - 1e-4).all())


def trs_at_true_z(num_z_samples: int, rejection_bound: str) -> TRSPrior:
    """A 1-D TRS prior (T = 20) whose stored Z and variational Zt both equal the true Z."""
    torch.manual_seed(0)
    prior = TRSPrior(
        StandardNormal(1).double(),
        strong_acceptance(1),
        truncation=20,
        num_z_samples=num_z_samples,
        rejection_bound=rejection_bound,
    ).double()
    x, w = grid_1d(lim=9.0, h=0.01)
    with torch.no_grad():
        pi = torch.exp(-0.5 * x[:, 0] ** 2) / math.sqrt(2 * math.pi)
        log_z = math.log(float((torch.sigmoid(prior.acceptance(x)) * pi * w).sum()))
        prior.set_log_z(log_z)
        prior.logit_z_tilde.fill_(log_z - math.log1p(-math.exp(log_z)))
    return prior.train()


def test_trs_training_density_is_a_lower_bound_in_expectation_and_multi_is_tighter():
    z = torch.tensor([[0.0], [1.0], [-1.5]], dtype=torch.float64)
    gaps = {}
    for kind in ("eim", "multi"):
        prior = trs_at_true_z(4, kind)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            exact = prior.log_prob(z)
            bounds = torch.stack([prior.log_prob_bound(z, g)[0] for _ in range(2000)])
        gaps[kind] = exact - bounds.mean(0)  # standard error ~0.008
    assert float(gaps["multi"].min()) > 0.0
    # Jensen per sample (eim) loses ~0.13 nats here, the 4-sample bound ~0.03
    assert bool((gaps["eim"] > gaps["multi"] + 0.05).all())


@pytest.mark.parametrize("rejection_bound", ["eim", "multi"])
def test_trs_bound_with_many_samples(rejection_bound):
    prior = trs_at_true_z(20_000, rejection_bound)
    x, w = grid_1d(lim=9.0, h=0.01)
    with torch.no_grad():
        exact = prior.log_prob(x)
        bound, _ = prior.log_prob_bound(x, generator=torch.Generator().manual_seed(1))
    gap = exact - bound
    mass = float((bound.exp() * w).sum())
    if rejection_bound == "eim":  # the per-sample Jensen gap does not shrink with S
        assert float(gap.min()) > 0.0 and mass < 0.99
    else:  # S = 2e4: within Monte Carlo noise of the exact density
        assert float(gap.abs().max()) < 0.02 and mass == pytest.approx(1.0, abs=0.01)


def test_trs_trains_its_zt_and_acceptance_and_samples_eq_a14():
    torch.manual_seed(0)
    prior = TRSPrior(
        StandardNormal(1), strong_acceptance(1).float(), truncation=3, num_z_samples=64
    )
    prior.train()
    z = torch.randn(32, 1)
    bound = prior.train_log_prob(z, torch.zeros(32))
    bound.sum().backward()
    assert prior.logit_z_tilde.grad is not None and float(prior.logit_z_tilde.grad) != 0.0
    assert all(
        p.grad is not None and bool(p.grad.abs().sum() > 0) for p in prior.acceptance.parameters()
    )
    assert bool(prior.log_z_initialised)  # the running <Z> for validation
    prior.eval()
    x, w = grid_1d(lim=10.0, h=2e-3)
    x = x.float()
    with torch.no_grad():
        log_z = math.log(
            float(
                (
                    torch.sigmoid(prior.acceptance(x)).double()
                    * w
                    * torch.exp(-0.5 * x[:, 0].double() ** 2)
                ).sum()
            )
            / math.sqrt(2 * math.pi)
        )
        prior.set_log_z(log_z)
        cdf = cdf_of(prior.log_prob(x).double(), x[:, 0].double())
    s = prior.sample(4000, generator=torch.Generator().manual_seed(0))
    assert stats.kstest(s[:, 0].numpy(), cdf).pvalue > 1e-3


# -- SNIS -----------------------------------------------------------------------------------


class WavyEnergy(torch.nn.Module):
    """log w(z) = 1.5 sin(2 z) + 0.5 z (1-D): far from constant, so K matters."""

    def forward(self, z):
        return 1.5 * torch.sin(2 * z[:, 0]) + 0.5 * z[:, 0]


def snis_k2_log_density(x: torch.Tensor) -> torch.Tensor:
    """Exact log q_2(z) = log pi(z) w(z) int pi(z') 2 / (w(z) + w(z')) dz' by quadrature."""
    y, wy = grid_1d(lim=10.0, h=0.01)
    e = WavyEnergy()
    log_wx, log_wy = e(x), e(y)
    log_pi = -0.5 * x[:, 0] ** 2 - 0.5 * math.log(2 * math.pi)
    log_piy = -0.5 * y[:, 0] ** 2 - 0.5 * math.log(2 * math.pi)
    inner = torch.logsumexp(
        log_piy + wy.log() + math.log(2) - torch.logaddexp(log_wx[:, None], log_wy[None, :]), 1
    )
    return log_pi + log_wx + inner


def test_snis_exact_density_integrates_to_one_and_log_prob_is_unbiased_in_exp():
    prior = SNISPrior(StandardNormal(1).double(), WavyEnergy(), num_proposals=2)
    x, w = grid_1d(lim=8.0, h=0.02)
    exact = snis_k2_log_density(x)
    assert float((exact.exp() * w).sum()) == pytest.approx(1.0, abs=1e-6)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        est = prior.log_prob(x, generator=g, draws=20_000)  # log of a mean of unbiased terms
        one = torch.stack([prior.log_prob(x, generator=g) for _ in range(200)])
    assert float((est - exact).abs().max()) < 0.02
    assert float(one.mean(0).sub(exact).max()) < 0.0  # E[l] <= log q: a lower bound


def test_snis_sampler_matches_the_exact_density():
    prior = SNISPrior(StandardNormal(1).double(), WavyEnergy(), num_proposals=2)
    x, _ = grid_1d(lim=8.0, h=0.01)
    cdf = cdf_of(snis_k2_log_density(x), x[:, 0])
    z = prior.sample(4000, generator=torch.Generator().manual_seed(0))
    assert z.shape == (4000, 1)
    assert stats.kstest(z[:, 0].numpy(), cdf).pvalue > 1e-3
    pi_draws = torch.randn(4000, generator=torch.Generator().manual_seed(0)).numpy()
    assert stats.kstest(pi_draws, cdf).pvalue < 1e-6  # the proposal alone is rejected


def test_snis_bound_gap_shrinks_as_one_over_k():
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(-2.5, 2.5, 11, dtype=torch.float64)[:, None]
    gaps = {}
    with torch.no_grad():
        for K in (8, 64):
            prior = SNISPrior(StandardNormal(1).double(), WavyEnergy(), num_proposals=K)
            log_q = prior.log_prob(x, generator=g, draws=20_000)
            mean_l = torch.stack([prior.log_prob(x, generator=g) for _ in range(1500)]).mean(0)
            gaps[K] = float((log_q - mean_l).mean())
    y, wy = grid_1d(lim=10.0, h=1e-3)
    with torch.no_grad():
        pw = torch.exp(-0.5 * y[:, 0] ** 2 + WavyEnergy()(y)) / math.sqrt(2 * math.pi) * wy
    z1, z2 = float(pw.sum()), float((pw * WavyEnergy()(y).exp()).sum())
    pred64 = (z2 - z1**2) / (2 * 64 * z1**2)  # Var_pi[w] / (2 K E_pi[w]^2)
    assert gaps[8] > 0 and gaps[64] > 0
    assert 4.0 < gaps[8] / gaps[64] < 16.0
    assert 0.7 * pred64 < gaps[64] < 2.0 * pred64


@pytest.mark.parametrize("arch", ["vae", "hvae"])
def test_snis_evaluation_follows_its_seed_not_the_global_rng(arch):
    """SNIS's log_prob draws auxiliary proposals: IWAE and the eval-mode ELBO take them from
    evaluation's own generator, so the same seed gives the same numbers whatever the global
    RNG did in between, and another seed other numbers. A prior whose log_prob draws
    nothing never receives the generator, which stays the posterior's alone: its IWAE
    still equals the per-point loop's (the same numbers when L k d is a multiple of 16,
    see iwae_log_likelihood; float32 products over a tile of two points round otherwise,
    to 1e-6 of |log p|)."""
    cfg = C.model_config({"latent_dim": 3, "hidden": 16, "snis_proposals": 8, "energy_hidden": [8]})
    torch.manual_seed(0)
    model = build_model(arch, "snis", cfg).eval()
    assert model.top_prior.log_prob_draws
    x = (torch.rand(5, 784, generator=torch.Generator().manual_seed(1)) < 0.3).float()

    def iwae(seed, global_seed):
        torch.manual_seed(global_seed)
        return larsvae.evaluation.iwae_log_likelihood(model, x, k=16, batch_size=2, seed=seed)

    def elbo(seed, global_seed):
        torch.manual_seed(global_seed)
        with torch.no_grad():
            return model.loss(x, generator=torch.Generator().manual_seed(seed))["elbo"]

    for fn in (iwae, elbo):
        assert torch.equal(fn(3, 0), fn(3, 1))
        assert not torch.equal(fn(3, 0), fn(4, 0))

    torch.manual_seed(0)
    plain = build_model(arch, "gaussian", cfg).eval()
    assert not plain.top_prior.log_prob_draws
    got = larsvae.evaluation.iwae_log_likelihood(plain, x, k=16, batch_size=2, seed=5)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        loop = [
            torch.logsumexp(plain.log_weights(x[i : i + 1], 16, g).double(), 1) for i in range(5)
        ]
    torch.testing.assert_close(got, torch.cat(loop) - math.log(16), rtol=1e-6, atol=0)


# -- dimension-wise LARS --------------------------------------------------------------------


def strong_dimwise(dim: int, truncation) -> DimwiseResampledPrior:
    torch.manual_seed(0)
    prior = DimwiseResampledPrior(dim, hidden=(8,), truncation=truncation).double()
    with torch.no_grad():
        prior.acceptance.weights[0].mul_(4.0)
        prior.acceptance.biases[0].normal_(0.0, 1.0)
        prior.acceptance.weights[1].mul_(3.0)
        prior.acceptance.biases[1].fill_(-1.0)
    return prior


@pytest.mark.parametrize("truncation", [1, 3, 100, None])
def test_dimwise_density_integrates_to_one(truncation):
    prior = strong_dimwise(2, truncation)
    pts, w = grid_2d()
    assert integral(prior, pts, w) == pytest.approx(1.0, abs=1e-4)


def test_dimwise_z_matches_fine_quadrature_and_its_gradient_autograd_of_the_integral():
    prior = strong_dimwise(2, 10)
    x, w = grid_1d(lim=12.0, h=2.5e-4)
    with torch.no_grad():
        a = torch.sigmoid(prior.acceptance(x.expand(-1, 2)))  # (G, 2)
        fine = (a * (torch.exp(-0.5 * x**2) / math.sqrt(2 * math.pi) * w[:, None])).sum(0)
    assert 0.05 < float(fine.min()) and float(fine.max()) < 0.9  # non-trivial acceptances
    assert torch.allclose(prior.log_z().exp(), fine, rtol=1e-10, atol=0)
    # d Z_i / d b_i(last) = E_N[a_i (1 - a_i)] (hand-derived: dsigmoid = s (1 - s))
    prior.log_z().exp().sum().backward()
    with torch.no_grad():
        want = (a * (1 - a) * (torch.exp(-0.5 * x**2) / math.sqrt(2 * math.pi) * w[:, None])).sum(0)
    assert torch.allclose(prior.acceptance.biases[-1].grad[:, 0], want, rtol=1e-8, atol=0)


def test_dimwise_sampler_matches_each_units_density():
    prior = strong_dimwise(2, 3)
    z = prior.sample(4000, generator=torch.Generator().manual_seed(0))
    assert z.shape == (4000, 2)
    x, _ = grid_1d(lim=10.0, h=2e-3)
    log_z = prior.log_z()
    for i in range(2):
        with torch.no_grad():
            log_pi = -0.5 * x[:, 0] ** 2 - 0.5 * math.log(2 * math.pi)
            log_a = torch.nn.functional.logsigmoid(prior.acceptance(x.expand(-1, 2))[:, i])
            dens = lars_log_density(log_pi, log_a, log_z[i], 3)
        cdf = cdf_of(dens, x[:, 0])
        assert stats.kstest(z[:, i].numpy(), cdf).pvalue > 1e-3
        assert stats.kstest(z[:, 1 - i].numpy(), cdf).pvalue < 1e-6  # the units differ


# -- a VAE with each prior ------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["vae", "hvae"])
@pytest.mark.parametrize("prior", NEW_PRIORS)
def test_a_vae_with_each_prior_trains_evaluates_and_samples(prior, arch):
    torch.manual_seed(0)
    cfg = C.model_config(
        {
            "latent_dim": 3,
            "hidden": 16,
            "mixture_components": 6,
            "snis_proposals": 8,
            "train_z_samples": 32,
            "acceptance_hidden": [8],
            "energy_hidden": [8],
            "dimwise_hidden": [4],
        }
    )
    model = build_model(arch, prior, cfg)
    x = (torch.rand(6, 784, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    model.train()
    out = model.loss(x, beta=1.0)
    assert torch.isfinite(out["loss"]) and out["kl"].shape == (6,)
    out["loss"].backward()
    for name, p in model.top_prior.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        assert bool(p.grad.abs().sum() > 0), name
    if prior.startswith("vamp"):  # vamp: the prior's gradient reaches the encoder via u_k
        model.zero_grad(set_to_none=True)
        model.top_prior.log_prob(torch.randn(4, 3)).sum().backward()
        enc = model.encoder if arch == "vae" else model.q2_trunk
        grad = next(enc.parameters()).grad
        assert (grad is not None and bool(grad.abs().sum() > 0)) == (prior == "vamp")
    model.eval()
    if C.has_z(prior, arch, "standard"):
        model.top_prior.set_log_z(float(model.top_prior.monte_carlo_log_z(4096)))
    with torch.no_grad():
        log_w = model.log_weights(x, 5, generator=torch.Generator().manual_seed(2))
        samples = model.sample(4, generator=torch.Generator().manual_seed(3))
    assert log_w.shape == (6, 5) and bool(torch.isfinite(log_w).all())
    assert samples.shape == (4, 784) and bool(((samples >= 0) & (samples <= 1)).all())
