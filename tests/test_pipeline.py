"""The workflow: Snakemake lint, params validation, GPU slots, DVC <-> DAG drift, and an
end-to-end smoke run (Snakemake, then `dvc repro smoke`) in a temporary clone of the repo."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import plan
import pytest
import yaml
from _helpers import clone_working_tree

from larsvae import config as lconfig
from larsvae import paths as lconfig_paths
from larsvae.paths import Layout

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
GPU_SLOT = REPO / "workflow" / "scripts" / "gpu_slot.py"
RULE_TYPES = {
    "prepare_data",
    "train_standard",
    "train_joint",
    "train_posthoc",
    "estimate_z",
    "reduce_z",
    "evaluate",
    "report",
}  # (toy2d and sample_grid are not needed by table1.md)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    mirrors = [m for m in env.get("LARSVAE_DATA_MIRRORS", "").split(":") if m]
    shared = REPO.parent / "shared" / "datasets"
    if not mirrors and shared.is_dir():
        mirrors = [str(shared)]
    # the runs below happen in another directory: make relative mirror paths absolute
    env["LARSVAE_DATA_MIRRORS"] = ":".join(str((REPO / m).resolve()) for m in mirrors)
    env.update(extra)
    return env


def _run(cmd, cwd, timeout=600, **env):
    return subprocess.run(
        cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=timeout
    )


# ---------------------------------------------------------------------------------------------
# Static checks


def test_snakemake_lint_is_clean():
    r = _run(SNAKEMAKE + ["--lint"], REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "Congratulations, your workflow is in a good condition!" in out, out[-3000:]
    assert "Lints for" not in out


@pytest.mark.parametrize("budget", ["paper", "quick", "smoke"])
def test_params_files_validate_and_build_every_cell(budget, tmp_path):
    """Each params file passes the schema and the library checks, and its DAG has one
    evaluation per configured cell (Z only for LARS cells, the right number of shards), all
    under the budget's own paths."""
    r = _run(
        SNAKEMAKE
        + [
            "--summary",
            "--configfile",
            str(REPO / f"params/{budget}.yaml"),
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
        ],
        REPO,
        timeout=900,  # a budget of ~300 jobs on a loaded 2-core machine
    )
    assert r.returncode == 0, r.stderr[-3000:]
    outs = {line.split("\t")[0] for line in r.stdout.splitlines()[1:] if line.strip()}
    cfg = yaml.safe_load((REPO / f"params/{budget}.yaml").read_text())
    lay = Layout(cfg["paths"]["runs"], cfg["paths"]["reports"])
    cells = {  # a prior variant's cells live under <prior>-<variant>/
        (d, a, run["prior"] + (f"-{run['variant']}" if "variant" in run else ""), run["mode"], s)
        for e in cfg["experiments"]
        for d in e["datasets"]
        for a in e["archs"]
        for run in e["runs"]
        for s in cfg["seeds"]
    }
    cell = [dict(dataset=d, arch=a, prior=p, mode=m, seed=s) for d, a, p, m, s in sorted(cells)]
    assert {o for o in outs if o.endswith("/nll.json")} == {lay.nll(**c) for c in cell}
    for c in cell:
        shards = {o for o in outs if o.startswith(lay.z(**c)[: -len(".json")] + "/")}
        n = (
            cfg["overrides"]
            .get(c["dataset"], {})
            .get("evaluate", {})
            .get("z_shards", cfg["evaluate"]["z_shards"])
        )
        expect = {lay.z_shard(**c, shard=i, nshards=n) for i in range(n)}
        has_z = plan.Cell.from_wildcards(c).needs_z  # LARS priors, resampled outputs
        assert shards == (expect if has_z else set())
        if c["mode"] == "posthoc":  # post-hoc LARS needs the standard-prior model of its VAE
            init = plan.parse_params(cfg).posthoc_init(plan.Cell.from_wildcards(c))
            assert init.prior == "gaussian" and init.mode == "standard"
            assert lay.model(**init.wildcards()) in outs
    assert {lay.report(f) for f in ("table1.md", "metrics.json", "main.md")} <= outs
    runs_or_data = (lay.runs + "/", lconfig_paths.DATA + "/", lay.reports + "/")
    assert all(o.startswith(runs_or_data) for o in outs), sorted(outs)[:5]


def test_paper_params_are_appendix_c3():
    cfg = yaml.safe_load((REPO / "params/paper.yaml").read_text())
    t, m, e = cfg["train"], cfg["model"], cfg["evaluate"]
    assert (t["iterations"], t["batch_size"], t["lr"], t["lr_final"]) == (10**7, 128, 3e-4, 1e-4)
    assert (t["lr_decay_step"], t["warmup_steps"]) == (10**6, 10**5)
    assert (m["acceptance_hidden"], m["truncation"], m["train_z_samples"]) == (
        [100, 100],
        100,
        2**10,
    )
    assert (e["z_samples"], e["iwae_k"], e["test_subset"]) == (10**10, 1000, None)
    st = cfg["overrides"]["static_mnist"]["train"]  # staticMNIST: halved times, early stopping
    assert (st["warmup_steps"], st["lr_decay_step"]) == (
        t["warmup_steps"] // 2,
        t["lr_decay_step"] // 2,
    )
    assert st["early_stopping_patience"] > 0 and st["eval_every"] > 0
    grid = {
        (d, a, r["prior"], r["mode"])
        for x in cfg["experiments"]
        for d in x["datasets"]
        for a in x["archs"]
        for r in x["runs"]
    }
    for d in lconfig.DATASETS:
        for a in ("vae", "hvae", "convhvae"):  # Table 1's architectures
            assert {(d, a, "gaussian", "standard"), (d, a, "lars", "standard")} <= grid
    assert ("dynamic_mnist", "vae_rx", "gaussian", "standard") in grid  # Table D.6


def test_committed_schema_is_generated_from_the_config_dataclasses():
    """workflow/schemas/params.schema.yaml is `python -m larsvae.config`'s output, verbatim."""
    r = subprocess.run(
        [sys.executable, "-m", "larsvae.config"], capture_output=True, text=True, check=True
    )
    assert (REPO / "workflow/schemas/params.schema.yaml").read_text() == r.stdout, (
        "schema out of date: python -m larsvae.config > workflow/schemas/params.schema.yaml"
    )


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda c: c["train"].__setitem__("lr", -1), "train.lr"),
        (lambda c: c["model"].__setitem__("latent_dm", 8), "model.latent_dm: unknown key"),
        (lambda c: c.__setitem__("trian", {}), "trian: unknown key"),
        (
            lambda c: c["experiments"][0]["runs"][0].__setitem__("prior", "larz"),
            "experiments[0].runs[0].prior",
        ),
        (
            lambda c: c.setdefault("overrides", {}).__setitem__(
                "static_mnist", {"model": {"truncation": 0}}
            ),
            "overrides.static_mnist.model.truncation",
        ),
        (
            lambda c: c["experiments"][0]["runs"].append({"prior": "gaussian", "mode": "posthoc"}),
            "experiments[0].runs[3]",
        ),
        # sizes have upper bounds: a value that would hang or exhaust memory is refused
        (lambda c: c["evaluate"].__setitem__("z_samples", 10**20), "evaluate.z_samples"),
        (lambda c: c["evaluate"].__setitem__("z_shards", 100000), "evaluate.z_shards"),
        (lambda c: c.__setitem__("seeds", [10**30]), "seeds[0]"),
        (lambda c: c["model"].__setitem__("hidden", 300000), "model.hidden"),
    ],
    ids=[
        "negative-lr",
        "typo-key",
        "typo-section",
        "unknown-prior",
        "override-T0",
        "posthoc-gaussian",
        "huge-z-samples",
        "huge-z-shards",
        "huge-seed",
        "huge-hidden",
    ],
)
def test_bad_params_fail_naming_the_key(edit, key, tmp_path):
    cfg = yaml.safe_load((REPO / "params/smoke.yaml").read_text())
    edit(cfg)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    r = _run(
        SNAKEMAKE
        + [
            "-n",
            "--configfile",
            str(bad),
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
        ],
        REPO,
        timeout=120,
    )
    assert r.returncode != 0
    msg = r.stdout + r.stderr
    assert f"params: {key}" in msg, msg[-2000:]
    assert "Traceback" not in msg


def _load_dvc_stages_module():
    spec = importlib.util.spec_from_file_location(
        "dvc_stages", REPO / "workflow/scripts/dvc_stages.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _stage_paths(stage: dict) -> dict[str, set[str]]:
    return {
        kind: {next(iter(o)) for o in stage.get(kind, [])} for kind in ("outs", "metrics", "plots")
    }


def test_dvc_yaml_matches_the_snakemake_dag():
    """dvc.yaml declares, per stage, exactly the files that stage's Snakemake DAG writes."""
    rendered = _load_dvc_stages_module().render()
    expected = yaml.safe_load(rendered)["stages"]
    actual = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert set(actual) == set(expected) == {"data", "main", "appendix", "smoke"}
    for name in expected:
        exp, act = _stage_paths(expected[name]), _stage_paths(actual[name])
        for kind in exp:
            missing, extra = exp[kind] - act[kind], act[kind] - exp[kind]
            assert not missing and not extra, (
                f"dvc.yaml stage {name!r} {kind} drifted from the DAG: missing {sorted(missing)[:5]}, "
                f"extra {sorted(extra)[:5]}; run `python workflow/scripts/dvc_stages.py`"
            )
        assert actual[name]["cmd"] == expected[name]["cmd"]
        assert actual[name].get("params") == expected[name].get("params")
    # the shared data have one owner stage (DVC allows no output in two stages)
    owned = [next(iter(o)) for st in actual.values() for o in st.get("outs", [])]
    assert len(owned) == len(set(owned))
    # wraps, never re-lists: one snakemake call per stage, every LARS cell's Z and the metrics
    assert all(s["cmd"].startswith("snakemake ") for s in actual.values())
    assert {next(iter(m)) for m in actual["main"]["metrics"]} == {"reports/quick/metrics.json"}
    assert (REPO / "dvc.yaml").read_text() == rendered, "dvc.yaml differs only in formatting"


# ---------------------------------------------------------------------------------------------
# GPU slots


def _slot_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CUDA_VISIBLE"))}
    env.update(extra)
    return env


#: The job under gpu_slot: waits until the file argv[1] exists (none given: at once), then
#: prints the device it was given. Holding a slot until the test says so orders the events
#: by the test, not by the clock.
PROBE = (
    "import os, sys, time, json\n"
    "while len(sys.argv) > 1 and not os.path.exists(sys.argv[1]):\n"
    "    time.sleep(0.01)\n"
    "print(json.dumps({'dev': os.environ.get('CUDA_VISIBLE_DEVICES')}))"
)


def _probe(env, gate: Path | None = None):
    return subprocess.Popen(
        [sys.executable, str(GPU_SLOT), "--", sys.executable, "-c", PROBE]
        + ([str(gate)] if gate else []),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _first_line(proc) -> str:
    """gpu_slot's first stderr line: 'CUDA_VISIBLE_DEVICES=<dev>' once it holds a slot, or
    'all of [...] busy, waiting' (blocks until the wrapper has decided)."""
    line = proc.stderr.readline()
    assert line.startswith("gpu_slot: "), line
    return line


def _slots_then_release(env, jobs: int, gate: Path) -> tuple[list[str], list[str]]:
    """Start ``jobs`` gated probes; each one's first word from gpu_slot says whether it took a
    slot (held until ``gate`` exists) or waits. Then open the gate: (devices of the first
    holders, devices of every job once all have run)."""
    procs = [_probe(env, gate) for _ in range(jobs)]
    try:
        first = [_first_line(p) for p in procs]
    finally:
        gate.touch()  # a failed check must not leave jobs waiting for ever
    held = [line.split("CUDA_VISIBLE_DEVICES=")[1].split()[0] for line in first if "=" in line]
    assert all("busy, waiting" in line for line in first if "=" not in line), first
    runs = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    return held, [r["dev"] for r in runs]


def test_gpu_slot_concurrent_jobs_get_distinct_devices(tmp_path):
    """5 jobs on 2 devices: while the first holders run, exactly 2 jobs hold a slot, one per
    device, and the other 3 wait; all 5 run once the slots are released."""
    env = _slot_env(LARSVAE_FAKE_GPUS="2", LARSVAE_GPU_LOCK_DIR=str(tmp_path / "locks"))
    held, devs = _slots_then_release(env, 5, tmp_path / "go")
    assert sorted(held) == ["0", "1"]
    assert len(devs) == 5 and set(devs) <= {"0", "1"}  # each job saw exactly one device


def test_gpu_slot_shares_a_device_between_k_jobs_and_never_more(tmp_path):
    """LARSVAE_JOBS_PER_GPU=2 on 2 devices: 4 of 6 jobs hold a slot at once, 2 per device, and
    2 wait; each job sees exactly one device."""
    env = _slot_env(
        LARSVAE_FAKE_GPUS="2",
        LARSVAE_GPU_LOCK_DIR=str(tmp_path / "locks"),
        LARSVAE_JOBS_PER_GPU="2",
    )
    held, devs = _slots_then_release(env, 6, tmp_path / "go")
    assert sorted(held) == ["0", "0", "1", "1"]
    assert len(devs) == 6 and set(devs) <= {"0", "1"}


def test_gpu_slot_uses_only_the_visible_devices(tmp_path):
    env = _slot_env(CUDA_VISIBLE_DEVICES="2,5", LARSVAE_GPU_LOCK_DIR=str(tmp_path / "locks"))
    held, devs = _slots_then_release(env, 2, tmp_path / "go")
    assert sorted(held) == sorted(devs) == ["2", "5"]


@pytest.mark.parametrize(
    ("extra", "dev"),
    [
        ({"LARSVAE_FAKE_GPUS": "0"}, None),  # CPU-only machine: unchanged
        ({"CUDA_VISIBLE_DEVICES": "3"}, "3"),  # already pinned (e.g. SLURM gres): kept
        ({"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_JOB_GPUS": "0,1"}, "0,1"),  # scheduler's choice
        ({"CUDA_VISIBLE_DEVICES": ""}, ""),
    ],
    ids=["cpu", "pinned", "slurm", "empty"],
)
def test_gpu_slot_passes_through(extra, dev, tmp_path):
    env = _slot_env(LARSVAE_GPU_LOCK_DIR=str(tmp_path / "locks"), **extra)
    out, err = _probe(env).communicate(timeout=60)
    assert json.loads(out)["dev"] == dev
    assert not (tmp_path / "locks").exists()  # no slot was taken


def test_gpu_slot_released_when_the_job_is_killed(tmp_path):
    """The holder takes the only slot (its wrapper says so), the waiter says it waits; after
    kill -9 of the holder the waiter gets the device."""
    env = _slot_env(LARSVAE_FAKE_GPUS="1", LARSVAE_GPU_LOCK_DIR=str(tmp_path / "locks"))
    holder = _probe(env, tmp_path / "never")
    try:
        assert "CUDA_VISIBLE_DEVICES=0" in _first_line(holder)
        waiter = _probe(env)
        assert "busy, waiting" in _first_line(waiter)
        assert waiter.poll() is None  # blocked behind the holder
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=10)
    out, _ = waiter.communicate(timeout=60)
    assert json.loads(out)["dev"] == "0"


def test_gpu_slot_missing_command_exits_127(tmp_path):
    r = subprocess.run(
        [sys.executable, str(GPU_SLOT), "--", "no-such-command-xyz"],
        env=_slot_env(LARSVAE_FAKE_GPUS="0"),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 127 and "no-such-command-xyz" in r.stderr


# ---------------------------------------------------------------------------------------------
# End to end, in a temporary clone (the checkout is never dirtied)


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """git clone of the working tree plus its uncommitted (tracked-modified and untracked,
    not ignored) files, so the test sees what is on disk."""
    return clone_working_tree(REPO, tmp_path_factory.mktemp("e2e") / "repo")


def _rules_run(workdir: Path) -> set[str]:
    rules = set()
    for log in (workdir / ".snakemake" / "log").glob("*.snakemake.log"):
        rules |= set(re.findall(r"^(?:local)?rule (\w+):", log.read_text(), flags=re.M))
    return rules


SMOKE = Layout("runs/smoke", "runs/smoke/reports")
SMOKE_CELLS = {
    "gaussian_standard": dict(prior="gaussian", mode="standard"),
    "lars_standard": dict(prior="lars", mode="standard"),
    "lars_posthoc": dict(prior="lars", mode="posthoc"),
}


def _smoke_cell(key: str) -> dict:
    return dict(dataset="dynamic_mnist", arch="vae", seed=1, **SMOKE_CELLS[key])


def _check_smoke_outputs(root: Path) -> dict:
    from larsvae.zestimate import ZEstimate

    metrics = json.loads((root / SMOKE.report("metrics.json")).read_text())
    table = (root / SMOKE.report("table1.md")).read_text()
    nll = {}
    for key in SMOKE_CELLS:
        c = _smoke_cell(key)
        res = json.loads((root / SMOKE.nll(**c)).read_text())
        nll[key] = res["nll"]
        assert math.isfinite(res["nll"]) and res["nll"] > 0
        assert metrics["nll"]["dynamic_mnist"]["vae"][key]["seed1"] == res["nll"]
        assert f"{res['nll']:.2f}" in table
        assert (root / SMOKE.curve(**c)).read_text().startswith("step\t")
        zfile = root / SMOKE.z(**c)
        if key == "gaussian_standard":  # no Z for the standard prior
            assert not zfile.exists() and "z" not in res
            continue
        shards = [
            ZEstimate.from_dict(
                json.loads((root / SMOKE.z_shard(**c, shard=i, nshards=2)).read_text())["estimate"]
            )
            for i in range(2)
        ]
        z = json.loads(zfile.read_text())
        # the reduce step is exact: the pooled mean of the shards' sufficient statistics
        pooled = sum(s.sum for s in shards) / sum(s.n for s in shards)
        assert z["z"] == pytest.approx(pooled, rel=1e-12)
        assert 0 < z["z"] <= 1 and res["z"] == pytest.approx(z["z"], rel=1e-12)
    gains = metrics["gain"]["dynamic_mnist"]["vae"]
    assert gains["standard"] == pytest.approx(
        nll["gaussian_standard"] - nll["lars_standard"], abs=1e-3
    )
    assert gains["posthoc"] == pytest.approx(
        nll["gaussian_standard"] - nll["lars_posthoc"], abs=1e-3
    )
    # paper values beside ours; cells not run shown as a dash; the budget is stated
    assert "84.97" in table and "83.03" in table and "228.68" in table
    assert "— / 89.11" in table and "Budget **`smoke`**" in table
    assert "NOT the paper's budget" in (root / SMOKE.report("main.md")).read_text()
    assert (root / SMOKE.report("figures/training_curves.png")).read_bytes()[:4] == b"\x89PNG"
    assert "/work/" not in table and str(Path.home()) + "/" not in table  # no machine paths
    return metrics


@pytest.fixture(scope="module")
def smoke_run(clone) -> Path:
    """The clone with the smoke DAG of Table 1 built (once per module). Every test that needs
    finished smoke outputs asks for this, so none depends on which test ran before it."""
    t0 = time.time()
    # (the target goes first: --configfile takes several values and would swallow it)
    r = _run(
        SNAKEMAKE
        + [
            "--cores",
            "2",
            "-s",
            "Snakefile",
            SMOKE.report("table1.md"),
            "--configfile",
            "params/smoke.yaml",
        ],
        clone,
        timeout=900,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    print(f"smoke DAG: {time.time() - t0:.1f} s")
    return clone


@pytest.fixture(scope="module")
def smoke_all(smoke_run) -> Path:
    """The clone with the smoke budget's default target built on top of Table 1's DAG:
    Appendix D (tables, Figure A.2, rankings), the 2-D figures and the sample grids."""
    r = _run(
        SNAKEMAKE + ["--cores", "2", "--configfile", "params/smoke.yaml"], smoke_run, timeout=900
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return smoke_run


@pytest.mark.slow
@pytest.mark.e2e
def test_smoke_dag_end_to_end(smoke_run):
    clone = smoke_run
    assert RULE_TYPES <= _rules_run(clone), _rules_run(clone)
    _check_smoke_outputs(clone)
    # per-rule logs, with tqdm progress in the training log; one log per Z shard
    log = (clone / SMOKE.log("train", **_smoke_cell("lars_standard"))).read_text()
    assert "it/s" in log or "s/it" in log
    for key in ("lars_standard", "lars_posthoc"):
        logs = clone / Path(SMOKE.log("estimate_z", **_smoke_cell(key))).with_suffix("")
        assert sorted(p.name for p in logs.glob("shard*of2.log")) == [
            "shard0of2.log",
            "shard1of2.log",
        ]
    # the DAG is cached: a second call has nothing to do
    r = _run(
        SNAKEMAKE + ["-n", SMOKE.report("table1.md"), "--configfile", "params/smoke.yaml"], clone
    )
    assert "Nothing to be done" in r.stdout + r.stderr, (r.stdout + r.stderr)[-2000:]


@pytest.mark.slow
@pytest.mark.e2e
def test_a_corrupted_dataset_costs_no_checkpoint(smoke_all, tmp_path):
    """A modified npz (valid zip, one pixel of the test split changed) fails the check_data
    job with one clear line; the training jobs never start, so the good checkpoints stay."""
    import numpy as np

    clone = smoke_all
    npz = clone / "data/processed/dynamic_mnist.npz"
    models = sorted((clone / SMOKE.runs / "models").rglob("model.pt"))
    assert models
    before = {m: m.read_bytes() for m in models}
    original = npz.read_bytes()
    with np.load(npz) as z:
        arrays = {k: z[k].copy() for k in z.files}
    arrays["test"][0, 0] ^= 1
    np.savez_compressed(npz, **arrays)
    try:
        r = _run(SNAKEMAKE + ["--cores", "2", "--configfile", "params/smoke.yaml"], clone)
        assert r.returncode != 0
        log = (clone / "logs/check_data/dynamic_mnist.log").read_text()
        assert "split 'test' has sha256" in log and "Traceback" not in log, log
        assert {m: m.read_bytes() for m in models} == before  # no checkpoint lost or touched
    finally:
        npz.write_bytes(original)
    r = _run(SNAKEMAKE + ["--cores", "2", "--configfile", "params/smoke.yaml"], clone)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]


@pytest.mark.slow
@pytest.mark.e2e
def test_smoke_appendix_and_snakemake_report(smoke_all, tmp_path):
    """The default target adds Appendix D (tables, Figure A.2, ranking by a(z)) and the 2-D
    figure; Snakemake's own --report publishes every table and figure with its caption."""
    clone = smoke_all
    app = clone / SMOKE.reports / "appendix"
    for t in ("d1", "d2", "d3", "d45"):
        text = (app / f"table_{t}.md").read_text()
        assert "Budget **`smoke`**" in text and "/ 8" in text  # ours / paper columns
    d3 = (app / "table_d3.md").read_text()
    assert "84.60" in d3 and "82.67" in d3  # the paper's T = 2 and T = inf rows
    assert (app / "fig_a2_z_convergence.png").read_bytes()[:4] == b"\x89PNG"
    for mode in ("standard", "posthoc"):
        d = app / f"ranking/dynamic_mnist_vae_lars_{mode}_seed1"
        summary = json.loads((d / "summary.json").read_text())
        assert summary["n"] == 500 and 0 < summary["a_mean"] <= 1
        assert (d / "grid.png").read_bytes()[:4] == b"\x89PNG"
    html = tmp_path / "report.html"
    r = _run(SNAKEMAKE + ["--report", str(html), "--configfile", "params/smoke.yaml"], clone)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    text = html.read_text(errors="replace")
    assert "Appendix D" in text and "Table 1" in text


@pytest.mark.slow
@pytest.mark.e2e
def test_dvc_repro_smoke(smoke_all):
    """`dvc repro smoke` runs the smoke stage's Snakemake call and records it. Its target is
    built already (the smoke_all fixture), so nothing is retrained; dvc records the outputs,
    pushes, pulls, and rebuilds a deleted intermediate."""
    clone = smoke_all
    dvc = [str(BIN / "dvc")]
    t0 = time.time()
    r = _run(dvc + ["repro", "smoke"], clone, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    print(f"dvc repro smoke: {time.time() - t0:.1f} s")
    assert RULE_TYPES | {"sample_grid"} <= _rules_run(clone)
    _check_smoke_outputs(clone)
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]["smoke"]
    assert {o["path"] for o in lock["outs"]} >= {SMOKE.report("table1.md")}
    assert "train.lr" in lock["params"]["params/smoke.yaml"]  # params by key, not by section
    r = _run(dvc + ["status", "smoke"], clone)
    assert r.returncode == 0 and "changed" not in r.stdout, r.stdout
    r = _run(dvc + ["metrics", "show", "--json"], clone)
    assert r.returncode == 0, r.stderr
    shown = json.dumps(json.loads(r.stdout))
    nll = json.loads((clone / SMOKE.nll(**_smoke_cell("lars_standard"))).read_text())["nll"]
    assert str(round(nll, 4)) in shown
    r = _run(dvc + ["params", "diff", "--all"], clone)
    assert r.returncode == 0 and "params/smoke.yaml" in r.stdout, r.stdout + r.stderr
    # the default remote (../larsvae-dvc-remote, beside the clone) works offline
    r = _run(dvc + ["push", "smoke"], clone)
    assert r.returncode == 0, r.stdout + r.stderr
    assert any(p.is_file() for p in (clone.parent / "larsvae-dvc-remote").rglob("*"))
    ckpt = clone / SMOKE.model(**_smoke_cell("lars_standard"))
    blob = ckpt.read_bytes()
    shutil.rmtree(clone / ".dvc" / "cache")
    ckpt.unlink()
    r = _run(dvc + ["pull", "smoke"], clone)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ckpt.read_bytes() == blob
    # a deleted intermediate is rebuilt by a plain `dvc repro` (it is an input of rule all),
    # bit for bit: Z shard batches depend only on (seed, batch)
    shard = clone / SMOKE.z_shard(**_smoke_cell("lars_posthoc"), shard=1, nshards=2)
    z_before = (clone / SMOKE.z(**_smoke_cell("lars_posthoc"))).read_text()
    shard.unlink()
    r = _run(dvc + ["repro", "smoke"], clone, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert shard.exists()
    assert (clone / SMOKE.z(**_smoke_cell("lars_posthoc"))).read_text() == z_before


# ---------------------------------------------------------------------------------------------
# Rules rerun exactly what changed: every key of params/smoke.yaml, in the finished smoke run

#: smoke jobs -> the jobs that consume their outputs (the DAG, written out by hand)
_G, _J, _P, _T2 = "gaussian/standard", "lars/standard", "lars/posthoc", "lars-t2/standard"
# the 2-D latent cells (Figs. D.10-D.14) and the resampled-outputs cell (Table D.6)
_GZ, _JZ, _JZS, _PZ = (
    "gaussian-z2/standard",
    "lars-z2/standard",
    "lars-z2small/standard",
    "lars-z2/posthoc",
)
_RX = "rx/gaussian/standard"
_Z2 = (_GZ, _JZ, _JZS, _PZ)
_TABLE = (_G, _J, _P, _T2, _RX)  # the cells of Tables D.1-D.6
_MAIN = (_G, _J, _P)  # Table 1
_WITH_Z = (_J, _P, _T2, _JZ, _JZS, _PZ, _RX)
_CELLS = (*_TABLE, *_Z2)
_DOWNSTREAM = {
    "prepare_data": [f"{rule}:{c}" for rule in ("train", "evaluate") for c in _CELLS]
    + ["prepare_labels", "latent2d"],
    "prepare_labels": ["latent2d"],
    # every cell's training feeds its Z, evaluation and sample grid; the table cells also
    # feed the appendix tables, the Table 1 cells Table 1, the 2-D cells the latent figures
    **{
        f"train:{c}": [f"evaluate:{c}", f"sample_grid:{c}"]
        + (["appendix_tables"] if c in _TABLE else [])
        + ([f"estimate_z:{c}"] if c in _WITH_Z else [])
        + (["report"] if c in _MAIN else [])
        + ([f"rank:{c}"] if c in (_J, _P, _RX) else [])
        + ([f"train:{_P}"] if c == _G else [])
        + ([f"train:{_PZ}"] if c == _GZ else [])
        + (["latent2d"] if c in _Z2 else [])
        for c in _CELLS
    },
    **{f"estimate_z:{c}": [f"reduce_z:{c}"] for c in _WITH_Z},
    **{
        f"reduce_z:{c}": [f"evaluate:{c}"]
        + (["appendix_tables"] if c in _TABLE else [])
        + (["report", "z_convergence"] if c in _MAIN else [])
        + (["latent2d"] if c in _Z2 else [])
        for c in _WITH_Z
    },
    **{
        f"evaluate:{c}": (["appendix_tables"] if c in _TABLE else [])
        + (["report"] if c in _MAIN else [])
        for c in _CELLS
    },
}
_LARS_NET = ("model.eps", "model.train_z_samples")  # also read by the output resampler
_Z = ("evaluate.z_samples", "evaluate.z_batch", "evaluate.z_antithetic", "evaluate.z_shards")
_IWAE = (
    "evaluate.iwae_k",
    "evaluate.iwae_batch",
    "evaluate.iwae_k_chunk",
    "evaluate.test_subset",
    "evaluate.elbo_samples",
)


def _readers(key: str) -> set[str]:
    """The smoke jobs whose step reads ``key`` (what step_keys in workflow/plan.py promises)."""
    section = key.split(".")[0]
    if key == "model.hidden":
        return {f"train:{c}" for c in _CELLS}
    if key == "model.latent_dim":  # the z2 variants set their own
        return {f"train:{c}" for c in (_G, _J, _P, _T2, _RX)}
    if key == "model.truncation":  # the t2 variant sets its own T
        return {f"train:{c}" for c in (_J, _P, _JZ, _JZS, _PZ, _RX)}
    if key == "model.acceptance_hidden":  # z2small sets its own; a(x) is as wide as H
        return {f"train:{c}" for c in (_J, _P, _T2, _JZ, _PZ)}
    if key in _LARS_NET:
        return {f"train:{c}" for c in _WITH_Z}
    if key == "variants.t2.truncation":
        return {f"train:{_T2}"}
    if key == "variants.z2small.acceptance_hidden":
        return {f"train:{_JZS}"}
    if section == "model":  # flow keys: no smoke cell has a flow prior
        return set()
    if section == "train":
        return {f"train:{c}" for c in _CELLS if c not in (_P, _PZ)}
    if section == "posthoc":
        return {f"train:{_P}", f"train:{_PZ}"}
    if key in _Z:
        return {f"estimate_z:{c}" for c in _WITH_Z}
    if key in _IWAE:
        return {f"evaluate:{c}" for c in _CELLS}
    if key == "report.samples":
        return {f"sample_grid:{c}" for c in _CELLS}
    if key in ("report.toy2d_steps", "report.toy2d_seed"):
        return {"toy2d"}
    if key == "report.rank_samples":
        return {f"rank:{_J}", f"rank:{_P}", f"rank:{_RX}"}
    if key == "report.latent2d_grid":
        return {"latent2d"}
    if key.startswith("report.mog_"):
        return {"mog2d"}
    if key == "name":
        return {"report", "appendix_tables", "latent2d"}
    if key == "data.mirrors":  # where the data come from is not a parameter of the result
        return set()
    raise AssertionError(f"no expectation for params key {key!r}: add it to _readers")


def _closure(jobs: set[str]) -> set[str]:
    out, todo = set(), list(jobs)
    while todo:
        j = todo.pop()
        if j not in out:
            out.add(j)
            todo += _DOWNSTREAM.get(j, [])
    return out | ({"all"} if out else set())


def _job_label(rule: str, outputs: str) -> str:
    rule = {"train_standard": "train", "train_joint": "train", "train_posthoc": "train"}.get(
        rule, rule
    )
    cell = re.search(
        r"[/_](vae_rx|vae)[/_](gaussian|lars)(-[a-z0-9]+)?[/_](standard|posthoc)[/_]", outputs
    )
    if not cell:
        return rule
    arch, prior, variant, mode = cell.groups()
    return f"{rule}:{'rx/' if arch == 'vae_rx' else ''}{prior}{variant or ''}/{mode}"


def _planned_jobs(stdout: str) -> set[str]:
    jobs = set()
    for block in re.split(r"^(?=(?:local)?rule \w+:$)", stdout, flags=re.M)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
        out = re.search(r"^\s+output: (.*)$", block, flags=re.M)
        jobs.add(_job_label(rule, out.group(1) if out else ""))
    return jobs


def _changed(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v * 2 if v else 1
    if isinstance(v, float):
        return v / 2
    if isinstance(v, str):
        return v + "x"
    if isinstance(v, list):
        return [x + 1 for x in v] if v and isinstance(v[0], int) else ["/nonexistent/mirror"]
    if v is None:
        return 7
    raise AssertionError(v)


#: keys that change the set of cells or move every output: not a "changed value" question
_STRUCTURAL = {
    "seeds",
    "experiments",
    "overrides",
    "paths.runs",
    "paths.reports",
    # which cells have a 2-D latent space (Figs. D.10-D.14 vs Tables D.1-D.6)
    "variants.z2.latent_dim",
    "variants.z2small.latent_dim",
}


@pytest.mark.slow
@pytest.mark.e2e
def test_changing_one_key_reruns_exactly_the_jobs_that_read_it(smoke_all, tmp_path):
    clone = smoke_all
    keys = [
        k for k in _load_dvc_stages_module().param_keys("params/smoke.yaml") if k not in _STRUCTURAL
    ]
    assert len(keys) > 35
    base = yaml.safe_load((clone / "params/smoke.yaml").read_text())

    def plan(key: str) -> tuple[str, set[str]]:
        cfg = json.loads(json.dumps(base))
        *path, leaf = key.split(".")
        node = cfg
        for p in path:
            node = node[p]
        node[leaf] = _changed(node[leaf])
        f = tmp_path / f"{key}.yaml"
        f.write_text(yaml.safe_dump(cfg))
        r = _run(SNAKEMAKE + ["-n", "--configfile", str(f)], clone, timeout=300)
        assert r.returncode == 0, (key, (r.stdout + r.stderr)[-2000:])
        return key, _planned_jobs(r.stdout)

    wrong = {}
    with ThreadPoolExecutor(2) as pool:  # dry runs only read the clone
        for key, got in pool.map(plan, keys):
            want = _closure(_readers(key))
            if got != want:
                wrong[key] = {"extra": sorted(got - want), "missing": sorted(want - got)}
    assert not wrong, json.dumps(wrong, indent=1)


@pytest.mark.slow
@pytest.mark.e2e
def test_paper_target_plans_the_whole_grid_in_a_fresh_clone(clone):
    """The design card's command plans the paper grid: no committed report of another budget
    stands in for it (each budget owns its outputs)."""
    r = _run(
        SNAKEMAKE + ["-n", "reports/table1.md", "--cores", "all", "--resources", "gpu=4"],
        clone,
        timeout=300,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    stats = dict(re.findall(r"^(\w+)\s+(\d+)$", r.stdout.split("Job stats:")[1], flags=re.M))
    counts = {k: int(v) for k, v in stats.items()}
    cfg = yaml.safe_load((REPO / "params/paper.yaml").read_text())

    def cells(appendix: bool) -> int:
        runs = {
            (d, a, run["prior"], run.get("variant"), run["mode"])
            for e in cfg["experiments"]
            if appendix or not e.get("appendix")
            for d in e["datasets"]
            for a in e["archs"]
            for run in e["runs"]
        }
        return len(runs) * len(cfg["seeds"])

    n_train = counts["train_standard"] + counts["train_joint"] + counts.get("train_posthoc", 0)
    assert n_train == cells(appendix=False) >= 24  # Table 1: 4 datasets x 3 archs x 2 + post-hoc
    assert counts["evaluate"] == n_train and counts["report"] == 1
    assert counts["estimate_z"] == cfg["evaluate"]["z_shards"] * counts["reduce_z"] > 0
    # the default target plans Appendix D too: every cell of the paper's programme
    r = _run(SNAKEMAKE + ["-n", "--cores", "all", "--resources", "gpu=4"], clone, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    stats = dict(re.findall(r"^(\w+)\s+(\d+)$", r.stdout.split("Job stats:")[1], flags=re.M))
    assert int(stats["evaluate"]) == cells(appendix=True) > n_train
    assert int(stats["appendix_tables"]) == 1 and int(stats["rank"]) >= 2


# ---------------------------------------------------------------------------------------------
# Report arithmetic on hand-made results (two seeds: mean +- sd)


def test_report_tables_from_known_results(tmp_path):
    from larsvae.reports import metrics, render_main, render_table1
    from larsvae.reports.table1 import load_results, now_utc

    nlls = {("gaussian", "standard"): [90.0, 92.0], ("lars", "standard"): [88.0, 89.0]}
    cells = []
    for (prior, mode), values in nlls.items():
        for seed, v in zip((1, 2), values, strict=True):
            d = tmp_path / f"results/dynamic_mnist/vae/{prior}/{mode}/seed{seed}"
            d.mkdir(parents=True)
            res = {"nll": v, "nll_stderr": 0.5, "k": 1000, "n": 10000}
            if prior == "lars":
                res.update(z=0.25, z_stderr=1e-4, nll_z_stderr=4e-4, acceptance_rate=0.25)
                (d / "z.json").write_text(
                    json.dumps({"z": 0.25, "z_stderr": 1e-4, "estimate": {"n": 10}})
                )
            (d / "nll.json").write_text(json.dumps(res))
            cells.append(
                dict(
                    dataset="dynamic_mnist",
                    arch="vae",
                    prior=prior,
                    mode=mode,
                    seed=seed,
                    nll=str(d / "nll.json"),
                    z=str(d / "z.json") if prior == "lars" else None,
                    curve="",
                    manifest="missing.json",
                )
            )
    spec = {"name": "unit", "seeds": [1, 2], "cells": cells, "budget": {}}
    res = load_results(spec, tmp_path)
    now = now_utc()
    table = render_table1(spec, res, tmp_path, now)
    # means 91 and 88.5; sd over seeds sqrt(2) and sqrt(0.5); paper 84.97 / 83.03
    assert f"**91.00 ± {math.sqrt(2):.2f}** / 84.97 (+6.03)" in table
    assert f"**88.50 ± {math.sqrt(0.5):.2f}** / 83.03 (+5.47)" in table
    assert "+2.50 / +1.94" in table  # LARS gain, ours / paper
    assert "— / 89.11 (—)" in table  # staticMNIST not run
    assert "mean ± sd over seeds" in table and "NOT the paper's budget" in table
    m = metrics(spec, res)
    cell = m["nll"]["dynamic_mnist"]["vae"]["lars_standard"]
    assert cell["nll"] == 88.5 and cell["nll_sd"] == pytest.approx(math.sqrt(0.5), abs=1e-4)
    assert cell["diff_vs_paper"] == pytest.approx(88.5 - 83.03) and cell["z"] == 0.25
    assert m["gain"]["dynamic_mnist"]["vae"]["standard"] == 2.5
    main = render_main(spec, res, tmp_path, now)
    assert "| LARS, post-hoc | — |" in main and "0.25 ± 1.00e-04" in main
    # no Z, so no "SE(NLL) from Z" for the standard prior (it was printed as 0.00e+00)
    assert "| standard prior (N(0, I)) | **91.00 ± 1.41** | 0.500 | — | — | — | — | 84.97 |" in main


def test_report_header_names_the_omniglot_version(tmp_path):
    """Every report using Omniglot says which version (derived or chardata.mat)."""
    from larsvae.data.prepare import OMNIGLOT_VERSION
    from larsvae.reports.table1 import _data_versions

    manifest = {
        "dataset": "omniglot",
        "format_version": 1,
        "variant": "omniglot-105",
        "omniglot_version": OMNIGLOT_VERSION,
        "files": [{"source": "mirror"}],
        "splits": {"train": {"n": 23000}, "valid": {"n": 1345}, "test": {"n": 8115}},
        "array_sha256": {"test": "ab" * 32},
    }
    (tmp_path / "omniglot.json").write_text(json.dumps(manifest))
    (line,) = _data_versions({"cells": [{"manifest": "omniglot.json"}]}, tmp_path)
    assert f"Omniglot version {OMNIGLOT_VERSION.split(':')[0]}" in line
    assert "23000/1345/8115" in line
