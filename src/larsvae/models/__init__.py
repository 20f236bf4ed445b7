"""VAE family with a pluggable prior on the top latent (Bauer & Mnih 2019, Appendix C.2)."""

from __future__ import annotations

import torch

from larsvae.config import ARCHS, PRIORS, ConfigError, ModelConfig, check_choice
from larsvae.models.convhvae import ConvHVAE
from larsvae.models.resampled_outputs import ResampledOutputsVAE
from larsvae.models.vae import HVAE, VAE, LatentVariableModel

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
    from larsvae.distributions.factory import build_prior

    return ARCHITECTURES[arch](build_prior(prior, cfg.latent_dim, cfg), cfg)


def z_holder(model: torch.nn.Module) -> torch.nn.Module:
    """The LARS distribution whose Z a model carries: the output resampler of a model with
    resampled outputs, else the top prior (a ResampledPrior for LARS priors)."""
    resampler = getattr(model, "resampler", None)
    return resampler if resampler is not None else model.top_prior


__all__ = [
    "z_holder",
    "build_model",
    "LatentVariableModel",
    "VAE",
    "HVAE",
    "ConvHVAE",
    "ARCHITECTURES",
]
