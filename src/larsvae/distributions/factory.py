"""``build_prior``: the one place a prior name (``larsvae.config.PRIORS``) becomes a module.

Appendix C.2 of Bauer & Mnih (2019) fixes the prior hyper-parameters; they arrive here
through :class:`larsvae.config.ModelConfig`:

* ``gaussian``     N(0, I)
* ``lars``         LARS over N(0, I): a(z) = MLP[d-100-100-1], truncation T, Algorithm 1
                   with ``eps`` and S = ``train_z_samples`` proposal samples per step
* ``realnvp``      RealNVP with ``realnvp_couplings`` couplings, conditioners ``flow_hidden``
* ``maf``          MAF with ``maf_blocks`` MADE blocks, ``flow_hidden``
* ``lars_realnvp`` LARS whose proposal is a (jointly trained) RealNVP

and the priors Bauer & Mnih compare against (Table 2, Appendix D):

* ``vamp``         VampPrior with ``mixture_components`` pseudo-inputs (the model binds
                   its encoder, :func:`larsvae.models.build_model`)
* ``vamp_sg``      the same VampPrior, its encoder's weights detached in the components
                   (``encoder_gradient=False``: no gradient into them through p(z))
* ``mog``          mixture of ``mixture_components`` diagonal Gaussians
* ``trs``          TRS of Lawson et al. (2019) over N(0, I): the LARS sampler with a(z) =
                   MLP[d-``acceptance_hidden``-1], T, S = ``train_z_samples``, trained by
                   its lower bound
* ``snis``         SNIS of Lawson et al. over N(0, I): K = ``snis_proposals``, log w =
                   MLP[d-``energy_hidden``-1]
* ``lars_dim``     dimension-wise LARS: a_i(z_i) = MLP[1-``dimwise_hidden``-1] per unit,
                   truncation ``dimwise_truncation``
"""

from __future__ import annotations

from torch import nn

from larsvae.config import PRIORS, ModelConfig, check_choice
from larsvae.distributions.base import StandardNormal
from larsvae.distributions.dimwise import DimwiseResampledPrior
from larsvae.distributions.energy import SNISPrior, TRSPrior
from larsvae.distributions.flows import MAF, RealNVP
from larsvae.distributions.lars import AcceptanceMLP, ResampledPrior
from larsvae.distributions.mixtures import MixtureOfGaussians, VampPrior


def build_prior(name: str, dim: int, cfg: ModelConfig | None = None) -> nn.Module:
    """Prior module for ``name`` on a ``dim``-dimensional latent.

    Raises :class:`~larsvae.config.ConfigError` naming the value and the choices for an
    unknown ``name``.
    """
    cfg = ModelConfig() if cfg is None else cfg
    check_choice("prior", name, PRIORS)

    def realnvp() -> RealNVP:
        return RealNVP(dim, num_couplings=cfg.realnvp_couplings, hidden=cfg.flow_hidden)

    def lars(proposal: nn.Module) -> nn.Module:
        return ResampledPrior(
            proposal,
            AcceptanceMLP(dim, cfg.acceptance_hidden),
            truncation=cfg.truncation,
            eps=cfg.eps,
            num_z_samples=cfg.train_z_samples,
        )

    if name == "gaussian":
        return StandardNormal(dim)
    if name == "lars":
        return lars(StandardNormal(dim))
    if name == "realnvp":
        return realnvp()
    if name == "maf":
        return MAF(dim, num_blocks=cfg.maf_blocks, hidden=cfg.flow_hidden)
    if name == "lars_realnvp":
        return lars(realnvp())
    if name in ("vamp", "vamp_sg"):
        return VampPrior(
            dim, num_components=cfg.mixture_components, encoder_gradient=name == "vamp"
        )
    if name == "mog":
        return MixtureOfGaussians(dim, num_components=cfg.mixture_components)
    if name == "trs":
        return TRSPrior(
            StandardNormal(dim),
            AcceptanceMLP(dim, cfg.acceptance_hidden),
            truncation=cfg.truncation,
            eps=cfg.eps,
            num_z_samples=cfg.train_z_samples,
        )
    if name == "snis":
        energy = AcceptanceMLP(dim, cfg.energy_hidden)  # its output is log w, not a logit
        return SNISPrior(StandardNormal(dim), energy, num_proposals=cfg.snis_proposals)
    assert name == "lars_dim", name  # PRIORS and this function must list the same names
    return DimwiseResampledPrior(dim, cfg.dimwise_hidden, truncation=cfg.dimwise_truncation)


__all__ = ["build_prior"]
