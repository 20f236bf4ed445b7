"""Table 1 of Bauer & Mnih (2019) from pipeline results, with the paper's values beside ours.

Inputs are the files the workflow writes (``nll.json`` from ``larsvae evaluate``, ``z.json``
from ``larsvae reduce-z``, the data manifests); the *spec* (built by the workflow from the
params file) says which cells were run and with which budget. Nothing here trains or
evaluates: it only reads, aggregates and formats.

Column semantics: "standard" = gaussian prior trained from scratch; "LARS" = LARS prior
trained jointly (mode ``standard``); post-hoc LARS (mode ``posthoc``) is reported as extra
rows. LARS gain = NLL(standard) - NLL(LARS), so positive means LARS is better, as in the
paper. The standard error carried from Z is the first-order effect of the Monte Carlo error of
Z on the NLL (``nll_se_from_z`` of ``larsvae evaluate``; for T = inf it is SE(Z)/Z since the
NLL contains + log Z, Eq. A.7).
"""

from __future__ import annotations

import json
import math
import platform
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import gains as gains_mod
from .paper import ARCH_LABELS, DATASET_LABELS, PAPER_TABLE1, paper_nll

DASH = "—"
#: canonical key -> names ``larsvae evaluate`` / ``reduce-z`` may use for it
ALIASES = {
    "nll_se": ("nll_se", "nll_stderr"),
    "nll_se_from_z": ("nll_se_from_z", "nll_z_stderr"),
    "z_se": ("z_se", "z_stderr"),
    "iwae_k": ("iwae_k", "k"),
    "n_test": ("n_test", "n"),
}


def _normalise(run: dict[str, Any]) -> dict[str, Any]:
    for key, names in ALIASES.items():
        for n in names:
            if run.get(n) is not None:
                run[key] = run[n]
                break
    return run


@dataclass
class CellResult:
    """All seeds of one (dataset, arch, prior, mode)."""

    dataset: str
    arch: str
    prior: str
    mode: str
    runs: list[dict[str, Any]] = field(default_factory=list)  # one nll.json (+ z) per seed

    @property
    def column(self) -> str | None:
        if self.prior == "gaussian" and self.mode == "standard":
            return "standard"
        if self.prior == "lars" and self.mode == "standard":
            return "lars"
        if self.prior == "lars" and self.mode == "posthoc":
            return "posthoc"
        return None

    @property
    def nlls(self) -> list[float]:
        return [float(r["nll"]) for r in self.runs]

    @property
    def nll(self) -> float:
        return statistics.fmean(self.nlls)

    @property
    def nll_sd(self) -> float | None:
        """Standard deviation over seeds (None for a single seed)."""
        return statistics.stdev(self.nlls) if len(self.nlls) > 1 else None

    def mean_of(self, key: str) -> float | None:
        vals = [r.get(key) for r in self.runs]
        if not vals or any(v is None for v in vals):
            return None
        return statistics.fmean(float(v) for v in vals)


def load_results(spec: dict[str, Any], root: str | Path = ".") -> dict[tuple, CellResult]:
    """Read every cell's nll.json (and z.json for LARS) named in the spec."""
    root = Path(root)
    cells: dict[tuple, CellResult] = {}
    for c in spec["cells"]:
        key = (c["dataset"], c["arch"], c["prior"], c["mode"])
        cell = cells.setdefault(key, CellResult(*key))
        run = _normalise(json.loads((root / c["nll"]).read_text()))
        run["seed"] = c["seed"]
        if c.get("provenance"):
            run["provenance"] = json.loads((root / c["provenance"]).read_text())
        if c.get("z"):
            z = json.loads((root / c["z"]).read_text())
            run.setdefault("z", z.get("z"))
            run.setdefault("z_se", z.get("z_stderr"))
        cell.runs.append(run)
    return cells


def fmt(x: float | None, digits: int = 2, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return DASH
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def fmt_nll(cell: CellResult | None) -> str:
    if cell is None:
        return DASH
    sd = cell.nll_sd
    return fmt(cell.nll) + (f" ± {fmt(sd)}" if sd is not None else "")


def fmt_sci(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return DASH
    return f"{x:.{digits}g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.{digits}e}"


def gain(cells: dict[tuple, CellResult], dataset: str, arch: str, mode: str = "standard"):
    std = cells.get((dataset, arch, "gaussian", "standard"))
    lars = cells.get((dataset, arch, "lars", mode))
    if std is None or lars is None:
        return None
    return std.nll - lars.nll


def _source(source: str) -> str:
    """'mirror /abs/path/mnist.pkl.gz' -> 'mirror mnist.pkl.gz': reports name the kind of
    source and the file, never a path of the machine that made them (the sha256 pins it)."""
    kind, _, where = source.partition(" ")
    return f"{kind} {where.rstrip('/').rsplit('/', 1)[-1]}" if where else kind


def _data_versions(spec: dict[str, Any], root: Path) -> list[str]:
    lines = []
    for path in sorted({c["manifest"] for c in spec["cells"]}):
        p = root / path
        if not p.exists():
            continue
        m = json.loads(p.read_text())
        srcs = sorted({_source(f.get("source", "?")) for f in m.get("files", [])})
        test_sha = m.get("array_sha256", {}).get("test", "")[:12]
        splits = "/".join(
            str(m.get("splits", {}).get(s, {}).get("n", "?")) for s in ("train", "valid", "test")
        )
        variant = f", variant {m['variant']}" if m.get("variant") else ""
        if m.get("omniglot_version"):  # reports say which Omniglot was used
            variant += f", Omniglot version {m['omniglot_version'].split(':')[0]}"
        lines.append(
            f"`{m.get('dataset')}`: format v{m.get('format_version')}{variant}, splits {splits}, "
            f"test-array sha256 `{test_sha}…`, from {', '.join(srcs)}"
        )
    return lines


def _machine(cells: dict[tuple, CellResult]) -> str:
    devices = sorted(
        {str(r.get("device")) for c in cells.values() for r in c.runs if r.get("device")}
    )
    try:
        import torch  # loaded late: the CLI answers argument errors without torch

        torch_v = torch.__version__
    except ImportError:  # pragma: no cover
        torch_v = "?"
    cpu = platform.processor() or platform.machine()
    return (
        f"{platform.node()} ({platform.system()} {platform.release()}, {cpu}); "
        f"evaluation device(s): {', '.join(devices) or DASH}; Python {platform.python_version()}, "
        f"torch {torch_v}"
    )


_MISSING = object()


def _budget_value(b: dict[str, Any], section: str, key: str, spec: str = "") -> str:
    """``format(b[section][key], spec)``, or the dash where the budget lacks it (a dataset
    whose cells never run a step has no section for that step's keys)."""
    v = b.get(section, {}).get(key, _MISSING)
    return DASH if v is _MISSING else format(v, spec)


def _budget_lines(budget: dict[str, dict[str, Any]]) -> list[str]:
    """One line per schedule: the (dataset, arch) pairs that share it are named together."""
    groups: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for ds, per_arch in budget.items():
        for arch, b in per_arch.items():
            key = json.dumps(b, sort_keys=True)
            groups.setdefault(key, (b, []))[1].append(f"{ds}/{arch}")
    return [_budget_line(", ".join(names), b) for b, names in groups.values()]


def _budget_line(ds: str, b: dict[str, Any]) -> str:
    def g(section: str, key: str, spec: str = "") -> str:
        return _budget_value(b, section, key, spec)

    subset = b.get("evaluate", {}).get("test_subset")
    stop = b.get("train", {}).get("early_stopping_patience")
    stopping = (
        f" Early stopping on validation NLL (K = {g('train', 'eval_k')}) every "
        f"{g('train', 'eval_every', ',')} steps, patience {stop}, best checkpoint kept."
        if stop
        else ""
    )
    return (
        f"- `{ds}`: {g('train', 'iterations', ',')} training iterations "
        f"(post-hoc: {g('posthoc', 'iterations', ',')}), "
        f"batch {g('train', 'batch_size')}, lr {g('train', 'lr', 'g')}→{g('train', 'lr_final', 'g')} "
        f"after {g('train', 'lr_decay_step', ',')}, "
        f"KL warm-up {g('train', 'warmup_steps', ',')}; T = {g('model', 'truncation')}, "
        f"eps = {g('model', 'eps', 'g')}, "
        f"S = {g('model', 'train_z_samples', ',')} (training); Z from {g('evaluate', 'z_samples', ',')} "
        f"samples in {g('evaluate', 'z_shards')} shards; IWAE K = {g('evaluate', 'iwae_k', ',')} on "
        + ("the full test set" if subset is None else f"{subset:,} evenly spaced test images")
        + "."
        + stopping
    )


def header(
    spec: dict[str, Any], cells: dict[tuple, CellResult], root: Path, now: datetime
) -> list[str]:
    name = spec["name"]
    lines = [
        f"Budget **`{name}`**"
        + (
            ""
            if name == "paper"
            else " — NOT the paper's budget; do not read these as paper numbers"
        )
        + f". Seeds: {', '.join(map(str, spec['seeds']))}"
        + (" (mean ± sd over seeds)." if len(spec["seeds"]) > 1 else " (single seed)."),
        "",
    ]
    planned, ran = spec.get("planned"), len(spec["cells"])
    if planned is not None and planned > ran:
        lines += [
            f"**In progress: {ran} of the {planned} cell runs of this budget are published**; "
            "the others show —. The full table is `table1.md` beside this folder once all are.",
            "",
        ]
    lines += _budget_lines(spec["budget"])
    lines += ["", "Data versions:", ""]
    lines += [f"- {v}" for v in _data_versions(spec, root)] or [f"- {DASH}"]
    lines += ["", f"Machine: {_machine(cells)}.", "", f"Date: {now:%Y-%m-%d %H:%M} UTC.", ""]
    lines += _provenance_lines(cells)
    return lines


def _provenance_lines(cells: dict[tuple, CellResult]) -> list[str]:
    """Published cells: the code versions they came from and their measured cost."""
    provs = [r["provenance"] for c in cells.values() for r in c.runs if r.get("provenance")]
    if not provs:
        return []
    versions: dict[str, int] = {}
    for p in provs:
        code = p.get("code") or {}
        tag = f"`{str(code.get('commit'))[:10]}`" + (
            " (src modified)" if code.get("src_modified") else ""
        )
        versions[tag] = versions.get(tag, 0) + 1
    mixed = "" if len(versions) == 1 else " — cells of several code versions (same params and data)"
    out = [
        f"Cells are published results (larsvae.publish; {len(provs)} cell runs), each checked "
        f"against this plan's params and data. Code at publication: "
        + ", ".join(f"{v} ({n} cells)" for v, n in versions.items())
        + mixed
        + ".",
        "",
    ]
    _, total = gains_mod.cost_rows(cells)
    if total is not None:
        out += [f"Measured cost: **{total:.2f} CPU hours** in all (per cell: the cost table).", ""]
    return out


def render_table1(
    spec: dict[str, Any], cells: dict[tuple, CellResult], root: Path, now: datetime
) -> str:
    datasets = list(DATASET_LABELS)
    archs = list(ARCH_LABELS)
    ran = sorted({f"{k[0]}/{k[1]}/{k[2]}/{k[3]}" for k in cells})
    out = ["# Table 1: test NLL (nats, lower is better) — ours vs Bauer & Mnih (2019)", ""]
    out += header(spec, cells, root, now)
    out += [
        f"Cells run in this budget: {', '.join(f'`{r}`' for r in ran)}. "
        f"Cells not run show {DASH}. Each entry: **ours** / paper (ours − paper).",
        "",
    ]
    head = (
        "| dataset | "
        + " | ".join(f"{ARCH_LABELS[a]} {col}" for a in archs for col in ("standard", "LARS"))
        + " |"
    )
    out += [head, "|---" * (1 + 2 * len(archs)) + "|"]
    for ds in datasets:
        row = [DATASET_LABELS[ds]]
        for a in archs:
            for col, prior in (("standard", "gaussian"), ("lars", "lars")):
                cell = cells.get((ds, a, prior, "standard"))
                p = paper_nll(ds, a, col)
                diff = cell.nll - p if cell is not None and p is not None else None
                ours = f"**{fmt_nll(cell)}**" if cell is not None else DASH
                row.append(f"{ours} / {fmt(p)} ({fmt(diff, signed=True)})")
        out.append("| " + " | ".join(row) + " |")

    out += _gain_block(cells, datasets, archs)

    posthoc = [c for k, c in cells.items() if k[3] == "posthoc"]
    if posthoc:
        out += ["", "## Post-hoc LARS (a(z) trained on a frozen standard-prior model)", ""]
        out += [
            "| dataset | arch | standard | LARS joint | LARS post-hoc | post-hoc gain |",
            "|---|---|---|---|---|---|",
        ]
        for c in posthoc:
            std = cells.get((c.dataset, c.arch, "gaussian", "standard"))
            joint = cells.get((c.dataset, c.arch, "lars", "standard"))
            out.append(
                f"| {DATASET_LABELS[c.dataset]} | {ARCH_LABELS[c.arch]} | {fmt_nll(std)} | "
                f"{fmt_nll(joint)} | {fmt_nll(c)} | {fmt(gain(cells, c.dataset, c.arch, 'posthoc'), signed=True)} |"
            )

    out += ["", "## Z and the standard errors", ""]
    out += [
        "Z = E_π[a(z)] from the sharded high-precision estimate (mean ± SE over its i.i.d. "
        "units). SE(NLL) from Z is that error carried into the NLL; SE(NLL) test is the "
        "sampling error over test images. Acceptance rate = 1 / mean number of proposals "
        "per accepted sample of the truncated sampler.",
        "",
        "| cell | NLL | SE(NLL) test | Z | SE(Z) | SE(NLL) from Z | acceptance rate | K | test images |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, c in cells.items():
        zcol = c.mean_of if k[2].startswith("lars") else (lambda _key: None)
        out.append(
            f"| `{'/'.join(k)}` | {fmt_nll(c)} | {fmt(c.mean_of('nll_se'), 3)} | {fmt_sci(zcol('z'), 5)} | "
            f"{fmt_sci(zcol('z_se'), 2)} | {fmt_sci(zcol('nll_se_from_z'), 2)} | "
            f"{fmt(c.mean_of('acceptance_rate'), 3)} | {c.runs[0].get('iwae_k', DASH)} | {c.runs[0].get('n_test', DASH)} |"
        )
    out += ["", "Paper values: Bauer & Mnih (AISTATS 2019), Table 1.", ""]
    return "\n".join(out)


def _gain_block(cells: dict[tuple, CellResult], datasets: list[str], archs: list[str]) -> list[str]:
    """The gain with its paired error beside the paper's, the claims, the seeds, the cost."""
    paired = gains_mod.gains(cells)
    out = ["", "## LARS gain: NLL(standard) − NLL(LARS), nats (positive = LARS better)", ""]
    out += [
        "Ours ± SE: the paired standard error over the same test images combined with the "
        "error carried from Z (n.s.: |gain| < 2 SE); without per-image values, the plain "
        "difference. Paper: its Table 1's difference.",
        "",
        "| dataset | " + " | ".join(f"{ARCH_LABELS[a]} ours / paper" for a in archs) + " |",
        "|---" * (1 + len(archs)) + "|",
    ]
    for ds in datasets:
        row = [DATASET_LABELS[ds]]
        for a in archs:
            g = paired.get((ds, a))
            ours = g.text() if g is not None else fmt(gain(cells, ds, a), signed=True)
            pg = PAPER_TABLE1[ds][a][0] - PAPER_TABLE1[ds][a][1]
            row.append(f"{ours} / {fmt(pg, signed=True)}")
        out.append("| " + " | ".join(row) + " |")
    out += ["", "## The paper's claims, computed", ""] + gains_mod.claims(cells, paired)
    spread = gains_mod.seed_spread(cells, paired)
    if spread:
        out += ["", "## Seeds", ""] + spread
    rows, total = gains_mod.cost_rows(cells)
    if any(r.get("provenance") for c in cells.values() for r in c.runs):
        out += ["", "## Cost per cell (minutes of wall time per job, one thread each)", ""]
        out += [
            "Measured by the jobs themselves (training, Z shards summed, IWAE and the test "
            "ELBO). Jobs that shared the machine with other work ran slower than on a quiet "
            "one, so these bound the quiet cost from above.",
            "",
        ]
        out += ["| cell | train | Z | IWAE + ELBO |", "|---|---|---|---|", *rows]
        if total is not None:
            out += ["", f"Total: {total:.2f} CPU hours."]
    return out


def render_main(
    spec: dict[str, Any], cells: dict[tuple, CellResult], root: Path, now: datetime
) -> str:
    """The main job: dynamicMNIST x VAE, standard vs LARS joint vs LARS post-hoc."""
    ds, a = "dynamic_mnist", "vae"
    out = ["# Main job: dynamicMNIST, single-layer VAE — standard prior vs LARS", ""]
    out += header(spec, cells, root, now)
    rows = [
        (
            "standard prior (N(0, I))",
            cells.get((ds, a, "gaussian", "standard")),
            paper_nll(ds, a, "standard"),
        ),
        ("LARS, joint", cells.get((ds, a, "lars", "standard")), paper_nll(ds, a, "lars")),
        ("LARS, post-hoc", cells.get((ds, a, "lars", "posthoc")), None),
    ]
    if all(r[1] is None for r in rows):
        out += [f"The main-job cells were not run in budget `{spec['name']}`.", ""]
        return "\n".join(out)
    out += [
        "| model | test NLL | SE (test) | gain vs standard | Z ± SE | SE(NLL) from Z | acceptance rate | paper NLL |",
        "|---|---|---|---|---|---|---|---|",
    ]
    std = rows[0][1]
    for label, c, p in rows:
        if c is None:
            out.append(
                f"| {label} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} | {fmt(p)} |"
            )
            continue
        g = std.nll - c.nll if std is not None and c is not std else None
        z = c.mean_of("z")
        zs = f"{fmt_sci(z, 5)} ± {fmt_sci(c.mean_of('z_se'), 2)}" if z is not None else DASH
        out.append(
            f"| {label} | **{fmt_nll(c)}** | {fmt(c.mean_of('nll_se'), 3)} | {fmt(g, signed=True)} | {zs} | "
            f"{fmt_sci(c.mean_of('nll_se_from_z') if z is not None else None, 2)} | "
            f"{fmt(c.mean_of('acceptance_rate'), 3)} | {fmt(p)} |"
        )
    out += ["", "Gain = NLL(standard) − NLL(model); positive = better than the standard prior.", ""]
    return "\n".join(out)


def metrics(spec: dict[str, Any], cells: dict[tuple, CellResult]) -> dict[str, Any]:
    """reports/metrics.json: every NLL (per cell, mean over seeds and per seed) for DVC."""
    out: dict[str, Any] = {"budget": spec["name"], "nll": {}, "gain": {}}
    for (ds, a, p, m), c in cells.items():
        entry: dict[str, Any] = {"nll": round(c.nll, 4)}
        if c.nll_sd is not None:
            entry["nll_sd"] = round(c.nll_sd, 4)
        for key in ("nll_se", "z", "z_se", "nll_se_from_z", "acceptance_rate"):
            v = c.mean_of(key)
            if v is not None:
                entry[key] = v
        col = {"gaussian": "standard", "lars": "lars"}.get(p) if m == "standard" else None
        pv = paper_nll(ds, a, col) if col else None
        if pv is not None:
            entry["paper_nll"] = pv
            entry["diff_vs_paper"] = round(c.nll - pv, 4)
        for r in c.runs:
            entry[f"seed{r['seed']}"] = r["nll"]
        out["nll"].setdefault(ds, {}).setdefault(a, {})[f"{p}_{m}"] = entry
    for ds, a, p, m in cells:
        if p == "lars":
            g = gain(cells, ds, a, m)
            if g is not None:
                out["gain"].setdefault(ds, {}).setdefault(a, {})[m] = round(g, 4)
    return out


def now_utc() -> datetime:
    return datetime.now(timezone.utc)
