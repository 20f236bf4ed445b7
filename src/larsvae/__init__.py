"""larsvae: Resampled Priors for Variational Autoencoders (Bauer & Mnih, AISTATS 2019).

The library a researcher imports (torch + numpy only; the pipeline lives in
:mod:`larsvae.steps` and ``workflow/``)::

    from larsvae import ResampledPrior, AcceptanceMLP, StandardNormal, estimate_z
    prior = ResampledPrior(StandardNormal(2), AcceptanceMLP(2, (10, 10)), truncation=100)
    z = prior.sample(1000)                       # exact truncated rejection sampling
    est = estimate_z(prior.acceptance, prior.proposal, 10**6, 10**5)
    prior.set_log_z(est.log_mean)                # high-precision Z for log_prob (Eq. A.14)
    log_p = prior.log_prob(z)                    # (1000,)

Names are resolved lazily, so ``import larsvae`` (and the CLI's argument errors) stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ResampledPrior": "larsvae.distributions",
    "AcceptanceMLP": "larsvae.distributions",
    "StandardNormal": "larsvae.distributions",
    "RealNVP": "larsvae.distributions",
    "MAF": "larsvae.distributions",
    "build_prior": "larsvae.distributions",
    "VampPrior": "larsvae.distributions",
    "MixtureOfGaussians": "larsvae.distributions",
    "TRSPrior": "larsvae.distributions",
    "SNISPrior": "larsvae.distributions",
    "DimwiseResampledPrior": "larsvae.distributions",
    "estimate_z": "larsvae.zestimate",
    "ZEstimate": "larsvae.zestimate",
    "VAE": "larsvae.models",
    "HVAE": "larsvae.models",
    "ConvHVAE": "larsvae.models",
    "build_model": "larsvae.models",
    "iwae_log_likelihood": "larsvae.evaluation",
    "ModelConfig": "larsvae.config",
    "TrainConfig": "larsvae.config",
    "EvalConfig": "larsvae.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'larsvae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
