"""Bad input through the real ``larsvae`` CLI (subprocesses): exactly one line
``larsvae: error: ...`` naming the key or file, the documented exit status, no traceback,
no partial output. Plus the happy path of estimate-z / reduce-z / evaluate / sample."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import REAL_FASHION, run_cli, train_args, z_args

from larsvae import cli
from larsvae.zestimate import ZEstimate

CASES = [
    "unknown_dataset",
    "missing_mirror",
    "unknown_arch",
    "unknown_prior",
    "truncation_zero",
    "iterations_negative",
    "iterations_noninteger",
    "eps_above_one",
    "eps_zero",
    "typo_key",
    "bad_json",
    "missing_dataset",
    "corrupt_dataset",
    "truncated_checkpoint",
    "truncated_checkpoint_init",
    "posthoc_wrong_arch",
    "posthoc_not_gaussian",
    "lars_without_z",
    "z_underflow",
    "incomplete_shards",
    "duplicate_shards",
    "manifest_truncated",
    "manifest_no_splits",
    "nll_without_nll",
    "shard_zero_units",
    "num_shards_fractional",
    "meta_seed_string",
    "meta_seed_negative",
    "meta_hidden_out_of_bounds",
    "meta_larger_than_weights",
    "memory_too_large",
    "z_batch_memory",
    "nan_loss",
]
if REAL_FASHION.is_dir():  # planted copies of the real mirror (CI has ../shared/datasets)
    CASES += ["mirror_gzip_bomb", "mirror_oversized"]


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
    train = {"iterations": 5, "batch_size": 16}
    assert cli.main(train_args(tiny_dataset_npz, ckpt, train=train)) == 0
    ep = json.dumps(
        {"z_samples": 4000, "z_batch": 500, "iwae_k": 20, "iwae_k_chunk": 10, "test_subset": 16}
    )
    shards = []
    for i in range(2):
        shards.append(tmp_path / f"z/shard{i}of2.json")
        assert cli.main(z_args(ckpt, shards[-1], ep, num_shards="2", shard=i)) == 0
    whole = tmp_path / "z/shard0of1.json"
    assert cli.main(z_args(ckpt, whole, ep)) == 0
    zpath = tmp_path / "z.json"
    assert cli.main(["reduce-z", "--out", str(zpath), *map(str, reversed(shards))]) == 0
    merged = ZEstimate.from_dict(json.loads(zpath.read_text())["estimate"])
    single = ZEstimate.from_dict(json.loads(whole.read_text())["estimate"])
    assert (merged.n, merged.sum, merged.sum_sq) == (single.n, single.sum, single.sum_sq)
    assert 0.0 < merged.mean <= 1.0 and merged.stderr > 0
    nll_path = tmp_path / "nll.json"
    assert (
        cli.main(
            [
                "evaluate",
                "--checkpoint",
                str(ckpt),
                "--z",
                str(zpath),
                "--dataset-file",
                str(tiny_dataset_npz),
                "--eval-params",
                ep,
                "--out",
                str(nll_path),
                "--no-progress",
            ]
        )
        == 0
    )
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


def _shard_file(path, est, shard, num_shards):
    path.write_text(
        json.dumps(
            {
                "checkpoint": "m.pt",
                "checkpoint_sha256": "0" * 64,
                "shard": shard,
                "num_shards": num_shards,
                "seed": est.seed,
                "z_samples": est.num_samples,
                "antithetic": est.antithetic,
                "estimate": est.to_dict(),
            }
        )
    )
    return str(path)


def test_reduce_z_rejects_mismatched_or_incomplete_shards(tmp_path, capsys):
    """reduce-z only merges a complete, consistent set of batches; otherwise one line, exit 2,
    no z.json (a shard of another z_batch used to escape as a ValueError traceback)."""
    from larsvae.distributions import AcceptanceMLP, StandardNormal
    from larsvae.zestimate import estimate_z

    torch.manual_seed(0)
    acc, prop = AcceptanceMLP(2, (8,)), StandardNormal(2)
    out = tmp_path / "z.json"
    # shards 0 and 1 of 2, but written with different batch sizes
    a = estimate_z(acc, prop, 4000, 500, seed=1, shard=0, num_shards=2)
    b = estimate_z(acc, prop, 4000, 1000, seed=1, shard=1, num_shards=2)
    files = [_shard_file(tmp_path / "a.json", a, 0, 2), _shard_file(tmp_path / "b.json", b, 1, 2)]
    assert cli.main(["reduce-z", "--out", str(out), *files]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("larsvae: error: reduce-z:"), err
    assert "batch_size" in err[0] and not out.exists()
    # a shard that lost a batch (truncated by hand or by a bug) is not silently merged
    b = estimate_z(acc, prop, 4000, 500, seed=1, shard=1, num_shards=2)
    lossy = type(b)(b.partials[:-1], b.seed, b.batch_size, b.num_samples, b.antithetic)
    files[1] = _shard_file(tmp_path / "b.json", lossy, 1, 2)
    assert cli.main(["reduce-z", "--out", str(out), *files]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "7 of 8 batches" in err[0] and "[7]" in err[0], err
    assert not out.exists()
    # the complete set merges into the unsharded estimate
    files[1] = _shard_file(tmp_path / "b.json", b, 1, 2)
    assert cli.main(["reduce-z", "--out", str(out), *files]) == 0
    whole = estimate_z(acc, prop, 4000, 500, seed=1)
    assert json.loads(out.read_text())["z"] == whole.mean


def test_estimate_z_odd_sizes_with_antithetic_pairs_is_a_user_error(
    tmp_path, tiny_dataset_npz, capsys
):
    """Antithetic pairs need even z_batch and z_samples: one line naming the keys, exit 2,
    no shard file (this used to be a ValueError traceback from estimate_z)."""
    ckpt = tmp_path / "m" / "model.pt"
    train = {"iterations": 2, "batch_size": 16}
    assert cli.main(train_args(tiny_dataset_npz, ckpt, train=train)) == 0
    capsys.readouterr()
    out = tmp_path / "shard0of1.json"
    for ep in ({"z_samples": 4000, "z_batch": 501}, {"z_samples": 4001, "z_batch": 500}):
        rc = cli.main(z_args(ckpt, out, json.dumps(ep)))
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, err
        assert err[0].startswith("larsvae: error: evaluate.z_batch, evaluate.z_samples"), err
        assert not out.exists()
    # plain Monte Carlo accepts odd sizes
    ep = {"z_samples": 4001, "z_batch": 501, "z_antithetic": False}
    assert cli.main(z_args(ckpt, out, json.dumps(ep))) == 0
    assert json.loads(out.read_text())["estimate"]["n"] == 4001


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--dataset-file", "x.npz", "--arch", "vae", "--prior", "lars", "--out", "m.pt"],
        [
            "estimate-z",
            "--checkpoint",
            "m.pt",
            "--shard",
            "0",
            "--num-shards",
            "1",
            "--out",
            "z.json",
        ],
        ["sample", "--checkpoint", "m.pt", "--out", "s.png"],
    ],
)
def test_negative_seed_is_a_user_error(command, capsys):
    """A negative --seed used to reach numpy's SeedSequence / estimate_z as a traceback."""
    assert cli.main([*command, "--seed", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["larsvae: error: --seed: expected an integer >= 0, got -1"], err
