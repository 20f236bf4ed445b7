"""The prior comparison: LARS against the VampPrior, a mixture of Gaussians, the flows, the
energy-inspired priors (TRS, SNIS) and dimension-wise LARS, every prior a cell of one harness.

Bauer & Mnih (2019), Sec. 5 and Table 2, compare LARS with other expressive priors using
numbers from other papers; Lawson, Tucker, Dai and Ranganath ("Energy-Inspired Models",
NeurIPS 2019) report that TRS and SNIS priors match or beat LARS. Here every prior is trained
with the same VAE, schedule and data and evaluated with the same IWAE estimate on the same test
images, so the comparison is paired, and the claims are computed from the cells, not quoted.

Per prior (``(prior, mode)``; N(0, I) is the reference):

* test NLL (IWAE), the test ELBO's KL and reconstruction terms: mean ± sd over seeds, from
  each cell's ``nll.json``;
* the gain over N(0, I) with its paired SE (:func:`larsvae.reports.gains.paired_gain`: the
  same test images, per-image ``log_px``, plus the error carried from Z);
* the prior's own parameter count, from a model built with the cell's model params;
* the sampling cost: thread CPU seconds to draw :data:`SAMPLES` exact samples and to evaluate
  ``log_prob`` at them on one thread, timed on the trained checkpoint where it is still there
  (and is the one evaluated); and the expected number of a(z) or energy evaluations per sample
  (LARS-type priors: ``mean_proposals`` of ``nll.json``; SNIS: its K; dimension-wise LARS:
  the trained checkpoint's sum over units);
* the training step time relative to N(0, I): training wall seconds (published provenance,
  else the train log) over the cell's iterations.

Nothing here trains or evaluates a cell; a row whose cells did not run shows a dash.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import model_config
from ..publish import train_seconds
from ..utils import atomic_write_text, file_sha256
from .gains import Gain, paired_gain
from .paper import ARCH_LABELS, DATASET_LABELS
from .table1 import DASH, CellResult, fmt, fmt_nll, header, load_results, now_utc

if TYPE_CHECKING:  # torch is imported where a prior is built: the workflow imports this module
    import torch

#: exact samples drawn (and densities evaluated) per timing
SAMPLES = 10_000
#: the rows, in this order: (prior, mode, label)
ROWS: tuple[tuple[str, str, str], ...] = (
    ("gaussian", "standard", "N(0, I)"),
    ("lars", "standard", "LARS (joint)"),
    ("lars", "posthoc", "LARS (post hoc)"),
    ("realnvp", "standard", "RealNVP"),
    ("maf", "standard", "MAF"),
    ("lars_realnvp", "standard", "LARS over RealNVP (joint)"),
    ("vamp", "standard", "VampPrior"),
    ("vamp_sg", "standard", "VampPrior, stop-gradient encoder in p(z)"),
    ("mog", "standard", "mixture of Gaussians"),
    ("trs", "standard", "TRS"),
    ("snis", "standard", "SNIS"),
    ("lars_dim", "standard", "dimension-wise LARS"),
)
#: what log p(z) in the IWAE estimate is (every NLL is an IWAE estimate besides)
DENSITY = {
    "gaussian": "exact",
    "lars": "exact given Z",
    "realnvp": "exact",
    "maf": "exact",
    "lars_realnvp": "exact given Z",
    "vamp": "exact",
    "vamp_sg": "exact",
    "mog": "exact",
    "trs": "exact given Z",
    "snis": "**bound** (NLL errs high)",
    "lars_dim": "exact (quadrature Z_i)",
}
#: priors whose sampling cost does not depend on the trained weights (a fresh prior of the
#: cell's params costs what the trained one does); the others sample by rejection
FIXED_COST = ("gaussian", "realnvp", "maf", "vamp", "vamp_sg", "mog", "snis")
#: claim thresholds, fixed before any run
COMPARABLE_FRACTION = 0.5  # "comparable": LARS's gain at least this fraction of VampPrior's
HUNDREDS_OF_THOUSANDS = (100_000, 1_000_000)
ORDER_OF_MAGNITUDE = 10.0
NOT_WORSE_SE = 2.0  # "matches or beats": not worse than LARS by more than 2 paired SE


def prior_parameters(arch: str, prior: str, mode: str, model_params: dict[str, Any]) -> int:
    """Trainable numbers of the prior module itself, counted on a model built as training
    builds it. The VampPrior's are its pseudo-inputs: it shares the encoder's weights, which
    are not counted (the model has them whatever the prior)."""
    from ..checkpoint import build_cell_model  # loads torch: the workflow imports this module

    model = build_cell_model(arch, prior, mode, model_config(model_params))
    return sum(p.numel() for p in model.top_prior.parameters())


def time_prior(prior: torch.nn.Module, n: int = SAMPLES, seed: int = 0) -> tuple[float, float]:
    """(seconds to draw n exact samples, seconds to evaluate log_prob at them): thread CPU
    time on one torch thread, after a small warm-up draw."""
    import torch  # imported here: the workflow imports this module

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            prior.sample(16, generator=gen)
            t0 = time.thread_time()
            z = prior.sample(n, generator=gen)
            t1 = time.thread_time()
            prior.log_prob(z)
            t2 = time.thread_time()
    finally:
        torch.set_num_threads(threads)
    return t1 - t0, t2 - t1


@dataclass
class Row:
    """One prior of one (dataset, arch): its results and costs, with where each came from."""

    prior: str
    mode: str
    label: str
    cell: CellResult | None = None
    files: list[dict[str, Any]] = field(default_factory=list)  # spec cells, one per seed
    gain: Gain | None = None
    params: int | None = None
    sample_s: float | None = None
    density_s: float | None = None
    timing_source: str = DASH
    evals: float | None = None
    evals_source: str = DASH
    step_s: float | None = None
    step_source: str = DASH
    step_rel: float | None = None

    @property
    def ran(self) -> bool:
        return self.cell is not None

    def mean(self, key: str) -> float | None:
        return None if self.cell is None else self.cell.mean_of(key)

    def sd(self, key: str) -> float | None:
        vals = [r.get(key) for r in self.cell.runs] if self.cell is not None else []
        if len(vals) < 2 or any(v is None for v in vals):
            return None
        return statistics.stdev(float(v) for v in vals)


def _mean_sd(row: Row, key: str) -> str:
    m, s = row.mean(key), row.sd(key)
    return fmt(m) + (f" ± {fmt(s)}" if s is not None else "")


def _checkpoint_prior(spec_cell: dict[str, Any], run: dict[str, Any], root: Path):
    """The trained prior of a cell if its checkpoint is there and is the one evaluated."""
    # imported here: they load torch, and the workflow imports this module
    from .. import memory
    from ..checkpoint import load_checkpoint, model_from_checkpoint

    path = spec_cell.get("checkpoint")
    if not path or not (root / path).is_file():
        return None
    if file_sha256(root / path) != run.get("checkpoint_sha256"):
        return None
    ckpt = load_checkpoint(root / path)
    memory.check_load(ckpt, root / path, "cpu")
    return model_from_checkpoint(ckpt, root / path, "cpu").top_prior


def _cost(row: Row, root: Path, timing: bool) -> None:
    """Sampling and density times, evaluations per sample, and their sources."""
    samples, densities, evals_dim = [], [], []
    for f, run in zip(row.files, row.cell.runs, strict=True):
        prior = _checkpoint_prior(f, run, root) if timing else None
        if prior is None:
            continue
        s, d = time_prior(prior, seed=int(f["seed"]))
        samples.append(s)
        densities.append(d)
        if row.prior == "lars_dim":
            evals_dim.append(float(prior.expected_num_proposals().sum()))
    if samples:
        row.sample_s, row.density_s = statistics.fmean(samples), statistics.fmean(densities)
        row.timing_source = f"trained checkpoint ({len(samples)} of {len(row.files)} seeds)"
    elif timing and row.prior in FIXED_COST:
        f = row.files[0]
        fresh = _fresh_prior(f)
        row.sample_s, row.density_s = time_prior(fresh, seed=int(f["seed"]))
        row.timing_source = "fresh prior (cost independent of the weights)"
    if row.prior in FIXED_COST and row.prior != "snis":
        row.evals, row.evals_source = 0.0, "none (direct sampler)"
    elif row.prior == "snis":
        row.evals = float(row.files[0]["model"]["snis_proposals"])
        row.evals_source = "K of the model params"
    elif row.prior == "lars_dim":
        if evals_dim:
            row.evals = statistics.fmean(evals_dim)
            row.evals_source = "trained checkpoint (sum over units)"
    elif row.mean("mean_proposals") is not None:
        row.evals = row.mean("mean_proposals")
        row.evals_source = "nll.json mean_proposals"


def _fresh_prior(f: dict[str, Any]) -> torch.nn.Module:
    # imported here: they load torch, and the workflow imports this module
    import torch

    from ..checkpoint import build_cell_model

    torch.manual_seed(int(f["seed"]))
    model = build_cell_model(f["arch"], f["prior"], f["mode"], model_config(f["model"]))
    return model.eval().top_prior


def _step_time(row: Row, root: Path) -> None:
    """Training wall seconds per step, mean over the seeds whose time is known."""
    per_step, sources = [], set()
    for f, run in zip(row.files, row.cell.runs, strict=True):
        prov = run.get("provenance")
        seconds = ((prov or {}).get("cost_s") or {}).get("train") if prov else None
        source = "published provenance"
        if seconds is None and f.get("train_log"):
            seconds, source = train_seconds(root / f["train_log"]), "train log"
        if seconds is not None and f.get("iterations"):
            per_step.append(seconds / int(f["iterations"]))
            sources.add(source)
    if per_step:
        row.step_s = statistics.fmean(per_step)
        row.step_source = " + ".join(sorted(sources)) + f" ({len(per_step)} seeds)"


def paired_difference(a: CellResult, b: CellResult) -> Gain | None:
    """NLL(a) - NLL(b) over the same test images (positive: b better), the Z errors of both
    cells in its SE (``paired_gain`` carries only b's)."""
    g = paired_gain(a.runs, b.runs)
    if g is None:
        return None
    a_z = {r["seed"]: float(r.get("nll_se_from_z") or 0.0) for r in a.runs}
    extra = math.sqrt(sum(a_z.get(s, 0.0) ** 2 for s in g.seeds)) / len(g.seeds)
    return replace(g, se_z=math.hypot(g.se_z, extra))


def build_rows(
    spec: dict[str, Any], root: Path | str = ".", timing: bool = True
) -> dict[tuple[str, str], list[Row]]:
    """(dataset, arch) -> one row per prior of :data:`ROWS` (a dash row where none ran)."""
    root = Path(root)
    cells = load_results(spec, root)
    files: dict[tuple, list[dict[str, Any]]] = {}
    for c in spec["cells"]:
        files.setdefault((c["dataset"], c["arch"], c["prior"], c["mode"]), []).append(c)
    out: dict[tuple[str, str], list[Row]] = {}
    for ds, arch in dict.fromkeys((k[0], k[1]) for k in cells):
        rows = []
        for prior, mode, label in ROWS:
            key = (ds, arch, prior, mode)
            row = Row(prior, mode, label, cells.get(key), files.get(key, []))
            if row.ran:
                m = row.files[0]["model"]
                row.params = prior_parameters(arch, prior, mode, m)
                _cost(row, root, timing)
                _step_time(row, root)
            rows.append(row)
        std = rows[0]
        for row in rows[1:]:
            if row.ran and std.ran:
                row.gain = paired_gain(std.cell.runs, row.cell.runs)
        for row in rows:
            if row.step_s is not None and std.step_s:
                row.step_rel = row.step_s / std.step_s
        out[ds, arch] = rows
    return out


def _yes(ok: bool | None) -> str:
    return DASH if ok is None else ("**yes**" if ok else "**no**")


def _count(n: int | None) -> str:
    return DASH if n is None else f"{n:,}"


#: the VampPrior rows the paper's VampPrior claims are judged on, each on its own (neither
#: is chosen by its test NLL): the VampPrior as published, and the same density trained
#: without the encoder's gradient through its components
VAMP_ROWS = ("vamp", "vamp_sg")


def _vamp_claims(lars: Row, vamp: Row) -> list[tuple[str, str, bool | None, str]]:
    """Bauer & Mnih's three VampPrior claims, judged on the VampPrior row ``vamp``."""
    out = []
    ok, nums = None, DASH
    if lars.gain is not None and vamp.gain is not None:
        gl, gv = lars.gain.value, vamp.gain.value
        ok = 0 < gl < gv and gl >= COMPARABLE_FRACTION * gv
        d = paired_difference(lars.cell, vamp.cell)
        nums = f"gain LARS {lars.gain.text()}, {vamp.label} {vamp.gain.text()}" + (
            f"; NLL(LARS) − NLL({vamp.label}) {d.text()}" if d is not None else ""
        )
    out.append(
        (
            "LARS's gains are comparable to the VampPrior's, though slightly smaller "
            f"(0 < gain(LARS) < gain(VampPrior), gain(LARS) ≥ {COMPARABLE_FRACTION:g} × "
            f"gain(VampPrior)); VampPrior row: {vamp.label}",
            "Bauer & Mnih",
            ok,
            nums,
        )
    )

    ok, nums = None, DASH
    if lars.params is not None and vamp.params is not None:
        lo, hi = HUNDREDS_OF_THOUSANDS
        ratio = vamp.params / max(lars.params, 1)
        ok = lo <= vamp.params < hi and ratio >= ORDER_OF_MAGNITUDE
        nums = (
            f"{vamp.label} {vamp.params:,} (K = {vamp.files[0]['model']['mixture_components']} "
            f"pseudo-inputs), LARS {lars.params:,}: {ratio:.1f}×"
        )
    out.append(
        (
            "A VampPrior has hundreds of thousands of parameters, LARS more than an order of "
            f"magnitude fewer; VampPrior row: {vamp.label}",
            "Bauer & Mnih",
            ok,
            nums,
        )
    )

    ok, nums = None, DASH
    if lars.sample_s is not None and vamp.sample_s is not None:
        ok = vamp.sample_s < lars.sample_s
        nums = (
            f"{SAMPLES:,} samples: {vamp.label} {vamp.sample_s:.3f} s, LARS {lars.sample_s:.3f} s "
            f"({fmt(lars.evals)} a(z) evaluations per sample)"
        )
    out.append(
        (
            f"The VampPrior is faster to sample than LARS; VampPrior row: {vamp.label}",
            "Bauer & Mnih",
            ok,
            nums,
        )
    )
    return out


def claims(rows: Sequence[Row]) -> list[tuple[str, str, bool | None, str]]:
    """(claim, whose, holds (None: cells missing), the numbers behind it): the three
    VampPrior claims once per row of :data:`VAMP_ROWS` (each claim names its row), then
    Lawson et al.'s ordering."""
    r = {(x.prior, x.mode): x for x in rows}
    lars = r["lars", "standard"]
    out = []
    for name in VAMP_ROWS:
        out += _vamp_claims(lars, r[name, "standard"])

    parts, verdicts = [], []
    for key, name in ((("trs", "standard"), "TRS"), (("snis", "standard"), "SNIS")):
        x = r[key]
        d = paired_difference(lars.cell, x.cell) if lars.ran and x.ran else None
        verdicts.append(None if d is None else d.value >= -NOT_WORSE_SE * d.se)
        parts.append(f"NLL(LARS) − NLL({name}) {d.text() if d is not None else DASH}")
    ok = None if None in verdicts else all(verdicts)
    out.append(
        (
            "TRS and SNIS priors match or beat LARS (each not worse than LARS by more than "
            f"{NOT_WORSE_SE:g} paired SE)",
            "Lawson et al.",
            ok,
            "; ".join(parts),
        )
    )
    return out


def _group_lines(ds: str, arch: str, rows: list[Row]) -> list[str]:
    name = f"{DATASET_LABELS.get(ds, ds)}, {ARCH_LABELS.get(arch, arch)}"
    out = [f"## {name}", "", "### Test NLL and ELBO terms (nats; mean ± sd over seeds)", ""]
    out += [
        "| prior | log p(z) | seeds | test NLL | gain over N(0, I) ± SE | KL | reconstruction "
        "| −ELBO |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if not row.ran:
            out.append(f"| {row.label} | {DENSITY[row.prior]} |" + f" {DASH} |" * 6)
            continue
        seeds = ", ".join(str(r["seed"]) for r in row.cell.runs)
        gain = "reference" if row.prior == "gaussian" else (row.gain.text() if row.gain else DASH)
        out.append(
            f"| {row.label} | {DENSITY[row.prior]} | {seeds} | **{fmt_nll(row.cell)}** | {gain} "
            f"| {_mean_sd(row, 'kl')} | {_mean_sd(row, 'rec')} | {_mean_sd(row, 'neg_elbo')} |"
        )
    out += ["", f"### Cost ({SAMPLES:,} exact samples, one CPU thread)", ""]
    out += [
        "| prior | parameters | sample (s) | log_prob (s) | a(z) / energy evaluations per "
        "sample | acceptance rate | train step (ms) | × N(0, I) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if not row.ran:
            out.append(f"| {row.label} |" + f" {DASH} |" * 7)
            continue
        step = fmt(None if row.step_s is None else 1000 * row.step_s, 1)
        out.append(
            f"| {row.label} | {_count(row.params)} | {fmt(row.sample_s, 3)} | "
            f"{fmt(row.density_s, 3)} | {fmt(row.evals, 2)} | "
            f"{fmt(row.mean('acceptance_rate'), 3)} | {step} | {fmt(row.step_rel, 2)} |"
        )
    out += ["", "Where each cost comes from:", ""]
    for row in rows:
        if row.ran:
            out.append(
                f"- {row.label}: times from {row.timing_source}; evaluations per sample from "
                f"{row.evals_source}; step time from {row.step_source}."
            )
    out += ["", "### Claims, computed", ""]
    out += ["| claim | whose | holds | numbers |", "|---|---|---|---|"]
    out += [f"| {c} | {who} | {_yes(ok)} | {nums} |" for c, who, ok, nums in claims(rows)]
    return out + [""]


NOTES = [
    "## How to read the tables",
    "",
    "- Every NLL is an IWAE estimate (K importance samples per test image): in expectation a "
    "lower bound on log p(x), so an NLL that errs high, the same for every prior.",
    "- log p(z) inside it: *exact* for N(0, I), the flows and the finite mixtures; *exact "
    "given Z* for the priors with the LARS sampler (LARS, LARS over RealNVP, TRS: Eq. A.14 "
    "with the high-precision Monte Carlo Z, whose error is carried into the gain's SE); "
    "dimension-wise LARS integrates each unit's Z_i by quadrature (error below 1e-12). "
    "SNIS has no closed-form density: its log p(z) is a stochastic lower bound on "
    "log q_K(z) (exp of it is unbiased), so its NLL errs high by more than the others'; "
    "the gap is about Var_π[w] / (2 K E_π[w]²) per evaluation, shrinking as 1/K, and it "
    "does not shrink with the IWAE K (the importance samples share the auxiliary draw). "
    "A claim that SNIS matches another prior is therefore conservative.",
    "- Gain = NLL(N(0, I)) − NLL(prior), positive = better, over the same test images; SE "
    "= paired SE over images combined with the SE from Z (n.s.: |gain| < 2 SE), averaged "
    "over the seeds both priors ran.",
    "- Parameters: the prior module's own trainable numbers, counted on a model built with "
    "the cell's model params. The VampPrior's are its pseudo-inputs; it also runs the "
    "encoder, whose weights the model has whatever the prior.",
    "- Sampling and log_prob times: thread CPU seconds on one torch thread, measured by this "
    "report on the trained checkpoint when it is still there and is the one evaluated "
    "(checkpoint sha256 = nll.json's); for priors whose cost does not depend on the weights, "
    "otherwise on a freshly built prior of the same params. Rejection-sampled priors without "
    "their checkpoint show a dash: a fresh a(z) would not accept at the trained rate.",
    "- Evaluations per sample: expected proposals (each an a(z) evaluation) of the trained "
    "LARS-type priors from nll.json's mean_proposals = (1 − (1 − Z)^T) / Z with the "
    "evaluated Z (the T-th proposal is accepted without one, so it is an upper bound by "
    "(1 − Z)^(T−1)); SNIS evaluates its energy on all K proposals; dimension-wise LARS: "
    "expected proposals summed over units (each a one-dimensional a_i).",
    "- Train step: training wall seconds over the cell's iterations (post-hoc LARS: its "
    "a(z)-only steps on the frozen N(0, I) model), on whatever else the machine was running.",
    "- Training: every prior trains jointly with its VAE on the same schedule and KL "
    "warm-up. The flows' parameters (also LARS over RealNVP's proposal) take Adam steps of "
    "the learning rate times the KL weight beta during the warm-up, every other parameter "
    "the plain rate: at the plain rate the flows' posteriors collapsed onto the prior "
    "(reports/flow_collapse.md). The VampPrior's posterior collapses at this schedule (test "
    "KL about half N(0, I)'s): its components are the encoder's own posteriors, as narrow as "
    "the posteriors they pull on, and the encoder's gradient through them pulls every "
    "posterior together (reports/flow_collapse.md: a warm-up rule for the pseudo-inputs, "
    "pseudo-inputs from training images and a faster pseudo-input rate collapse as well). "
    "The stop-gradient row trains the same density with the encoder's weights detached in "
    "the components (`vamp_sg`); the VampPrior claims are judged on each row.",
    "",
]


def render(spec: dict[str, Any], rows: dict[tuple[str, str], list[Row]], root: Path) -> str:
    cells = {
        (ds, arch, r.prior, r.mode): r.cell
        for (ds, arch), group in rows.items()
        for r in group
        if r.ran
    }
    out = [
        "# Priors compared: LARS, VampPrior, mixture of Gaussians, flows, TRS, SNIS and "
        "dimension-wise LARS",
        "",
    ]
    out += header(spec, cells, root, now_utc())
    out += [f"Rows of priors this budget does not run show {DASH}.", ""]
    for (ds, arch), group in rows.items():
        out += _group_lines(ds, arch, group)
    return "\n".join(out + NOTES)


#: NLL more than this many nats above N(0, I)'s is drawn at the top edge, off scale
OFF_SCALE = 8.0


def _panel(ax, pts, attr: str, std: Row | None) -> None:
    """One panel: each prior's NLL (± sd over seeds) against ``attr``; priors worse than
    N(0, I) by more than OFF_SCALE nats sit at the top edge as a labelled triangle."""
    ref = std.cell.nll if std is not None and std.ran else None
    top = None if ref is None else ref + OFF_SCALE
    order = [(prior, mode) for prior, mode, _ in ROWS]
    for x in pts:
        i = order.index((x.prior, x.mode))  # one colour and marker per prior on every panel
        colour, nll, sd = f"C{i % 10}", x.cell.nll, x.cell.nll_sd or 0.0
        marker = "os"[i // 10 % 2]  # ten colours, then the same colours as squares
        if top is not None and nll > top:
            ax.plot(
                getattr(x, attr), top, "^", color=colour, label=f"{x.label} ({nll:.1f}, off scale)"
            )
        else:
            ax.errorbar(
                getattr(x, attr), nll, yerr=sd, fmt=marker, capsize=3, color=colour, label=x.label
            )
    if ref is not None:
        ax.axhline(ref, ls="--", lw=0.8, color="grey")
        low = min([x.cell.nll for x in pts] + [ref])
        ax.set_ylim(low - 1.0, top + 0.5)


def plot(rows: dict[tuple[str, str], list[Row]], out: Path | str) -> None:
    """NLL (mean ± sd over seeds) against the prior's parameter count and its sampling time,
    one row of two panels per (dataset, arch); N(0, I) as a dashed line, one legend."""
    import matplotlib  # loaded when a figure is drawn: the workflow imports this module

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(rows.items()) or [(("", ""), [])]
    fig, axes = plt.subplots(len(groups), 2, figsize=(13, 4.6 * len(groups)), squeeze=False)
    for ((ds, arch), group), (ax_p, ax_t) in zip(groups, axes, strict=True):
        name = f"{DATASET_LABELS.get(ds, ds)} {ARCH_LABELS.get(arch, arch)}".strip()
        std = group[0] if group else None
        for ax, attr, xlabel in (
            (ax_p, "params", "prior parameters (symlog scale)"),
            (ax_t, "sample_s", f"seconds to draw {SAMPLES:,} exact samples (one thread)"),
        ):
            pts = [x for x in group if x.ran and getattr(x, attr) is not None]
            _panel(ax, pts, attr, std)
            if attr == "params":
                ax.set_xscale("symlog", linthresh=10)
                ax.set_xlim(-1, 3 * max([x.params for x in pts] + [10]))
            elif pts and all(getattr(x, attr) > 0 for x in pts):
                ax.set_xscale("log")
            if not pts:
                ax.text(
                    0.5,
                    0.5,
                    "no cell with this number",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                )
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test NLL (nats, IWAE); dashed: N(0, I)")
            ax.set_title(f"{name}: NLL vs {'parameters' if attr == 'params' else 'sampling'}")
        handles, labels = ax_t.get_legend_handles_labels()
        if handles:
            ax_t.legend(handles, labels, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.tight_layout()
    with open(out, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


def write_report(
    spec: dict[str, Any], table: Path | str, figure: Path | str, root: Path | str = "."
) -> dict[tuple[str, str], list[Row]]:
    """priors.md and its figure from the cells of ``spec`` (Table 1's spec, each cell with
    ``checkpoint``, ``train_log`` and ``iterations``)."""
    root = Path(root)
    rows = build_rows(spec, root)
    atomic_write_text(table, render(spec, rows, root))
    plot(rows, figure)
    return rows


__all__ = [
    "ROWS",
    "SAMPLES",
    "Row",
    "build_rows",
    "claims",
    "paired_difference",
    "plot",
    "prior_parameters",
    "render",
    "time_prior",
    "write_report",
]
