"""Proposal samples ranked by the learned acceptance a(z): what LARS keeps and what it rejects.

Reference: M. Bauer and A. Mnih, "Resampled Priors for Variational Autoencoders",
AISTATS 2019 (arXiv:1810.11428), Appendix D, Figs. D.5-D.8: samples z ~ pi from the proposal,
decoded and ordered by a(z). The LARS prior is p(z) = pi(z) a(z) / Z (Eq. A.7), so a(z) says
how much more (or less) often the resampled prior produces z than its proposal does, and the
mean of a(z) over the proposal is the acceptance rate Z = E_pi[a(z)] (Eq. 2 / A.3).

    r = rank_samples(model, n, seed)        # z ~ pi (NOT the LARS sampler), log a(z), x
    plot_grids(r, "grid.png")               # k highest / k random / k lowest a(z)
    plot_sorted_acceptance(r, "acc.png")    # sorted a(z), log axis
    save_samples(r, "s.npz", accepted=accept_mask(r, seed))   # what the sampler would keep
    rank_checkpoint(ckpt, out_dir)          # all of it for one checkpoint (pipeline / CLI)

a(z) is evaluated in float64 as log a = log sigmoid(logit): a(z) = 1e-80 has log a = -184.2
and is ranked, reported and compared exactly; ``a`` itself is ``exp(log a)`` and underflows
to 0 only below ~1e-308, which is why every comparison here is made on ``log_a``.

Randomness: ``derive_seed(seed, tag)`` with one tag per stream (:data:`RANK_TAG` proposals and
decoder noise, :data:`PANEL_TAG` the random panel, :data:`ACCEPT_TAG` the accept/reject
uniforms), each through its own ``torch.Generator``; the global RNG is never touched.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .utils import (
    UserError,
    atomic_write,
    atomic_write_text,
    choose_device,
    derive_seed,
    file_sha256,
    module_device,
)

PathLike = str | os.PathLike
#: derive_seed tags of this module's streams (apart from larsvae.steps' -1..-3 and the
#: training steps t >= 0)
RANK_TAG, PANEL_TAG, ACCEPT_TAG = -101, -102, -103
#: rows per acceptance / decoder evaluation (bounds the hidden activations, not the result)
CHUNK_ROWS = 4096
#: file names written by :func:`rank_checkpoint` inside ``out_dir``
OUTPUTS = ("grid.png", "acceptance.png", "samples.npz", "summary.json")
_LN10 = math.log(10.0)
#: below this log a(z), exp() loses precision (subnormals) and then gives 0
_LOG_A_PLOTTABLE = -700.0


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


def _generator(seed: int, tag: int, device: torch.device) -> torch.Generator:
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
    from .distributions import ResampledPrior

    prior = model.top_prior
    if not isinstance(prior, ResampledPrior):
        raise TypeError(f"model.top_prior: expected a ResampledPrior, got {type(prior).__name__}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an integer >= 1, got {n!r}")
    device = module_device(model)
    gen = _generator(seed, RANK_TAG, device)
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
    u = torch.rand(r.n, dtype=torch.float64, generator=_generator(seed, ACCEPT_TAG, "cpu"))
    return (torch.log(u) < torch.from_numpy(np.array(r.log_a))).numpy()


def panel_indices(r: Ranked, k: int, seed: int) -> dict[str, np.ndarray]:
    """Sample indices of the three panels of :func:`plot_grids`, each sorted by decreasing a(z).

    ``highest``: the k largest a(z); ``random``: k drawn without replacement from all n
    (``derive_seed(seed, PANEL_TAG)``); ``lowest``: the k smallest. k is capped at n.
    """
    k = min(int(k), r.n)
    order = r.order()
    perm = torch.randperm(r.n, generator=_generator(seed, PANEL_TAG, "cpu")).numpy()
    rand = perm[:k]
    rand = rand[np.argsort(-r.log_a[rand], kind="stable")]
    return {"highest": order[:k], "random": rand, "lowest": order[r.n - k :]}


def format_a(log_a: float) -> str:
    """a = exp(log_a) as text, also far below float64's range: -184.2 -> '1.07e-80'."""
    if not math.isfinite(log_a):
        return "0" if log_a < 0 else str(log_a)
    e10 = log_a / _LN10
    exponent = math.floor(e10)
    mantissa = 10.0 ** (e10 - exponent)
    if mantissa >= 9.995:  # rounding would print '10.00'
        mantissa, exponent = 1.0, exponent + 1
    return f"{mantissa:.2f}e{exponent:+03d}"


def _mosaic(x: np.ndarray, pad: int = 2) -> np.ndarray:
    """(k, 784) images -> one (H, W) array, row-major on a ceil(sqrt(k)) square, white gaps."""
    k = x.shape[0]
    side = max(1, math.ceil(math.sqrt(k)))
    cell = 28 + pad
    out = np.ones((side * cell + pad, side * cell + pad), dtype=np.float32)
    for i in range(k):
        row, col = divmod(i, side)
        y0, x0 = pad + row * cell, pad + col * cell
        out[y0 : y0 + 28, x0 : x0 + 28] = x[i].reshape(28, 28)
    return out


#: what a ranking scores: the proposal's latents (Figs. D.5-D.8) by default
PROPOSAL_SAMPLES = (
    "z",
    "Decoded proposal samples z ~ pi ranked by a(z)",
    "proposal samples z ~ pi",
    "Bernoulli means of p(x|z)",
)


def plot_grids(
    r: Ranked,
    out_png: PathLike,
    k: int = 25,
    seed: int = 0,
    scored: tuple[str, str, str, str] = PROPOSAL_SAMPLES,
) -> None:
    """Three image grids side by side: the k highest a(z), k random, the k lowest.

    Each grid reads row-major in decreasing a(z); its title gives the a(z) range it spans.
    Pixels are ``r.x`` (0 black, 1 white; white gaps between images): for proposal samples
    the decoder's Bernoulli means. Panels are chosen by :func:`panel_indices`. ``scored``:
    (the acceptance's variable, the title, the samples' name, what the pixels are), e.g.
    the resampled outputs' ("x", ...) for Fig. D.9. Written atomically
    (``larsvae.reports.figures.save_png``).
    """
    var, title, _, pixels = scored
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .reports.figures import save_png

    panels = panel_indices(r, k, seed)
    a = f"a({var})"
    titles = {"highest": f"highest {a}", "random": "random", "lowest": f"lowest {a}"}
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.8), layout="constrained")
    for ax, (name, idx) in zip(axes, panels.items(), strict=True):
        lo, hi = r.log_a[idx].min(), r.log_a[idx].max()
        ax.imshow(_mosaic(r.x[idx]), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"{len(idx)} {titles[name]}\n{a} in [{format_a(lo)}, {format_a(hi)}]")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"row-major, {a} decreasing")
    fig.suptitle(f"{title} (n = {r.n}, seed {r.seed}): {pixels}")
    save_png(fig, out_png, dpi=110)


def _log_mean(log_a: np.ndarray) -> float:
    """log of the mean of a, from log a (no underflow)."""
    m = float(log_a.max())
    return m + math.log(float(np.exp(log_a - m).mean()))


def _log_median(log_a: np.ndarray) -> float:
    """log of the median of a (even n: the mean of the two middle a's), from log a."""
    s = np.sort(log_a)
    n = s.shape[0]
    if n % 2:
        return float(s[n // 2])
    return float(np.logaddexp(s[n // 2 - 1], s[n // 2]) - math.log(2.0))


def plot_sorted_acceptance(
    r: Ranked, out_png: PathLike, scored: tuple[str, str, str, str] = PROPOSAL_SAMPLES
) -> None:
    """a(z) of all n samples in decreasing order against their rank, on a log axis.

    If some a(z) lies below float64's range (a = 0 after exp), log10 a(z) is plotted on a
    linear axis with 10^k tick labels instead, so those samples are still drawn. The dashed
    line is the mean a(z), the Monte Carlo estimate of Z (Eq. 2). ``scored`` as for
    :func:`plot_grids`.
    """
    var, _, samples, _ = scored
    a = f"a({var})"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    from .reports.figures import save_png

    log_y = np.sort(r.log_a)[::-1]
    log_z = _log_mean(r.log_a)
    rank = np.arange(1, r.n + 1)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    mean = f"mean {a} = {format_a(log_z)}"
    if log_y[-1] > _LOG_A_PLOTTABLE:  # every a(z) is a float64 > 0: a plain log axis
        ax.plot(rank, np.exp(log_y), lw=1.2, label=f"{a}, sorted")
        ax.axhline(math.exp(log_z), color="C3", ls="--", lw=1, label=mean)
        ax.set_yscale("log")
    else:  # log10 a(z) on a linear axis labelled 10^k: no underflow to 0
        ax.plot(rank, log_y / _LN10, lw=1.2, label=f"{a}, sorted")
        ax.axhline(log_z / _LN10, color="C3", ls="--", lw=1, label=mean)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"$10^{{{int(round(v))}}}$"))
    ax.set_xlabel(f"rank (1 = highest {a})")
    ax.set_ylabel(f"acceptance probability {a} (log scale)")
    ax.set_title(
        f"{a} of n = {r.n} {samples}\n"
        f"min {format_a(r.log_a.min())}, median {format_a(_log_median(r.log_a))}, "
        f"max {format_a(r.log_a.max())}",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_png(fig, out_png, dpi=110)


def _at_least(r: Ranked, threshold: float) -> np.ndarray:
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
    keep = np.ones(r.n, dtype=bool) if threshold is None else _at_least(r, threshold)
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


def _check_threshold(threshold: float | None) -> None:
    if threshold is None:
        return
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not (0.0 <= threshold <= 1.0)
    ):
        raise UserError(f"--threshold: expected a number in [0, 1], got {threshold!r}")


def acceptance_stats(r: Ranked) -> dict[str, float]:
    """Min, median, max and mean of the ranked a (and of log a); the mean is the Monte Carlo
    estimate of Z = E_pi[a] (Eq. 2), with its standard error."""
    a, n = r.a, len(r.log_a)
    return {
        "a_min": float(a.min()),
        "a_median": math.exp(_log_median(r.log_a)),
        "a_max": float(a.max()),
        "a_mean": math.exp(_log_mean(r.log_a)),
        "a_mean_stderr": float(a.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
        "log_a_min": float(r.log_a.min()),
        "log_a_median": _log_median(r.log_a),
        "log_a_max": float(r.log_a.max()),
    }


def rank_checkpoint(
    checkpoint: PathLike,
    out_dir: PathLike,
    *,
    n: int = 10_000,
    seed: int = 0,
    threshold: float | None = None,
    accepted_only: bool = False,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """The whole ranking job for one LARS checkpoint (Appendix D, Figs. D.5-D.8).

    Writes into ``out_dir``: ``samples.npz`` (:func:`save_samples`, filtered by
    ``threshold`` and, with ``accepted_only``, by :func:`accept_mask`), ``grid.png``,
    ``acceptance.png`` (always of all n samples) and last ``summary.json``, which is also
    returned. Every file is written atomically. Inputs are checked before anything is
    written: a missing/corrupt checkpoint or a non-LARS prior raises a one-line
    :class:`~larsvae.utils.UserError` naming the file.
    """
    from .checkpoint import is_lars, load_model

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"--n: expected an integer >= 1, got {n!r}")
    _check_threshold(threshold)
    dev = choose_device(device) if isinstance(device, str) else torch.device(device)
    model, ckpt = load_model(checkpoint, dev)
    meta = ckpt["meta"]
    if not is_lars(meta):
        raise UserError(
            f"--checkpoint {checkpoint}: prior {meta.get('prior')!r} has no acceptance "
            f"function a(z) to rank by (expected a LARS or post-hoc LARS model)"
        )
    r = rank_samples(model, n, seed)
    mask = accept_mask(r, seed)
    out = Path(out_dir)
    n_kept = save_samples(
        r, out / "samples.npz", threshold=threshold, accepted=mask if accepted_only else None
    )
    plot_grids(r, out / "grid.png", seed=seed)
    plot_sorted_acceptance(r, out / "acceptance.png")

    log_mean = _log_mean(r.log_a)
    above = None if threshold is None else float(_at_least(r, threshold).mean())
    summary: dict[str, Any] = {
        **{k: meta.get(k) for k in ("dataset", "arch", "prior", "mode")},
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "n": n,
        "seed": seed,
        "device": str(dev),
        "proposal": type(model.top_prior.proposal).__name__,
        **acceptance_stats(r),
        "log_a_mean": log_mean,
        "threshold": threshold,
        "fraction_above_threshold": above,
        "accepted_fraction": float(mask.mean()),
        "accepted_only": bool(accepted_only),
        "n_kept": n_kept,
        "files": {name: str(out / name) for name in OUTPUTS},
    }
    atomic_write_text(
        out / "summary.json", json.dumps(summary, indent=2, sort_keys=True, allow_nan=True) + "\n"
    )
    return summary


__all__ = [
    "Ranked",
    "rank_samples",
    "accept_mask",
    "panel_indices",
    "format_a",
    "plot_grids",
    "plot_sorted_acceptance",
    "save_samples",
    "rank_checkpoint",
    "OUTPUTS",
]
