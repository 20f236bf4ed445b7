# Helpers shared by every rule: config validation, per-dataset sections, the list of
# experiment cells, input functions and paths. Rules never contain Python logic themselves.
import copy
import json
import os
import shlex
import sys
from pathlib import Path

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from larsvae import config as lconfig

REPO = Path(workflow.basedir).resolve()
SCHEMA = REPO / "workflow" / "schemas" / "params.schema.yaml"
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

SECTION_PARSERS = {
    "model": lconfig.model_config,
    "train": lconfig.train_config,
    "posthoc": lconfig.train_config,
    "evaluate": lconfig.eval_config,
}


def _dotted(path):
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top level>"


def check_params(cfg):
    """Validate a params dict; raise WorkflowError('params: <key>: <what is wrong>').

    The library's own checks (larsvae.config) come first: they name the key exactly as the
    CLI would (``train.lr: expected a number in (0.0, 1.0], got -1.0``). The schema then
    checks everything else (structure, names of datasets/archs/priors, experiments)."""
    try:
        for name, parse in SECTION_PARSERS.items():
            if isinstance(cfg.get(name), dict):
                parse(cfg[name], name)
            for ds, ov in (cfg.get("overrides") or {}).items():
                if isinstance(ov, dict) and isinstance(ov.get(name), dict):
                    parse(ov[name], f"overrides.{ds}.{name}")
                    if isinstance(cfg.get(name), dict):
                        parse(merged_section(cfg, name, ds), f"overrides.{ds}.{name}")
    except lconfig.ConfigError as err:
        raise WorkflowError(f"params: {err}") from None
    with open(SCHEMA) as fh:
        schema = yaml.safe_load(fh)
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(cfg),
        key=lambda e: list(map(str, e.absolute_path)),
    )
    if errors:
        e = errors[0]
        path = list(e.absolute_path)
        if e.validator == "additionalProperties":
            known = set(e.schema.get("properties", {}))
            extra = sorted(set(e.instance) - known)
            raise WorkflowError(
                f"params: {_dotted(path + extra[:1])}: unknown key "
                f"(expected one of: {', '.join(sorted(known))})"
            )
        raise WorkflowError(f"params: {_dotted(path)}: {e.message}")
    for i, exp in enumerate(cfg["experiments"]):
        for j, run in enumerate(exp["runs"]):
            if run["mode"] == "posthoc" and run["prior"] != "lars":
                raise WorkflowError(
                    f"params: experiments[{i}].runs[{j}]: post-hoc training replaces the "
                    f"gaussian prior of a standard checkpoint by LARS; prior must be 'lars', "
                    f"got {run['prior']!r}"
                )


def _deep_merge(base, over):
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def merged_section(cfg, name, dataset):
    """Section `name` for `dataset`: the global section with overrides.{dataset}.{name} on top."""
    ov = cfg.get("overrides", {}).get(dataset, {}).get(name, {})
    return _deep_merge(cfg[name], ov)


if not config:
    raise WorkflowError("params: no configuration given (use --configfile params/<budget>.yaml)")
check_params(config)
validate(config, schema=str(SCHEMA))  # also fills defaults (data.mirrors, overrides)


def section(name, dataset):
    return merged_section(config, name, dataset)


def section_json(name, dataset):
    """One params section as compact JSON for ``larsvae ... --<name>-params`` (sorted keys
    so the string, and with it Snakemake's params rerun trigger, is stable)."""
    return json.dumps(section(name, dataset), sort_keys=True, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------
# Experiment cells and paths

CELL = "{dataset}/{arch}/{prior}/{mode}/seed{seed}"


def cells():
    """Every (dataset, arch, prior, mode, seed) to run, in config order, de-duplicated."""
    seen = {}
    for exp in config["experiments"]:
        for dataset in exp["datasets"]:
            for arch in exp["archs"]:
                for run in exp["runs"]:
                    for seed in config["seeds"]:
                        c = dict(dataset=dataset, arch=arch, prior=run["prior"], mode=run["mode"], seed=seed)
                        seen[CELL.format(**c)] = c
    return list(seen.values())


def is_lars(prior):
    return prior in lconfig.LARS_PRIORS


def data_file(dataset):
    return f"data/processed/{dataset}.npz"


def model_path(c):
    return f"models/{CELL.format(**c)}/model.pt"


def curve_path(c):
    return f"models/{CELL.format(**c)}/curve.tsv"


def nll_path(c):
    return f"results/{CELL.format(**c)}/nll.json"


def z_path(c):
    return f"results/{CELL.format(**c)}/z.json"


def mirror_args():
    """--mirror options from data.mirrors (relative paths are relative to the repository)."""
    dirs = [str((REPO / m).resolve()) if not os.path.isabs(m) else m for m in config["data"]["mirrors"]]
    return " ".join(f"--mirror {shlex.quote(d)}" for d in dirs)


# ---------------------------------------------------------------------------------------------
# Input functions and params functions (no lambdas in rules)


def train_data(wildcards):
    return data_file(wildcards.dataset)


def posthoc_init(wildcards):
    """Post-hoc LARS starts from the standard-prior checkpoint of the same cell."""
    return model_path(dict(wildcards, prior="gaussian", mode="standard"))


def model_params(wildcards):
    return section_json("model", wildcards.dataset)


def train_params(wildcards):
    return section_json("train", wildcards.dataset)


def posthoc_params(wildcards):
    return section_json("posthoc", wildcards.dataset)


def eval_params(wildcards):
    return section_json("evaluate", wildcards.dataset)


def z_shards(wildcards):
    """The shard files reduced into one Z estimate (count: evaluate.z_shards)."""
    n = lconfig.eval_config(section("evaluate", wildcards.dataset)).z_shards
    return [f"results/{CELL.format(**wildcards)}/z/shard{i}of{n}.json" for i in range(n)]


def evaluate_inputs(wildcards):
    """Checkpoint + data, plus z.json for LARS priors only (others need no Z)."""
    inputs = {"model": model_path(wildcards), "data": data_file(wildcards.dataset)}
    if is_lars(wildcards.prior):
        inputs["z"] = z_path(wildcards)
    return inputs


def z_option(wildcards, input):
    return f"--z {shlex.quote(input.z)}" if "z" in input.keys() else ""


def report_inputs(wildcards):
    inputs = {
        "nll": [nll_path(c) for c in cells()],
        "curves": [curve_path(c) for c in cells()],
        "manifests": sorted({f"data/processed/{c['dataset']}.json" for c in cells()}),
    }
    inputs["z"] = [z_path(c) for c in cells() if is_lars(c["prior"])]
    return inputs


def report_spec(wildcards):
    """Everything the report needs besides the result files: the budget and the cells."""
    spec = {
        "name": config["name"],
        "seeds": config["seeds"],
        "cells": [
            dict(c, nll=nll_path(c), z=z_path(c) if is_lars(c["prior"]) else None,
                 curve=curve_path(c), manifest=f"data/processed/{c['dataset']}.json")
            for c in cells()
        ],
        "budget": {
            ds: {name: section(name, ds) for name in SECTION_PARSERS}
            for ds in sorted({c["dataset"] for c in cells()})
        },
    }
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


REPORTS = {
    "table": "reports/table1.md",
    "main": "reports/main.md",
    "metrics": "reports/metrics.json",
    "curves": "reports/figures/training_curves.png",
}


def sample_path(c):
    return "reports/figures/samples/{dataset}_{arch}_{prior}_{mode}_seed{seed}.png".format(**c)


def all_targets():
    """The default target (and what the DVC stages build): reports + one sample grid per cell."""
    return list(REPORTS.values()) + [sample_path(c) for c in cells()]

