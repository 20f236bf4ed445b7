"""bench/run.py: a failing check fails the run (after the report is written), reports merge
by device, and the benchmark checks have power (they reject a wrong Z and wrong samples)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import bench_sampler  # noqa: E402
import common  # noqa: E402
import run  # noqa: E402

from larsvae.distributions import ResampledPrior, StandardNormal  # noqa: E402
from larsvae.zestimate import estimate_z  # noqa: E402

FAKE = """
from common import row

def run(device, quick):
    return [row(workload="fake", setting="s", baseline="b", baseline_value=1.0,
                ours_value=2.0, unit="u", higher_is_better=True, limit_value=4.0,
                check="c", check_passed={passed}, goal="g", goal_met=False)]
"""


@pytest.fixture
def fake_bench(tmp_path, monkeypatch):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv(common.FLOPS_ENV.format("CPU"), "1e9")  # no timed matmul
    monkeypatch.setattr(run, "BENCH", tmp_path)
    monkeypatch.setattr(run, "WORKLOADS", ("good", "bad", "absent"))
    (tmp_path / "bench_good.py").write_text(FAKE.format(passed=True))
    (tmp_path / "bench_bad.py").write_text(FAKE.format(passed=False))
    return tmp_path


def test_failed_check_fails_the_run_after_writing_the_report(fake_bench, tmp_path):
    out = tmp_path / "reports" / "benchmarks.json"
    assert run.main(["--only", "good,absent", "--out", str(out)]) == 0
    assert run.main(["--only", "bad", "--out", str(out)]) == 1
    data = json.loads(out.read_text())
    work = data["devices"]["cpu"]["workloads"]
    assert work["absent"]["status"] == "skipped"  # a module that does not exist yet
    assert work["good"]["status"] == "ok"  # kept from the first run
    assert work["bad"]["status"] == "failed" and not work["bad"]["rows"][0]["check_passed"]
    r = work["good"]["rows"][0]
    assert set(r) == set(common.ROW_KEYS) and r["ratio"] == 2.0 and r["fraction_of_limit"] == 0.5
    md = out.with_suffix(".md").read_text()
    assert "**FAIL**" in md and "## GPU (CUDA)" in md and "Not measured yet" in md


def test_merge_keeps_the_other_device(tmp_path):
    out = tmp_path / "benchmarks.json"
    head = {"date": "d", "threads": 1, "flop_rate": 1.0, "quick": True}
    run.write_report(out, run.merge(out, "cuda", head, {"z": {"status": "ok", "rows": []}}))
    data = run.merge(out, "cpu", head, {"z": {"status": "ok", "rows": []}})
    assert set(data["devices"]) == {"cpu", "cuda"}


def test_row_contract_is_checked():
    with pytest.raises(ValueError, match="keys"):
        common.check_row({"workload": "x"})


def test_z_check_rejects_a_wrong_estimate():
    """The quadrature Z of the rank-one acceptance is what estimate_z finds, and a slightly
    different network (output bias + 0.05) is rejected at the benchmark's sizes."""
    acc, v = common.rank_one_acceptance(50, (100, 100))
    z_true, _, _ = common.z_on_line(acc, v)
    est = estimate_z(acc, StandardNormal(50), 200_000, 100_000, seed=1)
    assert abs(est.mean - z_true) < 4 * est.stderr
    with torch.no_grad():
        acc.net[-1].bias += 0.05
    wrong = estimate_z(acc, StandardNormal(50), 200_000, 100_000, seed=1)
    assert abs(wrong.mean - z_true) > 4 * wrong.stderr


def test_sampler_check_rejects_the_proposal():
    """The benchmark's KS test has power: proposals that were never resampled fail it."""
    from scipy import stats

    acc, v = common.rank_one_acceptance(50, (100, 100), seed=1)
    prior = ResampledPrior(StandardNormal(50), acc, truncation=100)
    prior.set_log_z(math.log(common.set_z_on_line(acc, v, 0.015)))
    cdf = bench_sampler.lars_line_cdf(prior, v)
    g = torch.Generator().manual_seed(0)
    z = prior.sample(4000, generator=g)
    assert stats.kstest((z.double() @ v.double()).numpy(), cdf).pvalue > 1e-3
    raw = prior.proposal.sample(4000, generator=g)
    assert stats.kstest((raw.double() @ v.double()).numpy(), cdf).pvalue < 1e-6
