"""The experiment plan: which cells a params file asks for, which keys each step reads.

The library (:mod:`larsvae.config`) owns the typed configuration: the dataclasses, their one
parse and the generated schema. This module owns what only the workflow needs: the cells of a
budget (:class:`Cell`, :func:`parse_params`), each dataset's and architecture's sections with
the ``overrides`` applied (:class:`Params`), the keys each pipeline step reads
(:func:`step_keys`: a changed key reruns exactly the jobs that read it), and the cells each
report reads. The Snakefile (workflow/rules/common.smk), the DVC generator
(workflow/scripts/dvc_stages.py) and bench/grid_cost.py import it; the library never does, so
it never names a rule.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from larsvae.config import (
    ARCHS,
    BASE,
    DATASETS,
    LARS_PRIORS,
    SECTIONS,
    ConfigError,
    EvalConfig,
    ModelConfig,
    TrainConfig,
    group_keys,
    has_z,
    model_keys,
    parse,
    to_dict,
)

#: the pipeline's steps (larsvae.steps) that read params keys
STEPS = (
    "train",
    "train_posthoc",
    "estimate_z",
    "evaluate",
    "sample",
    "toy2d",
    "mog2d",
    "rank",
    "latent2d",
)


def step_keys(step: str, prior: str = "gaussian", arch: str = "vae") -> dict[str, tuple[str, ...]]:
    """section -> keys that pipeline step ``step`` reads, for a cell with prior ``prior``
    and architecture ``arch``.

    A changed key reruns exactly the steps that read it (and what depends on their output).
    Post-hoc training builds a LARS prior over the trained N(0, I) whatever ``prior`` says.
    """
    all_train = tuple(f.name for f in dataclasses.fields(TrainConfig))
    table = {
        "train": {"model": model_keys(prior, arch), "train": all_train},
        "train_posthoc": {"model": model_keys("lars"), "posthoc": all_train},
        "estimate_z": {
            "evaluate": tuple(k for k in group_keys(EvalConfig, ("z",)) if k != "z_shards")
        },  # z_shards names the outputs
        "evaluate": {"evaluate": group_keys(EvalConfig, ("iwae",))},
        "sample": {"report": ("samples",)},
        "toy2d": {"report": ("toy2d_steps", "toy2d_seed")},
        "mog2d": {"report": ("mog_steps", "mog_seed", "mog_z_samples", "mog_test_samples")},
        "rank": {"report": ("rank_samples",)},
        "latent2d": {"report": ("latent2d_grid",)},
    }
    assert tuple(table) == STEPS
    if step not in table:
        raise ConfigError(f"step: unknown value {step!r} (expected one of: {', '.join(STEPS)})")
    return table[step]


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            _deep_merge(out[k], v)
            if isinstance(v, Mapping) and isinstance(out.get(k), Mapping)
            else v
        )
    return out


@dataclass(frozen=True)
class Cell:
    """One trained model: the unit every table shares (one checkpoint per cell).

    ``variant`` names a prior variant of the params file (``variants:``, model keys over the
    ``model`` section, e.g. another a(z) size or T); ``"base"`` is the model section itself.
    In paths the prior and its variant form one tag, ``lars`` or ``lars-t10`` (:attr:`tag`).
    """

    dataset: str
    arch: str
    prior: str
    mode: str
    seed: int
    variant: str = BASE

    @property
    def is_lars(self) -> bool:
        return self.prior in LARS_PRIORS

    @property
    def needs_z(self) -> bool:
        """LARS priors and resampled outputs have a Z (shards, reduce, evaluate with it)."""
        return has_z(self.prior, self.arch, self.mode)

    @property
    def tag(self) -> str:
        return self.prior if self.variant == BASE else f"{self.prior}-{self.variant}"

    def wildcards(self) -> dict[str, Any]:
        """The path wildcards of this cell (larsvae.paths.CELL)."""
        return dict(
            dataset=self.dataset, arch=self.arch, prior=self.tag, mode=self.mode, seed=self.seed
        )

    @classmethod
    def from_wildcards(cls, w: Mapping[str, Any]) -> Cell:
        prior, _, variant = str(w["prior"]).partition("-")
        return cls(w["dataset"], w["arch"], prior, w["mode"], int(w["seed"]), variant or BASE)


@dataclass(frozen=True)
class Params:
    """A whole params file, parsed once: typed sections per dataset and the cells to run."""

    name: str
    runs: str
    reports: str
    results: str | None  # published cells (larsvae.publish), None: reports read runs/
    mirrors: tuple[str, ...]
    seeds: tuple[int, ...]
    # (dataset, arch) -> section -> config / plain dict, overrides applied
    sections: dict[tuple[str, str], dict[str, Any]]
    raw: dict[tuple[str, str], dict[str, dict[str, Any]]]
    top: dict[str, dict[str, Any]]  # section -> plain dict without overrides (all defaults)
    variants: dict[str, dict[str, Any]]  # variant name -> model keys it sets
    cells: tuple[Cell, ...]  # every cell of the budget's programme
    main_cells: tuple[Cell, ...]  # the cells of experiments not marked appendix (Table 1)

    def section(self, name: str, dataset: str, arch: str) -> Any:
        return self.sections[dataset, arch][name]

    def model_raw(self, cell: Cell) -> dict[str, Any]:
        """The cell's model section: the dataset's, with the cell's variant on top."""
        if cell.variant != BASE and cell.variant not in self.variants:
            raise ConfigError(
                f"variant: unknown value {cell.variant!r} (expected one of: "
                f"{', '.join(sorted(self.variants)) or 'none defined'})"
            )
        return {**self.raw[cell.dataset, cell.arch]["model"], **self.variants.get(cell.variant, {})}

    def posthoc_init(self, cell: Cell) -> Cell:
        """The standard-prior cell a post-hoc cell starts from: same dataset, arch and seed,
        and the same VAE. A variant that sets no VAE ("arch") key starts from the base model
        (``lars-t10`` post-hoc from ``gaussian``); one that does starts from the first variant
        that sets exactly those VAE keys and nothing else, else from its own
        (``lars-z2small`` from ``gaussian-z2`` when ``z2: {latent_dim: 2}`` is defined)."""
        arch = set(model_keys("gaussian"))
        mine = {k: v for k, v in self.variants.get(cell.variant, {}).items() if k in arch}
        variant = BASE
        if mine:
            pure = [n for n, keys in self.variants.items() if keys == mine]
            variant = pure[0] if pure else cell.variant
        return Cell(cell.dataset, cell.arch, "gaussian", "standard", cell.seed, variant)

    def latent2d_cells(self) -> dict[str, Cell]:
        """Figures D.10-D.14: the dynamicMNIST VAE cells of the first seed whose model has
        latent_dim 2, labelled as in the paper: "standard", "post-hoc", and the joint LARS
        cells by the size of a(z): "joint (large a)" and "joint (small a)" (a third or more:
        "joint (<variant>)")."""
        cells = [
            c
            for c in self.cells
            if c.dataset == "dynamic_mnist"
            and c.arch == "vae"
            and c.seed == self.seeds[0]
            and self.model_raw(c)["latent_dim"] == 2
        ]

        def a_size(c: Cell) -> int:
            widths = [2, *self.model_raw(c)["acceptance_hidden"], 1]
            return sum((i + 1) * o for i, o in itertools.pairwise(widths))

        out: dict[str, Cell] = {}
        joint = sorted((c for c in cells if c.is_lars and c.mode == "standard"), key=a_size)
        for c in cells:  # the first of each in params order
            if not c.is_lars:
                out.setdefault("standard", c)
            elif c.mode == "posthoc":
                out.setdefault("post-hoc", c)
        if joint:
            out["joint (large a)"] = joint[-1]
        if len(joint) > 1:
            out["joint (small a)"] = joint[0]
        for c in joint[1:-1]:
            out[f"joint ({c.variant})"] = c
        return out

    def step_params(self, step: str, cell: Cell) -> dict[str, dict[str, Any]]:
        """section -> {key: value} of exactly the keys ``step`` reads for ``cell``."""
        raw = {**self.raw[cell.dataset, cell.arch], "model": self.model_raw(cell)}
        return {
            sec: {k: raw[sec][k] for k in keys}
            for sec, keys in step_keys(step, cell.prior, cell.arch).items()
        }


def parse_params(d: Mapping[str, Any]) -> Params:
    """Parse a (schema-validated) params dict: every section of every dataset, the cells."""
    cells: dict[Cell, None] = {}
    main: dict[Cell, None] = {}
    for exp in d["experiments"]:
        for ds in exp["datasets"]:
            for arch in exp["archs"]:
                for run in exp["runs"]:
                    v = run.get("variant", BASE)
                    for seed in exp.get("seeds") or d["seeds"]:
                        cell = Cell(ds, arch, run["prior"], run["mode"], int(seed), v)
                        cells[cell] = None
                        if not exp.get("appendix", False):
                            main[cell] = None
    variants = {}
    for name, keys in (d.get("variants") or {}).items():
        variants[name] = {
            k: v
            for k, v in to_dict(parse(ModelConfig, keys, f"variants.{name}")).items()
            if k in keys
        }
    for c in cells:
        if c.variant != BASE and c.variant not in variants:
            raise ConfigError(
                f"experiments: variant {c.variant!r} is not defined under "
                f"variants (defined: {', '.join(sorted(variants)) or 'none'})"
            )
    overrides = d.get("overrides") or {}
    sections, raw = {}, {}
    # every dataset and arch, so any cell a user asks for has its sections
    for ds, arch in itertools.product(DATASETS, ARCHS):
        raw[ds, arch], sections[ds, arch] = {}, {}
        for name, cls in SECTIONS.items():
            over = [(k, (overrides.get(k) or {}).get(name) or {}) for k in (arch, ds)]
            merged = _deep_merge(_deep_merge(d[name], over[0][1]), over[1][1])
            where = ".".join(["overrides", *(k for k, o in over if o), name])
            parsed = parse(cls, merged, where if merged != d[name] else name)
            sections[ds, arch][name] = parsed
            raw[ds, arch][name] = to_dict(parsed)
    return Params(
        name=d["name"],
        runs=d["paths"]["runs"].rstrip("/"),
        reports=d["paths"]["reports"].rstrip("/"),
        results=(d["paths"].get("results") or "").rstrip("/") or None,
        mirrors=tuple((d.get("data") or {}).get("mirrors") or ()),
        seeds=tuple(dict.fromkeys(c.seed for c in cells)),
        sections=sections,
        raw=raw,
        top={name: to_dict(parse(cls, d[name], name)) for name, cls in SECTIONS.items()},
        variants=variants,
        cells=tuple(cells),
        main_cells=tuple(main),
    )


#: priors the paper's Table 1 holds; a budget with any other prior has a comparison report
TABLE1_PRIORS = ("gaussian", "lars")


def comparison_cells(cells: Iterable[Cell]) -> list[Cell]:
    """The cells of the comparison report: the base-variant cells of every (dataset, arch)
    whose cells run a prior beyond Table 1's N(0, I) and LARS (empty: no report)."""
    base = [c for c in cells if c.variant == BASE]
    groups = {(c.dataset, c.arch) for c in base if c.prior not in TABLE1_PRIORS}
    return [c for c in base if (c.dataset, c.arch) in groups]
