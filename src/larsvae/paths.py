"""Where every artefact lives: the one definition of the path patterns.

The Snakemake rules take their ``output:`` patterns from here, and the report step finds the
results with the same functions, so a path is written once. Every budget owns its outputs:
``runs`` (models, results, logs) and ``reports`` come from the params file's ``paths``
section (paper: ``runs/paper`` and ``reports``; quick: ``runs/quick`` and ``reports/quick``),
so one budget's committed reports never stand in for another budget's targets. Prepared data
are shared by every budget (``data/processed``): the same bytes whatever the budget.

A pattern keeps the wildcards it was not given, e.g. ``Layout("runs/q", "r").model()`` is
``runs/q/models/{dataset}/{arch}/{prior}/{mode}/seed{seed}/model.pt`` (a Snakemake output
pattern) and ``.model(**cell)`` the file of one cell.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA = "data/processed"
CELL = "{dataset}/{arch}/{prior}/{mode}/seed{seed}"


class _Keep(dict):
    """format_map mapping that leaves missing wildcards as ``{name}``."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def fill(pattern: str, **wildcards: Any) -> str:
    return pattern.format_map(_Keep(wildcards))


def dataset_file(dataset: str = "{dataset}") -> str:
    return f"{DATA}/{dataset}.npz"


def manifest_file(dataset: str = "{dataset}") -> str:
    return f"{DATA}/{dataset}.json"


_CELL_RE = re.compile(
    r"(?:^|/)(?P<dataset>[a-z_]+)/(?P<arch>[a-z_]+)/(?P<prior>[a-z_]+(?:-[a-z0-9_]+)?)/"
    r"(?P<mode>standard|posthoc)/seed(?P<seed>\d+)/[^/]+$"
)


def cell_of_path(path: str | os.PathLike) -> dict[str, str] | None:
    """The cell wildcards a checkpoint's path encodes (``.../{CELL}/model.pt``), or None for
    a path outside the layout (a checkpoint a researcher saved elsewhere)."""
    m = _CELL_RE.search(Path(path).as_posix())
    return m.groupdict() if m else None


def labels_file(dataset: str = "{dataset}") -> str:
    """Class labels aligned with :func:`dataset_file` (a file of their own: the npz's hash is
    every checkpoint's provenance and must not change when labels are added)."""
    return f"{DATA}/{dataset}.labels.npz"


def verified_file(dataset: str = "{dataset}") -> str:
    """Stamp of :func:`larsvae.steps.check_data`: the npz's arrays match their manifest."""
    return f"{DATA}/{dataset}.verified.json"


@dataclass(frozen=True)
class Layout:
    """The output tree of one budget."""

    runs: str
    reports: str
    results: str | None = None

    # -- per cell (runs/) ----------------------------------------------------------------
    def model(self, **w: Any) -> str:
        return fill(f"{self.runs}/models/{CELL}/model.pt", **w)

    def curve(self, **w: Any) -> str:
        return fill(f"{self.runs}/models/{CELL}/curve.tsv", **w)

    def z_shard(self, **w: Any) -> str:
        return fill(f"{self.runs}/results/{CELL}/z/shard{{shard}}of{{nshards}}.json", **w)

    def z(self, **w: Any) -> str:
        return fill(f"{self.runs}/results/{CELL}/z.json", **w)

    def nll(self, **w: Any) -> str:
        return fill(f"{self.runs}/results/{CELL}/nll.json", **w)

    def log(self, rule: str, leaf: str | None = None, **w: Any) -> str:
        """``logs/{rule}/{cell}.log``, or ``logs/{rule}/{cell}/{leaf}.log`` (one per shard)."""
        return fill(f"{self.runs}/logs/{rule}/{CELL}{'/' + leaf if leaf else ''}.log", **w)

    def published(self, name: str, **w: Any) -> str:
        """A published cell's ``nll.json``, ``curve.tsv`` or ``provenance.json`` (committed;
        larsvae.publish), for budgets with ``paths.results``."""
        if self.results is None:
            raise ValueError("this budget publishes no cells (params paths.results unset)")
        return fill(f"{self.results}/{CELL}/{name}", **w)

    def publish_stamp(self, **w: Any) -> str:
        """The publish rule's output (a copy of the provenance): the published files are not
        a rule's outputs, so that a fresh clone's missing checkpoints never replan them."""
        return fill(f"{self.runs}/published/{CELL}.json", **w)

    # -- reports/ ---------------------------------------------------------------------------
    def report(self, name: str) -> str:
        """``table1.md``, ``main.md``, ``metrics.json`` or a file under ``figures/``."""
        return f"{self.reports}/{name}"

    def appendix(self, name: str) -> str:
        """``table_d1.md`` ... ``table_d45.md``, ``fig_a2_z_convergence.png``."""
        return f"{self.reports}/appendix/{name}"

    def ranking(self, **w: Any) -> str:
        """Folder of one cell's ranking figures (Figs. D.5-D.8)."""
        return fill(
            f"{self.reports}/appendix/ranking/{{dataset}}_{{arch}}_{{prior}}_{{mode}}_seed{{seed}}",
            **w,
        )

    def ranking_run(self, **w: Any) -> str:
        """Folder of one cell's ranked samples (samples.npz; too large for git)."""
        return fill(f"{self.runs}/ranking/{CELL}", **w)

    def sample_grid(self, **w: Any) -> str:
        return fill(
            f"{self.reports}/figures/samples/{{dataset}}_{{arch}}_{{prior}}_{{mode}}_seed{{seed}}.png",
            **w,
        )


__all__ = [
    "CELL",
    "DATA",
    "Layout",
    "cell_of_path",
    "dataset_file",
    "fill",
    "manifest_file",
    "verified_file",
]
