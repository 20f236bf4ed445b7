"""The prior comparison report (larsvae.reports.priors): numbers from hand-made cells, the
claims both ways, parameter counts by hand, the figure, and the priors budget's plan."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from larsvae import steps
from larsvae.checkpoint import CheckpointMeta, build_from_meta, save_checkpoint
from larsvae.reports import priors
from larsvae.utils import file_sha256

REPO = Path(__file__).resolve().parents[1]
#: a small model, so that the fresh priors this report times are cheap
MODEL = {
    "latent_dim": 4,
    "hidden": 16,
    "acceptance_hidden": [8],
    "truncation": 10,
    "eps": 0.1,
    "train_z_samples": 16,
    "mixture_components": 3,
    "snis_proposals": 4,
    "energy_hidden": [8],
}
BASE = [-90.0, -80.0, -100.0, -94.0]  # N(0, I), seed 1: NLL 91
SHIFT = {1: 0.0, 2: -1.0, 3: 1.0}  # N(0, I) NLL 91, 92, 90 over seeds: mean 91, sd 1


def _write_cell(root: Path, prior: str, mode: str, seed: int, d: list[float], **extra) -> dict:
    """nll.json of a cell whose per-image log p(x) is N(0, I)'s + d (same images), a train
    log of 240 s x (step factor), and the spec entry the workflow would write for it."""
    log_px = [b + SHIFT[seed] + di for b, di in zip(BASE, d, strict=True)]
    nll = -math.fsum(log_px) / len(log_px)
    cell = root / prior / mode / f"seed{seed}"
    cell.mkdir(parents=True)
    kl = 20.0 + 2.0 * (seed - 1)  # 20, 22, 24: mean 22, sd 2
    record = {
        "dataset": "dynamic_mnist",
        "arch": "vae",
        "prior": prior,
        "mode": mode,
        "seed": seed,
        "nll": nll,
        "n": len(log_px),
        "k": 1000,
        "log_px": log_px,
        "kl": kl,
        "rec": nll + 3.0 - kl,
        "neg_elbo": nll + 3.0,
        "nll_z_stderr": 0.0,
        "checkpoint_sha256": "0" * 64,
        **extra,
    }
    (cell / "nll.json").write_text(json.dumps(record))
    wall = {"gaussian": 240.0, "lars": 360.0}.get(prior, 300.0)
    (cell / "train.log").write_text(f'step 1\ndone: {{"wall_time_s": {wall}}}\n')
    model = {"hidden": 16, "latent_dim": 4} | {
        k: MODEL[k] for k in MODEL if k in _model_keys(prior)
    }
    return {
        "dataset": "dynamic_mnist",
        "arch": "vae",
        "prior": prior,
        "mode": mode,
        "seed": seed,
        "variant": "base",
        "nll": str(cell.relative_to(root) / "nll.json"),
        "z": None,
        "manifest": "data/processed/dynamic_mnist.json",
        "model": model,
        "checkpoint": str(cell.relative_to(root) / "model.pt"),
        "train_log": str(cell.relative_to(root) / "train.log"),
        "iterations": 30000,
    }


def _model_keys(prior: str) -> tuple[str, ...]:
    from larsvae.config import model_keys

    return model_keys(prior)


#: per-image gains over N(0, I) (identical for every seed)
GAINS = {
    "vamp": [3.0, 2.0, 4.0, 3.0],  # gain 3, sd 0.8165
    "lars": [2.0, 1.0, 3.0, 2.0],  # gain 2: comparable to, slightly below, VampPrior's
    "trs": [2.5, 1.5, 3.5, 2.5],  # 0.5 better than LARS on every image
    "snis": [1.0, 0.0, 2.0, 1.0],  # 1 worse than LARS on every image
}
LARS_EXTRA = {"mean_proposals": 2.5, "acceptance_rate": 0.4}


def _spec(root: Path, gains: dict[str, list[float]] | None = None) -> dict:
    gains = {**GAINS, **(gains or {})}
    cells = []
    for seed in (1, 2, 3):
        cells.append(_write_cell(root, "gaussian", "standard", seed, [0.0] * 4))
        for prior, d in gains.items():
            extra = LARS_EXTRA if prior in ("lars", "trs") else {}
            cells.append(_write_cell(root, prior, "standard", seed, d, **extra))
    return {"name": "unit", "seeds": [1, 2, 3], "budget": {}, "cells": cells}


def _row(rows, prior, mode="standard"):
    return next(r for r in rows if (r.prior, r.mode) == (prior, mode))


def test_report_numbers_by_hand(tmp_path):
    spec = _spec(tmp_path)
    table, figure = tmp_path / "priors.md", tmp_path / "fig.png"
    steps.priors_report(spec, table, figure, tmp_path)
    text = table.read_text()
    rows = priors.build_rows(spec, tmp_path, timing=False)[("dynamic_mnist", "vae")]

    # N(0, I): NLL 91, 92, 90 -> 91.00 ± 1.00; KL 20, 22, 24 -> 22.00 ± 2.00
    assert "| N(0, I) | exact | 1, 2, 3 | **91.00 ± 1.00** | reference | 22.00 ± 2.00 |" in text
    # VampPrior: NLL 88, 89, 87; gain 3 with paired SE sd(d)/sqrt(4) per seed = 0.40825,
    # over three seeds sqrt(3 x 0.40825^2) / 3 = 0.2357
    se = math.sqrt(3 * (math.sqrt(2 / 3) / 2) ** 2) / 3
    vamp = _row(rows, "vamp")
    assert vamp.gain.value == pytest.approx(3.0) and vamp.gain.se == pytest.approx(se)
    assert f"| VampPrior | exact | 1, 2, 3 | **88.00 ± 1.00** | +3.00 ± {se:.2f} |" in text
    assert "| SNIS | **bound** (NLL errs high) | 1, 2, 3 | **90.00 ± 1.00** |" in text
    # rows not run show dashes only
    assert "| MAF | exact | — | — | — | — | — | — |" in text
    assert "| RealNVP | — | — | — | — | — | — | — |" in text
    # a(z) = MLP[4-8-1]: 4 x 8 + 8 + 8 + 1 = 49 parameters; step times: 240 s and 360 s over
    # 30,000 steps -> 8.0 and 12.0 ms, x1.50; E[proposals] 2.5 from nll.json
    assert "| LARS (joint) | 49 | — | — | 2.50 | 0.400 | 12.0 | 1.50 |" in text
    assert "step time from train log (3 seeds)" in text
    # a rejection sampler without its checkpoint is not timed; direct samplers are, fresh
    assert _row(rows, "lars").sample_s is None
    assert "- VampPrior: times from fresh prior (cost independent of the weights)" in text
    assert "| SNIS | 49 |" in text and "| 4.00 |" in text  # K = 4 energy evaluations

    # the claims, from these numbers
    assert "| Bauer & Mnih | **yes** | gain LARS +2.00" in text  # (a)
    assert "VampPrior 2,352 (K = 3 pseudo-inputs), LARS 49: 48.0×" in text  # (b): too few
    assert (
        "hundreds of thousands of parameters, LARS more than an order of magnitude fewer; "
        "VampPrior row: VampPrior | Bauer & Mnih | **no** |" in text
    )
    assert "NLL(LARS) − NLL(TRS) +0.50 ± 0.00; NLL(LARS) − NLL(SNIS) -1.00 ± 0.00" in text
    assert "| Lawson et al. | **no** |" in text  # (d): SNIS 1 nat worse on every image


def _verdicts(rows, vamp_label: str = "VampPrior") -> dict[str, bool | None]:
    """Claim (its first 20 characters) -> verdict, the VampPrior claims of one row."""
    row = f"; VampPrior row: {vamp_label}"
    return {
        c[0][:20]: c[2]
        for c in priors.claims(rows)
        if "; VampPrior row: " not in c[0] or c[0].endswith(row)
    }


def test_each_vamp_prior_row_has_its_own_claims(tmp_path):
    """Neither VampPrior row is chosen by its test NLL: each is judged on its own."""
    spec = _spec(tmp_path, {"lars": [4.0, 3.0, 5.0, 4.0]})
    rows = priors.build_rows(spec, tmp_path, timing=False)[("dynamic_mnist", "vae")]
    made = [c[0] for c in priors.claims(rows)]
    assert len(made) == 3 * len(priors.VAMP_ROWS) + 1
    for prior in priors.VAMP_ROWS:
        label = _row(rows, prior).label
        assert sum(m.endswith(f"; VampPrior row: {label}") for m in made) == 3
    sg = _verdicts(rows, _row(rows, "vamp_sg").label)
    assert sg["LARS's gains are com"] is None  # this spec has no vamp_sg cells: a dash


def test_claims_flip_with_the_numbers(tmp_path):
    spec = _spec(tmp_path, {"lars": [4.0, 3.0, 5.0, 4.0], "snis": [2.0, 1.0, 3.0, 2.5]})
    rows = priors.build_rows(spec, tmp_path, timing=False)[("dynamic_mnist", "vae")]
    verdict = _verdicts(rows)
    assert verdict["LARS's gains are com"] is False  # LARS gains 4 > VampPrior's 3
    assert verdict["The VampPrior is fas"] is None  # no timings: a dash, not a verdict
    # TRS is 1.5 worse than LARS on every image now (SE 0): not matched
    assert verdict["TRS and SNIS priors "] is False
    spec2 = _spec(tmp_path / "b", {"snis": [2.0, 1.0, 3.0, 2.5], "trs": [2.0, 1.0, 3.0, 2.0]})
    rows = priors.build_rows(spec2, tmp_path / "b", timing=False)[("dynamic_mnist", "vae")]
    verdict = _verdicts(rows)
    assert verdict["TRS and SNIS priors "] is True  # TRS equal, SNIS better on average
    vamp, lars = _row(rows, "vamp"), _row(rows, "lars")
    vamp.params, lars.params = 392_000, 15_301
    vamp.sample_s, lars.sample_s = 0.02, 0.05
    verdict = _verdicts(rows)
    assert verdict["A VampPrior has hund"] is True and verdict["The VampPrior is fas"] is True
    lars.params, vamp.sample_s = 50_000, 0.06  # 7.8x fewer; VampPrior slower
    verdict = _verdicts(rows)
    assert verdict["A VampPrior has hund"] is False and verdict["The VampPrior is fas"] is False


def test_parameter_counts_by_hand():
    m = {"latent_dim": 50, "hidden": 300}
    lars = {**m, "acceptance_hidden": [100, 100]}
    a_z = (50 * 100 + 100) + (100 * 100 + 100) + (100 + 1)  # MLP[50-100-100-1]
    assert priors.prior_parameters("vae", "vamp", "standard", {**m, "mixture_components": 500}) == (
        500 * 784  # the pseudo-inputs; the encoder is the model's
    )
    assert priors.prior_parameters("vae", "lars", "standard", lars) == a_z == 15_301
    assert priors.prior_parameters("vae", "lars", "posthoc", lars) == a_z
    assert priors.prior_parameters("vae", "trs", "standard", lars) == a_z + 1  # + logit Zt
    assert priors.prior_parameters("vae", "gaussian", "standard", m) == 0
    mog = {**m, "mixture_components": 500}
    assert priors.prior_parameters("vae", "mog", "standard", mog) == 500 * (2 * 50 + 1)
    dimwise = {**m, "dimwise_hidden": [20, 20]}
    per_unit = (1 * 20 + 20) + (20 * 20 + 20) + (20 + 1)
    assert priors.prior_parameters("vae", "lars_dim", "standard", dimwise) == 50 * per_unit


def test_a_trained_checkpoint_is_timed_only_if_it_is_the_one_evaluated(tmp_path):
    spec = _spec(tmp_path)
    lars1 = next(c for c in spec["cells"] if c["prior"] == "lars" and c["seed"] == 1)
    torch.manual_seed(0)
    meta = {"arch": "vae", "prior": "lars", "dataset": "dynamic_mnist", "seed": 1}
    meta = CheckpointMeta.from_dict({**meta, "model_config": lars1["model"]}, "test")
    model = build_from_meta(meta)
    model.top_prior.set_log_z(math.log(0.4))
    path = tmp_path / lars1["checkpoint"]
    save_checkpoint({"meta": meta, "model": model.state_dict(), "step": 0}, path)
    rows = priors.build_rows(spec, tmp_path)[("dynamic_mnist", "vae")]
    assert _row(rows, "lars").sample_s is None  # nll.json names another checkpoint
    nll = tmp_path / lars1["nll"]
    record = json.loads(nll.read_text())
    nll.write_text(json.dumps({**record, "checkpoint_sha256": file_sha256(path)}))
    rows = priors.build_rows(spec, tmp_path)[("dynamic_mnist", "vae")]
    lars = _row(rows, "lars")
    assert lars.sample_s is not None and lars.sample_s > 0
    assert lars.timing_source == "trained checkpoint (1 of 3 seeds)"


def test_the_figure_is_a_png(tmp_path):
    spec = _spec(tmp_path)
    rows = priors.build_rows(spec, tmp_path, timing=False)
    _row(rows["dynamic_mnist", "vae"], "vamp").sample_s = 0.01
    out = tmp_path / "fig.png"
    priors.plot(rows, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    h, w = matplotlib.image.imread(out).shape[:2]
    assert w > h > 300  # two panels side by side


def test_only_budgets_with_other_priors_have_a_comparison():
    import plan

    def cells(name):
        return plan.parse_params(yaml.safe_load((REPO / f"params/{name}.yaml").read_text()))

    grid = cells("grid")  # Table 1, the comparison on the dynamicMNIST VAE, Omniglot's flows
    chosen = plan.comparison_cells(grid.cells)
    assert len(chosen) == 12 * 3 + 4
    assert {(c.dataset, c.arch) for c in chosen} == {("dynamic_mnist", "vae"), ("omniglot", "vae")}
    assert {c.seed for c in chosen if c.dataset == "dynamic_mnist"} == {1, 2, 3}
    assert {c.prior for c in chosen if c.dataset == "omniglot"} == {
        "gaussian",
        "lars",
        "realnvp",
        "lars_realnvp",
    }
    assert {c.prior for c in set(chosen) & set(grid.main_cells)} == {"gaussian", "lars"}
    assert plan.comparison_cells(cells("smoke").cells) == []  # N(0, I) and LARS only
    quick = plan.comparison_cells(cells("quick").cells)  # the flows of Appendix D
    assert {(c.dataset, c.arch) for c in quick} == {("dynamic_mnist", "vae"), ("omniglot", "vae")}
    assert all(c.variant == "base" for c in quick)


@pytest.mark.slow
@pytest.mark.e2e
def test_grid_budget_plans_every_comparison_cell(tmp_path):
    from test_pipeline import SNAKEMAKE, _run

    r = _run(
        SNAKEMAKE
        + ["-n", "reports/grid/priors.md", "--configfile", str(REPO / "params/grid.yaml")]
        + ["--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path)],
        REPO,
        timeout=1200,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    counts = {}
    for line in (r.stdout + r.stderr).split("Job stats:")[1].splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    # dynamicMNIST: 12 priors x 3 seeds; Z (2 shards) for joint LARS, post-hoc LARS,
    # LARS(RealNVP), TRS. Omniglot: N(0, I), RealNVP (standard), LARS, LARS(RealNVP) (joint)
    assert counts["train_standard"] == 8 * 3 + 2  # gaussian, flows, vamp(_sg), mog, snis, ...
    assert counts["train_joint"] == 3 * 3 + 2 and counts["train_posthoc"] == 3
    assert counts["evaluate"] == counts["publish"] == 12 * 3 + 4
    assert counts["reduce_z"] == 4 * 3 + 2 and counts["estimate_z"] == (4 * 3 + 2) * 2
    assert counts["priors_report"] == 1
