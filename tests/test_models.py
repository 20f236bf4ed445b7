"""The VAE family (larsvae.models): architecture, objective, training, post-hoc LARS."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from larsvae.config import ConfigError, ModelConfig
from larsvae.distributions import AcceptanceMLP, ResampledPrior, StandardNormal
from larsvae.models import HVAE, VAE, ConvHVAE, build_model
from larsvae.models.convhvae import conv_decoder, conv_encoder

SMALL = ModelConfig(
    latent_dim=6,
    hidden=48,
    acceptance_hidden=(32, 32),
    train_z_samples=128,
    flow_hidden=(32, 32),
    realnvp_couplings=2,
    maf_blocks=2,
)
ARCHS = ("vae", "hvae", "convhvae")
PRIORS = ("gaussian", "lars", "realnvp", "maf", "lars_realnvp")


pytestmark = pytest.mark.usefixtures("single_thread")


def _batch(n=16, seed=0):
    """Binary images from 3 random prototypes (pixel probabilities 0.05 / 0.95)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.where(torch.rand(3, 784, generator=g) < 0.3, 0.95, 0.05)
    which = torch.arange(n) % 3
    return (torch.rand(n, 784, generator=g) < protos[which]).float()


def _model(arch, prior, cfg=SMALL, seed=0):
    torch.manual_seed(seed)
    return build_model(arch, prior, cfg)


def _train(model, x, steps, lr=2e-3, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model.loss(x, beta=1.0)["loss"].backward()
        opt.step()
    return model


@torch.no_grad()
def _neg_elbo(model, x, reps=8, seed=123):
    """Eval-mode -ELBO averaged over the batch and ``reps`` posterior samples."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    return float(torch.stack([model.loss(x, generator=g)["loss"] for _ in range(reps)]).mean())


# -- architecture (paper sizes) ----------------------------------------------------------


def _linear_shapes(module):
    return [tuple(m.weight.shape[::-1]) for m in module.modules() if isinstance(m, nn.Linear)]


def test_paper_sized_vae_layers_and_glorot_init():
    model = VAE(StandardNormal(50), ModelConfig())
    assert _linear_shapes(model.encoder) == [(784, 300), (300, 300)]
    assert _linear_shapes(model.encoder_head) == [(300, 50), (300, 50)]  # mean, log-std
    assert _linear_shapes(model.decoder) == [(50, 300), (300, 300), (300, 784)]
    acts = [type(m) for m in model.decoder]
    assert acts.count(nn.Tanh) == 2 and not isinstance(model.decoder[-1], nn.Tanh)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            fan_in, fan_out = m.in_features, m.out_features
            bound = math.sqrt(6 / (fan_in + fan_out))
            assert m.weight.abs().max() <= bound and torch.equal(m.bias, torch.zeros_like(m.bias))
            if m.weight.numel() > 10_000:  # uniform(-b, b) has std b / sqrt(3)
                assert float(m.weight.detach().std()) == pytest.approx(
                    bound / math.sqrt(3), rel=0.03
                )


def test_paper_sized_hvae_layers():
    model = HVAE(StandardNormal(50), ModelConfig())
    assert _linear_shapes(model.q2_features) + _linear_shapes(model.q2_trunk) == [
        (784, 300),
        (300, 300),
    ]
    assert _linear_shapes(model.q1_x) == [(784, 300)]
    assert _linear_shapes(model.q1_z2) == [(50, 300)]
    assert _linear_shapes(model.q1_trunk) == [(600, 300)]
    assert _linear_shapes(model.p1_trunk) == [(50, 300), (300, 300)]
    assert _linear_shapes(model.p1_head) == [(300, 50), (300, 50)]
    assert _linear_shapes(model.px_z1) == _linear_shapes(model.px_z2) == [(50, 300)]
    assert _linear_shapes(model.px_trunk) + _linear_shapes(model.px_out) == [
        (600, 300),
        (300, 784),
    ]


def test_conv_shapes_and_decoder_outputs_exactly_28x28():
    shapes = []
    enc = conv_encoder()
    hooks = [
        m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
        for m in enc
        if isinstance(m, nn.Conv2d)
    ]
    out = enc(torch.zeros(2, 1, 28, 28))
    assert shapes == [(32, 14, 14), (32, 7, 7), (32, 4, 4)] and out.shape == (2, 512)
    for h in hooks:
        h.remove()
    shapes.clear()
    dec = conv_decoder()
    for m in dec:
        if isinstance(m, nn.ConvTranspose2d):
            m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
    assert dec(torch.zeros(2, 512)).shape == (2, 784)
    assert shapes == [(32, 7, 7), (32, 14, 14), (1, 28, 28)]
    model = ConvHVAE(StandardNormal(6), SMALL)
    assert model.sample(3).shape == (3, 784)


def test_build_model_rejects_unknown_names():
    with pytest.raises(ConfigError, match="arch"):
        build_model("resnet", "gaussian", SMALL)
    with pytest.raises(ConfigError, match="prior"):
        build_model("vae", "vampprior", SMALL)
    with pytest.raises(ValueError, match="latent_dim"):
        VAE(StandardNormal(5), SMALL)


# -- objective, importance weights, samples ----------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("prior", PRIORS)
def test_shapes_and_consistency(arch, prior):
    model = _model(arch, prior)
    x = _batch(5)
    model.train()
    out = model.loss(x, beta=0.3)
    assert out["loss"].shape == () and all(out[k].shape == (5,) for k in ("rec", "kl", "elbo"))
    assert all(torch.isfinite(v).all() for v in out.values())
    torch.testing.assert_close(out["loss"], (out["rec"] + 0.3 * out["kl"]).mean())
    torch.testing.assert_close(out["elbo"], -(out["rec"] + out["kl"]))
    assert (out["rec"] > 0).all()  # -log of a probability mass
    if isinstance(model.top_prior, ResampledPrior):
        model.top_prior.set_log_z(float(model.top_prior.monte_carlo_log_z(4096)))
    model.eval()
    # log_weights(x, 1) and the eval-mode ELBO are the same function of the same draw.
    lw = model.log_weights(x, 1, generator=torch.Generator().manual_seed(5))
    elbo = model.loss(x, generator=torch.Generator().manual_seed(5))["elbo"]
    torch.testing.assert_close(lw[:, 0], elbo)
    lw = model.log_weights(x, 7)
    assert lw.shape == (5, 7) and torch.isfinite(lw).all()
    z = model.top_prior.sample(64)
    assert z.shape == (64, SMALL.latent_dim) and torch.isfinite(model.top_prior.log_prob(z)).all()
    s = model.sample(4)
    assert s.shape == (4, 784) and ((s >= 0) & (s <= 1)).all()


def test_single_sample_kl_is_unbiased_for_gaussian_vae():
    model = _model("vae", "gaussian")
    model.eval()
    x = _batch(2)
    reps = 4000
    with torch.no_grad():
        kl = model.loss(x.repeat_interleave(reps, 0))["kl"].view(2, reps)
        mean, log_std = model.encoder_head(model.encoder(x))
    exact = 0.5 * (mean**2 + torch.exp(2 * log_std) - 1 - 2 * log_std).sum(-1)
    se = kl.std(1) / math.sqrt(reps)
    assert ((kl.mean(1) - exact).abs() < 4 * se).all(), (kl.mean(1), exact, se)


@pytest.mark.parametrize("arch", ARCHS)
def test_importance_weighting_tightens_the_bound(arch):
    """E[log mean_k w_k] >= E[log w] (Burda et al.): IWAE(K=20) above the ELBO, for L=1, 2."""
    model = _train(_model(arch, "gaussian"), _batch(8), steps=10)
    model.eval()
    x = _batch(4, seed=1).repeat_interleave(50, 0)
    with torch.no_grad():
        lw = model.log_weights(x, 20, generator=torch.Generator().manual_seed(0)).double()
    elbo = lw[:, 0].view(4, 50)
    iwae = (torch.logsumexp(lw, 1) - math.log(20)).view(4, 50)
    diff = iwae.mean(1) - elbo.mean(1)
    assert (diff > 0).all(), diff


# -- training ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "prior", "steps", "n", "ratio"),
    [
        ("vae", "gaussian", 100, 16, 0.5),
        ("vae", "lars", 100, 16, 0.5),
        ("vae", "realnvp", 100, 16, 0.5),
        ("vae", "maf", 100, 16, 0.5),
        ("vae", "lars_realnvp", 100, 16, 0.5),
        ("hvae", "gaussian", 100, 16, 0.5),
        ("hvae", "lars", 100, 16, 0.5),
        ("convhvae", "gaussian", 80, 6, 0.8),
        ("convhvae", "lars", 80, 6, 0.8),
    ],
)
def test_adam_steps_lower_the_loss(arch, prior, steps, n, ratio):
    """-ELBO (eval mode, fixed posterior draws) falls from ~550 nats by the given factor."""
    x = _batch(n)
    model = _model(arch, prior)
    if isinstance(model.top_prior, ResampledPrior):
        model.top_prior.set_log_z(float(model.top_prior.monte_carlo_log_z(4096)))
    before = _neg_elbo(model, x)
    _train(model, x, steps)
    after = _neg_elbo(model, x)
    assert after < ratio * before, (before, after)


@pytest.mark.parametrize("arch", ARCHS)
def test_training_is_deterministic_given_a_seed(arch):
    def run(seed):
        model = _model(arch, "lars", seed=seed)
        return _train(model, _batch(4), steps=5, seed=seed).state_dict()

    a, b, c = run(0), run(0), run(1)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert "top_prior.log_z" in a  # the running Z of Algorithm 1 is part of the state


# -- post-hoc LARS -----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_posthoc_trains_only_the_acceptance_network(arch):
    x = _batch(6)
    model = _train(_model(arch, "gaussian"), x, steps=10)
    model.make_posthoc(SMALL)
    prior = model.top_prior
    assert isinstance(prior, ResampledPrior) and isinstance(prior.proposal, StandardNormal)
    assert isinstance(prior.acceptance, AcceptanceMLP)
    assert prior.truncation == SMALL.truncation and prior.num_z_samples == SMALL.train_z_samples
    acc_ids = {id(p) for p in prior.acceptance.parameters()}
    assert {id(p) for p in model.trainable_parameters()} == acc_ids
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert model.training and prior.training
    assert all(not m.training for name, m in model.named_children() if name != "top_prior")
    _train(model, x, steps=5)
    after = model.state_dict()
    for k in before:
        changed = not torch.equal(before[k], after[k])
        if k.startswith("top_prior.acceptance."):
            assert changed, k
        elif k.startswith("top_prior.log_z"):
            continue  # Algorithm 1's running Z
        else:
            assert not changed, k
    with pytest.raises(RuntimeError, match="already"):
        model.make_posthoc(SMALL)
    # A post-hoc checkpoint loads into a jointly-built LARS model and gives the same ELBO.
    joint = _model(arch, "lars", seed=1)
    joint.load_state_dict(model.state_dict())
    model.eval(), joint.eval()
    torch.testing.assert_close(
        joint.loss(x, generator=torch.Generator().manual_seed(0))["elbo"],
        model.loss(x, generator=torch.Generator().manual_seed(0))["elbo"],
    )


def test_posthoc_requires_a_gaussian_top_prior():
    for prior in ("lars", "realnvp"):
        with pytest.raises(ValueError, match="gaussian"):
            _model("vae", prior).make_posthoc(SMALL)


def test_posthoc_lars_lowers_the_kl_of_a_trained_vae():
    """Sec. 4.1: fitting a(z) post hoc can only help; here it lowers the KL term."""
    x = _batch(32)
    model = _train(_model("vae", "gaussian"), x, steps=150)
    model.make_posthoc(SMALL)
    prior = model.top_prior

    def kl():
        prior.set_log_z(float(prior.monte_carlo_log_z(100_000)))
        model.eval()
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            return float(model.loss(x.repeat(20, 1), generator=g)["kl"].mean())

    kl_before = kl()
    _train(model, x, steps=150, lr=3e-3)
    kl_after = kl()
    assert kl_after < kl_before - 1.0, (kl_before, kl_after)  # measured: 5.8 -> 2.8 nats


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("arch", ARCHS)
def test_cuda(arch):
    from larsvae.evaluation import iwae_log_likelihood

    model = _model(arch, "lars").to("cuda")
    x = _batch(4).cuda()
    model.train()
    out = model.loss(x)
    out["loss"].backward()
    assert out["loss"].device.type == "cuda" and torch.isfinite(out["loss"])
    model.eval()
    assert model.sample(3).device.type == "cuda"
    ll = iwae_log_likelihood(model, x, k=10, k_chunk=4, seed=0)
    assert ll.shape == (4,) and torch.isfinite(ll).all()
    gauss = _model(arch, "gaussian").to("cuda")
    gauss.make_posthoc(SMALL)
    assert all(p.device.type == "cuda" for p in gauss.trainable_parameters())
    assert torch.isfinite(gauss.train().loss(x)["loss"])
