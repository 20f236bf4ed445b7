"""bench/grid_cost.py: the arithmetic of a budget's predicted cost from given per-unit costs
(per-cell params, per-architecture overrides, validations, Z, evaluation, jobs), the
schedule on N cores, and the check's reading of finished cells. No timing here."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import yaml

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import grid_cost  # noqa: E402

from larsvae.paths import Layout  # noqa: E402

VALID = 10_000  # validation images of static_mnist (the prepared split)


def tiny_budget(tmp_path: Path, overrides: dict | None = None) -> Path:
    d = {
        "name": "tiny",
        "paths": {"runs": "runs/tiny", "reports": "reports/tiny"},
        "seeds": [1],
        "model": {},
        "train": {"iterations": 100, "eval_every": 0},
        "posthoc": {},
        "evaluate": {"z_samples": 1000, "z_shards": 2, "z_batch": 100, "test_subset": 50},
        "report": {},
        "overrides": {
            "hvae": {"train": {"iterations": 40}},
            "static_mnist": {"train": {"eval_every": 30, "eval_k": 10}},
            **(overrides or {}),
        },
        "experiments": [
            {
                "datasets": ["static_mnist", "dynamic_mnist"],
                "archs": ["vae", "hvae"],
                "runs": [
                    {"prior": "gaussian", "mode": "standard"},
                    {"prior": "lars", "mode": "standard"},
                ],
            }
        ],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


#: seconds per unit by kind (train: per arch, LARS adds 0.005 s per step)
TRAIN = {"vae": 0.01, "hvae": 0.02}
EVAL = {"vae": 0.1, "hvae": 0.2}


def given_costs(works) -> dict:
    costs = {}
    for key, spec in grid_cost.needed_specs(works).items():
        kind = spec["kind"]
        if kind == "train":
            s = TRAIN[spec["arch"]] + (0.005 if spec["prior"] == "lars" else 0.0)
        elif kind == "evaluate":
            s = EVAL[spec["arch"]]
        else:
            s = {"valid": 0.001, "z": 1e-6, "job": 2.0}[kind]
        costs[key] = {**spec, "seconds": s}
    return costs


@pytest.fixture
def budget(tmp_path):
    works = grid_cost.budget_work(grid_cost.load_params(tiny_budget(tmp_path)))
    costs = given_costs(works)
    cells = {grid_cost.cell_name(w.cell): grid_cost.predict_cell(w, costs) for w in works}
    return works, costs, cells


def test_per_cell_costs_follow_each_cells_params(budget):
    works, _, cells = budget
    assert len(cells) == 8
    # staticMNIST VAE: 100 steps, validations after steps 30, 60, 90 and 100
    c = cells["static_mnist vae gaussian standard seed1"]
    assert c.work.steps == 100 and c.work.validations == 4
    assert c.train_s == pytest.approx(100 * 0.01)
    assert c.valid_s == pytest.approx(4 * VALID * 0.001)
    assert c.z_s == 0.0 and c.evaluate_s == pytest.approx(50 * 0.1)
    assert c.jobs_s == pytest.approx(2 * 2.0)  # train, evaluate
    assert c.total_s == pytest.approx(1.0 + 40.0 + 5.0 + 4.0)
    # the HVAE's own schedule (40 steps: validations after 30 and 40), Z over two shards
    c = cells["static_mnist hvae lars standard seed1"]
    assert c.work.steps == 40 and c.work.validations == 2
    assert c.train_s == pytest.approx(40 * 0.025)
    assert c.valid_s == pytest.approx(2 * VALID * 0.001)
    assert c.z_s == pytest.approx(1000 * 1e-6)
    assert c.jobs_s == pytest.approx(5 * 2.0)  # train, 2 shards, reduce, evaluate
    # no validation without eval_every
    c = cells["dynamic_mnist hvae gaussian standard seed1"]
    assert c.valid_s == 0.0 and c.train_s == pytest.approx(40 * 0.02)
    assert c.evaluate_s == pytest.approx(50 * 0.2)


def test_costs_are_keyed_by_what_runs(tmp_path, budget):
    works, costs, _ = budget
    keys = {grid_cost.cell_name(w.cell): w.keys for w in works}
    vae, hvae = (keys[f"dynamic_mnist {a} gaussian standard seed1"]["train"] for a in TRAIN)
    assert vae != hvae
    # the same model on two datasets shares its cost; another model does not
    same = keys["static_mnist vae gaussian standard seed1"]["train"]
    assert same == vae
    wider = tiny_budget(tmp_path, {"hvae": {"train": {"iterations": 40}, "model": {"hidden": 64}}})
    missing = grid_cost.missing_costs(grid_cost.budget_work(grid_cost.load_params(wider)), costs)
    assert missing and all(":hvae/" in k for k in missing)


def test_schedule_waits_for_dependencies():
    jobs = [("a", 3.0, []), ("b", 2.0, []), ("c", 1.0, [0])]
    assert grid_cost.schedule(jobs, 2) == 4.0  # c waits for a on the free core
    assert grid_cost.schedule(jobs, 1) == 6.0


def test_wall_time_on_one_core_is_the_total(budget):
    _, costs, cells = budget
    cs = list(cells.values())
    total = sum(c.total_s for c in cs)
    assert grid_cost.wall_time(cs, costs, 1) == pytest.approx(total)
    two = grid_cost.wall_time(cs, costs, 2)
    assert total / 2 <= two < total


def test_validations_after_a_resume():
    assert grid_cost.validations_between(0, 100, 30, 100) == 4
    assert grid_cost.validations_between(20, 100, 30, 100) == 4  # 30, 60, 90, 100
    assert grid_cost.validations_between(30, 60, 30, 100) == 1
    assert grid_cost.validations_between(0, 100, 0, 100) == 0


def test_check_reads_finished_and_running_cells(tmp_path, budget):
    works, costs, _ = budget
    runs = tmp_path / "runs" / "tiny"
    layout = Layout(str(runs), "")
    by_name = {grid_cost.cell_name(w.cell): w for w in works}

    def write(path: str, text: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)

    done = {"step": 100, "steps_this_run": 100, "resumed_from": 0, "wall_time_s": 82.0}
    wc = by_name["static_mnist vae gaussian standard seed1"].cell.wildcards()
    write(
        layout.log("train", **wc),
        f"train:  50%|#| 50/100 [00:40<00:40, 1.2it/s]\r[larsvae train] done: {json.dumps(done)}\n",
    )
    wc = by_name["dynamic_mnist vae lars standard seed1"].cell.wildcards()
    write(
        layout.log("train", **wc),
        "[larsvae train] resuming from x.resume.pt at step 20\n"
        "train:  30%|#| 30/100 [00:05<00:35, 2it/s]\rtrain:  50%|#| 50/100 [01:05<01:05, 2it/s]",
    )
    write(
        layout.z_shard(shard=1, nshards=2, **wc),
        json.dumps({"shard": 1, "num_shards": 2, "z_samples": 1000, "wall_time_s": 3.0}),
    )
    write(layout.nll(**wc), json.dumps({"n": 50, "k": 1000, "wall_time_s": 6.0}))
    rows = {(r["cell"], r["part"]): r for r in grid_cost.check_rows(works, costs, runs)}
    assert len(rows) == 4
    r = rows["static_mnist vae gaussian standard seed1", "train"]
    assert r["predicted_s"] == pytest.approx(100 * 0.01 + 4 * VALID * 0.001)
    assert r["measured_s"] == 82.0 and r["ratio"] == pytest.approx(82.0 / 41.0)
    r = rows["dynamic_mnist vae lars standard seed1", "train"]  # steps 20-50, still going
    assert "running" in r["work"] and r["measured_s"] == 65.0
    assert r["predicted_s"] == pytest.approx(30 * 0.015)
    r = rows["dynamic_mnist vae lars standard seed1", "z"]
    assert r["predicted_s"] == pytest.approx(500 * 1e-6) and r["measured_s"] == 3.0
    r = rows["dynamic_mnist vae lars standard seed1", "evaluate"]
    assert r["predicted_s"] == pytest.approx(50 * 0.1) and math.isclose(r["ratio"], 6.0 / 5.0)
