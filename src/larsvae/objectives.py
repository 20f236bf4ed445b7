"""Training objectives and schedules (Bauer & Mnih, AISTATS 2019, Sec. 2 and Appendix C.3).

The per-example ELBO of a VAE with L stochastic layers is

    ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))                                (Eq. 1)

and both terms are estimated with one reparameterised sample; the KL is a
single-sample Monte Carlo estimate ``log q(z|x) - log p(z)`` summed over all layers,
so that every prior (LARS, flows) is handled the same way. The KL weight ``beta``
is annealed linearly from 0 to 1 ("warm-up", Appendix C.3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from larsvae.config import TrainConfig

_LOG_2PI = math.log(2.0 * math.pi)


def kl_beta(step: int, warmup_steps: int) -> float:
    """KL weight at optimisation step ``step`` (counted from 0).

    Rises linearly from 0 at step 0 to 1 at ``warmup_steps`` and stays at 1;
    ``warmup_steps == 0`` disables the warm-up (beta = 1 throughout).
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, step / warmup_steps)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate at ``step``: ``cfg.lr`` (3e-4), then ``cfg.lr_final`` (1e-4) from
    ``cfg.lr_decay_step`` on (Appendix C.3)."""
    return cfg.lr if step < cfg.lr_decay_step else cfg.lr_final


def bernoulli_log_prob(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log Bernoulli(x; sigmoid(logits)) summed over the last dim. Broadcasts. -> (...,)

    Written as ``x*l - softplus(l)``, which is exact and stable for any logit and
    (unlike ``binary_cross_entropy_with_logits``) broadcasts x of shape (B, 1, 784)
    against logits of shape (B, K, 784) without materialising the expanded x.
    """
    return (x * logits - F.softplus(logits)).sum(-1)


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag(exp(log_std))^2) summed over the last dim. Broadcasts. -> (...,)"""
    u = (z - mean) * torch.exp(-log_std)
    return -0.5 * (u * u).sum(-1) - log_std.sum(-1) - 0.5 * z.shape[-1] * _LOG_2PI


class _SigmoidTanh(torch.autograd.Function):
    """tanh as 2 sigmoid(2a) - 1 forward, tanh's own backward (1 - y^2) g."""

    @staticmethod
    def forward(ctx, a: torch.Tensor) -> torch.Tensor:
        y = torch.mul(a, 2.0).sigmoid_().mul_(2.0).sub_(1.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def tanh(a: torch.Tensor) -> torch.Tensor:
    """tanh(a), on the CPU computed as 2 sigmoid(2a) - 1: torch's CPU tanh is ~5x slower
    than its sigmoid, and the MLPs here spend more time in tanh than anywhere but the
    matmuls. Same function up to an absolute rounding error of ~1e-7; the gradient is
    tanh's, (1 - y^2) g."""
    if a.device.type != "cpu":
        return torch.tanh(a)
    if a.requires_grad and torch.is_grad_enabled():
        return _SigmoidTanh.apply(a)
    return torch.mul(a, 2.0).sigmoid_().mul_(2.0).sub_(1.0)


def mlp_forward(net: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
    """``net(h)`` with :func:`tanh` for the ``nn.Tanh`` layers."""
    for layer in net:
        h = tanh(h) if isinstance(layer, nn.Tanh) else layer(h)
    return h


def iwae_bound(log_w: torch.Tensor) -> torch.Tensor:
    """Importance-weighted bound log (1/K) sum_k w_k from log weights (..., K) -> (...,).

    K = 1 gives the ELBO; it increases with K towards log p(x) (Burda et al., 2016).
    """
    return torch.logsumexp(log_w, dim=-1) - math.log(log_w.shape[-1])


__all__ = [
    "kl_beta",
    "lr_at",
    "bernoulli_log_prob",
    "gaussian_log_prob",
    "iwae_bound",
    "mlp_forward",
    "tanh",
]
