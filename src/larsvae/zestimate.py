"""High-precision, shardable Monte Carlo estimates of the LARS normaliser Z = E_pi[a(z)].

The paper evaluates test log-likelihoods with Z estimated from S = 1e10 proposal samples
(Section 5, Appendix A.4), because the truncated density (Eq. A.14) and the infinite one
(Eq. A.7) both depend on Z. This module computes that estimate in batches:

- batch ``b`` draws its samples from a generator seeded with
  ``derive_seed(seed, Z_STREAM, b)``, so any shard can reproduce its batches, independently
  of how the work is split;
- shard ``i`` of ``n`` processes a contiguous range of batch indices;
- each batch contributes float64 partial sums; :meth:`ZEstimate.merge` combines shards with
  exactly-rounded summation (``math.fsum``), so the merged estimate is bitwise identical to
  the unsharded one whatever the grouping;
- with a symmetric proposal (pi(z) = pi(-z)), antithetic pairs (z, -z) form one i.i.d. unit
  with value (a(z) + a(-z)) / 2, which lowers the variance when a(z) and a(-z) are negatively
  correlated (e.g. an acceptance that is monotone along some direction).

Speed (``bench/run.py --only z``): a batch is evaluated in chunks whose activations stay in
the CPU's L2 cache, in reused buffers, and an :class:`~larsvae.distributions.AcceptanceMLP`
runs as a fused sigmoid network (see ``distributions.lars._FusedMLPLogits``; the first layer
of -z reuses the product W z of z). Logits stay in the module's dtype (float32); a(z) and
every sum are float64.

Streams are reproducible per device type (CPU and CUDA generators differ) and per batch
size; the bits of a batch may also depend on the BLAS and thread count, so shards to be
merged should run in one software environment.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from larsvae.distributions.lars import _acceptance_logits, chunk_rows
from larsvae.utils import (
    UserError,
    derive_seed,
    file_sha256,
    module_device,
    progress_bar,
    read_json,
)

FORMAT = "larsvae.zestimate/1"
#: Middle part of every batch seed, derive_seed(seed, Z_STREAM, batch): keeps Z streams apart
#: from other streams derived from the same run seed.
Z_STREAM = 0x5A


@dataclass(frozen=True)
class BatchPartial:
    """Float64 sufficient statistics of one batch of i.i.d. units x (a(z), or an antithetic
    pair's (a(z) + a(-z)) / 2): ``sum`` x, ``sum_sq`` x^2, ``m2`` = sum (x - batch mean)^2."""

    index: int
    units: int
    samples: int  # proposal evaluations (2 per unit with antithetic pairs)
    sum: float
    sum_sq: float
    m2: float

    def to_list(self) -> list:
        return [
            self.index,
            self.units,
            self.samples,
            self.sum.hex(),
            self.sum_sq.hex(),
            self.m2.hex(),
        ]

    @classmethod
    def from_list(cls, v: list) -> BatchPartial:
        if not isinstance(v, (list, tuple)) or len(v) != 6:
            raise ValueError(f"batch partial: expected a list of 6 entries, got {v!r}")
        index, units, samples = (int(x) for x in v[:3])
        return cls(index, units, samples, *(float.fromhex(x) for x in v[3:]))


def _fsum(xs: Iterable[float]) -> float:
    return math.fsum(xs)


@dataclass(frozen=True)
class ZEstimate:
    """A Monte Carlo estimate of Z from a set of batches (one shard, or merged shards).

    ``n`` i.i.d. units, ``samples`` proposal evaluations, ``sum`` / ``sum_sq`` of the unit
    values, ``mean`` (the estimate of Z), ``stderr`` = sqrt(unbiased variance / n) and
    ``log_mean`` = log(mean). All are functions of the per-batch ``partials`` computed with
    exactly-rounded sums, hence independent of how batches are grouped into shards.
    """

    partials: tuple[BatchPartial, ...]
    seed: int
    batch_size: int
    num_samples: int  # requested in total over all shards
    antithetic: bool
    n: int = field(init=False)
    samples: int = field(init=False)
    sum: float = field(init=False)
    sum_sq: float = field(init=False)
    mean: float = field(init=False)
    stderr: float = field(init=False)
    log_mean: float = field(init=False)

    def __post_init__(self):
        parts = tuple(sorted(self.partials, key=lambda p: p.index))
        idx = [p.index for p in parts]
        if len(set(idx)) != len(idx):
            raise ValueError("partials: duplicate batch indices (a shard was merged twice?)")
        n = sum(p.units for p in parts)
        total = _fsum(p.sum for p in parts)
        mean = total / n if n > 0 else math.nan
        if n > 1:
            # Chan et al.: within-batch m2 plus between-batch spread; each term depends only
            # on its batch and the global mean, so fsum makes this grouping-invariant.
            m2 = _fsum(
                [p.m2 for p in parts] + [p.units * (p.sum / p.units - mean) ** 2 for p in parts]
            )
            stderr = math.sqrt(max(m2, 0.0) / (n - 1) / n)
        else:
            stderr = math.nan
        if n == 0:
            log_mean = math.nan
        else:
            log_mean = math.log(mean) if mean > 0 else -math.inf
        object.__setattr__(self, "partials", parts)
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "samples", sum(p.samples for p in parts))
        object.__setattr__(self, "sum", total)
        object.__setattr__(self, "sum_sq", _fsum(p.sum_sq for p in parts))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "stderr", stderr)
        object.__setattr__(self, "log_mean", log_mean)

    @property
    def num_batches(self) -> int:
        """Number of batches of the full (unsharded) run."""
        return -(-self.num_samples // self.batch_size)

    @property
    def complete(self) -> bool:
        """Whether every batch of the full run is present (e.g. after merging all shards)."""
        return [p.index for p in self.partials] == list(range(self.num_batches))

    @classmethod
    def merge(cls, estimates: Iterable[ZEstimate]) -> ZEstimate:
        """Combine shards of the same run; equals the unsharded estimate bitwise."""
        ests = list(estimates)
        if not ests:
            raise ValueError("merge: expected at least one estimate")
        keys = {(e.seed, e.batch_size, e.num_samples, e.antithetic) for e in ests}
        if len(keys) != 1:
            raise ValueError(
                "merge: shards come from different runs "
                "(seed, batch_size, num_samples, antithetic differ): " + repr(sorted(keys))
            )
        e0 = ests[0]
        parts = tuple(p for e in ests for p in e.partials)
        return cls(parts, e0.seed, e0.batch_size, e0.num_samples, e0.antithetic)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict. Partials are stored as float.hex strings (exact round trip);
        the summary values are there for people and metrics tools (None when undefined)."""

        def num(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {
            "format": FORMAT,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_samples": self.num_samples,
            "antithetic": self.antithetic,
            "complete": self.complete,
            "n": self.n,
            "samples": self.samples,
            "mean": num(self.mean),
            "stderr": num(self.stderr),
            "log_mean": num(self.log_mean),
            "batches": [p.to_list() for p in self.partials],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ZEstimate:
        """Inverse of :meth:`to_dict`; recomputes (and checks) the summary values."""
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise ValueError(f"not a Z estimate (expected format {FORMAT!r})")
        try:
            est = cls(
                tuple(BatchPartial.from_list(v) for v in d["batches"]),
                int(d["seed"]),
                int(d["batch_size"]),
                int(d["num_samples"]),
                bool(d["antithetic"]),
            )
        except KeyError as e:
            raise ValueError(f"Z estimate: missing key {e.args[0]!r}") from None
        if d.get("n") is not None and int(d["n"]) != est.n:
            raise ValueError(f"Z estimate: n={d['n']} does not match its batches ({est.n})")
        return est


def z_problem(est: ZEstimate) -> str | None:
    """Why ``est`` cannot be a normaliser Z = E_pi[a(z)] with a(z) in [0, 1] (Eq. 2): a
    mean that is not finite (a NaN or infinite batch sum) or outside [0, 1]; None if it can
    be. Every reader of a Z file asks this before using or drawing the estimate."""
    mean = est.mean
    if not math.isfinite(mean):
        return f"Z = {mean} is not a finite number (a batch sum is NaN or infinite)"
    if mean > 1.0:
        return f"Z = {mean} > 1 is impossible (Z = E[a(z)], a in [0, 1])"
    if mean < 0.0:
        return f"Z = {mean} < 0 is impossible (Z = E[a(z)], a in [0, 1])"
    return None


def _check_int(name: str, v: Any, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {v!r}")
    return v


def _checked_arguments(
    proposal: nn.Module,
    num_samples: int,
    batch_size: int,
    antithetic: bool,
    seed: int,
    shard: int,
    num_shards: int,
) -> bool:
    """Refuse arguments :func:`estimate_z` cannot use; whether antithetic pairs are used."""
    _check_int("num_samples", num_samples, 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("num_shards", num_shards, 1)
    _check_int("seed", seed, 0)
    if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < num_shards:
        raise ValueError(f"shard: expected an integer in [0, {num_shards}), got {shard!r}")
    if antithetic and not getattr(proposal, "symmetric", False):
        warnings.warn(
            f"antithetic Z estimation needs a symmetric proposal; {type(proposal).__name__} "
            "is not, so plain Monte Carlo is used",
            stacklevel=3,  # the caller of estimate_z
        )
        antithetic = False
    if antithetic and (batch_size % 2 or num_samples % 2):
        raise ValueError(
            f"batch_size and num_samples must be even with antithetic pairs, got "
            f"{batch_size} and {num_samples}"
        )
    return antithetic


def _fill_units(
    x: torch.Tensor,
    proposal: nn.Module,
    logits: Any,
    gen: torch.Generator,
    chunk: int,
    antithetic: bool,
) -> None:
    """x (U,) float64 <- the batch's U units a(z) (or (a(z) + a(-z)) / 2), ``chunk`` units
    per evaluation of the network, the samples drawn from ``gen`` in order."""
    for lo in range(0, x.numel(), chunk):
        k = min(chunk, x.numel() - lo)
        z = proposal.sample(k, generator=gen)  # (k, D)
        if antithetic:
            a = logits.pm(z).double().sigmoid_()  # (2k,): z, then -z
            torch.add(a[:k], a[k:], out=x[lo : lo + k])
        else:
            x[lo : lo + k] = logits(z).double().sigmoid_()
    if antithetic:
        x.mul_(0.5)  # exact: the unit is (a(z) + a(-z)) / 2


@torch.no_grad()
def estimate_z(
    acceptance: nn.Module,
    proposal: nn.Module,
    num_samples: int,
    batch_size: int,
    *,
    antithetic: bool = True,
    seed: int = 0,
    shard: int = 0,
    num_shards: int = 1,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> ZEstimate:
    """Estimate Z = E_pi[a(z)] (Eq. 2) from ``num_samples`` proposal evaluations.

    Args:
        acceptance: z (B, D) -> logit (B,), evaluated in the module's dtype (float32
            normally); a(z) = sigmoid(logit) is computed in float64 (a float32 sigmoid
            underflows to 0 below ~1e-45, i.e. logits below ~-103, and Z with it), and every
            per-batch sum is accumulated in float64. A plain ``AcceptanceMLP`` is evaluated
            by a fused equivalent network (same function, float32 rounding differs).
        proposal: has ``sample(n, generator=...)``; ``symmetric = True`` allows antithetic pairs.
        num_samples: proposal evaluations in the whole (unsharded) run.
        batch_size: proposal evaluations per batch (the last batch may be smaller).
        antithetic: use pairs (z, -z) if the proposal is symmetric. With a proposal that is
            not, this falls back to plain Monte Carlo with a warning (the returned estimate's
            ``antithetic`` says what was used). With pairs, batch_size and num_samples must
            be even.
        seed: batch b uses a generator seeded with ``derive_seed(seed, Z_STREAM, b)``.
        shard, num_shards: process the contiguous batch range of shard ``shard`` of
            ``num_shards``; merge the shards with :meth:`ZEstimate.merge`.
        device: if given, both modules are moved there (in place); samples and generators
            live on the modules' device.
        progress: show a tqdm progress bar (if tqdm is installed; else no bar).
    """
    antithetic = _checked_arguments(
        proposal, num_samples, batch_size, antithetic, seed, shard, num_shards
    )
    if device is not None:
        acceptance.to(device)
        proposal.to(device)
    dev = module_device(proposal)

    num_batches = -(-num_samples // batch_size)
    start = shard * num_batches // num_shards
    stop = (shard + 1) * num_batches // num_shards
    logits = _acceptance_logits(acceptance)
    per_unit = 2 if antithetic else 1
    chunk = max(1, chunk_rows(dev) // per_unit)  # units per evaluation of the network
    x_all = torch.empty(min(batch_size, num_samples) // per_unit, dtype=torch.float64, device=dev)
    bar = progress_bar(
        stop - start, desc=f"Z shard {shard}/{num_shards}", enabled=progress, unit="batch"
    )
    partials = []
    try:
        for b in range(start, stop):
            size = min(batch_size, num_samples - b * batch_size)  # evaluations in this batch
            gen = torch.Generator(device=dev)
            gen.manual_seed(derive_seed(seed, Z_STREAM, b))
            x = x_all[: size // per_unit]  # the batch's i.i.d. units
            _fill_units(x, proposal, logits, gen, chunk, antithetic)
            s = x.sum()
            stats = torch.stack([s, (x * x).sum(), (x - s / x.numel()).pow(2).sum()]).tolist()
            partials.append(BatchPartial(b, x.numel(), size, *stats))
            bar.update(1)
    finally:
        bar.close()
    return ZEstimate(tuple(partials), seed, batch_size, num_samples, antithetic)


def estimate_prior_z(prior: nn.Module, num_samples: int, batch_size: int, **kwargs) -> ZEstimate:
    """:func:`estimate_z` for a :class:`~larsvae.distributions.ResampledPrior`.

    Install the (merged) result with ``prior.set_log_z(est.log_mean)``.
    """
    return estimate_z(prior.acceptance, prior.proposal, num_samples, batch_size, **kwargs)


# ---------------------------------------------------------------------------------------
# Z files: every reader of a shard or a reduced z.json checks it here


def check_batches(estimate: Any, what: str) -> None:
    """Every batch record of a Z file holds >= 1 unit and at least as many samples: a
    record with 0 units would divide by zero in the variance, and is never written."""
    batches = estimate.get("batches") if isinstance(estimate, dict) else None
    for rec in batches if isinstance(batches, list) else ():
        if not isinstance(rec, list) or len(rec) != 6:
            continue  # ZEstimate.from_dict words this one
        index, units, samples = rec[:3]
        if not (isinstance(units, int) and isinstance(samples, int)) or not 1 <= units <= samples:
            raise UserError(
                f"{what}: batch {index!r} records {units!r} units from {samples!r} samples "
                "(expected 1 <= units <= samples): a damaged file; rerun the step that wrote it"
            )


def check_z_value(est: Any, what: str) -> None:
    """Refuse an estimate that cannot be Z = E[a(z)] (:func:`z_problem`)."""
    problem = z_problem(est)
    if problem is not None:
        raise UserError(f"{what}: {problem}")


def read_z_file(path: str | os.PathLike) -> tuple[dict[str, Any], ZEstimate]:
    """(the JSON object, its ZEstimate) of a Z file, or one line naming the file."""
    obj = read_json(path, "--z")
    check_batches(obj.get("estimate"), f"--z {path}")
    try:
        return obj, ZEstimate.from_dict(obj["estimate"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"--z {path}: not a Z file written by reduce-z ({exc!r})") from None


def read_z(path: str | os.PathLike, checkpoint: str | os.PathLike) -> ZEstimate:
    """The ZEstimate of a ``z.json`` written by :func:`larsvae.steps.reduce_z` for
    ``checkpoint``: complete, reduced from all shards, tied to the checkpoint by its sha256,
    and a possible Z (:func:`z_problem`)."""
    obj, est = read_z_file(path)
    if "shard" in obj:
        raise UserError(
            f"--z {path}: one Z shard ({obj['shard']} of {obj.get('num_shards')}), not the "
            "estimate reduced from all shards (larsvae reduce-z)"
        )
    if not est.complete:
        raise UserError(f"--z {path}: holds {len(est.partials)} of {est.num_batches} batches")
    sha = obj.get("checkpoint_sha256")
    if not sha:
        raise UserError(
            f"--z {path}: records no checkpoint_sha256, so it cannot be tied to {checkpoint}"
        )
    if sha != file_sha256(checkpoint):
        raise UserError(f"--z {path}: Z was estimated for another checkpoint than {checkpoint}")
    check_z_value(est, f"--z {path}")
    if not math.isfinite(float(est.log_mean)):
        raise UserError(
            f"--z {path}: Z estimate underflows (log Z = {est.log_mean}): every "
            "sampled acceptance probability was 0; the acceptance network is "
            "degenerate"
        )
    return est


__all__ = [
    "BatchPartial",
    "ZEstimate",
    "check_batches",
    "check_z_value",
    "estimate_z",
    "estimate_prior_z",
    "read_z",
    "read_z_file",
    "z_problem",
    "FORMAT",
]
