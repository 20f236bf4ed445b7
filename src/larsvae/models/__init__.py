"""VAE family with a pluggable prior on the top latent (Bauer & Mnih 2019, Appendix C.2)."""

from __future__ import annotations

import functools

import torch

from larsvae.config import ARCHS, PRIORS, ConfigError, ModelConfig, check_choice
from larsvae.distributions.factory import build_prior
from larsvae.models.convhvae import ConvHVAE
from larsvae.models.resampled_outputs import ResampledOutputsVAE
from larsvae.models.vae import HVAE, VAE, LatentVariableModel, _TwoLayerVAE
from larsvae.objectives import mlp_forward

#: ``arch`` name -> model class; must agree with ``larsvae.config.ARCHS``.
ARCHITECTURES: dict[str, type[LatentVariableModel]] = {
    "vae": VAE,
    "hvae": HVAE,
    "convhvae": ConvHVAE,
    "vae_rx": ResampledOutputsVAE,  # LARS on the outputs (Table D.6); prior N(0, I) only
}


def build_model(arch: str, prior: str, cfg: ModelConfig) -> LatentVariableModel:
    """Model ``arch`` ('vae' | 'hvae' | 'convhvae' | 'vae_rx') with top prior ``prior`` (see
    ``larsvae.config.PRIORS``) built by ``larsvae.distributions.build_prior``.

    Unknown names raise :class:`larsvae.config.ConfigError`.
    """
    check_choice("arch", arch, ARCHS)
    check_choice("prior", prior, PRIORS)
    if arch not in ARCHITECTURES:  # ARCHS and ARCHITECTURES must agree
        raise ConfigError(f"arch: {arch!r} has no implementation")
    model = ARCHITECTURES[arch](build_prior(prior, cfg.latent_dim, cfg), cfg)
    bind_prior_encoder(model)
    return model


def bind_prior_encoder(model: LatentVariableModel) -> None:
    """A prior built on the model's encoder (the VampPrior: q(z_top | u_k)) gets it bound:
    ``top_posterior``, or with ``encoder_gradient=False`` the same with the encoder's
    weights detached. A partial of a module-level function: ``copy.deepcopy`` of the model
    rebinds it to the copy. Other priors: nothing to do."""
    prior = model.top_prior
    if hasattr(prior, "bind_encoder"):
        encoder = top_posterior if prior.encoder_gradient else _top_posterior_fixed
        prior.bind_encoder(functools.partial(encoder, model))


class _TopPosterior(torch.nn.Module):
    """``top_posterior(model, x)`` as a module's forward, for ``torch.func.functional_call``
    (not registered in the model: it only wraps it for one call)."""

    def __init__(self, model: LatentVariableModel):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return top_posterior(self.model, x)


def _top_posterior_fixed(
    model: LatentVariableModel, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``top_posterior`` with the encoder's weights detached: the same values, gradients
    reach ``x`` (the VampPrior's pseudo-inputs) but not the weights."""
    weights = {
        f"model.{name}": p.detach()
        for name, p in model.named_parameters()
        if not name.startswith("top_prior.")
    }
    return torch.func.functional_call(_TopPosterior(model), weights, (x,))


def top_posterior(model: LatentVariableModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log-std of q(z_top | x) (z for the VAE, z2 for L=2): x (N, 784) -> 2 x (N, d).

    The same layers as each model's ``_terms``; the VampPrior evaluates it at its
    pseudo-inputs. (A partial of this function survives ``copy.deepcopy`` of the model.)
    """
    if isinstance(model, ConvHVAE):
        img = x.reshape(x.shape[0], 1, 28, 28)
        return model.q2_head(model.q2_cnn(img))
    if isinstance(model, _TwoLayerVAE):
        return model.q2_head(model.q2_trunk(model._features(model.q2_features, x)))
    if isinstance(model, VAE):
        return model.encoder_head(mlp_forward(model.encoder, x))
    raise TypeError(f"top_posterior: no top-latent encoder known for {type(model).__name__}")


def z_holder(model: torch.nn.Module) -> torch.nn.Module:
    """The LARS distribution whose Z a model carries: the output resampler of a model with
    resampled outputs, else the top prior (a ResampledPrior for LARS priors)."""
    resampler = getattr(model, "resampler", None)
    return resampler if resampler is not None else model.top_prior


__all__ = [
    "bind_prior_encoder",
    "top_posterior",
    "z_holder",
    "build_model",
    "LatentVariableModel",
    "VAE",
    "HVAE",
    "ConvHVAE",
    "ARCHITECTURES",
]
