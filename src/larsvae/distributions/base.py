"""The prior interface shared by every distribution in :mod:`larsvae.distributions`.

Every prior/proposal is an ``nn.Module`` with

    prior.log_prob(z)               # (B, D) -> (B,)
    prior.train_log_prob(z, log_q)  # (B, D), (B,) -> (B,); = log_prob except for LARS
    prior.sample(n, generator=None) # -> (n, D) on the module's device
    prior.dim                       # int

(see ``docs/design.md``). A ``generator`` must live on the module's device.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Prior(nn.Module):
    """Base class: holds ``dim`` and gives every prior the default ``train_log_prob``.

    ``symmetric`` says whether the density satisfies p(z) = p(-z); only then may
    :func:`larsvae.zestimate.estimate_z` use antithetic pairs (z, -z).

    ``log_prob_draws`` says that ``log_prob(z, generator=None)`` is itself random (an
    estimate from fresh draws, as SNIS's); every other prior's is a function of z.

    ``kl_warmup`` says that the prior's own parameters train at the learning rate times the
    KL weight beta (:func:`warmup_parameters`): true for the flows, whose posteriors
    collapsed onto the prior without it; false for every other prior. (The VampPrior's
    posterior collapses too, and with its pseudo-inputs under the warm-up just the same: KL
    2.9 nats at step 200 against 2.8 at the plain rate, so Adam's cancellation of beta is
    not its cause there.)
    """

    symmetric: bool = False
    kl_warmup: bool = False
    #: ``log_prob`` draws random numbers (SNIS's auxiliary proposals) and takes a
    #: ``generator``: the models pass evaluation's own, so its numbers follow the seed
    log_prob_draws: bool = False

    def __init__(self, dim: int):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim: expected a positive integer, got {dim!r}")
        self.dim = dim

    def log_prob(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def sample(
        self, n: int, generator: torch.Generator | None = None
    ) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def train_log_prob(self, z: Tensor, log_q: Tensor | None = None) -> Tensor:
        """Log density used in the training objective; plain :meth:`log_prob` by default.

        ``log_q`` (the posterior's log density of ``z``) is only used by LARS (Algorithm 1).
        """
        return self.log_prob(z)


def warmup_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters of every prior inside ``module`` that has ``kl_warmup`` (a flow
    prior, the RealNVP proposal of LARS over RealNVP), each once, in module order; ``[]`` if
    there is none.

    Why they need it: such a parameter receives no gradient but ``beta * d KL / d theta``,
    and Adam divides every parameter's step by the running RMS of its own gradient, so the
    beta in front of the KL does not slow it down. Without more, the prior fits the
    aggregate posterior at the full learning rate while beta is still near 0, follows
    whatever the encoder does before the decoder uses z, and the posterior collapses onto
    it (``reports/flow_collapse.md``). ``larsvae.train`` multiplies their learning rate by
    beta, which is what the warm-up does to them with plain SGD.
    """
    seen: set[int] = set()
    out: list[nn.Parameter] = []
    for m in module.modules():
        if isinstance(m, Prior) and m.kl_warmup:
            for p in m.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
    return out


class StandardNormal(Prior):
    """N(0, I_D), the proposal pi(z) of the paper's LARS priors (Section 3)."""

    symmetric = True

    def __init__(self, dim: int):
        super().__init__(dim)
        # Carries the module's device and dtype through .to(...); not saved in the state dict.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def log_prob(self, z: Tensor) -> Tensor:
        """log N(z; 0, I). z: (B, D) -> (B,)"""
        return -0.5 * z.pow(2).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws, (n, D), on the module's device and in its dtype."""
        a = self._anchor
        return torch.randn(n, self.dim, generator=generator, device=a.device, dtype=a.dtype)

    def rsample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Same as :meth:`sample` (the distribution has no parameters to differentiate)."""
        return self.sample(n, generator=generator)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


__all__ = ["Prior", "StandardNormal"]
