"""bench/run.py: a failing check fails the run (after the report is written), reports merge
by device, and the benchmark checks have power (they reject a wrong Z, wrong samples, another
training schedule and other IWAE noise); the per-architecture FLOP count agrees with the
count by hand."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import bench_arch  # noqa: E402
import bench_sampler  # noqa: E402
import common  # noqa: E402
import run  # noqa: E402

from larsvae.config import ModelConfig, TrainConfig  # noqa: E402
from larsvae.distributions import ResampledPrior, StandardNormal  # noqa: E402
from larsvae.evaluation import iwae_log_likelihood  # noqa: E402
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


SMALL = ModelConfig(latent_dim=8, hidden=64, acceptance_hidden=(32, 32), train_z_samples=128)


def test_arch_flops_agree_with_the_count_by_hand():
    """FlopCounterMode on the trainer step of a VAE: forward F, weight gradients F, input
    gradients F - 784 H (none into x), per example; LARS adds a(z) forward and backward on
    the B posterior samples and, without the first layer's input gradient, on the B + S
    rows of its Z estimate (bench_train's module docstring)."""
    b, d, h = 32, SMALL.latent_dim, SMALL.hidden
    cfg = TrainConfig(batch_size=b, warmup_steps=10)
    stream = bench_arch.grey_stream(b, "cpu", images=256)
    fwd = 784 * h + h * h + 2 * h * d + d * h + h * h + h * 784
    standard = 2 * (3 * fwd - 784 * h) * b
    sizes = (d, *SMALL.acceptance_hidden, 1)
    a = sum(i * o for i, o in zip(sizes[:-1], sizes[1:], strict=True))
    extra = 2 * (b * 3 * a + (b + SMALL.train_z_samples) * (3 * a - sizes[0] * sizes[1]))
    for prior, want in (("gaussian", standard), ("lars", standard + extra)):
        model = bench_arch.make_model("vae", prior, SMALL)
        assert bench_arch.train_step_flops(model, stream, cfg) == want


def test_arch_train_check_rejects_another_schedule():
    """Trainer and textbook steps agree to 1% of an update on the same schedule, and not
    with the textbook's learning rate doubled."""
    model = bench_arch.make_model("hvae", "lars", SMALL)
    stream = bench_arch.grey_stream(32, "cpu", images=256)
    cfg = TrainConfig(batch_size=32, warmup_steps=10)
    apart, moved, *_ = bench_arch.same_updates(model, stream, cfg)
    assert 0 < moved and apart <= 0.01 * moved
    other = dataclasses.replace(cfg, lr=2 * cfg.lr)
    apart, moved, *_ = bench_arch.same_updates(model, stream, cfg, other)
    assert apart > 0.01 * moved


@pytest.mark.parametrize("arch", ["hvae", "convhvae"])
def test_arch_iwae_check_matches_the_loop_and_rejects_other_noise(arch):
    """iwae_log_likelihood equals the per-image loop on the same random numbers (two latent
    layers: z2's noise then z1's, point after point), and another seed is rejected."""
    model = bench_arch.make_model(arch, "lars", SMALL).eval()
    x = bench_arch.binary_images(3, "cpu")
    k = 200  # L k d = 3200, a multiple of 16: the same numbers as point-by-point draws
    ours = iwae_log_likelihood(model, x, k=k, batch_size=100, k_chunk=1000, seed=7)
    ref = bench_arch.per_image_loop(model, x, k, seed=7)
    tol = 1e-6 * float(ref.abs().max())
    assert float((ours - ref).abs().max()) <= tol
    other = bench_arch.per_image_loop(model, x, k, seed=8)
    assert float((ours - other).abs().max()) > 100 * tol
