"""bench/gpu_plan.py: a dry run's cell jobs become lanes in the DAG's order."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_plan", REPO / "bench" / "gpu_plan.py")
gpu_plan = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_plan)


def _block(rule, wildcards, cmd):
    return f"[Fri Nov 27 11:00:00 2026]\nrule {rule}:\n    wildcards: {wildcards}\nShell command: {cmd}\n"


M = "runs/q/models/d/vae"
PLAN = "\n".join(
    [
        "Building DAG of jobs...",
        _block("evaluate", "dataset=d, arch=vae, prior=lars-z2, mode=posthoc, seed=1", "E_post"),
        _block(
            "train_posthoc",
            "dataset=d, arch=vae, prior=lars-z2, seed=1",
            f"T_post --init {M}/gaussian-z2/standard/seed1/model.pt --out {M}/lars-z2/posthoc/seed1/model.pt",
        ),  # fmt: skip
        _block(
            "estimate_z",
            "dataset=d, arch=vae, prior=lars-z2, mode=posthoc, seed=1, shard=1, nshards=2",
            "Z1_post",
        ),  # fmt: skip
        _block(
            "estimate_z",
            "dataset=d, arch=vae, prior=lars-z2, mode=posthoc, seed=1, shard=0, nshards=2",
            "Z0_post",
        ),  # fmt: skip
        _block(
            "train_standard",
            "dataset=d, arch=vae, prior=gaussian-z2, seed=1",
            f"T_gauss --out {M}/gaussian-z2/standard/seed1/model.pt",
        ),  # fmt: skip
        _block(
            "evaluate", "dataset=d, arch=vae, prior=gaussian-z2, mode=standard, seed=1", "E_gauss"
        ),  # fmt: skip
        _block("report", "name=x", "REPORT"),
    ]
)


def test_a_post_hoc_cell_runs_after_the_training_it_starts_from(tmp_path):
    s = gpu_plan.script(PLAN, "x")
    assert "REPORT" not in s  # only the cells' jobs
    order = [c for c in ("T_gauss", "E_gauss", "T_post", "Z0_post", "Z1_post", "E_post") if c in s]
    assert order == ["T_gauss", "E_gauss", "T_post", "Z0_post", "Z1_post", "E_post"]
    assert [s.index(c) for c in order] == sorted(s.index(c) for c in order)
    assert s.count("\n(\n") == 1  # one lane: the post-hoc cell waits for its init
    f = tmp_path / "run.sh"
    f.write_text(s)
    assert subprocess.run(["bash", "-n", str(f)]).returncode == 0


def test_cells_of_two_seeds_keep_their_own_lanes():
    """A post-hoc cell waits for the standard training of its own seed, not another one's."""
    plan = "\n".join(
        _block(
            rule,
            f"dataset=d, arch=vae, prior={prior}, seed={seed}",
            f"{name}{seed} "
            + (f"--init {M}/gaussian/standard/seed{seed}/model.pt " if init else "")
            + f"--out {M}/{prior}/{mode}/seed{seed}/model.pt",
        )
        for seed in (1, 2)
        for rule, prior, mode, name, init in (
            ("train_posthoc", "lars", "posthoc", "T_post", True),
            ("train_standard", "gaussian", "standard", "T_gauss", False),
        )
    )
    s = gpu_plan.script(plan, "x")
    assert s.count("\n(\n") == 2  # one lane per seed
    for seed in (1, 2):
        assert s.index(f"T_gauss{seed} ") < s.index(f"T_post{seed} ")
        lane = s[s.rindex("\n(\n", 0, s.index(f"T_gauss{seed} ")) :]
        lane = lane[: lane.index("\n) &")]
        assert f"T_post{seed} " in lane and f"T_post{3 - seed} " not in lane
