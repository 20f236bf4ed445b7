"""Bad input through the real ``larsvae`` CLI (subprocesses): exactly one line
``larsvae: error: ...`` naming the key or file, the documented exit status, no traceback,
no partial output. Plus the happy path of estimate-z / reduce-z / evaluate / sample."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import SMALL_MODEL, run_cli

from larsvae import cli
from larsvae.zestimate import ZEstimate

CASES = [
    "unknown_dataset", "missing_mirror", "unknown_arch", "unknown_prior", "truncation_zero",
    "iterations_negative", "iterations_noninteger", "eps_above_one", "eps_zero", "typo_key",
    "bad_json", "missing_dataset", "corrupt_dataset", "truncated_checkpoint",
    "truncated_checkpoint_init", "posthoc_wrong_arch", "posthoc_not_gaussian",
    "lars_without_z", "z_underflow", "incomplete_shards", "duplicate_shards", "nan_loss",
]


def test_every_case_is_listed(bad_input_results):
    assert sorted(bad_input_results) == sorted(CASES)


@pytest.mark.parametrize("name", CASES)
def test_bad_input_gives_one_clear_line(bad_input_results, name):
    c = bad_input_results[name]
    lines = c.stderr.strip("\n").splitlines()
    assert c.rc == c.rc_expected, c.stderr
    assert "Traceback" not in c.stderr
    assert len(lines) == 1, c.stderr
    assert lines[0].startswith("larsvae: error: "), lines[0]
    for needle in c.expect:
        assert needle in lines[0], (needle, lines[0])
    assert c.leftovers == [], c.leftovers


def test_nan_run_kept_its_last_good_checkpoint(bad_input_results):
    c = bad_input_results["nan_loss"]
    ck = torch.load(c.out_dir / "model.pt.resume.pt", weights_only=True)
    assert ck["step"] == 5 and ck["kind"] == "resume"


def test_usage_errors_are_one_line_too():
    p = run_cli(["train", "--arch", "vae"])
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert p.stderr.startswith("larsvae: error: the following arguments are required")
    p = run_cli(["no-such-command"])
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no-such-command" in p.stderr


def test_estimate_reduce_evaluate_sample(tmp_path, tiny_dataset_npz):
    """Happy path, in-process: sharded Z merges exactly into the unsharded estimate, and
    evaluate reports the NLL with Z, its SE and the acceptance statistics."""
    ckpt = tmp_path / "m" / "model.pt"
    assert cli.main(["train", "--dataset-file", str(tiny_dataset_npz), "--arch", "vae",
                     "--prior", "lars", "--seed", "0", "--model-params", json.dumps(SMALL_MODEL),
                     "--train-params", '{"iterations": 5, "batch_size": 16}',
                     "--out", str(ckpt), "--no-progress"]) == 0
    ep = json.dumps({"z_samples": 4000, "z_batch": 500, "iwae_k": 20, "iwae_k_chunk": 10,
                     "test_subset": 16})
    shards = []
    for i in range(2):
        shards.append(tmp_path / f"z/shard{i}of2.json")
        assert cli.main(["estimate-z", "--checkpoint", str(ckpt), "--shard", str(i),
                         "--num-shards", "2", "--eval-params", ep, "--out", str(shards[-1]),
                         "--no-progress"]) == 0
    whole = tmp_path / "z/shard0of1.json"
    assert cli.main(["estimate-z", "--checkpoint", str(ckpt), "--shard", "0", "--num-shards",
                     "1", "--eval-params", ep, "--out", str(whole), "--no-progress"]) == 0
    zpath = tmp_path / "z.json"
    assert cli.main(["reduce-z", "--out", str(zpath), *map(str, reversed(shards))]) == 0
    merged = ZEstimate.from_dict(json.loads(zpath.read_text())["estimate"])
    single = ZEstimate.from_dict(json.loads(whole.read_text())["estimate"])
    assert (merged.n, merged.sum, merged.sum_sq) == (single.n, single.sum, single.sum_sq)
    assert 0.0 < merged.mean <= 1.0 and merged.stderr > 0
    nll_path = tmp_path / "nll.json"
    assert cli.main(["evaluate", "--checkpoint", str(ckpt), "--z", str(zpath),
                     "--dataset-file", str(tiny_dataset_npz), "--eval-params", ep,
                     "--out", str(nll_path), "--no-progress"]) == 0
    r = json.loads(nll_path.read_text())
    assert r["n"] == 16 and r["k"] == 20 and math.isfinite(r["nll"]) and r["nll"] > 0
    assert r["log_z"] == pytest.approx(math.log(merged.mean), abs=1e-12)
    assert r["nll_stderr"] > 0 and r["nll_z_stderr"] >= 0
    # T = 100: mean proposals per sample = (1 - (1 - Z)^T) / Z (truncated geometric)
    z = merged.mean
    assert r["mean_proposals"] == pytest.approx((1 - (1 - z) ** 100) / z, rel=0.05)
    png = tmp_path / "s.png"
    assert cli.main(["sample", "--checkpoint", str(ckpt), "--n", "16", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
