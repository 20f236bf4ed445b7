"""The LARS gain with its paired error, the seed spread, the paper's claims computed, and
what the cells cost: the parts of Table 1 the paper does not report.

Standard and LARS cells of one dataset and architecture are evaluated on the same test
images (``nll.json``'s per-image ``log_px``, in test-set order), so their difference is paired:
with d_i = log p_LARS(x_i) - log p_std(x_i), the gain NLL(std) - NLL(LARS) is mean(d) and its
standard error over images sd(d) / sqrt(n), far smaller than either NLL's own error because
the per-image difficulty cancels. The Z estimate adds an independent error, the LARS cell's
``nll_z_stderr`` (first order, :mod:`larsvae.evaluation`); the total is their root sum of
squares. With several seeds, the gains of same-seed pairs are averaged and their errors
combined as for a mean of independent estimates; the spread over seeds is shown beside them.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from .paper import ARCH_LABELS, DATASET_LABELS, PAPER_TABLE1

#: |gain| / SE above which a gain counts as significant (about 95%, two-sided)
SIGNIFICANT = 2.0
ARCH_ORDER = ("vae", "hvae", "convhvae")  # simplest first


@dataclass(frozen=True)
class Gain:
    """NLL(standard) - NLL(LARS) over the same test images (positive: LARS better)."""

    value: float
    se_images: float  # paired standard error over test images
    se_z: float  # carried from the Monte Carlo error of Z
    seeds: tuple[int, ...]
    n_images: int
    seed_sd: float | None  # spread of the per-seed gains (None for one seed)

    @property
    def se(self) -> float:
        return math.hypot(self.se_images, self.se_z)

    @property
    def significant(self) -> bool:
        return abs(self.value) > SIGNIFICANT * self.se

    def text(self) -> str:
        star = "" if self.significant else " (n.s.)"
        return f"{self.value:+.2f} ± {self.se:.2f}{star}"


def _seed_gain(std: dict[str, Any], lars: dict[str, Any]) -> tuple[float, float, float, int]:
    a, b = std.get("log_px"), lars.get("log_px")
    if not isinstance(a, list) or not isinstance(b, list) or len(a) != len(b) or len(a) < 2:
        raise ValueError("the two cells were not evaluated on the same test images")
    d = [y - x for x, y in zip(a, b, strict=True)]
    se_z = float(lars.get("nll_se_from_z") or 0.0)
    return statistics.fmean(d), statistics.stdev(d) / math.sqrt(len(d)), se_z, len(d)


def paired_gain(std_runs: list[dict[str, Any]], lars_runs: list[dict[str, Any]]) -> Gain | None:
    """The gain over the seeds both cells have (runs: nll.json records with ``seed``), or
    None where no seed has per-image values in both cells."""
    by_seed = {r["seed"]: r for r in std_runs}
    parts = []
    for r in lars_runs:
        if r["seed"] in by_seed:
            try:
                parts.append((r["seed"], *_seed_gain(by_seed[r["seed"]], r)))
            except ValueError:
                continue
    if not parts:
        return None
    m = len(parts)
    values = [p[1] for p in parts]
    return Gain(
        value=statistics.fmean(values),
        se_images=math.sqrt(sum(p[2] ** 2 for p in parts)) / m,
        se_z=math.sqrt(sum(p[3] ** 2 for p in parts)) / m,
        seeds=tuple(p[0] for p in parts),
        n_images=parts[0][4],
        seed_sd=statistics.stdev(values) if m > 1 else None,
    )


def gains(cells: dict[tuple, Any]) -> dict[tuple[str, str], Gain]:
    """(dataset, arch) -> joint LARS gain, for every pair of cells that ran."""
    out = {}
    for (ds, arch, prior, mode), lars in cells.items():
        std = cells.get((ds, arch, "gaussian", "standard"))
        if prior == "lars" and mode == "standard" and std is not None:
            g = paired_gain(std.runs, lars.runs)
            if g is not None:
                out[ds, arch] = g
    return out


def _yes(ok: bool | None) -> str:
    return "—" if ok is None else ("**yes**" if ok else "**no**")


def _paper_gain(ds: str, arch: str) -> float:
    std, lars = PAPER_TABLE1[ds][arch]
    return std - lars


def claims(cells: dict[tuple, Any], g: dict[tuple[str, str], Gain]) -> list[str]:
    """The paper's three Table 1 claims, yes/no per dataset, ours and the paper's, with the
    numbers behind each."""
    out = [
        "| claim | dataset | ours | numbers (ours) | paper |",
        "|---|---|---|---|---|",
    ]
    for ds in DATASET_LABELS:
        row = [g.get((ds, a)) for a in ARCH_ORDER]
        ok = None if None in row else all(x.value > 0 for x in row)
        sig = (
            ""
            if None in row
            else f"; significant in {sum(x.significant and x.value > 0 for x in row)}/3"
        )
        nums = ", ".join(
            f"{ARCH_LABELS[a]} {x.text() if x else '—'}"
            for a, x in zip(ARCH_ORDER, row, strict=True)
        )
        paper = all(_paper_gain(ds, a) > 0 for a in ARCH_ORDER)
        out.append(
            f"| LARS beats N(0, I) in every architecture | {DATASET_LABELS[ds]} | {_yes(ok)} | "
            f"gains {nums}{sig} | {_yes(paper)} |"
        )
    for ds in DATASET_LABELS:
        row = [g.get((ds, a)) for a in ARCH_ORDER]
        ok = None if None in row else row[0].value > row[1].value > row[2].value
        nums = " > ".join(f"{x.value:+.2f}" if x else "—" for x in row)
        pv = [_paper_gain(ds, a) for a in ARCH_ORDER]
        out.append(
            f"| gain VAE > HVAE > ConvHVAE | {DATASET_LABELS[ds]} | {_yes(ok)} | {nums} | "
            f"{_yes(pv[0] > pv[1] > pv[2])} ({' > '.join(f'{v:+.2f}' for v in pv)}) |"
        )
    for ds in DATASET_LABELS:
        nll = {
            (a, p): cells[ds, a, p, "standard"].nll
            for a in ARCH_ORDER
            for p in ("gaussian", "lars")
            if (ds, a, p, "standard") in cells
        }
        ok = None
        if len(nll) == 2 * len(ARCH_ORDER):
            ok = all(
                min(ARCH_ORDER, key=lambda a, p=p: nll[a, p]) == "convhvae"
                for p in ("gaussian", "lars")
            )
        nums = "; ".join(
            f"{'N(0, I)' if p == 'gaussian' else 'LARS'}: "
            + ", ".join(f"{ARCH_LABELS[a]} {nll[a, p]:.2f}" for a in ARCH_ORDER if (a, p) in nll)
            for p in ("gaussian", "lars")
        )
        paper = all(
            min(ARCH_ORDER, key=lambda a, i=i: PAPER_TABLE1[ds][a][i]) == "convhvae" for i in (0, 1)
        )
        out.append(
            f"| ConvHVAE has the lowest NLL | {DATASET_LABELS[ds]} | {_yes(ok)} | {nums} | "
            f"{_yes(paper)} |"
        )
    return out


def seed_spread(cells: dict[tuple, Any], g: dict[tuple[str, str], Gain]) -> list[str]:
    """How the NLL and the gain vary over seeds, beside the gain, for cells with several."""
    out = []
    for (ds, arch), gain in g.items():
        std = cells[ds, arch, "gaussian", "standard"]
        lars = cells[ds, arch, "lars", "standard"]
        if gain.seed_sd is None:
            continue
        out.append(
            f"- {DATASET_LABELS[ds]} {ARCH_LABELS[arch]}, seeds {', '.join(map(str, gain.seeds))}: "
            f"NLL sd over seeds {statistics.stdev(std.nlls):.2f} (N(0, I)) and "
            f"{statistics.stdev(lars.nlls):.2f} (LARS); the gain {gain.value:+.2f} has a seed "
            f"sd of {gain.seed_sd:.2f} and a paired SE of {gain.se:.2f} for the mean. "
            + (
                "The seed spread of either NLL exceeds the gain: unpaired, single-seed "
                "comparisons of the two priors could not resolve it."
                if max(statistics.stdev(std.nlls), statistics.stdev(lars.nlls)) > abs(gain.value)
                else "The gain exceeds the seed spread of either NLL."
            )
        )
    return out


def cost_rows(cells: dict[tuple, Any]) -> tuple[list[str], float | None]:
    """One row per published cell run (CPU minutes of training, Z and IWAE) and the total
    in hours (None where a cell's cost is unknown)."""
    rows, total, known = [], 0.0, True
    for key, c in cells.items():
        for r in c.runs:
            cost = (r.get("provenance") or {}).get("cost_s") or {}
            parts = [cost.get(k) for k in ("train", "z", "evaluate")]
            if key[2] == "gaussian":
                parts[1] = 0.0
            if any(p is None for p in parts):
                known = False
            else:
                total += sum(parts)
            cols = " | ".join("—" if p is None else f"{p / 60:.1f}" for p in parts)
            rows.append(f"| `{'/'.join(key)}` seed {r['seed']} | {cols} |")
    return rows, (total / 3600.0 if known and rows else None)


__all__ = ["Gain", "claims", "cost_rows", "gains", "paired_gain", "seed_spread"]
