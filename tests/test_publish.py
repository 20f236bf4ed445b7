"""Published cells (larsvae.publish) and the paired LARS gain (larsvae.reports.gains): the
records a grid resumes from, the checks that refuse a result of another plan, cell or data,
and an end-to-end resume of a smoke grid in a clone with runs/ removed."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import pytest
import test_pipeline
import torch
import yaml

from larsvae.publish import check_nll_record, check_published, publish_cell, train_seconds
from larsvae.reports.gains import claims, paired_gain
from larsvae.reports.table1 import CellResult
from larsvae.utils import UserError, file_sha256

clone = test_pipeline.clone  # the module fixture: a git clone of the working tree
CELL = dict(dataset="dynamic_mnist", arch="vae", prior="lars", mode="standard", seed=1)
PARAMS = {"train": {"train": {"iterations": 10}}, "evaluate": {"evaluate": {"iwae_k": 5}}}


def _nll(log_px, **extra):
    return {"nll": -statistics.fmean(log_px), "n": len(log_px), "log_px": log_px, **extra}


def test_nll_record_must_be_the_mean_of_its_per_image_values(tmp_path):
    good = _nll([-90.0, -92.5, -88.25])
    check_nll_record(good, "nll.json")
    with pytest.raises(UserError, match="not the negative mean of its per-image"):
        check_nll_record({**good, "nll": 42.0}, "nll.json")  # hand-edited
    with pytest.raises(UserError, match="no per-image 'log_px' of length n = 4"):
        check_nll_record({**good, "n": 4}, "nll.json")  # truncated
    with pytest.raises(UserError, match="non-finite"):
        check_nll_record({**good, "log_px": [-90.0, math.nan, -88.25]}, "nll.json")
    with pytest.raises(UserError, match="no number 'nll'"):
        check_nll_record({k: v for k, v in good.items() if k != "nll"}, "nll.json")


def _finished_cell(tmp_path: Path) -> dict[str, Path]:
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    z = tmp_path / "z.json"
    z.write_text(json.dumps({"z": 0.25, "z_stderr": 1e-4}))
    shard = tmp_path / "shard0of1.json"
    shard.write_text(json.dumps({"wall_time_s": 30.0}))
    nll = tmp_path / "nll.json"
    record = _nll(
        [-90.0, -91.0],
        **CELL,
        checkpoint_sha256=file_sha256(ckpt),
        dataset_sha256="d" * 64,
        z_sha256=file_sha256(z),
        wall_time_s=12.0,
    )
    nll.write_text(json.dumps(record))
    curve = tmp_path / "curve.tsv"
    curve.write_text("step\tloss\n1\t100\n")
    log = tmp_path / "train.log"
    log.write_text('x\n[larsvae train] done: {"wall_time_s": 100.0}\n')
    return dict(nll=nll, curve=curve, checkpoint=ckpt, z=z, z_shards=(shard,), train_log=log)


def test_publish_then_check_against_the_plan(tmp_path):
    files = _finished_cell(tmp_path)
    out = tmp_path / "results" / "cell"
    prov = publish_cell(**files, params=PARAMS, out_dir=out)
    assert sorted(p.name for p in out.iterdir()) == ["curve.tsv", "nll.json", "provenance.json"]
    assert prov["cost_s"] == {"train": 100.0, "z": 30.0, "evaluate": 12.0}
    assert prov["cell"] == CELL and prov["z"] == {"z": 0.25, "z_stderr": 1e-4}
    assert check_published(out, CELL, PARAMS, "d" * 64)["checkpoint_sha256"] == file_sha256(
        files["checkpoint"]
    )
    other = {**PARAMS, "train": {"train": {"iterations": 20}}}
    with pytest.raises(UserError, match=r"other params \(train\.train\.iterations: 10 -> 20\)"):
        check_published(out, CELL, other, "d" * 64)
    with pytest.raises(UserError, match="holds the results of"):
        check_published(out, {**CELL, "seed": 2}, PARAMS, "d" * 64)
    with pytest.raises(UserError, match="other data"):
        check_published(out, CELL, PARAMS, "e" * 64)
    edited = json.loads((out / "nll.json").read_text())
    (out / "nll.json").write_text(json.dumps({**edited, "wall_time_s": 1.0}))
    with pytest.raises(UserError, match="changed after publication"):
        check_published(out, CELL, PARAMS, "d" * 64)


def test_publish_refuses_an_evaluation_of_another_checkpoint_or_z(tmp_path):
    files = _finished_cell(tmp_path)
    files["checkpoint"].write_bytes(b"retrained weights")
    with pytest.raises(UserError, match="evaluated checkpoint sha256"):
        publish_cell(**files, params=PARAMS, out_dir=tmp_path / "out")
    files = _finished_cell(tmp_path)
    files["z"].write_text(json.dumps({"z": 0.3}))
    with pytest.raises(UserError, match="evaluated with another Z"):
        publish_cell(**files, params=PARAMS, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_train_seconds_sums_resumed_runs_and_knows_when_it_cannot(tmp_path):
    log = tmp_path / "t.log"
    log.write_text('done: {"wall_time_s": 10.5}\nresumed\ndone: {"wall_time_s": 4.5}\n')
    assert train_seconds(log) == 15.0
    log.write_text("killed before the end\n")
    assert train_seconds(log) is None and train_seconds(tmp_path / "gone.log") is None


def _runs(seed, std, lars, se_z=0.0):
    return (
        {"seed": seed, "nll": -statistics.fmean(std), "log_px": std},
        {"seed": seed, "nll": -statistics.fmean(lars), "log_px": lars, "nll_se_from_z": se_z},
    )


def test_paired_gain_by_hand():
    # per-image differences d = lars - std = (1, 2, 3, 2): mean 2, sd sqrt(2/3), SE sd / 2
    s1, l1 = _runs(1, [-90.0, -80.0, -100.0, -95.0], [-89.0, -78.0, -97.0, -93.0], se_z=0.3)
    g = paired_gain([s1], [l1])
    assert g.value == pytest.approx(2.0) and g.n_images == 4 and g.seed_sd is None
    assert g.se_images == pytest.approx(math.sqrt(2 / 3) / 2)
    assert g.se == pytest.approx(math.hypot(math.sqrt(2 / 3) / 2, 0.3)) and g.significant
    # a second seed with gain 0 (d = (-1, 1, -1, 1)): mean of the two gains, errors combined
    s2, l2 = _runs(2, [-90.0, -80.0, -100.0, -95.0], [-91.0, -79.0, -101.0, -94.0])
    g2 = paired_gain([s1, s2], [l1, l2])
    se2 = math.sqrt(4 / 3) / 2
    assert g2.value == pytest.approx(1.0) and g2.seeds == (1, 2)
    assert g2.se_images == pytest.approx(math.hypot(math.sqrt(2 / 3) / 2, se2) / 2)
    assert g2.seed_sd == pytest.approx(math.sqrt(2.0))
    # unpaired cells (other images) give no paired gain
    assert paired_gain([s1], [{**l1, "log_px": [-1.0, -2.0]}]) is None


def test_claims_are_computed_per_dataset_from_the_gains():
    cells, gains = {}, {}
    nll = {"vae": (90.0, 88.0), "hvae": (87.0, 86.0), "convhvae": (85.0, 84.6)}
    for arch, (std, lars) in nll.items():
        s, ell = _runs(1, [-std - 1, -std + 1], [-lars - 1.1, -lars + 1.1])
        cells["dynamic_mnist", arch, "gaussian", "standard"] = CellResult(
            "dynamic_mnist", arch, "gaussian", "standard", [s]
        )
        cells["dynamic_mnist", arch, "lars", "standard"] = CellResult(
            "dynamic_mnist", arch, "lars", "standard", [ell]
        )
        gains["dynamic_mnist", arch] = paired_gain([s], [ell])
    text = "\n".join(claims(cells, gains))
    assert "| LARS beats N(0, I) in every architecture | dynamicMNIST | **yes** |" in text
    assert "| gain VAE > HVAE > ConvHVAE | dynamicMNIST | **yes** | +2.00 > +1.00 > +0.40 |" in text
    assert "| ConvHVAE has the lowest NLL | dynamicMNIST | **yes** |" in text
    assert "| LARS beats N(0, I) in every architecture | Omniglot | — |" in text  # not run
    cells["dynamic_mnist", "hvae", "gaussian", "standard"].runs[0]["nll"] = 80.0
    worse = "\n".join(claims(cells, gains))
    assert "| ConvHVAE has the lowest NLL | dynamicMNIST | **no** |" in worse


# -- end to end: a grid resumes in a fresh clone ---------------------------------------------


def _plan(repo: Path, params: str) -> dict[str, int]:
    from test_pipeline import SNAKEMAKE, _run

    r = _run(SNAKEMAKE + ["-n", "runs/pub/reports/table1.md", "--configfile", params], repo)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    counts = {}
    for line in (r.stdout + r.stderr).splitlines():  # Snakemake 9 writes its plan to stderr
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


@pytest.mark.slow
@pytest.mark.e2e
def test_a_published_grid_resumes_in_a_fresh_clone(clone):
    """Run the smoke Table 1 with published cells, then remove runs/ and Snakemake's records
    (a fresh clone): the dry run plans no cell job; delete one published cell and it plans
    that cell's jobs only."""
    from test_pipeline import SNAKEMAKE, _run

    params = yaml.safe_load((clone / "params/smoke.yaml").read_text())
    params["name"] = "pub"
    params["paths"] = {"runs": "runs/pub", "reports": "runs/pub/reports", "results": "pubres"}
    params["experiments"] = [e for e in params["experiments"] if not e.get("appendix")]
    (clone / "params/pub.yaml").write_text(yaml.safe_dump(params))
    target = ["runs/pub/reports/table1.md", "--configfile", "params/pub.yaml"]
    r = _run(SNAKEMAKE + ["--cores", "2", *target], clone, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    table = (clone / "runs/pub/reports/table1.md").read_text()
    assert "Cells are published results" in table and "## The paper's claims, computed" in table
    published = sorted(p.parent.name for p in (clone / "pubres").rglob("provenance.json"))
    assert len(published) == 3

    # the fresh clone: no runs/ (checkpoints, stamps, reports), no prepared data, no records
    for gone in ("runs/pub", "data/processed", ".snakemake"):
        shutil.rmtree(clone / gone, ignore_errors=True)
    fresh = _plan(clone, "params/pub.yaml")
    assert fresh.get("report") == 1 and fresh.get("prepare_data") == 1, fresh
    cell_jobs = {"train_standard", "train_joint", "train_posthoc", "estimate_z", "evaluate"}
    assert not (cell_jobs | {"publish"}) & set(fresh), fresh
    shutil.rmtree(clone / "pubres/dynamic_mnist/vae/gaussian")  # one cell to redo
    plan = _plan(clone, "params/pub.yaml")
    assert plan.get("train_standard") == 1 and plan.get("evaluate") == 1, plan
    assert plan.get("publish") == 1 and plan.get("report") == 1, plan
    assert not {"train_joint", "train_posthoc", "estimate_z"} & set(plan)


def test_test_subset_is_evenly_spaced_and_keeps_a_sorted_splits_class_mix():
    from larsvae.steps import test_indices

    idx = test_indices(10_000, 2_000)
    assert idx.tolist()[:3] == [0, 5, 10] and idx[-1] == 9_995 and len(set(idx.tolist())) == 2_000
    labels = torch.arange(10).repeat_interleave(1_000)  # a test split sorted by class
    assert torch.bincount(labels[idx]).tolist() == [200] * 10  # the first 2,000 are 0s and 1s
    assert test_indices(10, 50).tolist() == list(range(10))
    assert test_indices(7, 3).tolist() == [0, 2, 4]
