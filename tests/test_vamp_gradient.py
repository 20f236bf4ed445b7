"""The VampPrior without the encoder's gradient through its components
(``VampPrior(encoder_gradient=False)``): the same density, the pseudo-inputs' gradient
unchanged, no gradient into the encoder's weights from the prior."""

from __future__ import annotations

import copy

import pytest
import torch

from larsvae.config import ModelConfig
from larsvae.distributions.mixtures import VampPrior
from larsvae.models import bind_prior_encoder, build_model, top_posterior

CFG = ModelConfig(latent_dim=3, hidden=16, mixture_components=5)


def _model(encoder_gradient: bool, arch: str = "vae"):
    torch.manual_seed(0)
    model = build_model(arch, "vamp", CFG)
    if not encoder_gradient:  # the same weights, rebound without the weights' gradient
        model.top_prior.encoder_gradient = False
        bind_prior_encoder(model)
    return model


def _encoder_grads(model) -> dict[str, torch.Tensor | None]:
    return {n: p.grad for n, p in model.named_parameters() if not n.startswith("top_prior.")}


@pytest.mark.parametrize("arch", ["vae", "hvae", "convhvae"])
def test_same_density_and_pseudo_input_gradient_no_weight_gradient(arch):
    coupled, fixed = _model(True, arch), _model(False, arch)
    z = torch.randn(7, CFG.latent_dim, dtype=torch.float32)
    lp_c, lp_f = coupled.top_prior.log_prob(z), fixed.top_prior.log_prob(z)
    assert torch.equal(lp_c, lp_f)
    lp_c.sum().backward()
    lp_f.sum().backward()
    g_c = coupled.top_prior.pseudo_logits.grad
    g_f = fixed.top_prior.pseudo_logits.grad
    assert g_c is not None and g_c.abs().sum() > 0
    assert torch.equal(g_c, g_f)
    assert any(g is not None and g.abs().sum() > 0 for g in _encoder_grads(coupled).values())
    assert all(g is None for g in _encoder_grads(fixed).values())


def test_the_model_loss_trains_the_encoder_through_q_only():
    """The encoder's gradient of the loss equals that of a model whose prior runs a frozen
    copy of the encoder: only the path through q(z | x) reaches the weights."""
    fixed = _model(False)
    frozen = copy.deepcopy(fixed)
    for p in frozen.parameters():
        p.requires_grad_(False)
    ref = copy.deepcopy(fixed)
    ref.top_prior.bind_encoder(lambda u: top_posterior(frozen, u))
    x = (torch.rand(4, 784, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    for m in (fixed, ref):
        torch.manual_seed(3)
        m.loss(x, beta=1.0)["loss"].backward()
    for (name, a), b in zip(
        _encoder_grads(fixed).items(), _encoder_grads(ref).values(), strict=True
    ):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_build_model_binds_the_fixed_encoder_and_deepcopy_rebinds_it():
    prior = VampPrior(3, num_components=4, data_dim=784, encoder_gradient=False)
    assert "encoder_gradient=False" in repr(prior)
    model = _model(False)
    twin = copy.deepcopy(model)
    with torch.no_grad():  # the encoder's weights only: the pseudo-inputs stay equal
        for name, p in twin.named_parameters():
            if not name.startswith("top_prior."):
                p.add_(0.1)
    z = torch.randn(5, CFG.latent_dim)
    assert not torch.equal(model.top_prior.log_prob(z), twin.top_prior.log_prob(z))
