"""Normalising-flow priors: RealNVP and MAF (paper Appendix C.2).

Bauer & Mnih (2019) compare LARS against two flow priors on the top latent and also use
RealNVP as a learned *proposal* for LARS (``lars_realnvp``):

* RealNVP (Dinh et al., 2017): 4 affine coupling layers, each conditioner an MLP[100-100].
* MAF (Papamakarios et al., 2017): 5 MADE blocks, each a masked MLP[100-100].

Both share the distribution interface of ``docs/design.md``: ``log_prob(z) -> (B,)``,
``train_log_prob(z, log_q=None)`` (= ``log_prob``: a flow has an exact density, no Z),
``sample(n, generator=None) -> (n, D)``, ``dim``, ``symmetric = False``.

Conventions. A flow is a bijection ``f`` from base noise ``u ~ N(0, I)`` to ``z = f(u)``;
the density is the change of variables

    log p(z) = log N(f^{-1}(z); 0, I) + log |det d f^{-1}(z) / dz|.

``transform(u) -> (z, log|det df/du|)`` is the generative (sampling) direction and
``inverse(z) -> (u, log|det df^{-1}/dz|)`` the density direction. ``sample`` keeps the
autograd graph when called outside ``torch.no_grad()`` (reparameterised samples).

Design choices (documented because Appendix C.2 leaves them open):

* conditioners use ``tanh`` hidden units (smooth densities, matching the acceptance MLP);
* log-scales pass through a soft clamp ``c * tanh(s / c)`` with ``c = scale_clamp`` (3 by
  default) so that one coupling/block can scale by at most ``e^{+-c}``: this keeps training
  stable without restricting the composed flow much;
* the last layer of every conditioner is initialised with weights 100x smaller than
  PyTorch's default and zero bias, so a fresh flow is close to, but not exactly, the identity
  (gradients reach every layer from the first step);
* RealNVP reverses the coordinate order between couplings (every coordinate is transformed
  by every other coupling, also for odd ``dim``); MAF uses fixed random permutations drawn
  from a private generator seeded with ``perm_seed`` and stored as buffers (in the state dict,
  identical across runs and devices).

Training a flow prior under the KL warm-up. The prior's parameters receive no gradient but
``beta * d KL / d theta``, and Adam divides every parameter's step by the running RMS of its
own gradient, so weighting the KL by beta does not slow them down: without more, a flow
fits the aggregate posterior at the full learning rate while beta is still near 0. It then
follows whatever the encoder does before the decoder uses z (in a VAE on dynamicMNIST the
posterior means first jump to a common offset of RMS ~3 within 60 steps), the KL drops to ~1 nat
and the posterior collapses onto the prior. A flow therefore has ``kl_warmup``: its
parameters are among :func:`larsvae.distributions.base.warmup_parameters`, whose learning
rate ``larsvae.train`` multiplies by beta, which is what the warm-up does to them with plain
SGD (``reports/flow_collapse.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from larsvae.distributions.base import Prior

_LOG_2PI = math.log(2.0 * math.pi)


def _std_normal_log_prob(u: torch.Tensor) -> torch.Tensor:
    """log N(u; 0, I) summed over the last axis. u: (B, D) -> (B,)"""
    return -0.5 * (u.pow(2).sum(-1) + u.shape[-1] * _LOG_2PI)


def _soft_clamp(s: torch.Tensor, c: float) -> torch.Tensor:
    return c * torch.tanh(s / c)


def _shrink_last_layer(layer: nn.Linear, factor: float = 0.01) -> None:
    with torch.no_grad():
        layer.weight.mul_(factor)
        layer.bias.zero_()


def _base_noise(
    n: int, dim: int, like: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """(n, dim) standard-normal noise on ``like``'s device/dtype, drawn with ``generator``.

    A generator lives on one device; noise is drawn there and moved, so a CPU generator
    gives the same numbers whether the module sits on the CPU or a GPU.
    """
    if generator is None:
        return torch.randn(n, dim, device=like.device, dtype=like.dtype)
    u = torch.randn(n, dim, generator=generator, device=generator.device, dtype=like.dtype)
    return u.to(like.device)


class _AffineCoupling(nn.Module):
    """One RealNVP affine coupling: z_b = u_b * exp(s(u_a)) + t(u_a), z_a = u_a.

    ``u_a`` are the first ``dim // 2`` coordinates, ``u_b`` the remaining ones.
    """

    def __init__(self, dim: int, hidden: Sequence[int], scale_clamp: float):
        super().__init__()
        self.d_cond = dim // 2
        self.d_out = dim - self.d_cond
        self.scale_clamp = float(scale_clamp)
        layers: list[nn.Module] = []
        # dim = 1 leaves nothing to condition on: the conditioner then sees a constant 0
        # input and learns a plain affine map.
        width = max(self.d_cond, 1)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        last = nn.Linear(width, 2 * self.d_out)
        _shrink_last_layer(last)
        layers.append(last)
        self.net = nn.Sequential(*layers)

    def _shift_log_scale(self, x_cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.d_cond == 0:
            x_cond = x_cond.new_zeros(x_cond.shape[0], 1)
        raw_s, t = self.net(x_cond).chunk(2, dim=-1)
        return t, _soft_clamp(raw_s, self.scale_clamp)

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u -> z; returns (z, log|det dz/du|) with shapes (B, D), (B,)."""
        u_a, u_b = u[:, : self.d_cond], u[:, self.d_cond :]
        t, s = self._shift_log_scale(u_a)
        z_b = u_b * torch.exp(s) + t
        return torch.cat([u_a, z_b], dim=-1), s.sum(-1)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z -> u; returns (u, log|det du/dz|) with shapes (B, D), (B,)."""
        z_a, z_b = z[:, : self.d_cond], z[:, self.d_cond :]
        t, s = self._shift_log_scale(z_a)
        u_b = (z_b - t) * torch.exp(-s)
        return torch.cat([z_a, u_b], dim=-1), -s.sum(-1)


class _Flow(Prior):
    """Shared part of the flow priors: N(0, I) base noise pushed through ``transform``.

    Subclasses define ``transform(u) -> (z, log|det df/du|)`` and
    ``inverse(z) -> (u, log|det df^{-1}/dz|)``; ``train_log_prob`` is the :class:`Prior`
    default (= ``log_prob``: a flow has no normaliser to estimate).
    """

    symmetric = False
    kl_warmup = True  # see larsvae.distributions.base.warmup_parameters

    def __init__(self, dim: int):
        super().__init__(dim)
        # Anchor for the module's device/dtype (a flow may be used before any parameter read).
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def transform(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Exact log density by change of variables. z: (B, D) -> (B,)"""
        u, logdet = self.inverse(z)
        return _std_normal_log_prob(u) + logdet

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = f(u), u ~ N(0, I): (n, D). Differentiable w.r.t. the flow parameters."""
        return self.transform(_base_noise(n, self.dim, self._anchor, generator))[0]

    def rsample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Same as :meth:`sample` (flow samples are reparameterised)."""
        return self.sample(n, generator=generator)


class RealNVP(_Flow):
    """RealNVP prior/proposal: ``num_couplings`` affine couplings with N(0, I) base.

    Appendix C.2: 4 couplings, conditioners MLP[100-100]. Between consecutive couplings the
    coordinate order is reversed. Exact density by change of variables (module docstring).
    """

    def __init__(
        self,
        dim: int,
        num_couplings: int = 4,
        hidden: Sequence[int] = (100, 100),
        scale_clamp: float = 3.0,
    ):
        super().__init__(dim)
        if num_couplings < 1:
            raise ValueError(f"num_couplings: expected an integer >= 1, got {num_couplings!r}")
        self.couplings = nn.ModuleList(
            _AffineCoupling(self.dim, tuple(hidden), scale_clamp) for _ in range(num_couplings)
        )

    def transform(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Generative direction z = f(u). u: (B, D) -> (z (B, D), log|det df/du| (B,))."""
        z = u
        logdet = u.new_zeros(u.shape[0])
        for k, coupling in enumerate(self.couplings):
            if k > 0:
                z = z.flip(-1)
            z, ld = coupling(z)
            logdet = logdet + ld
        return z, logdet

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Density direction u = f^{-1}(z). z: (B, D) -> (u (B, D), log|det df^{-1}/dz| (B,))."""
        u = z
        logdet = z.new_zeros(z.shape[0])
        for k in range(len(self.couplings) - 1, -1, -1):
            u, ld = self.couplings[k].inverse(u)
            logdet = logdet + ld
            if k > 0:
                u = u.flip(-1)
        return u, logdet

    def sample_with_log_prob(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples and their log density in one pass: log p(z) = log N(u) - log|det df/du|."""
        u = _base_noise(n, self.dim, self._anchor, generator)
        z, logdet = self.transform(u)
        return z, _std_normal_log_prob(u) - logdet

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_couplings={len(self.couplings)}"


class _MaskedLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked autoencoder (Germain et al., 2015) giving per-dimension shift and log-scale.

    Output i depends only on inputs 1..i-1 (natural order). Hidden degrees cycle through
    1..D-1 so every hidden layer connects every admissible input/output pair.
    ``forward(x) -> (shift (B, D), raw log-scale (B, D))``.
    """

    def __init__(self, dim: int, hidden: Sequence[int]):
        super().__init__()
        self.dim = int(dim)
        in_deg = torch.arange(1, dim + 1)
        layers: list[nn.Module] = []
        prev_deg, width = in_deg, dim
        for h in hidden:
            deg = torch.arange(h) % max(dim - 1, 1) + 1
            layers += [_MaskedLinear(width, h, deg[:, None] >= prev_deg[None, :]), nn.Tanh()]
            prev_deg, width = deg, h
        out_deg = torch.cat([in_deg, in_deg])  # shift and log-scale of coordinate i
        last = _MaskedLinear(width, 2 * dim, out_deg[:, None] > prev_deg[None, :])
        _shrink_last_layer(last)
        layers.append(last)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift, raw_log_scale = self.net(x).chunk(2, dim=-1)
        return shift, raw_log_scale


class MAF(_Flow):
    """Masked autoregressive flow prior: ``num_blocks`` MADE blocks with N(0, I) base.

    Appendix C.2: 5 blocks, MADE MLP[100-100]. Block k in the density direction
    (Papamakarios et al., 2017, Eq. 3-5): ``y = x[:, perm_k]``,
    ``u_i = (y_i - m_i(y_<i)) * exp(-alpha_i(y_<i))``, ``log|det| = -sum_i alpha_i``; one
    MADE pass per block. Sampling inverts each block sequentially over the D coordinates.
    """

    def __init__(
        self,
        dim: int,
        num_blocks: int = 5,
        hidden: Sequence[int] = (100, 100),
        scale_clamp: float = 3.0,
        perm_seed: int = 0,
    ):
        super().__init__(dim)
        if num_blocks < 1:
            raise ValueError(f"num_blocks: expected an integer >= 1, got {num_blocks!r}")
        self.scale_clamp = float(scale_clamp)
        self.blocks = nn.ModuleList(MADE(self.dim, tuple(hidden)) for _ in range(num_blocks))
        gen = torch.Generator().manual_seed(int(perm_seed))
        for k in range(num_blocks):
            perm = torch.randperm(self.dim, generator=gen)
            self.register_buffer(f"perm{k}", perm)
            self.register_buffer(f"inv_perm{k}", torch.argsort(perm))

    def _perm(self, k: int) -> torch.Tensor:
        return getattr(self, f"perm{k}")

    def _inv_perm(self, k: int) -> torch.Tensor:
        return getattr(self, f"inv_perm{k}")

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Density direction, one pass per block. z: (B, D) -> (u (B, D), log|det du/dz| (B,))."""
        x = z
        logdet = z.new_zeros(z.shape[0])
        for k, made in enumerate(self.blocks):
            y = x[:, self._perm(k)]
            shift, raw = made(y)
            alpha = _soft_clamp(raw, self.scale_clamp)
            x = (y - shift) * torch.exp(-alpha)
            logdet = logdet - alpha.sum(-1)
        return x, logdet

    def transform(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Generative direction, sequential: D MADE passes per block.

        Iterating ``y <- u * exp(alpha(y)) + m(y)`` D times fixes coordinate i at pass i
        (its inputs y_<i are already final), without in-place writes, so it stays
        differentiable. u: (B, D) -> (z (B, D), log|det dz/du| (B,)).
        """
        x = u
        logdet = u.new_zeros(u.shape[0])
        for k in range(len(self.blocks) - 1, -1, -1):
            made = self.blocks[k]
            y = torch.zeros_like(x)
            for _ in range(self.dim):
                shift, raw = made(y)
                alpha = _soft_clamp(raw, self.scale_clamp)
                y = x * torch.exp(alpha) + shift
            logdet = logdet + alpha.sum(-1)
            x = y[:, self._inv_perm(k)]
        return x, logdet

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_blocks={len(self.blocks)}"


__all__ = ["RealNVP", "MAF", "MADE"]
