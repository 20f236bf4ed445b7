"""The smoke DAG through a real single-node SLURM cluster and workflow/profiles/slurm.

Stands up munged + slurmctld + slurmd on this machine (tests/slurm/slurm_up.sh; root, no
systemd), runs ``snakemake --profile workflow/profiles/slurm --configfile params/smoke.yaml
reports/table1.md`` in a temporary copy of the repository, and checks against the
scheduler's own records (``scontrol show job``) that every non-local job of the DAG ran as
a SLURM job that completed, with exactly the CPUs, memory, wall time and GPUs its rule
asked for. The daemons are stopped by PID and /etc/slurm restored in a ``finally``.

Skipped when the SLURM/munge binaries or root are missing, unless LARSVAE_REQUIRE_SLURM=1
(CI), where that is a failure. Install the packages with ``.ci/install_slurm.sh``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
HELPERS = REPO / "tests" / "slurm"
PROFILE = Path("workflow/profiles/slurm")
TARGET = "reports/table1.md"
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


@contextlib.contextmanager
def _slurm_cluster(state: Path):
    """munged + slurmctld + slurmd up (node idle) for the duration of the block."""
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
        env = {**os.environ, "PATH": _path_with_sbin()}
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
            yield env
        finally:
            # Always: also after a failed or timed-out slurm_up.sh, which may have
            # started some daemons before dying.
            subprocess.run(
                [str(HELPERS / "slurm_down.sh"), str(state)],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )


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


def test_smoke_dag_runs_through_slurm_profile(tmp_path):
    _require_slurm()
    work = tmp_path / "repo"
    _copy_worktree(work)
    for needed in ("Snakefile", CONFIGFILE, PROFILE / "config.yaml"):
        assert (work / needed).is_file(), f"{needed} missing from the checkout"

    t0 = time.monotonic()
    with _slurm_cluster(tmp_path / "slurm") as env:
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
            TARGET,
            "--profile",
            str(PROFILE),
            "--configfile",
            CONFIGFILE,
            # The first poll after a submission; the profile's 10 s suits a real cluster,
            # 2 s keeps this DAG of short jobs quick (MinJobAge=600 >> 3 x 2 s).
            "--slurm-init-seconds-before-status-checks",
            "2",
            "--retries",
            "0",  # a failure here is a bug, not a flaky node
        ]
        try:
            run = subprocess.run(
                cmd,
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=SNAKEMAKE_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as exc:
            out = (
                (exc.stdout or b"").decode(errors="replace")
                if isinstance(exc.stdout, bytes)
                else (exc.stdout or "")
            )
            pytest.fail(f"snakemake did not finish in {SNAKEMAKE_TIMEOUT_S} s:\n{out[-6000:]}")
        log = run.stdout + run.stderr
        (tmp_path / "snakemake.log").write_text(log)
        assert run.returncode == 0, f"snakemake via SLURM failed:\n{log[-8000:]}"

        jobs = _snakemake_jobs(log)
        submitted = {int(sm): sl for sm, sl in _SUBMITTED.findall(log)}
        remote = {j for j, info in jobs.items() if not info["local"]}
        assert remote, f"no jobs parsed from the snakemake output:\n{log[-4000:]}"
        # Every non-local job went to SLURM, and nothing else did.
        assert set(submitted) == remote, (submitted, sorted(remote))
        assert len(set(submitted.values())) == len(submitted)

        rules_seen = set()
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
            rules_seen.add(info["rule"])

        assert any(int(j["resources"].get("gpu", 0) or 0) for j in jobs.values()), (
            "the smoke DAG should contain GPU rules; none was seen"
        )
        table = (work / TARGET).read_text()
        assert table.strip(), f"{TARGET} is empty"
        pids = [line.split() for line in (tmp_path / "slurm" / "pids").read_text().splitlines()]
    elapsed = time.monotonic() - t0

    # Teardown left no daemon of ours running.
    for name, pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline")
        alive = cmdline.exists() and name in cmdline.read_bytes().decode(errors="replace")
        assert not alive, f"{name} (pid {pid}) still running after slurm_down.sh"
    assert not (
        Path("/etc/slurm/slurm.conf").exists()
        and str(tmp_path) in Path("/etc/slurm/slurm.conf").read_text()
    ), "/etc/slurm/slurm.conf was not restored"
    print(
        f"smoke DAG via SLURM: {len(submitted)} jobs, rules {sorted(rules_seen)}, "
        f"{elapsed:.0f} s including cluster start/stop"
    )
