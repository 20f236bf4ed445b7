"""The smoke DAG through a real single-node SLURM cluster and workflow/profiles/slurm.

Stands up munged + slurmctld + slurmd on this machine (tests/slurm/slurm_up.sh; root, no
systemd), runs ``snakemake --profile workflow/profiles/slurm --configfile params/smoke.yaml
runs/smoke/reports/table1.md`` in a temporary copy of the repository, and checks against the
scheduler's own records (``scontrol show job``) that every non-local job of the DAG ran as
a SLURM job that completed, with exactly the CPUs, memory, wall time and GPUs its rule
asked for; and that two concurrent ``gpu=1`` jobs get distinct scheduler-assigned GPUs
(fake gres devices) that workflow/scripts/gpu_slot.py passes through. One cluster serves
the module; its daemons are stopped by PID and /etc/slurm restored in a ``finally``.
The smoke data come from the mirror in LARSVAE_DATA_MIRRORS when set (CI sets it).

Skipped when the SLURM/munge binaries or root are missing, unless LARSVAE_REQUIRE_SLURM=1
(CI), where that is a failure. Install the packages with ``.ci/install_slurm.sh``.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

# The whole module runs in about 5-8 minutes on 2 cores; the timeout (pytest-timeout, when
# installed) must exceed the DAG's own timeout so the cluster teardown always runs.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[1]
HELPERS = REPO / "tests" / "slurm"
PROFILE = Path("workflow/profiles/slurm")
TARGET = "runs/smoke/reports/table1.md"  # the smoke budget owns runs/smoke/
CONFIGFILE = "params/smoke.yaml"
REQUIRED_EXES = (
    "munged",
    "munge",
    "unmunge",
    "slurmctld",
    "slurmd",
    "slurmstepd",
    "sbatch",
    "srun",
    "squeue",
    "sinfo",
    "scontrol",
    "scancel",
)
SNAKEMAKE_TIMEOUT_S = int(os.environ.get("LARSVAE_SLURM_DAG_TIMEOUT", "1500"))
LOCK = Path("/tmp/larsvae-test-slurm.lock")  # one test cluster per machine at a time
NGPU = int(os.environ.get("LARSVAE_SLURM_NGPU", "4"))  # fake GPUs slurm_up.sh configures


def _path_with_sbin() -> str:
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def _missing_prerequisites() -> list[str]:
    path = _path_with_sbin()
    missing = [exe for exe in REQUIRED_EXES if shutil.which(exe, path=path) is None]
    if os.geteuid() != 0:
        missing.append("root (the daemons are started directly, there is no systemd)")
    return missing


def _require_slurm() -> None:
    missing = _missing_prerequisites()
    if not missing:
        return
    reason = f"real SLURM test needs {', '.join(missing)} (install: .ci/install_slurm.sh)"
    if os.environ.get("LARSVAE_REQUIRE_SLURM") == "1":
        pytest.fail(f"LARSVAE_REQUIRE_SLURM=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def _copy_worktree(dst: Path) -> None:
    """Copy tracked and untracked-but-not-ignored files: the checkout as CI sees it."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            check=True,
            capture_output=True,
            timeout=60,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():  # deleted-but-tracked files are listed too
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """munged + slurmctld + slurmd up, node idle; yields (env, state_dir).

    Teardown (always, also after a failed or timed-out slurm_up.sh, which may have started
    some daemons before dying) stops exactly the recorded PIDs, restores /etc/slurm, and
    then checks that none of those daemons is still alive."""
    _require_slurm()
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "PATH": _path_with_sbin()}
    LOCK.touch(exist_ok=True)
    with LOCK.open() as lock:
        deadline = time.monotonic() + 600
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test cluster holds {LOCK} for over 600 s")
                time.sleep(1)
        pids = []
        try:
            up = subprocess.run(
                [str(HELPERS / "slurm_up.sh"), str(state)],
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
            )
            if up.returncode != 0:
                logs = "".join(
                    f"\n--- {p.name} ---\n{p.read_text(errors='replace')[-3000:]}"
                    for p in sorted(state.glob("*.log")) + sorted(state.glob("*.out"))
                )
                pytest.fail(f"slurm_up.sh failed:\n{up.stdout}{up.stderr}{logs}")
            pids = [line.split() for line in (state / "pids").read_text().splitlines()]
            yield env, state
        finally:
            down = subprocess.run(
                [str(HELPERS / "slurm_down.sh"), str(state)],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
    assert down.returncode == 0, down.stdout + down.stderr
    for name, pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline")
        alive = cmdline.exists() and name in cmdline.read_bytes().decode(errors="replace")
        assert not alive, f"{name} (pid {pid}) still running after slurm_down.sh"
    conf = Path("/etc/slurm/slurm.conf")
    assert not (conf.exists() and str(state) in conf.read_text()), f"{conf} not restored"


def _run_snakemake(args, cwd: Path, env: dict, log_file: Path) -> str:
    """snakemake ARGS through the SLURM profile in CWD; returns its output or fails."""
    env = {
        **env,
        # Jobs inherit this environment (sbatch --export=ALL): the venv first on PATH.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]]),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("CUDA_VISIBLE_DEVICES", None)  # only SLURM's assignment may set it
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        *args,
        "--profile",
        str(REPO / PROFILE),
        # The first poll after a submission; the profile's 10 s suits a real cluster,
        # 2 s keeps these DAGs of short jobs quick (MinJobAge=600 >> 3 x 2 s).
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--retries",
        "0",  # a failure here is a bug, not a flaky node
    ]
    try:
        run = subprocess.run(
            cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=SNAKEMAKE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        pytest.fail(f"snakemake did not finish in {SNAKEMAKE_TIMEOUT_S} s:\n{out[-6000:]}")
    log = run.stdout + run.stderr
    log_file.write_text(log)
    assert run.returncode == 0, f"snakemake via SLURM failed:\n{log[-8000:]}"
    return log


_BLOCK = re.compile(r"^(local)?rule (\w+):\n((?:    .*\n)+)", re.M)
_SUBMITTED = re.compile(r"^Job (\d+) has been submitted with SLURM jobid (\d+)", re.M)


def _snakemake_jobs(log: str) -> dict[int, dict]:
    """Snakemake's own record of each job: {jobid: {rule, local, threads, resources}}."""
    jobs = {}
    for m in _BLOCK.finditer(log):
        fields = dict(
            line.strip().split(": ", 1) for line in m.group(3).splitlines() if ": " in line
        )
        if "jobid" not in fields:
            continue
        resources = {}
        for item in fields.get("resources", "").split(", "):
            key, _, value = item.partition("=")
            resources[key] = value
        jobs[int(fields["jobid"])] = {
            "rule": m.group(2),
            "local": bool(m.group(1)),
            "threads": int(fields.get("threads", 1)),
            "resources": resources,
        }
    return jobs


def _minutes(limit: str) -> int:
    """SLURM TimeLimit ([D-]HH:MM:SS or MM:SS) -> minutes."""
    days, _, hms = limit.rpartition("-")
    parts = [int(p) for p in hms.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, s = parts
    return (int(days or 0) * 24 + h) * 60 + m + (1 if s else 0)


def _scontrol_job(jobid: str, env) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "show", "job", "-d", "-o", jobid],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return dict(re.findall(r"(\S+?)=(\S*)", out))


GPU_SNAKEFILE = """
rule all:
    input: expand("gpu{i}.txt", i=range(2))

rule gpu_job:
    output: "gpu{i}.txt"
    threads: 1
    resources: gpu=1, mem_mb=200, runtime=5
    # gpu_slot must step aside for SLURM's assignment; the sleep makes the two jobs overlap.
    shell:
        "python {GPU_SLOT} -- sh -c 'sleep 8; "
        "echo $CUDA_VISIBLE_DEVICES $SLURM_JOB_ID > {output}'"
"""


def test_gpu_rules_get_distinct_scheduler_assigned_gpus(slurm, tmp_path):
    """Two concurrent `gpu=1` jobs: SLURM hands each its own device via
    CUDA_VISIBLE_DEVICES, and workflow/scripts/gpu_slot.py leaves that assignment alone."""
    env, _ = slurm
    (tmp_path / "Snakefile").write_text(
        GPU_SNAKEFILE.replace("{GPU_SLOT}", str(REPO / "workflow" / "scripts" / "gpu_slot.py"))
    )
    _run_snakemake([], tmp_path, env, tmp_path / "snakemake.log")
    seen = {}
    for i in range(2):
        cvd, job_id = (tmp_path / f"gpu{i}.txt").read_text().split()
        rec = _scontrol_job(job_id, env)
        assert rec["TresPerJob"] == "gres:gpu:1", rec
        seen[job_id] = (cvd, rec)
    (cvd_a, a), (cvd_b, b) = seen.values()
    # The jobs ran at the same time, so distinct devices are the scheduler's doing.
    assert a["StartTime"] < b["EndTime"] and b["StartTime"] < a["EndTime"], (a, b)
    assert {cvd_a, cvd_b} <= {str(i) for i in range(NGPU)}, (cvd_a, cvd_b)
    assert cvd_a != cvd_b, f"both concurrent GPU jobs got CUDA_VISIBLE_DEVICES={cvd_a}"


def test_smoke_dag_runs_through_slurm_profile(slurm, tmp_path):
    """Every non-local job of the smoke DAG ran as a SLURM job that completed, with the
    CPUs, memory, wall time and GPUs its rule declared (the scheduler's own record)."""
    env, _ = slurm
    work = tmp_path / "repo"
    _copy_worktree(work)
    for needed in ("Snakefile", CONFIGFILE, PROFILE / "config.yaml"):
        assert (work / needed).is_file(), f"{needed} missing from the checkout"

    t0 = time.monotonic()
    log = _run_snakemake(
        [TARGET, "--configfile", CONFIGFILE], work, env, tmp_path / "snakemake.log"
    )
    elapsed = time.monotonic() - t0

    jobs = _snakemake_jobs(log)
    submitted = {int(sm): sl for sm, sl in _SUBMITTED.findall(log)}
    remote = {j for j, info in jobs.items() if not info["local"]}
    assert remote, f"no jobs parsed from the snakemake output:\n{log[-4000:]}"
    # Every non-local job went to SLURM, each as its own SLURM job.
    assert set(submitted) == remote, (submitted, sorted(remote))
    assert len(set(submitted.values())) == len(submitted)

    for sm_id, slurm_id in sorted(submitted.items()):
        info, rec = jobs[sm_id], _scontrol_job(slurm_id, env)
        what = f"rule {info['rule']} (snakemake job {sm_id}, SLURM job {slurm_id})"
        assert rec.get("JobState") == "COMPLETED", f"{what}: {rec.get('JobState')}"
        assert rec.get("ExitCode") == "0:0", f"{what}: exit {rec.get('ExitCode')}"
        assert rec.get("Comment", "").startswith(f"rule_{info['rule']}"), what
        # threads -> --cpus-per-task; mem_mb -> --mem; runtime -> -t; gpu -> --gpus.
        assert int(rec["NumCPUs"]) == info["threads"], (what, rec["NumCPUs"])
        res = info["resources"]
        assert rec["MinMemoryNode"] == f"{res['mem_mb']}M", (what, rec["MinMemoryNode"])
        assert _minutes(rec["TimeLimit"]) == int(res["runtime"]), (what, rec["TimeLimit"])
        gpus = int(res.get("gpu", 0) or 0)
        if gpus:
            assert rec.get("TresPerJob") == f"gres:gpu:{gpus}", (what, rec)
            assert rec.get("JOB_GRES") == f"gpu:{gpus}", (what, rec)
        else:
            assert "gpu" not in rec.get("TresPerJob", ""), (what, rec)

    rules = sorted({jobs[j]["rule"] for j in submitted})
    for rule in ("prepare_data", "estimate_z", "reduce_z", "evaluate", "report"):
        assert rule in rules, f"rule {rule} did not run through SLURM: {rules}"
    assert any(int(jobs[j]["resources"].get("gpu", 0) or 0) for j in submitted), (
        "the smoke DAG should contain GPU rules; none was submitted"
    )
    assert (work / TARGET).read_text().strip(), f"{TARGET} is empty"
    print(f"smoke DAG via SLURM: {len(submitted)} jobs ({', '.join(rules)}) in {elapsed:.0f} s")
