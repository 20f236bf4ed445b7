"""Every job's command line, per budget, is what it was when tests/plans/<budget>.txt was written.

Snakemake reruns a job when its shell command (the "code" trigger) or its params change; the
params reach each job through its command line. So a refactor that leaves these files equal
leaves every finished cell finished: a long run of another budget is not invalidated. A change
that means to alter a job rewrites the files on purpose and says so in its commit:

    python tests/test_plan_stability.py --write
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PLANS = REPO / "tests" / "plans"
#: smoke exercises every rule; grid is the budget whose long runs are published in results/
BUDGETS = ("smoke", "grid")


def job_lines(budget: str) -> list[str]:
    """'rule: shell command' of every job `snakemake all --forceall` plans for ``budget``,
    sorted (Snakemake's order of independent jobs is not fixed)."""
    snakemake = Path(sys.executable).with_name("snakemake")
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run(
            [str(snakemake), "all", "-n", "-p", "--forceall", "--cores", "1"]
            + ["--configfile", str(REPO / f"params/{budget}.yaml")]
            + ["--snakefile", str(REPO / "Snakefile"), "--directory", d],
            capture_output=True,
            text=True,
            timeout=900,
        )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    lines, rule = [], None
    for line in out.splitlines():
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
        elif line.startswith("Shell command: "):
            lines.append(f"{rule}: {line.removeprefix('Shell command: ')}")
    assert lines, out[-3000:]
    return sorted(lines)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "budget", [pytest.param(b, marks=[pytest.mark.slow] if b != "smoke" else []) for b in BUDGETS]
)
def test_every_job_command_is_unchanged(budget):
    want = (PLANS / f"{budget}.txt").read_text().splitlines()
    got = job_lines(budget)
    gone, new = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not gone and not new, (
        f"{budget}: {len(gone)} job(s) changed or gone, {len(new)} new; first gone: "
        f"{gone[:1]}; first new: {new[:1]} (an intended change: python {__file__} --write)"
    )


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: python {sys.argv[0]} --write")
    PLANS.mkdir(exist_ok=True)
    for b in BUDGETS:
        (PLANS / f"{b}.txt").write_text("\n".join(job_lines(b)) + "\n")
        print(f"wrote {PLANS / f'{b}.txt'}")
