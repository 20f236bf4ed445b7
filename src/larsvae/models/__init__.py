"""VAE family with a pluggable prior on the top latent (Bauer & Mnih 2019, Appendix C.2)."""

from __future__ import annotations

from larsvae.config import ARCHS, PRIORS, ConfigError, ModelConfig, check_choice
from larsvae.models.convhvae import ConvHVAE
from larsvae.models.vae import HVAE, VAE, LatentVariableModel

#: ``arch`` name -> model class; must agree with ``larsvae.config.ARCHS``.
ARCHITECTURES: dict[str, type[LatentVariableModel]] = {
    "vae": VAE,
    "hvae": HVAE,
    "convhvae": ConvHVAE,
}


def build_model(arch: str, prior: str, cfg: ModelConfig) -> LatentVariableModel:
    """Model ``arch`` ('vae' | 'hvae' | 'convhvae') with top prior ``prior`` (see
    ``larsvae.config.PRIORS``) built by ``larsvae.distributions.build_prior``.

    Unknown names raise :class:`larsvae.config.ConfigError`.
    """
    check_choice("arch", arch, ARCHS)
    check_choice("prior", prior, PRIORS)
    if arch not in ARCHITECTURES:  # ARCHS and ARCHITECTURES must agree
        raise ConfigError(f"arch: {arch!r} has no implementation")
    from larsvae.distributions.factory import build_prior

    return ARCHITECTURES[arch](build_prior(prior, cfg.latent_dim, cfg), cfg)


__all__ = ["build_model", "LatentVariableModel", "VAE", "HVAE", "ConvHVAE", "ARCHITECTURES"]
