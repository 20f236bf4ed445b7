"""The Z estimate's record and its file readers, checked by hand: the summary values of
``ZEstimate`` from a few unit values worked out on paper, the JSON form, the shard keys
of a merge, and every refusal of ``read_z`` / ``read_z_file`` / ``check_batches`` (each
with a file that breaks exactly one rule)."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from larsvae.distributions import AcceptanceMLP, StandardNormal
from larsvae.utils import UserError, file_sha256
from larsvae.zestimate import (
    FORMAT,
    BatchPartial,
    ZEstimate,
    check_batches,
    check_z_value,
    estimate_z,
    read_z,
    read_z_file,
    z_problem,
)


def partial(index: int, units: list[float], samples: int | None = None) -> BatchPartial:
    """The batch record of the given unit values (its m2 about its own mean)."""
    mean = sum(units) / len(units)
    return BatchPartial(
        index,
        len(units),
        len(units) if samples is None else samples,
        sum(units),
        sum(u * u for u in units),
        sum((u - mean) ** 2 for u in units),
    )


def single(mean: float) -> ZEstimate:
    """A one-unit estimate whose mean is ``mean``."""
    return ZEstimate((partial(0, [mean]),), seed=0, batch_size=1, num_samples=1, antithetic=False)


# -- the summary values ------------------------------------------------------------------


def test_summary_values_of_three_units_by_hand():
    """Units 0.1, 0.4 (batch 0) and 0.7 (batch 1): mean 0.4, unbiased variance
    (0.09 + 0 + 0.09) / 2 = 0.09, SE = sqrt(0.09 / 3); the batches may come in any order."""
    est = ZEstimate(
        (partial(1, [0.7]), partial(0, [0.1, 0.4])),
        seed=3,
        batch_size=2,
        num_samples=3,
        antithetic=False,
    )
    assert [p.index for p in est.partials] == [0, 1]
    assert est.n == 3 and est.samples == 3
    assert est.sum == pytest.approx(1.2, rel=1e-15)
    assert est.sum_sq == pytest.approx(0.01 + 0.16 + 0.49, rel=1e-15)
    assert est.mean == pytest.approx(0.4, rel=1e-15)
    assert est.stderr == pytest.approx(math.sqrt(0.09 / 3), rel=1e-12)
    assert est.log_mean == pytest.approx(math.log(0.4), rel=1e-15)
    assert est.num_batches == 2 and est.complete


def test_samples_count_evaluations_and_units_count_pairs():
    """With antithetic pairs a batch of 4 evaluations holds 2 units: n counts units (the
    standard error's n), samples counts evaluations."""
    est = ZEstimate(
        (partial(0, [0.2, 0.6], samples=4), partial(1, [0.5], samples=2)),
        seed=0,
        batch_size=4,
        num_samples=6,
        antithetic=True,
    )
    assert (est.n, est.samples) == (3, 6)
    assert est.num_batches == 2 and est.complete


def test_one_unit_has_no_stderr_and_no_unit_has_no_mean():
    one = single(0.25)
    assert one.mean == 0.25 and one.log_mean == math.log(0.25) and math.isnan(one.stderr)
    empty = ZEstimate((), seed=0, batch_size=10, num_samples=10, antithetic=False)
    assert empty.n == 0 and empty.samples == 0
    assert math.isnan(empty.mean) and math.isnan(empty.stderr) and math.isnan(empty.log_mean)
    assert not empty.complete


def test_zero_mean_has_log_minus_infinity():
    est = ZEstimate(
        (partial(0, [0.0, 0.0]),), seed=0, batch_size=2, num_samples=2, antithetic=False
    )
    assert est.mean == 0.0 and est.log_mean == -math.inf and est.stderr == 0.0


def test_a_missing_batch_is_incomplete():
    """Batches 0 and 2 of 3 (num_samples 5, batch_size 2: ceil(5 / 2) = 3)."""
    est = ZEstimate(
        (partial(0, [0.1, 0.2]), partial(2, [0.3])),
        seed=0,
        batch_size=2,
        num_samples=5,
        antithetic=False,
    )
    assert est.num_batches == 3 and not est.complete


# -- merge ---------------------------------------------------------------------------------


def test_merge_of_hand_shards_equals_the_whole():
    kw = dict(seed=4, batch_size=2, num_samples=5, antithetic=False)
    b0, b1, b2 = partial(0, [0.1, 0.2]), partial(1, [0.9, 0.3]), partial(2, [0.5])
    whole = ZEstimate((b0, b1, b2), **kw)
    merged = ZEstimate.merge([ZEstimate((b2,), **kw), ZEstimate((b0, b1), **kw)])
    assert merged == whole and merged.complete
    assert (merged.seed, merged.batch_size, merged.num_samples) == (4, 2, 5)
    assert merged.stderr.hex() == whole.stderr.hex()


@pytest.mark.parametrize(
    "key, value", [("seed", 5), ("batch_size", 3), ("num_samples", 6), ("antithetic", True)]
)
def test_merge_refuses_shards_that_differ_in_one_run_key(key, value):
    kw = dict(seed=4, batch_size=2, num_samples=5, antithetic=False)
    a = ZEstimate((partial(0, [0.1, 0.2]),), **kw)
    b = ZEstimate((partial(1, [0.3, 0.4]),), **{**kw, key: value})
    with pytest.raises(ValueError, match="different runs"):
        ZEstimate.merge([a, b])


def test_merge_of_one_shard_is_that_shard():
    one = ZEstimate(
        (partial(0, [0.1, 0.2]),), seed=9, batch_size=2, num_samples=2, antithetic=False
    )
    assert ZEstimate.merge([one]) == one


def test_merge_of_nothing_is_refused():
    with pytest.raises(ValueError, match="at least one"):
        ZEstimate.merge([])


# -- JSON form -----------------------------------------------------------------------------


def test_to_dict_by_hand():
    est = ZEstimate(
        (partial(0, [0.5, 0.25]), partial(1, [0.75])),
        seed=7,
        batch_size=2,
        num_samples=3,
        antithetic=False,
    )
    d = est.to_dict()
    assert d == {
        "format": FORMAT,
        "seed": 7,
        "batch_size": 2,
        "num_samples": 3,
        "antithetic": False,
        "complete": True,
        "n": 3,
        "samples": 3,
        "mean": 0.5,
        "stderr": est.stderr,
        "log_mean": math.log(0.5),
        "batches": [
            [0, 2, 2, (0.75).hex(), (0.3125).hex(), (0.03125).hex()],
            [1, 1, 1, (0.75).hex(), (0.5625).hex(), (0.0).hex()],
        ],
    }
    assert est.stderr == pytest.approx(math.sqrt(0.0625 / 3), rel=1e-12)  # variance 1/16
    assert ZEstimate.from_dict(json.loads(json.dumps(d))) == est


def test_undefined_summary_values_are_null_in_json():
    d = single(0.5).to_dict()
    assert d["stderr"] is None and d["mean"] == 0.5
    empty = ZEstimate((), seed=0, batch_size=1, num_samples=1, antithetic=False).to_dict()
    assert empty["mean"] is None and empty["log_mean"] is None and empty["n"] == 0
    assert json.dumps(empty)  # plain JSON, no NaN


def test_batch_partial_list_form():
    p = BatchPartial(3, 2, 4, 0.1, 0.02, 1e-300)
    assert p.to_list() == [3, 2, 4, (0.1).hex(), (0.02).hex(), (1e-300).hex()]
    assert BatchPartial.from_list(p.to_list()) == p
    assert BatchPartial.from_list(tuple(p.to_list())) == p
    for bad in (p.to_list()[:5], [*p.to_list(), 0], {"index": 3}):
        with pytest.raises(ValueError, match="6 entries"):
            BatchPartial.from_list(bad)


def test_from_dict_names_what_is_wrong():
    d = single(0.5).to_dict()
    with pytest.raises(ValueError, match="format"):
        ZEstimate.from_dict({**d, "format": "larsvae.zestimate/0"})
    with pytest.raises(ValueError, match="format"):
        ZEstimate.from_dict([d])
    for key in ("batches", "seed", "batch_size", "num_samples", "antithetic"):
        with pytest.raises(ValueError, match=f"missing key '{key}'"):
            ZEstimate.from_dict({k: v for k, v in d.items() if k != key})
    with pytest.raises(ValueError, match="n=2 does not match its batches"):
        ZEstimate.from_dict({**d, "n": 2})
    # n is a summary for people: absent or null, it is recomputed
    assert ZEstimate.from_dict({k: v for k, v in d.items() if k != "n"}).n == 1
    assert ZEstimate.from_dict({**d, "n": None}).n == 1


# -- a possible Z ------------------------------------------------------------------------


@pytest.mark.parametrize("mean", [0.0, 1e-300, 0.5, 1.0])
def test_every_mean_in_the_unit_interval_is_a_possible_z(mean):
    assert z_problem(single(mean)) is None
    check_z_value(single(mean), "z.json")


@pytest.mark.parametrize(
    "mean, words",
    [
        (1.0 + 2**-52, "> 1 is impossible"),
        (2.0, "> 1 is impossible"),
        (-1e-300, "< 0 is impossible"),
        (math.nan, "not a finite number"),
        (math.inf, "not a finite number"),
        (-math.inf, "not a finite number"),
    ],
)
def test_impossible_z_is_named(mean, words):
    assert words in z_problem(single(mean))
    with pytest.raises(UserError, match=f"^z.json: Z = .*{words}"):
        check_z_value(single(mean), "z.json")


# -- the arguments of estimate_z -----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size: expected an integer >= 1"),
        ({"batch_size": True}, "batch_size: expected an integer >= 1"),
        ({"num_samples": True}, "num_samples: expected an integer >= 1"),
        ({"num_samples": 0}, "num_samples: expected an integer >= 1"),
        ({"seed": -1}, "seed: expected an integer >= 0"),
        ({"seed": 1.0}, "seed: expected an integer >= 0"),
        ({"num_shards": True}, "num_shards: expected an integer >= 1"),
        ({"shard": -1}, "shard: expected an integer in"),
        ({"shard": True, "num_shards": 3}, "shard: expected an integer in"),
        ({"shard": 1.0, "num_shards": 3}, "shard: expected an integer in"),
        ({"num_samples": 11}, "batch_size and num_samples must be even"),
    ],
)
def test_estimate_z_refuses_arguments(kwargs, match):
    args = {"num_samples": 10, "batch_size": 4, **kwargs}
    with pytest.raises(ValueError, match=f"^{re.escape(match)}"):
        estimate_z(AcceptanceMLP(2, hidden=(4,)), StandardNormal(2), **args)


class PlainNormal(torch.nn.Module):
    """A proposal that has ``sample`` and says nothing about its symmetry."""

    def sample(self, n, generator=None):
        return torch.randn(n, 2, generator=generator)


def test_a_proposal_that_does_not_say_it_is_symmetric_gets_plain_monte_carlo():
    with pytest.warns(UserWarning, match="needs a symmetric proposal"):
        est = estimate_z(AcceptanceMLP(2, hidden=(4,)), PlainNormal(), 10, 4, antithetic=True)
    assert not est.antithetic and est.n == 10


def test_smallest_arguments_are_accepted():
    """seed 0, one sample in one batch, the last shard of several; odd sizes without pairs."""
    acc, prop = AcceptanceMLP(2, hidden=(4,)), StandardNormal(2)
    est = estimate_z(acc, prop, 1, 1, antithetic=False, seed=0)
    assert est.n == 1 and est.complete
    last = estimate_z(acc, prop, 5, 1, antithetic=False, shard=4, num_shards=5)
    assert [p.index for p in last.partials] == [4]
    assert estimate_z(acc, prop, 7, 3, antithetic=False).samples == 7


# -- Z files -------------------------------------------------------------------------------


def z_file(tmp_path, est: ZEstimate, checkpoint=None, name="z.json", **extra):
    """A z.json as reduce-z writes it (or a shard, with ``shard=`` in ``extra``)."""
    obj = {"estimate": est.to_dict(), **extra}
    if checkpoint is not None:
        obj["checkpoint_sha256"] = file_sha256(checkpoint)
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"the weights")
    return path


def test_read_z_returns_the_complete_estimate_of_its_checkpoint(tmp_path, ckpt):
    est = ZEstimate(
        (partial(0, [0.1, 0.3]), partial(1, [0.2])),
        seed=1,
        batch_size=2,
        num_samples=3,
        antithetic=False,
    )
    assert read_z(z_file(tmp_path, est, ckpt), ckpt) == est
    obj, back = read_z_file(z_file(tmp_path, est, ckpt))
    assert back == est and obj["checkpoint_sha256"] == file_sha256(ckpt)


def test_read_z_refuses_a_shard(tmp_path, ckpt):
    path = z_file(tmp_path, single(0.5), ckpt, shard=0, num_shards=1)
    with pytest.raises(UserError, match=r"one Z shard \(0 of 1\)"):
        read_z(path, ckpt)


def test_read_z_refuses_an_incomplete_estimate(tmp_path, ckpt):
    est = ZEstimate((partial(1, [0.5]),), seed=0, batch_size=1, num_samples=2, antithetic=False)
    with pytest.raises(UserError, match="holds 1 of 2 batches"):
        read_z(z_file(tmp_path, est, ckpt), ckpt)


def test_read_z_refuses_an_estimate_of_another_checkpoint(tmp_path, ckpt):
    other = tmp_path / "other.pt"
    other.write_bytes(b"other weights")
    with pytest.raises(UserError, match="another checkpoint"):
        read_z(z_file(tmp_path, single(0.5), other), ckpt)
    with pytest.raises(UserError, match="records no checkpoint_sha256"):
        read_z(z_file(tmp_path, single(0.5)), ckpt)
    with pytest.raises(UserError, match="records no checkpoint_sha256"):
        read_z(z_file(tmp_path, single(0.5), checkpoint_sha256=""), ckpt)


@pytest.mark.parametrize("mean", [1.5, -0.25])
def test_read_z_refuses_an_impossible_z(tmp_path, ckpt, mean):
    path = z_file(tmp_path, single(mean), ckpt)
    with pytest.raises(UserError, match=f"^--z {re.escape(str(path))}: Z = .* is impossible"):
        read_z(path, ckpt)


def test_read_z_refuses_an_underflowing_z(tmp_path, ckpt):
    with pytest.raises(UserError, match="underflows"):
        read_z(z_file(tmp_path, single(0.0), ckpt), ckpt)


def test_read_z_file_refuses_what_reduce_z_never_writes(tmp_path):
    path = tmp_path / "z.json"
    path.write_text(json.dumps({"z": 0.5}))
    with pytest.raises(UserError, match="not a Z file written by reduce-z"):
        read_z_file(path)
    path.write_text(json.dumps({"estimate": {"format": FORMAT, "seed": 0}}))
    with pytest.raises(UserError, match="not a Z file written by reduce-z"):
        read_z_file(path)


@pytest.mark.parametrize(
    "units, samples",
    [(0, 0), (0, 3), (4, 3), (1.0, 2), (1, 2.0), (None, 2)],
)
def test_batch_records_need_at_least_one_unit_and_no_more_units_than_samples(units, samples):
    est = {"batches": [[0, 1, 1, "0x0p+0", "0x0p+0", "0x0p+0"], [1, units, samples, "", "", ""]]}
    with pytest.raises(UserError, match=r"z.json: batch 1 records .* units from .* samples"):
        check_batches(est, "z.json")


@pytest.mark.parametrize("units, samples", [(1, 1), (1, 2), (3, 3)])
def test_good_batch_records_pass(units, samples):
    check_batches({"batches": [[0, units, samples, "", "", ""]]}, "z.json")


def test_batch_records_of_another_shape_are_left_to_from_dict():
    """Only 6-entry records are checked here; a malformed one is worded by from_dict."""
    check_batches({"batches": [[0, 0, 0], "junk", [0, 0, 0, 0, 0, 0, 0]]}, "z.json")
    check_batches({"batches": "junk"}, "z.json")
    check_batches(None, "z.json")
    check_batches([[0, 0, 0, "", "", ""]], "z.json")


def test_a_malformed_record_does_not_hide_a_damaged_one_after_it():
    est = {"batches": [[0, 1, 1], "junk", [2, 0, 5, "", "", ""]]}
    with pytest.raises(UserError, match="batch 2 records 0 units from 5 samples"):
        check_batches(est, "z.json")


def test_read_z_file_checks_batch_records(tmp_path):
    d = single(0.5).to_dict()
    d["batches"][0][1] = 0
    path = tmp_path / "z.json"
    path.write_text(json.dumps({"estimate": d}))
    with pytest.raises(UserError, match=f"^--z {re.escape(str(path))}: batch 0 records 0 units"):
        read_z_file(path)


def test_read_z_file_names_a_file_that_is_not_json(tmp_path):
    path = tmp_path / "z.json"
    path.write_text("{0.5")
    with pytest.raises(UserError, match=f"^--z {re.escape(str(path))}: not valid JSON"):
        read_z_file(path)
