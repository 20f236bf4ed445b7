# Helpers shared by every rule: the one config validation, the cells, input and params
# functions. Paths come from larsvae.paths, the cells and the keys each step reads from the
# plan (workflow/plan.py): rules hold no logic.
import json
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import update_config, validate

from larsvae import config as lconfig
from larsvae.data.sources import export_mirrors
from larsvae.paths import (Layout, dataset_file, fill, labels_file, manifest_file,
                           verified_file)

REPO = Path(workflow.basedir).resolve()
sys.path.insert(0, str(REPO / "workflow"))
import plan  # noqa: E402  (workflow/plan.py: the cells, the keys each step reads)
# Every job's shell: strict mode, this interpreter's bin/ first on PATH (so `python` and
# `larsvae` are the ones Snakemake runs in, activated or not), and `gpu_slot CMD...`, which
# runs CMD on one GPU of its own (workflow/scripts/gpu_slot.py) or unchanged on the CPU.
_BIN = shlex.quote(str(Path(sys.executable).parent))
_SLOT = shlex.quote(str(REPO / "workflow" / "scripts" / "gpu_slot.py"))
# (The prefix is str.format()ed with the job's namespace, hence the doubled braces.)
shell.prefix(
    f'set -euo pipefail; export PATH={_BIN}:"$PATH"; '
    f'gpu_slot() {{{{ python {_SLOT} -- "$@"; }}}}; '
)


def _one_line(err):
    """'params: <key>: <what is wrong>' from a schema or library error."""
    # Snakemake's validate() raises WorkflowError while handling jsonschema's ValidationError
    context = err.__cause__ or err.__context__
    cause = context if hasattr(context, "validator") else err
    path = list(getattr(cause, "absolute_path", []))
    if not path and not hasattr(cause, "validator"):
        return f"params: {' '.join(str(cause).split())}"
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    if getattr(cause, "validator", None) == "additionalProperties":
        known = sorted(cause.schema.get("properties", {}))
        extra = sorted(set(cause.instance) - set(known))[0]
        where = f"{key}.{extra}" if key else extra
        return f"params: {where}: unknown key (expected one of: {', '.join(known)})"
    return f"params: {key or '<top level>'}: {cause.message}"


def _typed(value, nested=False):
    """A `--config` value with the leaves inside its lists and mappings typed as Snakemake
    types a top-level value (int, then float, then True/False, else the string): Snakemake
    reads nested values with YAML's BaseLoader, which gives strings (`seeds=[1,2]` arrives
    as ['1', '2'])."""
    if isinstance(value, dict):
        return {k: _typed(v, True) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v, True) for v in value]
    if not nested or not isinstance(value, str):
        return value
    for parse in (int, float, {"True": True, "False": False}.__getitem__):
        try:
            return parse(value)
        except (KeyError, ValueError):
            pass
    return value


if not config:
    raise WorkflowError("params: no configuration given (use --configfile params/<budget>.yaml)")
# Only the --config values are retyped (the params file's own YAML is already typed); they
# are merged over the params file exactly as Snakemake merged them.
update_config(config, _typed(workflow.config_settings.config or {}))
try:
    validate(config, schema=str(REPO / "workflow" / "schemas" / "params.schema.yaml"))
    P = plan.parse_params(config)
except (WorkflowError, lconfig.ConfigError) as err:
    raise WorkflowError(_one_line(err)) from None
L = Layout(P.runs, P.reports, P.results)
REPORTS = {k: L.report(f) for k, f in (("table", "table1.md"), ("main", "main.md"),
           ("metrics", "metrics.json"), ("curves", "figures/training_curves.png"))}
# a publishing budget's Table 1 so far: the same reports of the cells published until now
PROGRESS = {k: L.report(f"progress/{Path(f).name}") for k, f in REPORTS.items()}


# ---------------------------------------------------------------------------------------------
# Cells and the keys each step reads


def cell_of(w, **fixed):
    """The cell of a job: its wildcards plus the fields its output pattern fixes (the prior
    wildcard is the prior's tag, `lars` or `lars-<variant>`)."""
    return plan.Cell.from_wildcards({**dict(w.items()), **fixed})


def prior_tag(priors):
    """Wildcard pattern of a prior tag: one of `priors`, optionally `-<variant>`."""
    return f"(?:{'|'.join(priors)})(?:-[a-z0-9_]+)?"


def prior_args(wildcards):
    """--prior NAME [--variant NAME] from the prior tag (`lars-t2` -> lars, variant t2)."""
    prior, _, variant = wildcards.prior.partition("-")
    return f"--prior {prior}" + (f" --variant {variant}" if variant else "")


def _json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def step_params(step, section, **fixed):
    """params function: the keys of `section` that `step` reads for the job's cell (JSON);
    `fixed`: cell fields the rule's output pattern fixes instead of a wildcard. Snakemake
    reruns a job when these change, and only then (rerun trigger 'params')."""

    def get(wildcards):
        return _json(P.step_params(step, cell_of(wildcards, **fixed))[section])

    return get


# data.mirrors (relative to the repository) go first on the jobs' $LARSVAE_DATA_MIRRORS. Where
# the data come from is not a parameter of the result (every file is checked against its
# pinned sha256), so it is no rerun trigger of prepare_data.
export_mirrors(P.mirrors, root=REPO)


# ---------------------------------------------------------------------------------------------
# Input functions (no lambdas in rules)


def train_data(wildcards):
    return dataset_file(wildcards.dataset)


def verified(wildcards):
    """The check_data stamp of the job's dataset (verified before the job may start)."""
    return verified_file(wildcards.dataset)


def posthoc_init(wildcards):
    """Post-hoc LARS starts from the standard-prior checkpoint of the same dataset, arch,
    seed and VAE (plan.Params.posthoc_init)."""
    return L.model(**P.posthoc_init(cell_of(wildcards, mode="posthoc")).wildcards())


class Wildcards(dict):
    """A cell's fields with attribute access, as a job's wildcards have."""

    __getattr__ = dict.__getitem__


def z_shards(wildcards):
    """The shard files reduced into one Z estimate (count: evaluate.z_shards)."""
    n = P.section("evaluate", wildcards.dataset, wildcards.arch).z_shards
    return [L.z_shard(**wildcards, shard=i, nshards=n) for i in range(n)]


def evaluate_inputs(wildcards):
    """Checkpoint + data, plus z.json for LARS priors only (others need no Z)."""
    inputs = {"model": L.model(**wildcards), "data": dataset_file(wildcards.dataset),
              "verified": verified_file(wildcards.dataset)}
    if cell_of(wildcards).needs_z:
        inputs["z"] = L.z(**wildcards)
    return inputs


def publish_inputs(wildcards):
    """A finished cell: its nll.json, curve, checkpoint, and for LARS its Z and shards."""
    c = cell_of(wildcards)
    inputs = {"nll": L.nll(**wildcards), "curve": L.curve(**wildcards),
              "model": L.model(**wildcards)}
    if c.needs_z:
        inputs["z"] = L.z(**wildcards)
        inputs["shards"] = z_shards(wildcards)
    return inputs


def publish_dir(wildcards):
    return str(Path(L.published("provenance.json", **wildcards)).parent)


def publish_args(wildcards, input):
    """--z / --z-shard options, --train-log (its wall time) and --params (the cell's)."""
    c = cell_of(wildcards)
    args = [f"--train-log {shlex.quote(L.log('train', **c.wildcards()))}",
            f"--params {shlex.quote(_json(cell_params(c)))}"]
    if c.needs_z:
        args += [f"--z {shlex.quote(input.z)}"]
        args += [f"--z-shard {shlex.quote(s)}" for s in input.shards]
    return " ".join(args)


def z_option(wildcards, input):
    return f"--z {shlex.quote(input.z)}" if "z" in input.keys() else ""


def sample_count(wildcards):
    return P.step_params("sample", cell_of(wildcards))["report"]["samples"]


def cell_params(c):
    """{step: {section: {key: value}}} of every step that makes cell `c` (its provenance)."""
    steps = ["train_posthoc" if c.mode == "posthoc" else "train", "evaluate"]
    out = {s: P.step_params(s, c) for s in steps + (["estimate_z"] if c.needs_z else [])}
    if c.needs_z:
        out["estimate_z"]["evaluate"]["z_shards"] = P.section("evaluate", c.dataset, c.arch).z_shards
    if c.mode == "posthoc":
        out["init"] = cell_params(P.posthoc_init(c))
    return out


def _cell_files(c):
    """What a report reads of cell `c`: its runs/ files, or, in a budget that publishes its
    cells (params paths.results), the published copies and their provenance."""
    w = c.wildcards()
    step = "train_posthoc" if c.mode == "posthoc" else "train"
    files = dict(vars(c), nll=L.nll(**w), z=L.z(**w) if c.needs_z else None,
                 curve=L.curve(**w), manifest=manifest_file(c.dataset),
                 model=P.step_params(step, c)["model"])
    if P.results:
        files.update(nll=L.published("nll.json", **w), z=None,
                     curve=L.published("curve.tsv", **w),
                     provenance=L.published("provenance.json", **w),
                     verified=verified_file(c.dataset), params=cell_params(c))
    return files


def is_published(c):
    """Cell `c` has published files (a budget with paths.results; committed, or published
    by this run's publish job)."""
    return bool(P.results) and Path(L.published("provenance.json", **c.wildcards())).exists()


def _result_inputs(cells):
    """The files a report reads, and for the cells of a publishing budget not yet published
    the publish stamp instead (the job that writes their files)."""
    files = [_cell_files(c) for c in cells]
    ready = [not P.results or is_published(c) for c in cells]  # one stat per cell
    todo = [c for c, r in zip(cells, ready) if not r]
    done = [f for f, r in zip(files, ready) if r]
    return {
        "nll": [f["nll"] for f in done],
        "z": [f["z"] for f in done if f["z"]],
        "curves": [f["curve"] for f in done],
        "manifests": sorted({f["manifest"] for f in files}),
        "provenance": [f["provenance"] for f in done if "provenance" in f],
        "verified": sorted({f["verified"] for f in files if "verified" in f}),
        "publish": [L.publish_stamp(**c.wildcards()) for c in todo],
    }


def report_inputs(wildcards):
    return _result_inputs(P.main_cells)


# Figures D.10-D.14 (VAEs with a 2-D latent space): label -> cell; Tables D.1-D.5 use the rest
LATENT2D = P.latent2d_cells()
TABLE_CELLS = [c for c in P.cells if c not in LATENT2D.values()]
LATENT2D_DIR = L.appendix("latent2d")
LATENT2D_FILES = {k: f"{LATENT2D_DIR}/{f}" for k, f in (
    ("densities", "fig_latent2d_densities.png"), ("aggregate", "fig_latent2d_aggregate.png"),
    ("scatter", "fig_latent2d_scatter.png"), ("table", "table_latent2d.md"))}


def appendix_inputs(wildcards):
    return _result_inputs(TABLE_CELLS)


def _spec(cells):
    """What a report shows besides the result files: the budget's name, seeds, cells and
    the keys the cells' steps read (so a key no step reads never reruns the report)."""
    budget = {}
    for c in cells:  # the variants' model keys are in their cells' "model"
        steps = ["train_posthoc" if c.mode == "posthoc" else "train", "evaluate"]
        if c.variant != lconfig.BASE:
            steps = steps[1:]
        steps += ["estimate_z"] if c.needs_z else []
        b = budget.setdefault(c.dataset, {}).setdefault(c.arch, {})
        for step in steps:
            for section, values in P.step_params(step, c).items():
                b.setdefault(section, {}).update(values)
        if c.needs_z:
            b["evaluate"]["z_shards"] = P.section("evaluate", c.dataset, c.arch).z_shards
    spec = {"name": P.name, "seeds": list(P.seeds), "budget": budget,
            "cells": [_cell_files(c) for c in cells]}
    return _json(spec)


def report_spec(wildcards):
    return _spec(P.main_cells)


def _published_main_cells():
    return [c for c in P.main_cells if is_published(c)]


def progress_inputs(wildcards):
    """The Table 1 cells published so far (a budget with paths.results)."""
    inputs = _result_inputs(_published_main_cells())
    inputs.pop("publish")
    return inputs


def progress_spec(wildcards):
    """The report spec of the published cells, with the number of cells planned."""
    return _json({**json.loads(_spec(_published_main_cells())), "planned": len(P.main_cells)})


def appendix_spec(wildcards):
    return _spec(TABLE_CELLS)


# The prior comparison (priors.md, asked for by name): a budget has one when its cells run a
# prior beyond Table 1's N(0, I) and LARS; it reads the base cells of those datasets and archs
PRIOR_CELLS = plan.comparison_cells(P.cells)
PRIORS_REPORT = {"table": L.report("priors.md"), "figure": L.report("fig_priors.png")}


def priors_inputs(wildcards):
    return _result_inputs(PRIOR_CELLS)


def priors_spec(wildcards):
    """Table 1's spec of the comparison cells, each with its checkpoint (timed by the report
    where it is still there), its train log and its iterations (the training step time)."""
    spec = json.loads(_spec(PRIOR_CELLS))
    for c, files in zip(PRIOR_CELLS, spec["cells"]):
        step, section = ("train_posthoc", "posthoc") if c.mode == "posthoc" else ("train", "train")
        files.update(checkpoint=L.model(**c.wildcards()), train_log=L.log("train", **c.wildcards()),
                     iterations=P.step_params(step, c)[section]["iterations"])
    return _json(spec)


def latent2d_inputs(wildcards):
    """The 2-D latent cells' checkpoints and Z files, the training data and its labels."""
    return {"models": [L.model(**c.wildcards()) for c in LATENT2D.values()],
            "z": [L.z(**c.wildcards()) for c in LATENT2D.values() if c.is_lars],
            "data": dataset_file("dynamic_mnist"), "labels": labels_file("dynamic_mnist")}


def latent2d_args(wildcards):
    """--model LABEL=CKPT ... --z LABEL=z.json ... of the 2-D latent cells."""
    args = [f"--model {shlex.quote(f'{k}={L.model(**c.wildcards())}')}" for k, c in LATENT2D.items()]
    args += [f"--z {shlex.quote(f'{k}={L.z(**c.wildcards())}')}" for k, c in LATENT2D.items()
             if c.is_lars]
    return " ".join(args)


# Figure A.2 and Figures D.5-D.8 use the base LARS cells of dynamicMNIST (joint and post-hoc)
FIGURE_CELLS = [c for c in P.cells if c.is_lars and c.variant == lconfig.BASE
                and c.dataset == "dynamic_mnist" and c.prior == "lars"]
# Figure D.9: decoded samples of the resampled-outputs cells ranked by a(x)
RANKED_CELLS = FIGURE_CELLS + [c for c in P.cells if c.arch in lconfig.OUTPUT_LARS_ARCHS]
APPENDIX = {f"d{t}": L.appendix(f"table_d{t}.md") for t in ("1", "2", "3", "45", "6")}
Z_CONVERGENCE = L.appendix("fig_a2_z_convergence.png")


def _label(c):
    return f"{'LARS post-hoc' if c.mode == 'posthoc' else 'LARS joint'} ({c.arch}, seed {c.seed})"


def convergence_inputs(wildcards):
    return [L.z(**c.wildcards()) for c in FIGURE_CELLS]


def convergence_args(wildcards):
    pairs = [f"{_label(c)}={L.z(**c.wildcards())}" for c in FIGURE_CELLS]
    return " ".join(f"--z {shlex.quote(p)}" for p in pairs)


RANKING = L.ranking()
RANKING_RUN = L.ranking_run()


def appendix_targets():
    """Tables D.1-D.5; Figure A.2 and Figures D.5-D.8 when the budget has base LARS cells on
    dynamicMNIST."""
    ranked = [fill(f"{RANKING}/grid.png", **c.wildcards()) for c in RANKED_CELLS]
    latent = list(LATENT2D_FILES.values()) if LATENT2D else []
    mog = [L.appendix("mog2d/table_mog2d.md"), L.appendix("mog2d/fig_mog2d.png")]
    return (list(APPENDIX.values()) + ([Z_CONVERGENCE] if FIGURE_CELLS else []) + ranked
            + latent + mog)


def _cell_targets(cells):
    """Every file of these cells, intermediates included, so that a deleted intermediate is
    rebuilt by a plain `snakemake` / `dvc repro` even when the reports that used it exist."""
    out = []
    for c in cells:
        w = c.wildcards()
        if P.results:  # published cells are done: a fresh clone's runs/ is empty, not stale
            out += [] if is_published(c) else [L.publish_stamp(**w), L.sample_grid(**w)]
            continue
        out += [L.sample_grid(**w), L.model(**w), L.curve(**w), L.nll(**w)]
        if c.needs_z:
            out += [L.z(**w)] + z_shards(Wildcards(w))
    return out


def main_targets():
    """The main job (`make main`, DVC stage main): Table 1, main.md, metrics, figures, the 2-D
    figure and the Table 1 cells."""
    return [*REPORTS.values(), L.report("figures/fig2d_lars_toy.png"),
            *_cell_targets(P.main_cells)]


def all_targets():
    """The default target: the main job, the appendix reports and every cell of the budget."""
    return [*main_targets(), *appendix_targets(), *_cell_targets(P.cells)]
