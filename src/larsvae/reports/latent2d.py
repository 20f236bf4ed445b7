"""Figures D.10-D.14 of Bauer & Mnih (2019): a VAE with a 2-D latent space (dynamic MNIST).

For each trained model (standard N(0, I) prior, joint LARS with a large and a small a(z),
post-hoc LARS on the standard model), on a G x G grid of square cells covering
[-extent, extent]^2:

- the aggregate posterior q(z) = (1/N) sum_n q(z | x_n) over the training set. q(z | x) is a
  diagonal Gaussian, so the mass of q(z | x_n) in a cell is the product of two differences of
  the normal CDF: the cell masses of q are *exact* (no quadrature error, however narrow the
  posteriors), and the grid's total mass of q says how much of q the grid misses;
- the proposal pi(z), the acceptance a(z) = sigmoid(MLP(z)) and the prior p(z) of Eq. A.14
  (truncated LARS; Eq. A.7 for T = inf) through the library's ``ResampledPrior.log_prob``, at
  the cell centres. Z = E_pi[a] (Eq. 2) by quadrature on the grid (midpoint rule; it misses at
  most the proposal's mass outside the grid), and, when given, the pipeline's Monte Carlo
  ``z.json``: both are reported, KL(q || p) is computed with each;
- KL(q || p) = sum_cells m_c [log(m_c / h^2) - log p(z_c)], m_c the exact cell masses of q
  and h^2 the cell area: the midpoint rule for the cross-entropy, the cell average of q for
  its entropy. Averaging q over a cell can only lower the KL (data processing), and the
  posteriors' widths are about h, so the value is a slight *under*-estimate (halving h = 0.04
  adds about 0.003 on the quick models); q outside the grid is left out (its mass is
  reported): the grid must hold all of q (extent 6 does, 4 does not for the joint models);
- the encoded means of (a subset of) the test set, coloured by digit class.

The training images are grey levels (dynamic binarisation, Appendix C.1); here each is
binarised *once*, deterministically, the way training draws them (x = [u < v],
u ~ U{0, ..., 254}, so P(x = 1) = v / 255), from ``numpy.random.default_rng(derive_seed(seed,
LATENT2D_TAG, block))`` per block of ``BLOCK`` rows: q(z) is then the aggregate posterior of
one dynamic-binarisation epoch. A split that is already binary is used as it is.

Paper's numbers (Appendix D): KL(q || p) about 0.4 for the standard
prior, 0.15 for joint LARS with the large a(z), 0.20 with the small one, post-hoc "slightly
better than joint".
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import memory
from ..checkpoint import Checkpoint, load_checkpoint, model_from_checkpoint
from ..data.labels import load_labels
from ..data.loaders import load
from ..distributions.lars import ResampledPrior
from ..models.vae import VAE
from ..objectives import mlp_forward
from ..utils import UserError, atomic_write_text, derive_seed, file_sha256, module_tensor
from ..zestimate import read_z
from .figures import save_png

PathLike = str | os.PathLike
#: derive_seed tags of this report's random streams (binarisation, test subset)
LATENT2D_TAG, SUBSET_TAG = 2002, 2003
#: training rows per encoder pass and per binarisation stream (fixed: the noise must not
#: depend on how the work is chunked)
BLOCK = 4096

#: Appendix D, KL(q(z) || p(z)) of the 2-D latent VAE; keys are the
#: model labels this report recognises (case-insensitive). Post-hoc has no number, only the
#: statement that it is slightly better than joint training.
PAPER_KL: dict[str, float | None] = {
    "standard": 0.4,
    "joint (large a)": 0.15,
    "joint (small a)": 0.20,
    "post-hoc": None,
}
#: The orderings the paper states or implies: KL(first) < KL(second).
PAPER_ORDERINGS: tuple[tuple[str, str], ...] = (
    ("joint (large a)", "standard"),
    ("joint (small a)", "standard"),
    ("post-hoc", "standard"),
    ("joint (large a)", "joint (small a)"),
    ("post-hoc", "joint (large a)"),
    ("post-hoc", "joint (small a)"),
)


# ---------------------------------------------------------------------------------------
# the grid and the quadratures


@dataclass(frozen=True)
class Grid:
    """G x G square cells of side h = 2 extent / G covering [-extent, extent]^2.

    Grids are indexed [i, j] = (z2 = centres[i], z1 = centres[j]), as ``imshow(origin=
    "lower", extent=(-e, e, -e, e))`` draws them.
    """

    n: int
    extent: float

    @property
    def h(self) -> float:
        return 2.0 * self.extent / self.n

    @property
    def cell_area(self) -> float:
        return self.h * self.h

    def edges(self) -> torch.Tensor:
        """(G + 1,) float64 cell boundaries."""
        return torch.linspace(-self.extent, self.extent, self.n + 1, dtype=torch.float64)

    def centres(self) -> torch.Tensor:
        """(G,) float64 cell centres."""
        e = self.edges()
        return 0.5 * (e[1:] + e[:-1])

    def points(self) -> torch.Tensor:
        """(G * G, 2) float64 cell centres (z1, z2), row-major over [i, j]."""
        c = self.centres()
        z1, z2 = torch.meshgrid(c, c, indexing="xy")  # (G, G): z1 varies along j
        return torch.stack([z1.reshape(-1), z2.reshape(-1)], -1)


def gaussian_cell_masses(
    mean: torch.Tensor, std: torch.Tensor, edges: torch.Tensor
) -> torch.Tensor:
    """Mass of N(mean_n, std_n^2) in each interval [edges_j, edges_j+1]: (N,), (N,) -> (N, G).

    Float64; a difference of upper-tail probabilities where both edges lie above the mean, so
    that cells far out in a tail keep their relative precision.
    """
    t = (edges.unsqueeze(0) - mean.unsqueeze(1)) / std.unsqueeze(1)  # (N, G + 1)
    lo, hi = t[:, :-1], t[:, 1:]
    ndtr = torch.special.ndtr
    upper = lo > 0
    return torch.where(upper, ndtr(-lo) - ndtr(-hi), ndtr(hi) - ndtr(lo)).clamp_min(0.0)


def aggregate_posterior_mass(
    mean: torch.Tensor, std: torch.Tensor, grid: Grid, chunk: int = BLOCK
) -> torch.Tensor:
    """Exact cell masses of q(z) = (1/N) sum_n N(z; mean_n, diag std_n^2): (N, 2) -> (G, G).

    A diagonal Gaussian factorises, so the mass in cell (i, j) is (1/N) sum_n P2[n, i] P1[n, j]
    with P_d the 1-D interval masses: one (G, N) x (N, G) product, accumulated over chunks of
    rows so memory stays O(chunk * G). The sum of the result is q's mass on the grid.
    """
    mean, std = mean.double(), std.double()
    edges = grid.edges()
    out = torch.zeros(grid.n, grid.n, dtype=torch.float64)
    for m, s in zip(mean.split(chunk), std.split(chunk), strict=True):
        p1 = gaussian_cell_masses(m[:, 0], s[:, 0], edges)  # (B, G): along z1 (columns j)
        p2 = gaussian_cell_masses(m[:, 1], s[:, 1], edges)  # (B, G): along z2 (rows i)
        out += p2.t() @ p1
    return out / mean.shape[0]


def kl_on_grid(q_mass: torch.Tensor, log_p: torch.Tensor, cell_area: float) -> float:
    """KL(q || p) by quadrature: sum_c m_c [log(m_c / area) - log p(z_c)] over cells with m_c > 0.

    q_mass: (G, G) cell masses of q; log_p: (G, G) log p at the cell centres. Cells outside the
    grid are left out (report ``q_mass.sum()`` beside the result).
    """
    m = q_mass.double().reshape(-1)
    lp = log_p.double().reshape(-1)
    keep = m > 0
    m, lp = m[keep], lp[keep]
    return float(torch.sum(m * (torch.log(m) - math.log(cell_area) - lp)))


def entropy_on_grid(q_mass: torch.Tensor, cell_area: float) -> float:
    """Differential entropy -sum_c m_c log(m_c / area) of q restricted to the grid (nats)."""
    m = q_mass.double().reshape(-1)
    m = m[m > 0]
    return float(-torch.sum(m * (torch.log(m) - math.log(cell_area))))


# ---------------------------------------------------------------------------------------
# the model side


def _binarised_blocks(x: np.ndarray, seed: int):
    """Yield float32 (B, 784) tensors of ``x`` in blocks of BLOCK rows, grey levels binarised
    once with the block's own stream (already binary data pass through)."""
    grey = x.size and int(x.max()) > 1
    for b, start in enumerate(range(0, x.shape[0], BLOCK)):
        v = x[start : start + BLOCK]
        if grey:
            rng = np.random.default_rng(derive_seed(seed, LATENT2D_TAG, b))
            v = rng.integers(0, 255, size=v.shape, dtype=np.uint8) < v  # P(1) = v / 255
        yield torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))


@torch.no_grad()
def encode(
    model: torch.nn.Module, x: np.ndarray, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Means and standard deviations of q(z | x_n) of an L=1 VAE: uint8 (N, 784) -> 2 x (N, d).

    Grey levels are binarised once (see the module docstring); float64 results.
    """
    means, stds = [], []
    ref = next(model.parameters())
    for xb in _binarised_blocks(x, seed):
        mean, log_std = model.encoder_head(mlp_forward(model.encoder, xb.to(ref.dtype)))
        means.append(mean.double())
        stds.append(log_std.double().exp())
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def prior_panels(prior: torch.nn.Module, grid: Grid) -> dict[str, Any]:
    """pi(z), a(z) at the cell centres and log Z by quadrature (Eq. 2 on the grid).

    For a LARS prior: its proposal and sigmoid(acceptance); for any other prior pi = p and
    a = 1 (no resampling). Returns float64 (G, G) ``log_pi``, ``a`` and the float
    ``log_z_quad`` (0 for a prior without Z) and ``pi_mass`` (pi's mass on the grid).
    """
    pts_m = grid.points().to(module_tensor(prior).dtype)
    g = grid.n
    if isinstance(prior, ResampledPrior):
        log_pi = prior.proposal.log_prob(pts_m).double()
        log_a = torch.nn.functional.logsigmoid(prior.acceptance(pts_m)).double()
        log_z = float(torch.logsumexp(log_pi + log_a, 0)) + math.log(grid.cell_area)
    else:
        log_pi = prior.log_prob(pts_m).double()
        log_a = torch.zeros_like(log_pi)
        log_z = 0.0
    pi_mass = float(torch.exp(torch.logsumexp(log_pi, 0)) * grid.cell_area)
    return {
        "log_pi": log_pi.view(g, g),
        "a": log_a.exp().view(g, g),
        "log_z_quad": log_z,
        "pi_mass": pi_mass,
    }


@torch.no_grad()
def prior_log_prob(prior: torch.nn.Module, grid: Grid, log_z: float | None) -> torch.Tensor:
    """log p at the cell centres (G, G) through the prior's own ``log_prob`` (Eq. A.14 /
    A.7 for LARS), with ``log_z`` installed first when the prior has a Z."""
    if isinstance(prior, ResampledPrior) and log_z is not None:
        prior.set_log_z(min(log_z, 0.0))
    lp = prior.log_prob(grid.points().to(module_tensor(prior).dtype))
    return lp.double().view(grid.n, grid.n)


# ---------------------------------------------------------------------------------------
# inputs


def _load_2d_model(label: str, path: PathLike, dataset_sha: str) -> tuple[Any, Checkpoint]:
    ckpt = load_checkpoint(path)
    memory.check_load(ckpt, path)
    model = model_from_checkpoint(ckpt, path)
    meta = ckpt["meta"]
    d = meta.model_config.latent_dim
    if d != 2:
        raise UserError(
            f"latent2d: checkpoint {path} ({label!r}) has latent_dim = {d}; the 2-D latent "
            "analysis (Figs. D.10-D.14) needs a model trained with latent_dim = 2"
        )
    if not isinstance(model, VAE):
        raise UserError(
            f"latent2d: checkpoint {path} ({label!r}) is a {meta.arch!r} model; the "
            "2-D latent analysis needs an L=1 'vae' (the paper's Figs. D.10-D.14)"
        )
    have = meta.dataset_sha256
    if have and have != dataset_sha:
        raise UserError(
            f"latent2d: checkpoint {path} ({label!r}) was trained on a dataset file with "
            f"sha256 {have[:12]}..., not the given one ({dataset_sha[:12]}...)"
        )
    return model, ckpt


def _load_data(dataset_file: PathLike, labels_file: PathLike) -> tuple[dict, dict]:
    data = {k: v.numpy() for k, v in load(dataset_file).items()}
    labels = load_labels(labels_file)
    for split in ("train", "test"):
        if len(labels[split]) != len(data[split]):
            raise UserError(
                f"latent2d: labels file {labels_file} has {len(labels[split])} {split} labels "
                f"but {dataset_file} has {len(data[split])} {split} images: not its labels"
            )
    return data, labels


def _paper_key(label: str) -> str | None:
    key = " ".join(label.lower().split())
    return key if key in PAPER_KL else None


# ---------------------------------------------------------------------------------------
# the report


def _checked_options(
    models: Mapping[str, PathLike],
    z_files: Mapping[str, PathLike] | None,
    grid: int,
    extent: float,
    scatter_points: int,
) -> dict[str, PathLike]:
    """Refuse options the report cannot use; the z files as a dict."""
    if not models:
        raise UserError("latent2d: no models given")
    z_files = dict(z_files or {})
    unknown = sorted(set(z_files) - set(models))
    if unknown:
        raise UserError(f"latent2d: z files for unknown model labels {unknown}")
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
        raise UserError(f"latent2d: grid must be an integer >= 2, got {grid!r}")
    if not (isinstance(extent, (int, float)) and math.isfinite(extent) and extent > 0):
        raise UserError(f"latent2d: extent must be a positive number, got {extent!r}")
    if (
        isinstance(scatter_points, bool)
        or not isinstance(scatter_points, int)
        or scatter_points < 1
    ):
        raise UserError(f"latent2d: scatter_points must be >= 1, got {scatter_points!r}")
    return z_files


def _model_row(
    label: str,
    model: Any,
    ckpt: Checkpoint,
    path: PathLike,
    z_file: PathLike | None,
    data: dict,
    g: Grid,
    seed: int,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """One model's row of ``latent2d.json`` (KL(q || p) with Z by quadrature and, given its
    ``z_file``, by Monte Carlo) and its panels q, pi, a, p on the grid."""
    mean, std = encode(model, data["train"], seed)
    q_mass = aggregate_posterior_mass(mean, std, g)
    prior = model.top_prior
    pp = prior_panels(prior, g)
    meta = ckpt["meta"]
    lars = meta.is_lars
    running = (
        float(prior.log_z) if lars and bool(prior.log_z_initialised) else None
    )  # Algorithm 1's <Z> stored in the checkpoint
    log_z_quad = pp["log_z_quad"] if lars else None
    log_p = prior_log_prob(prior, g, log_z_quad)
    row: dict[str, Any] = {
        "checkpoint": str(path),
        "prior": meta.prior,
        "mode": meta.mode,
        "truncation": getattr(prior, "truncation", None) if lars else None,
        "acceptance_hidden": list(meta.model_config.acceptance_hidden) if lars else None,
        "step": int(ckpt["step"]),
        "q_grid_mass": float(q_mass.sum()),
        "pi_grid_mass": pp["pi_mass"],
        "p_grid_mass": float(torch.exp(torch.logsumexp(log_p.reshape(-1), 0)) * g.cell_area),
        "kl_quad_z": kl_on_grid(q_mass, log_p, g.cell_area),
        "entropy_q": entropy_on_grid(q_mass, g.cell_area),
        "q_mean": mean.mean(0).tolist(),
        # exact moments of the mixture: E[z^2] = mean_n (mu_n^2 + sigma_n^2)
        "q_std": (((mean**2 + std**2).mean(0) - mean.mean(0) ** 2).sqrt()).tolist(),
        # posteriors much narrower than a cell (h) would make the entropy term coarse
        "posterior_std_median": float(std.median()),
        "z_quad": math.exp(log_z_quad) if lars else None,
        "z_running": math.exp(running) if running is not None else None,
        "z_mc": None,
        "z_mc_stderr": None,
        "kl_mc_z": None,
        "paper_kl": PAPER_KL.get(_paper_key(label) or "", None),
    }
    if z_file is not None:
        est = read_z(z_file, path)
        row.update(z_mc=float(est.mean), z_mc_stderr=float(est.stderr))
        row["kl_mc_z"] = kl_on_grid(q_mass, prior_log_prob(prior, g, est.log_mean), g.cell_area)
    panel = {
        "q": q_mass / g.cell_area,
        "pi": pp["log_pi"].exp(),
        "a": pp["a"],
        "p": log_p.exp(),
    }
    return row, panel


def latent2d_report(
    models: Mapping[str, PathLike],
    dataset_file: PathLike,
    labels_file: PathLike,
    out_dir: PathLike,
    *,
    z_files: Mapping[str, PathLike] | None = None,
    grid: int = 300,
    extent: float = 6.0,
    seed: int = 0,
    scatter_points: int = 5000,
    budget: str = "",
) -> dict[str, Any]:
    """Figures D.10-D.14 and ``table_latent2d.md`` for labelled 2-D latent VAE checkpoints.

    ``models``: label -> checkpoint (labels such as "standard", "joint (large a)",
    "joint (small a)", "post-hoc" are matched to the paper's numbers, see ``PAPER_KL``);
    ``z_files``: label -> ``z.json`` of ``larsvae reduce-z`` for LARS models (optional).
    Writes into ``out_dir`` (atomically): ``fig_latent2d_densities.png`` (one row per model:
    q, pi, a, p; Figs. D.10-D.13), ``fig_latent2d_aggregate.png`` (the aggregate posteriors on
    one colour scale; Fig. D.14), ``fig_latent2d_scatter.png`` (encoded test means by class),
    ``table_latent2d.md`` and ``latent2d.json`` (the numbers). ``budget`` (e.g. "paper",
    "quick") is named in the table's header. Deterministic given ``seed``.
    Returns the numbers of ``latent2d.json``.
    """
    z_files = _checked_options(models, z_files, grid, extent, scatter_points)
    g = Grid(grid, float(extent))
    dataset_sha = file_sha256(dataset_file)
    loaded = {label: _load_2d_model(label, p, dataset_sha) for label, p in models.items()}
    for label in z_files:
        if not loaded[label][1]["meta"].is_lars:
            raise UserError(f"latent2d: {label!r} has no LARS prior, so no Z for its z file")
    data, labels = _load_data(dataset_file, labels_file)
    n_test = len(data["test"])
    rng = np.random.default_rng(derive_seed(seed, SUBSET_TAG))
    subset = np.sort(rng.choice(n_test, size=min(scatter_points, n_test), replace=False))

    rows: dict[str, dict[str, Any]] = {}
    panels: dict[str, dict[str, torch.Tensor]] = {}
    scatter: dict[str, np.ndarray] = {}
    for label, (model, ckpt) in loaded.items():
        z_file = z_files.get(label)
        rows[label], panels[label] = _model_row(
            label, model, ckpt, models[label], z_file, data, g, seed
        )
        test_mean, _ = encode(model, data["test"][subset], seed)
        scatter[label] = test_mean.numpy()

    comparison = _compare(rows)
    result = {
        "dataset_file": str(dataset_file),
        "dataset_sha256": dataset_sha,
        "labels_sha256": file_sha256(labels_file),
        "n_train": int(len(data["train"])),
        "train_binarised": bool(data["train"].size and int(data["train"].max()) > 1),
        "grid": {"cells": grid, "extent": float(extent), "h": g.h},
        "seed": seed,
        "budget": budget,
        "scatter_points": int(len(subset)),
        "models": rows,
        "comparison": comparison,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "densities": out / "fig_latent2d_densities.png",
        "aggregate": out / "fig_latent2d_aggregate.png",
        "scatter": out / "fig_latent2d_scatter.png",
        "table": out / "table_latent2d.md",
        "json": out / "latent2d.json",
    }
    _plot_densities(files["densities"], panels, rows, g)
    _plot_aggregate(files["aggregate"], panels, rows, g)
    _plot_scatter(files["scatter"], scatter, labels["test"][subset], rows, g)
    atomic_write_text(files["table"], render_table(result))
    result["files"] = {k: str(v) for k, v in files.items()}
    atomic_write_text(files["json"], json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def _kl(row: Mapping[str, Any]) -> float:
    """The KL the comparison uses: with the Monte Carlo Z where a z.json was given (Z by
    quadrature misses the proposal's mass off the grid), else with Z by quadrature."""
    return row["kl_mc_z"] if row.get("kl_mc_z") is not None else row["kl_quad_z"]


def _compare(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The paper's orderings (``PAPER_ORDERINGS``) among the models present, checked on ours."""
    by_key = {_paper_key(label): label for label in rows if _paper_key(label)}
    checks = []
    for first, second in PAPER_ORDERINGS:
        if first in by_key and second in by_key:
            a, b = _kl(rows[by_key[first]]), _kl(rows[by_key[second]])
            checks.append({"lower": by_key[first], "higher": by_key[second], "holds": a < b})
    return {
        "orderings": checks,
        "held": sum(c["holds"] for c in checks),
        "total": len(checks),
        "same_order": bool(checks) and all(c["holds"] for c in checks),
    }


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "—" if v is None else format(v, spec)


def render_table(result: Mapping[str, Any]) -> str:
    """``table_latent2d.md``: KL(q || p) per model beside the paper's, Z both ways, the grid's
    mass of q (its truncation), and whether our KLs order the models as the paper's do."""
    gr = result["grid"]
    rows = result["models"]
    binar = (
        "each grey training image binarised once (x = [u < v], u ~ U{0..254}, "
        f"seed {result['seed']})"
        if result["train_binarised"]
        else "training images already binary"
    )
    lines = [
        "# Figures D.10-D.14: VAE with a 2-D latent space",
        "",
        f"Data: `{Path(result['dataset_file']).name}` (sha256 `{result['dataset_sha256'][:16]}`), "
        f"labels sha256 `{result['labels_sha256'][:16]}`; q(z) over N = {result['n_train']:,} "
        f"training images, {binar}. Grid: {gr['cells']} x {gr['cells']} cells on "
        f"[-{gr['extent']:g}, {gr['extent']:g}]^2 (h = {gr['h']:.4g}). "
        + (f"Budget: {result['budget']}; " if result.get("budget") else "Budget: ")
        + "training steps per model in the table.",
        "",
        "KL(q || p) by quadrature: exact cell masses of q, log p (Eq. A.14, the library's "
        "`log_prob`) at cell centres, with Z by quadrature on the grid (Z quad) and, where "
        "given, the pipeline's Monte Carlo z.json (Z MC). q mass = the grid's share of q "
        "(1 - q mass is left out of the KL); pi mass bounds Z quad's truncation error "
        "(Z_true - Z_quad <= 1 - pi mass, up to the midpoint rule's O(h^2)). The cell average "
        "of q in its entropy makes the quadrature KL a slight underestimate when posteriors "
        "are about as narrow as h (see `posterior_std_median` in latent2d.json). The "
        "comparison below uses the KL with Z MC where there is one.",
        "",
        "| model | prior / mode | steps | KL(q‖p), Z quad | KL(q‖p), Z MC | paper KL "
        "| q mass on grid | p mass on grid | Z quad | Z MC ± SE | running ⟨Z⟩ | pi mass "
        "| H[q] | std q (z1, z2) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for label, r in rows.items():
        paper = _fmt(r["paper_kl"], ".2f")
        if r["paper_kl"] is None and _paper_key(label) == "post-hoc":
            paper = "slightly < joint"
        prior = r["prior"] + (
            f" a=MLP{r['acceptance_hidden']}, T={r['truncation'] or 'inf'}"
            if r["z_quad"] is not None
            else ""
        )
        z_mc = "—" if r["z_mc"] is None else f"{r['z_mc']:.5f} ± {r['z_mc_stderr']:.1g}"
        lines.append(
            f"| {label} | {prior} / {r['mode']} | {r['step']:,} | {r['kl_quad_z']:.4f} "
            f"| {_fmt(r['kl_mc_z'], '.4f')} | {paper} | {r['q_grid_mass']:.6f} "
            f"| {r['p_grid_mass']:.6f} | {_fmt(r['z_quad'], '.5f')} | {z_mc} "
            f"| {_fmt(r['z_running'], '.5f')} | {r['pi_grid_mass']:.6f} | {r['entropy_q']:.3f} "
            f"| {r['q_std'][0]:.3f}, {r['q_std'][1]:.3f} |"
        )
    lines += _comparison_lines(result["comparison"], rows)
    lines += [
        "",
        "Figures: `fig_latent2d_densities.png` (D.10-D.13: q, pi, a, p per model), "
        "`fig_latent2d_aggregate.png` (D.14: aggregate posteriors on one colour scale), "
        f"`fig_latent2d_scatter.png` (encoded means of {result['scatter_points']:,} test "
        "images, by digit class).",
        "",
    ]
    return "\n".join(lines)


def _comparison_lines(c: Mapping[str, Any], rows: Mapping[str, Any]) -> list[str]:
    """The table's last part: do our KLs order the models as the paper's do?"""
    lines = ["", "## Comparison with the paper", ""]
    if not c["total"]:
        lines.append(
            "No two models carry the paper's labels (" + ", ".join(PAPER_KL) + "); nothing to rank."
        )
    else:
        verdict = "yes" if c["same_order"] else "no"
        lines.append(
            f"Do our KLs order the models as the paper's do? **{verdict}** "
            f"({c['held']} of {c['total']} stated orderings hold):"
        )
        lines.append("")
        for o in c["orderings"]:
            ka, kb = _kl(rows[o["lower"]]), _kl(rows[o["higher"]])
            mark = "holds" if o["holds"] else "does NOT hold"
            lines.append(f"- KL({o['lower']}) < KL({o['higher']}): {ka:.4f} vs {kb:.4f}, {mark}")
        lines += [
            "",
            'The post-hoc orderings encode the paper\'s "post-hoc slightly better than joint"; '
            "the paper gives no number for it.",
        ]
    return lines


# ---------------------------------------------------------------------------------------
# figures


def _pyplot():
    import matplotlib  # loaded when a figure is drawn: the CLI starts without it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _imshow(fig, ax, img: torch.Tensor, g: Grid, label: str, **kw) -> None:
    e = g.extent
    im = ax.imshow(img.numpy(), origin="lower", extent=(-e, e, -e, e), cmap="viridis", **kw)
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cb.set_label(label, fontsize=8)
    cb.ax.tick_params(labelsize=7)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=7)


def _plot_densities(out: Path, panels, rows, g: Grid) -> None:
    plt = _pyplot()
    n = len(panels)
    fig, axes = plt.subplots(n, 4, figsize=(14.0, 3.2 * n), squeeze=False)
    for ax, (label, p) in zip(axes, panels.items(), strict=True):
        r = rows[label]
        z = "" if r["z_quad"] is None else f", Z quad = {r['z_quad']:.4f}"
        _imshow(fig, ax[0], p["q"], g, "q(z) density")
        _imshow(fig, ax[1], p["pi"], g, "π(z) density")
        if r["z_quad"] is None:
            _imshow(fig, ax[2], p["a"], g, "a(z)", vmin=0.0, vmax=1.0)
        else:
            _imshow(fig, ax[2], p["a"], g, "a(z)")
        _imshow(fig, ax[3], p["p"], g, "p(z) density")
        ax[0].set_title(f"{label}: aggregate posterior q(z)", fontsize=9)
        ax[1].set_title("proposal π(z)", fontsize=9)
        ax[2].set_title(
            "acceptance a(z)" + (" ≡ 1 (no resampling)" if r["z_quad"] is None else ""),
            fontsize=9,
        )
        ax[3].set_title(f"prior p(z){z}\nKL(q‖p) = {r['kl_quad_z']:.3f}", fontsize=9)
        ax[0].set_ylabel("$z_2$")
    for a in axes[-1]:
        a.set_xlabel("$z_1$")
    fig.suptitle("VAE with a 2-D latent space (cf. Figs. D.10-D.13)")
    fig.tight_layout()
    save_png(fig, out, dpi=90)


def _plot_aggregate(out: Path, panels, rows, g: Grid) -> None:
    plt = _pyplot()
    n = len(panels)
    vmax = max(float(p["q"].max()) for p in panels.values())
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n + 0.8, 3.6), squeeze=False)
    e = g.extent
    im = None
    for ax, (label, p) in zip(axes[0], panels.items(), strict=True):
        r = rows[label]
        im = ax.imshow(
            p["q"].numpy(), origin="lower", extent=(-e, e, -e, e), cmap="viridis", vmin=0, vmax=vmax
        )
        ax.set_title(
            f"{label}\nH[q] = {r['entropy_q']:.2f}, std = ({r['q_std'][0]:.2f}, "
            f"{r['q_std'][1]:.2f})",
            fontsize=9,
        )
        ax.set_aspect("equal")
        ax.set_xlabel("$z_1$")
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("$z_2$")
    cb = fig.colorbar(im, ax=list(axes[0]), fraction=0.02, pad=0.02)
    cb.set_label("q(z) density (common scale)")
    fig.suptitle("Aggregate posteriors side by side (cf. Fig. D.14)")
    save_png(fig, out, dpi=90)


def _plot_scatter(out: Path, scatter, y: np.ndarray, rows, g: Grid) -> None:
    plt = _pyplot()
    n = len(scatter)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 1.2, 3.8), squeeze=False)
    cmap = plt.get_cmap("tab10")
    e = g.extent
    for ax, (label, z) in zip(axes[0], scatter.items(), strict=True):
        outside = int((np.abs(z) > e).any(1).sum())
        for k in range(10):
            sel = y == k
            ax.scatter(z[sel, 0], z[sel, 1], s=2, color=cmap(k), label=str(k), alpha=0.7, lw=0)
        ax.set_xlim(-e, e)
        ax.set_ylim(-e, e)
        ax.set_aspect("equal")
        ax.set_title(f"{label}" + (f" ({outside} outside)" if outside else ""), fontsize=9)
        ax.set_xlabel("$z_1$ (encoder mean)")
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("$z_2$ (encoder mean)")
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(
        handles, names, title="digit", loc="center right", markerscale=4, fontsize=8, frameon=False
    )
    fig.suptitle(f"Encoded means of {len(y):,} test images, coloured by class")
    fig.tight_layout(rect=(0, 0, 1 - 0.9 / (3.6 * n + 1.2), 1))
    save_png(fig, out, dpi=90)


__all__ = [
    "PAPER_KL",
    "PAPER_ORDERINGS",
    "Grid",
    "aggregate_posterior_mass",
    "encode",
    "entropy_on_grid",
    "gaussian_cell_masses",
    "kl_on_grid",
    "latent2d_report",
    "prior_log_prob",
    "prior_panels",
    "render_table",
]
