"""Mixture priors: a learned mixture of Gaussians and the VampPrior.

References: J. Tomczak and M. Welling, "VAE with a VampPrior", AISTATS 2018
(arXiv:1705.07120), Sec. 3; Bauer & Mnih (2019), Table 2, compare LARS against it.

Both are finite mixtures of diagonal Gaussians, so both have an exact, normalised density
and an exact sampler (no normalising constant to estimate, ``config.has_z`` is False):

    p(z) = sum_k w_k N(z; m_k, diag(s_k^2))                        (log-sum-exp over k)

* :class:`MixtureOfGaussians`: K components whose means, log-scales and mixture logits are
  free parameters. It starts close to N(0, I) (means 0.1 N(0, I), scales 1, equal weights)
  so that, like the flows, a fresh prior is almost the standard prior.
* :class:`VampPrior`: w_k = 1/K and (m_k, log s_k) = encoder(u_k), the posterior of the
  top latent at K learned pseudo-inputs u_k (Tomczak & Welling, Sec. 3.2): the prior shares
  the encoder's weights, so its gradients reach the encoder too. For two-layer models the
  encoder is q(z2 | x), the top latent's. The pseudo-inputs are u_k = sigmoid(w_k), inside
  (0, 1) like the binary images, with gradients everywhere (Tomczak & Welling clip with a
  hardtanh instead); w_k = logit(0.05) + 0.2 N(0, 1) puts u_k near 0.05 +- 0.01, the
  initialisation of the reference code.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .base import Prior

_LOG_2PI = math.log(2.0 * math.pi)
#: elements of the (rows, K, D) standardised-residual tensor per chunk of ``log_prob``
_CHUNK_ELEMENTS = 1 << 22

#: x (K, data_dim) -> (mean (K, D), log_std (K, D)) of the top latent's posterior
Encoder = Callable[[Tensor], tuple[Tensor, Tensor]]


def diag_gaussian_mixture_log_prob(
    z: Tensor, means: Tensor, log_stds: Tensor, log_weights: Tensor
) -> Tensor:
    """log sum_k exp(log_weights[k]) N(z; means[k], diag(exp(2 log_stds[k]))).

    z: (B, D), means and log_stds: (K, D), log_weights: (K,) normalised. -> (B,).
    The residuals (z - m_k) / s_k are formed directly (no expansion of the square, which
    would cancel catastrophically for narrow components), in chunks of rows.
    """
    k, d = means.shape
    inv_std = torch.exp(-log_stds)  # (K, D)
    const = log_weights - log_stds.sum(-1) - 0.5 * d * _LOG_2PI  # (K,)
    rows = max(1, _CHUNK_ELEMENTS // (k * d))
    out = []
    for part in z.split(rows):
        eps = (part.unsqueeze(1) - means) * inv_std  # (b, K, D)
        out.append(torch.logsumexp(const - 0.5 * eps.pow(2).sum(-1), dim=1))
    return torch.cat(out) if out else z.new_zeros(0)


def _sample_mixture(
    n: int,
    means: Tensor,
    log_stds: Tensor,
    probs: Tensor | None,
    generator: torch.Generator | None,
) -> Tensor:
    """n draws of the mixture: a component k per row (uniform if ``probs`` is None), then
    m_k + s_k * eps. -> (n, D)"""
    k, d = means.shape
    dev = means.device
    if probs is None:
        idx = torch.randint(k, (n,), generator=generator, device=dev)
    else:
        idx = torch.multinomial(probs, n, replacement=True, generator=generator)
    eps = torch.randn(n, d, generator=generator, device=dev, dtype=means.dtype)
    return means[idx] + torch.exp(log_stds[idx]) * eps


class MixtureOfGaussians(Prior):
    """p(z) = sum_k softmax(logits)_k N(z; means_k, diag(exp(2 log_stds_k))), all learned.

    Exact density (log-sum-exp over K) and exact ancestral sampling.
    """

    def __init__(self, dim: int, num_components: int = 500):
        super().__init__(dim)
        if isinstance(num_components, bool) or not isinstance(num_components, int):
            raise ValueError(f"num_components: expected an integer >= 1, got {num_components!r}")
        if num_components < 1:
            raise ValueError(f"num_components: expected an integer >= 1, got {num_components!r}")
        self.num_components = num_components
        self.means = nn.Parameter(0.1 * torch.randn(num_components, dim))
        self.log_stds = nn.Parameter(torch.zeros(num_components, dim))
        self.logits = nn.Parameter(torch.zeros(num_components))

    def log_prob(self, z: Tensor) -> Tensor:
        """Exact log density. z: (B, D) -> (B,)"""
        log_w = torch.log_softmax(self.logits, 0)
        return diag_gaussian_mixture_log_prob(z, self.means, self.log_stds, log_w)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact draws (component, then Gaussian). -> (n, D)"""
        probs = torch.softmax(self.logits.double(), 0)
        return _sample_mixture(n, self.means, self.log_stds, probs, generator)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_components={self.num_components}"


class VampPrior(Prior):
    """p(z) = (1/K) sum_k q(z | u_k), the encoder's posteriors at K pseudo-inputs u_k.

    Tomczak & Welling (2018), Sec. 3.2. The encoder is bound after construction, because
    the prior is built before the model that owns the encoder:
    :func:`larsvae.models.build_model` binds it, or call
    ``larsvae.models.bind_prior_encoder(model)`` (which honours ``encoder_gradient``). The encoder
    is held as a plain callable, not a submodule, so the model's weights are not registered
    twice (and ``state_dict`` holds only the pseudo-inputs here). Every ``log_prob`` and
    ``sample`` call runs the encoder on all K pseudo-inputs.

    Args:
        dim: latent dimension D.
        num_components: K pseudo-inputs (Tomczak & Welling and Bauer & Mnih discuss
            K = 500).
        data_dim: size of one flattened input (784 for 28x28 images).
        encoder: optional x (K, data_dim) -> (mean (K, D), log_std (K, D)).
        encoder_gradient: whether the encoder's weights receive gradients through the
            prior's components (Tomczak & Welling: yes, the default). With ``False``,
            :func:`larsvae.models.build_model` binds the encoder with its weights detached
            in the components: the pseudo-inputs still learn through them, and the
            encoder learns only through q(z | x). The density is the same; only the
            training gradient differs. Under a short KL warm-up the coupled gradient
            collapses the posterior (the components are as narrow as the posteriors,
            so p(z) penalises every offset between them): reports/flow_collapse.md.
    """

    def __init__(
        self,
        dim: int,
        num_components: int = 500,
        data_dim: int = 784,
        encoder: Encoder | None = None,
        encoder_gradient: bool = True,
    ):
        super().__init__(dim)
        for name, v in (("num_components", num_components), ("data_dim", data_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {v!r}")
        self.num_components = num_components
        self.data_dim = data_dim
        self.encoder_gradient = bool(encoder_gradient)
        w = math.log(0.05 / 0.95) + 0.2 * torch.randn(num_components, data_dim)
        self.pseudo_logits = nn.Parameter(w)
        self.bind_encoder(encoder)

    def bind_encoder(self, encoder: Encoder | None) -> None:
        """Install the encoder x (K, data_dim) -> (mean (K, D), log_std (K, D)).

        Stored in ``__dict__``: an ``nn.Module`` encoder (or a bound method of the model)
        must not become a submodule of its own model's prior. Used as given: with
        ``encoder_gradient=False`` the encoder must detach its own weights, as the one
        :func:`larsvae.models.bind_prior_encoder` binds does.
        """
        self.__dict__["_encoder"] = encoder

    def pseudo_inputs(self) -> Tensor:
        """u_k = sigmoid(w_k), (K, data_dim)."""
        return torch.sigmoid(self.pseudo_logits)

    def components(self) -> tuple[Tensor, Tensor]:
        """(means, log_stds) of the K components, each (K, D)."""
        if self._encoder is None:
            raise RuntimeError(
                "VampPrior: no encoder bound; build the model with larsvae.build_model or "
                "call prior.bind_encoder(...) first"
            )
        mean, log_std = self._encoder(self.pseudo_inputs())
        if mean.shape != (self.num_components, self.dim) or log_std.shape != mean.shape:
            raise ValueError(
                f"VampPrior: the encoder returned {tuple(mean.shape)} and "
                f"{tuple(log_std.shape)}, expected ({self.num_components}, {self.dim})"
            )
        return mean, log_std

    def log_prob(self, z: Tensor) -> Tensor:
        """Exact log density: log-mean-exp over k of log q(z | u_k). z: (B, D) -> (B,)"""
        mean, log_std = self.components()
        log_w = z.new_full((self.num_components,), -math.log(self.num_components))
        return diag_gaussian_mixture_log_prob(z, mean, log_std, log_w)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact draws: a uniform k, then z ~ q(z | u_k). -> (n, D)"""
        mean, log_std = self.components()
        return _sample_mixture(n, mean, log_std, None, generator)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_components={self.num_components}, data_dim={self.data_dim}, "
            f"encoder_bound={self._encoder is not None}, "
            f"encoder_gradient={self.encoder_gradient}"
        )


__all__ = ["MixtureOfGaussians", "VampPrior", "diag_gaussian_mixture_log_prob"]
