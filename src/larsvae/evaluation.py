"""Importance-weighted (IWAE) log-likelihood and test NLL with error bars.

    log p(x) ~= log (1/K) sum_k p(x, z_k) / q(z_k|x),   z_k ~ q(z|x)        (Burda et al., 2016)

with K = 1000 in the paper (Sec. 5). The posterior noise of a block of data points is drawn
at once, K samples per point, so the numbers do not depend on how the samples are chunked;
the log weights are computed in tiles of (point, sample) pairs and reduced by a float64
log-sum-exp. On the CPU a tile is about a thousand pairs whatever the chunk sizes.

For LARS priors the log density depends on the normalising constant Z (Eq. A.7 / A.14),
which is itself estimated (:mod:`larsvae.zestimate`). :func:`nll_summary` propagates its
standard error into the NLL to first order: with self-normalised importance weights
w~_k, the IWAE estimate satisfies

    d log p^(x) / d log Z = sum_k w~_k  d log p_T(z_k) / d log Z,

and d log p_T(z) / d log Z is -1 for T = inf (Eq. A.7) and follows from differentiating
Eq. A.14 for finite T (:func:`dlogp_dlogz`). So delta NLL ~= |d NLL / d log Z| SE(Z) / Z.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from larsvae.distributions.lars import LOG_Z_MAX, ResampledPrior
from larsvae.utils import module_tensor, progress_bar

#: (point, sample) pairs per ``log_weights`` call on the CPU: about one point's K = 1000,
#: as the per-image loop, so per-point work (the encoder) is paid once per point; the VAE
#: decoder splits a call into cache-sized tiles itself (models.vae.CPU_TILE_ROWS).
CPU_CALL_ROWS = 1024
#: ... and at least this many on an accelerator, which wants large calls.
MIN_DEVICE_ROWS = 4096


def _lars_prior(model: nn.Module):
    """The model's top prior if it is a LARS prior (has a normalising constant), else None."""
    prior = getattr(model, "top_prior", None)
    return prior if isinstance(prior, ResampledPrior) else None


@torch.no_grad()
def dlogp_dlogz(prior: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """d log p_T(z) / d log Z of a LARS prior at its stored Z. z: (B, D) -> (B,) float64.

    With a = a(z), m = T - 1, alpha = (1-Z)^m and Eq. A.14
    p_T(z) = pi(z) [a (1 - alpha) / Z + alpha]:

        d log p_T / d log Z = [a (m Z (1-Z)^(m-1) - (1 - alpha)) / Z - m Z (1-Z)^(m-1)]
                              / [a (1 - alpha) / Z + alpha],

    which is -1 for T = None (Eq. A.7: log p = log pi + log a - log Z) and 0 for T = 1.
    """
    n = z.shape[0]
    T = prior.truncation
    if T is None:
        return -torch.ones(n, dtype=torch.float64, device=z.device)
    if T == 1:
        return torch.zeros(n, dtype=torch.float64, device=z.device)
    a = torch.sigmoid(prior.acceptance(z).double())  # (B,)
    log_z = min(float(prior.log_z), LOG_Z_MAX)  # Z is capped just below 1 (Eq. A.14)
    zz = math.exp(log_z)
    m = T - 1
    log1m = math.log1p(-zz)  # log(1 - Z)
    alpha = math.exp(m * log1m)
    one_m_alpha = -math.expm1(m * log1m)
    z_beta = zz * m * math.exp((m - 1) * log1m)  # Z d(1 - alpha)/dZ = m Z (1-Z)^(m-1)
    num = a * (z_beta - one_m_alpha) / zz - z_beta
    den = a * one_m_alpha / zz + alpha
    return num / den


def iwae_tiles(nb: int, k: int, batch_size: int, k_chunk: int, device: torch.device):
    """(points, samples) per ``log_weights`` call: a tile of at most ``rows`` (point,
    sample) pairs, one point's samples in pieces or several points' whole sets. ``rows``
    is CPU_CALL_ROWS on the CPU, else batch_size * k_chunk (at least MIN_DEVICE_ROWS)."""
    rows = CPU_CALL_ROWS if device.type == "cpu" else max(batch_size * k_chunk, MIN_DEVICE_ROWS)
    k_tile = min(k, rows)
    return max(1, min(nb, rows // k_tile)), k_tile


def _iwae(
    model: nn.Module,
    x: torch.Tensor,
    k: int,
    batch_size: int,
    k_chunk: int,
    generator: torch.Generator | None,
    seed: int | None,
    progress: bool,
    sensitivity: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    for name, v in (("k", k), ("batch_size", batch_size), ("k_chunk", k_chunk)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    ref = module_tensor(model, default=x)  # device and dtype of the model's tensors
    if seed is not None:
        generator = torch.Generator(device=ref.device).manual_seed(seed)
    prior = _lars_prior(model)
    if prior is not None and not bool(prior.log_z_initialised):
        # log_prob would fall back to a fresh, random Z estimate in every chunk.
        raise ValueError(
            "the LARS prior holds no Z estimate: train it or call prior.set_log_z() first"
        )
    if not sensitivity:
        prior = None
    n = x.shape[0]
    log_px = torch.empty(n, dtype=torch.float64)
    sens = torch.zeros(n, dtype=torch.float64) if sensitivity else None
    noise_shape = (model.num_layers, k, model.latent_dim)
    b_tile, k_tile = iwae_tiles(min(n, batch_size), k, batch_size, k_chunk, ref.device)
    bar = progress_bar(n, desc="IWAE", enabled=progress, unit="image")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, n, batch_size):
                xb = x[i : i + batch_size].to(device=ref.device, dtype=ref.dtype)
                nb = xb.shape[0]
                # (B, L, K, d), filled point by point and layer by layer: log_weights(x_i, k,
                # generator) for one point after the other would draw the same numbers.
                noise = torch.randn(
                    (nb, *noise_shape), generator=generator, device=ref.device, dtype=ref.dtype
                )
                log_w = torch.empty(nb, k, dtype=ref.dtype, device=ref.device)
                g = torch.empty(nb, k, dtype=torch.float64, device=ref.device)
                for b in range(0, nb, b_tile):
                    for j in range(0, k, k_tile):
                        eps = noise[b : b + b_tile, :, j : j + k_tile]
                        tile = (slice(b, b + b_tile), slice(j, j + k_tile))
                        if prior is None:
                            log_w[tile] = model.log_weights(
                                xb[tile[0]], eps.shape[2], generator, noise=eps
                            )
                        else:
                            log_w[tile], z_top = model.log_weights(
                                xb[tile[0]], eps.shape[2], generator, True, noise=eps
                            )
                            z_flat = z_top.reshape(-1, z_top.shape[-1])
                            g[tile] = dlogp_dlogz(prior, z_flat).view(z_top.shape[:2])
                    bar.update(min(b_tile, nb - b))
                log_w = log_w.double()
                log_px[i : i + nb] = (torch.logsumexp(log_w, 1) - math.log(k)).cpu()
                if sens is not None and prior is not None:
                    # sum_k w~_k g_k with self-normalised weights w~_k
                    sens[i : i + nb] = (torch.softmax(log_w, 1) * g).sum(1).cpu()
    finally:
        model.train(was_training)
        bar.close()
    return log_px, sens


def iwae_log_likelihood(
    model: nn.Module,
    x: torch.Tensor,
    k: int = 1000,
    batch_size: int = 100,
    k_chunk: int = 1000,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """IWAE estimate of log p(x) per data point (Burda et al., 2016): (N,) float64, on CPU.

    ``model.log_weights(x, k, noise=eps)`` supplies (B, k) log weights for given standard
    normals eps (B, L, k, d) (L = ``model.num_layers``, d = ``model.latent_dim``). The
    noise of ``batch_size`` points is drawn at once, point after point, so the estimate does
    not depend on ``k_chunk``; on the CPU its numbers are those of ``model.log_weights(x_i,
    k, generator)`` called point after point whenever L*k*d is a multiple of 16 (torch.randn
    fills 16 values at a time). The weights of batch_size * k_chunk (point, sample) pairs
    are computed per call (on the CPU about CPU_CALL_ROWS, whatever the chunks) and reduced
    by a float64 log-sum-exp. Peak memory: batch_size * k * (L*d + 1) numbers plus one
    call's activations. Runs in eval mode under ``no_grad`` (LARS uses its stored Z) and
    restores the mode after. ``seed`` makes a fresh generator on the model's device; with
    neither ``seed`` nor ``generator`` the global RNG is used. NLL = -mean.

    A prior whose ``log_prob`` draws (``log_prob_draws``: SNIS's auxiliary proposals) takes
    its draws from the same generator, call after call: its estimate follows the seed, but
    depends on the tiles and differs from the point-by-point calls.
    """
    return _iwae(model, x, k, batch_size, k_chunk, generator, seed, progress, False)[0]


@dataclass(frozen=True)
class NLLSummary:
    """Test NLL (nats) with its two error sources.

    ``nll_stderr``: standard error of the mean over data points. ``dnll_dlogz``: first-order
    sensitivity of the NLL to log Z (0 for priors without a normalising constant; exactly 1
    for LARS with T = inf). ``nll_z_stderr`` = |dnll_dlogz| SE(Z)/Z, the NLL uncertainty
    caused by the Z estimate (0 when no Z estimate was given).
    """

    nll: float
    nll_stderr: float
    n: int
    k: int
    dnll_dlogz: float
    z_rel_stderr: float | None
    nll_z_stderr: float
    log_px: torch.Tensor = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (without the per-point ``log_px``)."""
        return {
            "nll": self.nll,
            "nll_stderr": self.nll_stderr,
            "n": self.n,
            "k": self.k,
            "dnll_dlogz": self.dnll_dlogz,
            "z_rel_stderr": self.z_rel_stderr,
            "nll_z_stderr": self.nll_z_stderr,
        }


def nll_z_error(dnll_dlogz: float, z_mean: float, z_stderr: float) -> float:
    """First-order NLL error caused by the error of Z: |d NLL / d log Z| * SE(Z) / Z."""
    return abs(dnll_dlogz) * z_stderr / z_mean


def nll_summary(
    model: nn.Module,
    x: torch.Tensor,
    k: int = 1000,
    batch_size: int = 100,
    k_chunk: int = 1000,
    *,
    z_estimate: Any = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    progress: bool = False,
) -> NLLSummary:
    """IWAE NLL over ``x`` with its standard error and, for LARS priors, the propagated
    error of Z.

    The LARS prior must already hold the Z estimate (``prior.set_log_z``). ``z_estimate``
    is anything with ``mean`` and ``stderr`` (e.g. ``larsvae.zestimate.ZEstimate``); its
    mean must match the installed Z. d NLL / d log Z comes from the same importance samples
    (self-normalised weights times :func:`dlogp_dlogz`), at no extra decoder cost.
    """
    prior = _lars_prior(model)
    log_px, sens = _iwae(
        model, x, k, batch_size, k_chunk, generator, seed, progress, prior is not None
    )
    return summarise_nll(log_px, sens, k, z_estimate, prior)


def summarise_nll(
    log_px: torch.Tensor,
    sens: torch.Tensor | None,
    k: int,
    z_estimate: Any = None,
    holder: nn.Module | None = None,
) -> NLLSummary:
    """:class:`NLLSummary` of per-image log p(x) (N,) and d log p(x) / d log Z (N,) (None:
    no Z). ``holder``, the distribution holding the installed Z, must hold ``z_estimate``'s
    (the LARS prior, or the output resampler of resampled outputs); its error is carried
    into the NLL."""
    n = log_px.numel()
    nll = float(-log_px.mean())
    nll_se = float(log_px.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan
    dnll = float(-sens.mean()) if sens is not None else 0.0
    z_rel = None
    nll_z = 0.0
    if z_estimate is not None and holder is not None:
        z_mean, z_se = float(z_estimate.mean), float(z_estimate.stderr)
        if not z_mean > 0.0:
            raise ValueError(f"z_estimate.mean: expected a positive number, got {z_mean!r}")
        log_mean = float(getattr(z_estimate, "log_mean", math.log(z_mean)))
        installed = float(holder.log_z)
        if not math.isclose(log_mean, installed, rel_tol=0.0, abs_tol=1e-9):
            raise ValueError(
                f"the installed log Z ({installed!r}) is not the given estimate's "
                f"({log_mean!r}); call set_log_z(z.log_mean) on the prior (or the output "
                "resampler) first"
            )
        z_rel = z_se / z_mean
        nll_z = nll_z_error(dnll, z_mean, z_se)
    return NLLSummary(
        nll=nll,
        nll_stderr=nll_se,
        n=n,
        k=k,
        dnll_dlogz=dnll,
        z_rel_stderr=z_rel,
        nll_z_stderr=nll_z,
        log_px=log_px,
    )


@dataclass(frozen=True)
class ELBOSummary:
    """Test-set means of the negative ELBO and its two terms (nats, positive), Eq. 1:
    ``neg_elbo = rec + kl`` with rec = -E_q log p(x|z) and kl = E_q[log q(z|x) - log p(z)]
    (all layers; for LARS the stored high-precision Z). Each image's terms average
    ``samples`` posterior draws; ``*_stderr`` are standard errors over images."""

    neg_elbo: float
    kl: float
    rec: float
    neg_elbo_stderr: float
    samples: int
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "neg_elbo": self.neg_elbo,
            "kl": self.kl,
            "rec": self.rec,
            "neg_elbo_stderr": self.neg_elbo_stderr,
            "elbo_samples": self.samples,
        }


@torch.no_grad()
def elbo_terms(
    model: nn.Module,
    x: torch.Tensor,
    samples: int,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
) -> ELBOSummary:
    """Negative ELBO, KL and reconstruction of ``x`` (N, 784), ``samples`` draws per image."""
    was_training = model.training
    model.eval()
    rec = torch.zeros(x.shape[0], dtype=torch.float64)
    kl = torch.zeros(x.shape[0], dtype=torch.float64)
    try:
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size]
            for _ in range(samples):
                out = model.loss(xb, beta=1.0, generator=generator)
                rec[i : i + len(xb)] += out["rec"].double().cpu()
                kl[i : i + len(xb)] += out["kl"].double().cpu()
    finally:
        model.train(was_training)
    rec, kl = rec / samples, kl / samples
    total = rec + kl
    n = x.shape[0]
    se = float(total.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return ELBOSummary(float(total.mean()), float(kl.mean()), float(rec.mean()), se, samples, n)


__all__ = [
    "ELBOSummary",
    "NLLSummary",
    "dlogp_dlogz",
    "elbo_terms",
    "iwae_log_likelihood",
    "nll_summary",
    "nll_z_error",
]
