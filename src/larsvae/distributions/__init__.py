"""Priors and proposals with one interface: ``log_prob(z) -> (B,)``, ``sample(n) -> (n, D)``,
``train_log_prob(z, log_q) -> (B,)``, ``dim`` (see ``docs/design.md``)."""

from .base import Prior, StandardNormal, warmup_parameters
from .lars import AcceptanceMLP, ResampledPrior, lars_log_density

__all__ = [
    "Prior",
    "StandardNormal",
    "warmup_parameters",
    "AcceptanceMLP",
    "ResampledPrior",
    "lars_log_density",
]
from .dimwise import DimwiseResampledPrior  # noqa: E402
from .energy import SNISPrior, TRSPrior  # noqa: E402
from .factory import build_prior  # noqa: E402
from .flows import MAF, RealNVP  # noqa: E402
from .mixtures import MixtureOfGaussians, VampPrior  # noqa: E402

__all__ += ["RealNVP", "MAF", "build_prior"]
__all__ += ["VampPrior", "MixtureOfGaussians", "TRSPrior", "SNISPrior", "DimwiseResampledPrior"]
