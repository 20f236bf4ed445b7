"""Proposal samples scored by the learned acceptance a(z): what LARS keeps and what it rejects.

Reference: M. Bauer and A. Mnih, "Resampled Priors for Variational Autoencoders",
AISTATS 2019 (arXiv:1810.11428), Appendix D, Figs. D.5-D.8: samples z ~ pi from the proposal,
decoded and ordered by a(z). The LARS prior is p(z) = pi(z) a(z) / Z (Eq. A.7), so a(z) says
how much more (or less) often the resampled prior produces z than its proposal does, and the
mean of a(z) over the proposal is the acceptance rate Z = E_pi[a(z)] (Eq. 2 / A.3).

    r = rank_samples(model, n, seed)        # z ~ pi (NOT the LARS sampler), log a(z), x
    save_samples(r, "s.npz", accepted=accept_mask(r, seed))   # what the sampler would keep
    acceptance_stats(r)                     # min / median / max / mean a(z)

The figures of a ranking and the whole job for one checkpoint are
:mod:`larsvae.reports.acceptance`.

a(z) is evaluated in float64 as log a = log sigmoid(logit): a(z) = 1e-80 has log a = -184.2
and is ranked, reported and compared exactly; ``a`` itself is ``exp(log a)`` and underflows
to 0 only below ~1e-308, which is why every comparison here is made on ``log_a``.

Randomness: ``derive_seed(seed, tag)`` with one tag per stream (:data:`RANK_TAG` proposals and
decoder noise, :data:`PANEL_TAG` the random panel of a figure, :data:`ACCEPT_TAG` the
accept/reject uniforms), each through its own ``torch.Generator``; the global RNG is never
touched.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .distributions import ResampledPrior
from .utils import atomic_write, derive_seed, module_device

PathLike = str | os.PathLike
#: derive_seed tags of the ranking streams (apart from larsvae.steps' -1..-3 and the
#: training steps t >= 0)
RANK_TAG, PANEL_TAG, ACCEPT_TAG = -101, -102, -103
#: rows per acceptance / decoder evaluation (bounds the hidden activations, not the result;
#: a size :mod:`larsvae.memory` counts)
CHUNK_ROWS = 4096


@dataclass(frozen=True, eq=False)
class Ranked:
    """n proposal samples with their acceptance, in draw order (arrays are read-only).

    z: (n, d) latent samples z ~ pi, in the model's dtype.
    log_a: (n,) float64, log a(z) = log sigmoid(logit(z)).
    x: (n, 784) float32, Bernoulli means of p(x | z).
    seed: the seed they were drawn with.
    """

    z: np.ndarray
    log_a: np.ndarray
    x: np.ndarray
    seed: int

    def __post_init__(self) -> None:
        n = self.log_a.shape[0]
        if self.log_a.shape != (n,) or self.log_a.dtype != np.float64:
            raise ValueError(f"log_a: expected a float64 (n,) array, got {self.log_a.dtype}")
        if self.z.ndim != 2 or self.z.shape[0] != n or self.x.shape != (n, 784):
            raise ValueError(
                f"z {self.z.shape} / x {self.x.shape}: expected (n, d) / (n, 784) with n = {n}"
            )
        for arr in (self.z, self.log_a, self.x):
            arr.flags.writeable = False

    @property
    def n(self) -> int:
        return int(self.log_a.shape[0])

    @property
    def a(self) -> np.ndarray:
        """a(z) (n,) float64; 0 where log a < ~-745 (use :attr:`log_a` to compare those)."""
        return np.exp(self.log_a)

    def order(self) -> np.ndarray:
        """Indices sorting the samples by decreasing a(z) (ties: draw order). (n,) int64"""
        return np.argsort(-self.log_a, kind="stable")

    def rank(self) -> np.ndarray:
        """Rank of each sample in draw order: 0 = highest a(z), n - 1 = lowest. (n,) int64"""
        r = np.empty(self.n, dtype=np.int64)
        r[self.order()] = np.arange(self.n)
        return r


def generator(seed: int, tag: int, device: torch.device | str) -> torch.Generator:
    """A private generator of the stream ``tag`` of ``seed``."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, tag))


@torch.no_grad()
def rank_samples(model: torch.nn.Module, n: int, seed: int) -> Ranked:
    """Draw n samples z ~ pi from the LARS prior's proposal, score and decode them.

    ``model.top_prior`` must be a :class:`~larsvae.distributions.ResampledPrior`. The samples
    come from ``prior.proposal`` (not the rejection sampler, which would only ever show
    accepted z); a(z) comes from a float64 copy of the acceptance network (logit in float64,
    then log sigmoid), x from ``model.decode`` (lower latents of a two-layer model drawn with
    the same generator). All on the model's device; one generator seeded with
    ``derive_seed(seed, RANK_TAG)``, so the result is a function of (model, n, seed).
    """
    prior = model.top_prior
    if not isinstance(prior, ResampledPrior):
        raise TypeError(f"model.top_prior: expected a ResampledPrior, got {type(prior).__name__}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an integer >= 1, got {n!r}")
    device = module_device(model)
    gen = generator(seed, RANK_TAG, device)
    z = prior.proposal.sample(n, generator=gen)  # (n, d), one call: independent of chunking
    acceptance64 = copy.deepcopy(prior.acceptance).to(torch.float64)
    log_a, x = [], []
    for part in z.split(CHUNK_ROWS):
        logit = acceptance64(part.to(torch.float64))  # (B,)
        log_a.append(F.logsigmoid(logit).cpu())
        x.append(model.decode(part, generator=gen).float().cpu())
    return Ranked(
        z=z.cpu().numpy(),
        log_a=torch.cat(log_a).numpy(),
        x=torch.cat(x).numpy(),
        seed=int(seed),
    )


def accept_mask(r: Ranked, seed: int) -> np.ndarray:
    """One accept/reject draw per sample, u < a(z) with u ~ U[0, 1) (Section 3). (n,) bool

    Compared as log u < log a, so tiny a(z) are handled exactly. The kept z are distributed
    as the untruncated LARS prior pi(z) a(z) / Z (Eq. A.7), and their expected fraction is Z.
    Uniforms: float64 from ``derive_seed(seed, ACCEPT_TAG)``, on the CPU.
    """
    u = torch.rand(r.n, dtype=torch.float64, generator=generator(seed, ACCEPT_TAG, "cpu"))
    return (torch.log(u) < torch.from_numpy(np.array(r.log_a))).numpy()


def log_mean(log_a: np.ndarray) -> float:
    """log of the mean of a, from log a (no underflow)."""
    m = float(log_a.max())
    return m + math.log(float(np.exp(log_a - m).mean()))


def log_median(log_a: np.ndarray) -> float:
    """log of the median of a (even n: the mean of the two middle a's), from log a."""
    s = np.sort(log_a)
    n = s.shape[0]
    if n % 2:
        return float(s[n // 2])
    return float(np.logaddexp(s[n // 2 - 1], s[n // 2]) - math.log(2.0))


def at_least(r: Ranked, threshold: float) -> np.ndarray:
    """a(z) >= threshold, (n,) bool, compared as float64 a (an a that underflows to 0 lies
    below ~1e-308, so below every positive threshold but subnormal ones)."""
    return r.a >= threshold


def save_samples(
    r: Ranked,
    out_npz: PathLike,
    *,
    threshold: float | None = None,
    accepted: np.ndarray | None = None,
) -> int:
    """Write the samples (all, or a filtered subset) as a compressed .npz; returns how many.

    Filters, combined with AND: ``threshold`` keeps a(z) >= threshold; ``accepted``, a (n,)
    bool mask such as :func:`accept_mask`, keeps what one accept/reject draw would keep.
    Rows are in rank order (decreasing a(z)). Arrays:

        z       (m, d)    the drawn latents, exactly (model dtype)
        a       (m,)      float64 a(z) (0 where it underflows; see log_a)
        log_a   (m,)      float64 log a(z)
        x       (m, 784)  uint8 round(255 * Bernoulli mean): 1/4 of float32's size, error
                          <= 1/510, below anything a figure shows
        rank    (m,)      int64 rank among all n samples (0 = highest a(z))
        index   (m,)      int64 position in the draw order of :func:`rank_samples`
        n_total, seed     scalars; threshold (nan = none), accepted_only (bool)

    Written atomically.
    """
    keep = np.ones(r.n, dtype=bool) if threshold is None else at_least(r, threshold)
    if accepted is not None:
        accepted = np.asarray(accepted)
        if accepted.shape != (r.n,) or accepted.dtype != np.bool_:
            raise ValueError(f"accepted: expected a bool ({r.n},) array, got {accepted.dtype}")
        keep &= accepted
    order = r.order()
    idx = order[keep[order]]  # kept samples, in rank order
    ranks = r.rank()[idx]
    arrays = {
        "z": r.z[idx],
        "a": np.exp(r.log_a[idx]),
        "log_a": r.log_a[idx],
        "x": np.rint(r.x[idx] * 255.0).clip(0, 255).astype(np.uint8),
        "rank": ranks,
        "index": idx.astype(np.int64),
        "n_total": np.int64(r.n),
        "seed": np.int64(r.seed),
        "threshold": np.float64(np.nan if threshold is None else threshold),
        "accepted_only": np.bool_(accepted is not None),
    }
    with atomic_write(out_npz, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return int(idx.shape[0])


def acceptance_stats(r: Ranked) -> dict[str, float]:
    """Min, median, max and mean of the ranked a (and of log a); the mean is the Monte Carlo
    estimate of Z = E_pi[a] (Eq. 2), with its standard error."""
    a, n = r.a, len(r.log_a)
    return {
        "a_min": float(a.min()),
        "a_median": math.exp(log_median(r.log_a)),
        "a_max": float(a.max()),
        "a_mean": math.exp(log_mean(r.log_a)),
        "a_mean_stderr": float(a.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
        "log_a_min": float(r.log_a.min()),
        "log_a_median": log_median(r.log_a),
        "log_a_max": float(r.log_a.max()),
    }


__all__ = [
    "ACCEPT_TAG",
    "CHUNK_ROWS",
    "PANEL_TAG",
    "RANK_TAG",
    "Ranked",
    "accept_mask",
    "acceptance_stats",
    "at_least",
    "generator",
    "log_mean",
    "log_median",
    "rank_samples",
    "save_samples",
]
