"""VAE family of Bauer & Mnih (AISTATS 2019), Appendix C.2: VAE (L=1) and HVAE (L=2).

The ConvHVAE (L=2) lives in :mod:`larsvae.models.convhvae` and builds on the base class here.

All models have a Bernoulli likelihood on 28x28 binary images given as (B, 784) floats,
diagonal-Gaussian encoders whose mean and log-std heads share one trunk, tanh
non-linearities in MLPs, ReLU after convolutions and Glorot (Xavier-uniform) weights with
zero biases. The prior on the top latent (z for the VAE, z2 for the L=2 models) is a
pluggable module following the ``larsvae.distributions`` interface (``log_prob``,
``train_log_prob``, ``sample``, ``dim``), so the same code trains N(0, I), LARS, flow and
LARS-over-flow priors.

Notation: MLP[a-b-c] is a tanh MLP with layer widths a, b, c; MLP[[f, g]-h] concatenates
the outputs of f and g and continues with a layer of width h. H = ``cfg.hidden`` (300),
d = ``cfg.latent_dim`` (50).

References: Bauer & Mnih (2019) Eq. 1 (ELBO), Algorithm 1 (joint LARS training),
Appendix C.2 (architectures); Burda et al. (2016) (importance weights).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from larsvae.config import ModelConfig
from larsvae.distributions import StandardNormal, build_prior
from larsvae.objectives import bernoulli_log_prob, gaussian_log_prob, mlp_forward, tanh

_LOG_2PI = math.log(2.0 * math.pi)
IMAGE_SIDE = 28
DATA_DIM = IMAGE_SIDE * IMAGE_SIDE


def mlp(sizes: list[int] | tuple[int, ...], final_activation: bool = True) -> nn.Sequential:
    """tanh MLP with layer widths ``sizes`` (tanh also after the last layer by default)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if final_activation or i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def glorot_init(module: nn.Module) -> None:
    """Glorot-uniform weights, zero biases, for every Linear / (transposed) convolution."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class GaussianHead(nn.Module):
    """Mean and log-std heads on a shared trunk output: (..., H) -> 2 x (..., d)."""

    def __init__(self, in_features: int, dim: int):
        super().__init__()
        self.mean = nn.Linear(in_features, dim)
        self.log_std = nn.Linear(in_features, dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean(h), self.log_std(h)


class _Terms(NamedTuple):
    """Log densities of one draw z_k ~ q(z|x) per (example, sample); each (B, K)."""

    log_px: torch.Tensor  # log p(x | z)
    z_top: torch.Tensor  # (B, K, d) top latent (z or z2)
    log_q_top: torch.Tensor  # log q(z_top | x)
    log_q_rest: torch.Tensor  # log q of the lower layers (0 for L=1)
    log_p_rest: torch.Tensor  # log p of the lower layers given the top (0 for L=1)


class PresetNoise:
    """Standard normals drawn in advance, in place of a generator for the posterior draws.

    ``noise`` (B, L, K, d): layer l of the sampling order (z, or z2 then z1) takes
    ``noise[:, l]``. It goes where ``_terms(x, k, generator)`` takes its generator, so IWAE
    can draw each data point's noise once and split the work into chunks as it likes
    (:mod:`larsvae.evaluation`).
    """

    def __init__(self, noise: torch.Tensor):
        self.noise = noise
        self.layer = 0

    def take(self, shape: torch.Size) -> torch.Tensor:
        eps = self.noise[:, self.layer]  # (B, K, d)
        if eps.shape != shape:
            raise ValueError(
                f"noise layer {self.layer}: shape {tuple(eps.shape)}, expected {tuple(shape)}"
            )
        self.layer += 1
        return eps


def _reparameterise(
    mean: torch.Tensor, log_std: torch.Tensor, generator: torch.Generator | PresetNoise | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """z = mean + exp(log_std) * eps, eps ~ N(0, I); returns (z, log N(z; mean, std)). (...,d)

    log N(z; mean, std) is taken from eps = (z - mean) / std itself: the value and gradient
    of ``gaussian_log_prob(z, mean, log_std)`` (whose z and mean paths cancel), in fewer ops.
    """
    if isinstance(generator, PresetNoise):
        eps = generator.take(mean.shape)
    else:
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    z = mean + torch.exp(log_std) * eps
    log_q = -0.5 * (eps * eps).sum(-1) - log_std.sum(-1) - 0.5 * eps.shape[-1] * _LOG_2PI
    return z, log_q


class LatentVariableModel(nn.Module):
    """Base of the VAE family: the objective, importance weights, sampling and post-hoc mode.

    Subclasses implement ``_terms(x, k, generator)`` (draw K samples from q(z|x) and return
    the log densities except the top prior) and ``_decode_from_top(z_top, generator)``.
    """

    arch: str = ""
    num_layers: int = 1

    def __init__(self, prior: nn.Module, cfg: ModelConfig):
        super().__init__()
        if prior.dim != cfg.latent_dim:
            raise ValueError(f"prior.dim={prior.dim} != cfg.latent_dim={cfg.latent_dim}")
        self.cfg = cfg
        self.latent_dim = cfg.latent_dim
        self._posthoc = False

    def _finish_init(self, prior: nn.Module) -> None:
        """Called by subclasses once their networks exist."""
        glorot_init(self)  # before the prior is attached: it keeps its own initialisation
        self.top_prior = prior

    # -- subclass hooks -------------------------------------------------------------
    def _terms(self, x: torch.Tensor, k: int, generator: torch.Generator | None) -> _Terms:
        raise NotImplementedError

    def _decode_from_top(
        self, z_top: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------------
    def _as_input(self, x: torch.Tensor) -> torch.Tensor:
        ref = next(self.parameters())
        if x.dim() != 2 or x.shape[1] != DATA_DIM:
            raise ValueError(f"expected x of shape (B, {DATA_DIM}), got {tuple(x.shape)}")
        return x.to(device=ref.device, dtype=ref.dtype)

    def _top_log_prob(
        self,
        z_top: torch.Tensor,
        log_q_top: torch.Tensor,
        train: bool,
        generator: torch.Generator | None = None,
    ):
        """log p(z_top) (B, K). In training mode the prior's ``train_log_prob`` (Algorithm 1
        for LARS: per-batch Z estimate that also updates the running Z; plain log_prob for
        the other priors); otherwise ``log_prob`` with the stored Z (Eq. A.7 / A.14), whose
        draws, for a prior that makes some (``log_prob_draws``: SNIS), come from
        ``generator`` (the global RNG without one)."""
        b, k, d = z_top.shape
        flat = z_top.reshape(b * k, d)
        if train:
            lp = self.top_prior.train_log_prob(flat, log_q_top.detach().reshape(b * k))
        elif getattr(self.top_prior, "log_prob_draws", False):
            lp = self.top_prior.log_prob(flat, generator=generator)
        else:
            lp = self.top_prior.log_prob(flat)
        return lp.reshape(b, k)

    # -- public API -------------------------------------------------------------------
    def loss(
        self, x: torch.Tensor, beta: float = 1.0, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Single-sample negative ELBO with KL weight ``beta`` (Eq. 1; warm-up Appendix C.3).

        x: (B, 784) in {0, 1}. Returns 'loss' (scalar) = mean(rec + beta * kl),
        'rec' (B,) = -log p(x|z), 'kl' (B,) = log q(z|x) - log p(z) summed over all layers
        (one-sample estimate, valid for any prior), 'elbo' (B,) = -(rec + kl).
        """
        x = self._as_input(x)
        t = self._terms(x, 1, generator)
        log_p_top = self._top_log_prob(t.z_top, t.log_q_top, self.training, generator)
        rec = -t.log_px[:, 0]
        kl = (t.log_q_top + t.log_q_rest - log_p_top - t.log_p_rest)[:, 0]
        return {
            "loss": (rec + beta * kl).mean(),
            "rec": rec,
            "kl": kl,
            "elbo": -(rec + kl),
        }

    def log_weights(
        self,
        x: torch.Tensor,
        k: int,
        generator: torch.Generator | None = None,
        return_top_latent: bool = False,
        *,
        noise: torch.Tensor | None = None,
    ):
        """Importance log weights log p(x, z_k) - log q(z_k|x), z_k ~ q(z|x): (B, k).

        All layers are included for L=2. The prior uses ``log_prob`` (stored Z for LARS),
        never the training estimator. With ``return_top_latent`` also returns the top
        latents (B, k, d), e.g. for the Z sensitivity in ``larsvae.evaluation``.
        ``noise`` (B, num_layers, k, d) standard normals replace the draws from
        ``generator`` (same numbers as a generator that would have drawn them, layer by
        layer, for one data point at a time); ``generator`` then only feeds a prior whose
        ``log_prob`` draws (SNIS's auxiliary proposals).
        """
        x = self._as_input(x)
        t = self._terms(x, k, generator if noise is None else PresetNoise(noise))
        log_p_top = self._top_log_prob(t.z_top, t.log_q_top, False, generator)
        log_w = t.log_px + log_p_top + t.log_p_rest - t.log_q_top - t.log_q_rest
        return (log_w, t.z_top) if return_top_latent else log_w

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral samples' Bernoulli means (n, 784); the top latent comes from the prior's
        own (for LARS: exact, truncated rejection) sampler."""
        return self.decode(self.top_prior.sample(n, generator=generator), generator)

    def decode(self, z_top: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Bernoulli means (n, 784) of p(x | z_top) (lower latents drawn ancestrally)."""
        ref = next(self.parameters())
        logits = self._decode_from_top(z_top.to(device=ref.device, dtype=ref.dtype), generator)
        return torch.sigmoid(logits)

    @property
    def is_posthoc(self) -> bool:
        return self._posthoc

    def make_posthoc(self, cfg: ModelConfig | None = None) -> None:
        """Post-hoc LARS (Sec. 4.1 of the paper): wrap the trained N(0, I) top prior as the
        proposal of a ResampledPrior with a fresh acceptance network a(z) and freeze every
        other parameter. ``cfg`` (default: the model's) supplies ``acceptance_hidden``,
        ``truncation``, ``eps`` and ``train_z_samples``.

        Afterwards only ``trainable_parameters()`` (the acceptance network) receive
        gradients, and ``train()`` keeps encoder and decoder in eval mode.
        """
        cfg = self.cfg if cfg is None else cfg
        if self._posthoc:
            raise RuntimeError("make_posthoc() was already called on this model")
        if not isinstance(self.top_prior, StandardNormal):
            raise ValueError(
                "post-hoc LARS needs a model trained with the 'gaussian' prior; this model's "
                f"top prior is {type(self.top_prior).__name__}"
            )
        if cfg.latent_dim != self.latent_dim:
            raise ValueError(f"cfg.latent_dim={cfg.latent_dim} != model's {self.latent_dim}")
        ref = next(self.parameters())
        for p in self.parameters():
            p.requires_grad_(False)
        # The one config -> prior factory: LARS over N(0, I), which has no parameters, so
        # the trained proposal and the factory's are the same distribution.
        prior = build_prior("lars", self.latent_dim, cfg)
        prior.acceptance.to(dtype=ref.dtype)
        self.top_prior = prior.to(device=ref.device)  # device only: log_z stays float64
        self.cfg = cfg
        self._posthoc = True
        self.train(self.training)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters to optimise: all of them, or only a(z)'s after ``make_posthoc``."""
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True):
        super().train(mode)
        if self._posthoc:  # frozen networks behave as at evaluation time
            for child in self.children():
                if child is not self.top_prior:
                    child.train(False)
        return self


class VAE(LatentVariableModel):
    """L=1 VAE: q(z|x) = MLP[784-H-H-d], p(x|z) = MLP[d-H-H-784] (logits), p(z) pluggable."""

    arch = "vae"
    num_layers = 1

    def __init__(self, prior: nn.Module, cfg: ModelConfig):
        super().__init__(prior, cfg)
        h, d = cfg.hidden, cfg.latent_dim
        self.encoder = mlp([DATA_DIM, h, h])
        self.encoder_head = GaussianHead(h, d)
        self.decoder = mlp([d, h, h, DATA_DIM], final_activation=False)
        self._finish_init(prior)

    def _terms(self, x, k, generator):
        mean, log_std = self.encoder_head(mlp_forward(self.encoder, x))  # (B, d)
        mean = mean.unsqueeze(1).expand(-1, k, -1)
        log_std = log_std.unsqueeze(1).expand(-1, k, -1)
        z, log_q = _reparameterise(mean, log_std, generator)  # (B, k, d), (B, k)
        if torch.is_grad_enabled():
            log_px = bernoulli_log_prob(x.unsqueeze(1), mlp_forward(self.decoder, z))
        else:  # evaluation (IWAE): the same sum, arranged for speed
            log_px = _mlp_bernoulli_log_prob(self.decoder, x, z)
        zero = torch.zeros_like(log_q)
        return _Terms(log_px, z, log_q, zero, zero)

    def _decode_from_top(self, z_top, generator):
        return mlp_forward(self.decoder, z_top)


#: Rows (point, sample) per decoder tile without autograd on the CPU: the (256, 784) logits
#: (0.8 MB) stay in a core's L2 cache (bench/bench_iwae.py).
CPU_TILE_ROWS = 256


def _mlp_bernoulli_log_prob(mlp: nn.Sequential, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log Bernoulli(x; sigmoid(mlp(z))) without autograd: x (B, 784), z (B, K, d) -> (B, K).

    ``mlp`` is Linear/Tanh layers ending in a Linear (W, b) that gives the logits l = W h + b.
    The sum over pixels sum_j x_j l_j - softplus(l_j) is taken with x.l = h.(W^T x) + b.x,
    so the (B, K, 784) product x * l is never formed; only softplus(l) is, on the CPU in
    tiles of CPU_TILE_ROWS (point, sample) pairs. Equal to ``bernoulli_log_prob(x, mlp(z))``
    up to float32 rounding (another summation order).
    """
    *hidden, out = mlp
    b, k, _ = z.shape
    rows = CPU_TILE_ROWS if z.device.type == "cpu" else b * k
    k_tile = min(k, rows)
    b_tile = max(1, rows // k_tile)
    x_w = (x @ out.weight).unsqueeze(-1)  # (B, H, 1)
    x_b = (x @ out.bias).unsqueeze(-1)  # (B, 1)
    log_px = torch.empty(b, k, dtype=z.dtype, device=z.device)
    for i in range(0, b, b_tile):
        for j in range(0, k, k_tile):
            h = z[i : i + b_tile, j : j + k_tile]  # (b_tile, k_tile, d)
            for layer in hidden:
                h = tanh(h) if isinstance(layer, nn.Tanh) else layer(h)
            x_dot_logits = torch.bmm(h, x_w[i : i + b_tile]).squeeze(-1) + x_b[i : i + b_tile]
            log_px[i : i + b_tile, j : j + k_tile] = x_dot_logits - F.softplus(out(h)).sum(-1)
    return log_px


class _TwoLayerVAE(LatentVariableModel):
    """Shared L=2 structure (Appendix C.2, Eq. for the HVAE):

    q(z2|x)       = [feat2(x)]-H-d               (Gaussian)
    q(z1|x, z2)   = [[feat1(x), MLP[d-H](z2)]-H-d (Gaussian)
    p(z1|z2)      = MLP[d-H-H-d]                 (Gaussian)
    p(x|z1, z2)   = [[MLP[d-H](z1), MLP[d-H](z2)]-H-out(.)   (Bernoulli logits)
    p(z2)         = the pluggable prior.

    feat1, feat2 (x features) and out(.) are MLP layers (HVAE); the ConvHVAE wires its
    CNNs differently and has its own class (:mod:`larsvae.models.convhvae`). Both layers
    have d = cfg.latent_dim units: the paper gives 50 for the VAE and does not restate
    the size for the L=2 models, so we use the same.
    """

    num_layers = 2

    def __init__(self, prior, cfg, x_features_q2, x_features_q1, feat_dim, decoder_out):
        super().__init__(prior, cfg)
        h, d = cfg.hidden, cfg.latent_dim
        # q(z2 | x)
        self.q2_features = x_features_q2
        self.q2_trunk = mlp([feat_dim, h])
        self.q2_head = GaussianHead(h, d)
        # q(z1 | x, z2)
        self.q1_x = x_features_q1
        self.q1_z2 = mlp([d, h])
        self.q1_trunk = mlp([feat_dim + h, h])
        self.q1_head = GaussianHead(h, d)
        # p(z1 | z2)
        self.p1_trunk = mlp([d, h, h])
        self.p1_head = GaussianHead(h, d)
        # p(x | z1, z2)
        self.px_z1 = mlp([d, h])
        self.px_z2 = mlp([d, h])
        self.px_trunk = mlp([2 * h, h])
        self.px_out = decoder_out
        self._finish_init(prior)

    def _features(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return module(x)

    def _decode(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits (..., 784) from z1, z2 of shape (..., d)."""
        h = self.px_trunk(torch.cat([self.px_z1(z1), self.px_z2(z2)], dim=-1))
        lead = h.shape[:-1]
        return self.px_out(h.reshape(-1, h.shape[-1])).reshape(*lead, DATA_DIM)

    def _terms(self, x, k, generator):
        b = x.shape[0]
        mean2, log_std2 = self.q2_head(self.q2_trunk(self._features(self.q2_features, x)))
        mean2 = mean2.unsqueeze(1).expand(-1, k, -1)
        log_std2 = log_std2.unsqueeze(1).expand(-1, k, -1)
        z2, log_q2 = _reparameterise(mean2, log_std2, generator)  # (B, k, d), (B, k)

        fx = self._features(self.q1_x, x).unsqueeze(1)  # (B, 1, F): computed once per x
        fx = fx.expand(b, k, fx.shape[-1])
        mean1, log_std1 = self.q1_head(self.q1_trunk(torch.cat([fx, self.q1_z2(z2)], dim=-1)))
        z1, log_q1 = _reparameterise(mean1, log_std1, generator)

        pm, pls = self.p1_head(self.p1_trunk(z2))
        log_p1 = gaussian_log_prob(z1, pm, pls)
        log_px = bernoulli_log_prob(x.unsqueeze(1), self._decode(z1, z2))
        return _Terms(log_px, z2, log_q2, log_q1, log_p1)

    def _decode_from_top(self, z_top, generator):
        pm, pls = self.p1_head(self.p1_trunk(z_top))
        z1, _ = _reparameterise(pm, pls, generator)
        return self._decode(z1, z_top)


class HVAE(_TwoLayerVAE):
    """L=2 hierarchical VAE with MLPs (Appendix C.2); see :class:`_TwoLayerVAE`.

    q(z2|x) = MLP[784-H-H-d]; q(z1|x,z2) = MLP[[MLP[784-H], MLP[d-H]]-H-d];
    p(z1|z2) = MLP[d-H-H-d]; p(x|z1,z2) = MLP[[MLP[d-H], MLP[d-H]]-H-784].
    """

    arch = "hvae"

    def __init__(self, prior: nn.Module, cfg: ModelConfig):
        h = cfg.hidden
        super().__init__(
            prior,
            cfg,
            x_features_q2=mlp([DATA_DIM, h]),
            x_features_q1=mlp([DATA_DIM, h]),
            feat_dim=h,
            decoder_out=nn.Linear(h, DATA_DIM),
        )


__all__ = [
    "GaussianHead",
    "HVAE",
    "LatentVariableModel",
    "VAE",
    "glorot_init",
    "mlp",
    "DATA_DIM",
]
