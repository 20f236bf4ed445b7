"""The published cell's record, rule by rule: what ``publish_cell`` writes (byte for byte),
what ``check_nll_record`` and ``check_published`` refuse (each case breaks one rule), the
tolerance of the nll check, the code version and the cost hours, each worked out by hand."""

from __future__ import annotations

import json
import math
import re
import statistics
import subprocess
import time
from datetime import datetime, timezone

import pytest

from larsvae.publish import (
    _diff,
    check_nll_record,
    check_published,
    code_version,
    cost_hours,
    publish_cell,
    train_seconds,
)
from larsvae.utils import UserError, file_sha256

CELL = dict(dataset="dynamic_mnist", arch="vae", prior="lars", mode="standard", seed=1)
PARAMS = {"train": {"train": {"iterations": 10, "lr": 0.001}}, "evaluate": {"iwae_k": 5}}


def nll_record(log_px, **extra):
    return {"nll": -statistics.fmean(log_px), "n": len(log_px), "log_px": log_px, **extra}


# -- check_nll_record ----------------------------------------------------------------------


@pytest.mark.parametrize("nll", [True, "90.5", None, [90.5]])
def test_nll_must_be_a_number(nll):
    with pytest.raises(UserError, match="no number 'nll'"):
        check_nll_record({**nll_record([-90.5]), "nll": nll}, "nll.json")


@pytest.mark.parametrize("nll", [math.inf, -math.inf, math.nan])
def test_nll_must_be_finite(nll):
    with pytest.raises(UserError, match="is not finite"):
        check_nll_record({**nll_record([-90.5]), "nll": nll}, "nll.json")


def test_an_integer_nll_is_a_number():
    check_nll_record({"nll": 90, "n": 2, "log_px": [-89, -91]}, "nll.json")


@pytest.mark.parametrize(
    "change",
    [
        {"log_px": [], "n": 0},
        {"n": 3},
        {"n": None},
        {"log_px": (-90.0, -91.0)},
        {"log_px": "-90.0"},
    ],
)
def test_per_image_values_must_be_a_list_of_length_n(change):
    record = {**nll_record([-90.0, -91.0]), **change}
    with pytest.raises(UserError, match="no per-image 'log_px' of length n"):
        check_nll_record(record, "nll.json")


@pytest.mark.parametrize("bad", [math.inf, "-90.0", None])
def test_per_image_values_must_be_finite_numbers(bad):
    record = {"nll": 90.0, "n": 2, "log_px": [-90.0, bad]}
    with pytest.raises(UserError, match="non-finite"):
        check_nll_record(record, "nll.json")


@pytest.mark.parametrize(
    "log_px, nll, ok",
    [
        # |mean| >= 1: a relative tolerance of 1e-9
        ([-1e6], 1e6 * (1 + 0.5e-9), True),
        ([-1e6], 1e6 * (1 + 2e-9), False),
        ([-1e6], 1e6 * (1 - 2e-9), False),
        # |mean| < 1: an absolute one of 1e-9
        ([-0.5], 0.5 + 0.5e-9, True),
        ([-0.5], 0.5 + 1.5e-9, False),
        ([0.0], 1e-9, True),  # a difference of exactly the tolerance is within it
        ([-0.25, -0.75], 0.5, True),
        ([-0.25, -0.75], -0.5, False),
        ([0.25, 0.75], -0.5, True),
    ],
)
def test_nll_is_the_negative_mean_within_one_part_in_a_billion(log_px, nll, ok):
    record = {"nll": nll, "n": len(log_px), "log_px": log_px}
    if ok:
        check_nll_record(record, "nll.json")
    else:
        with pytest.raises(UserError, match="not the negative mean of its per-image log_px"):
            check_nll_record(record, "nll.json")


# -- train_seconds and code_version --------------------------------------------------------


def test_train_seconds_skips_lines_it_cannot_read(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(
        'done: {"wall_time_s": "soon"}\n'
        'done: {"steps": 3}\n'
        "done: {not json}\n"
        'done: {"wall_time_s": 2.25}\n'
        'done: {"wall_time_s": 1.5}   \n'
    )
    assert train_seconds(log) == 3.75
    log.write_text('done: {"steps": 3}\ndone: {"wall_time_s": null}\n')
    assert train_seconds(log) is None
    assert train_seconds(None) is None


def test_train_seconds_reads_a_log_with_broken_bytes(tmp_path):
    log = tmp_path / "train.log"
    log.write_bytes(b'\xff\xfe progress\ndone: {"wall_time_s": 7.0}\n')
    assert train_seconds(log) == 7.0


def test_code_version_outside_git(tmp_path):
    assert code_version(tmp_path) == {"commit": None, "src_modified": None}


def test_code_version_names_the_commit_and_whether_src_differs(tmp_path, monkeypatch):
    def git(*args):
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=tmp_path,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    git("init", "-q")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "m.py").write_text("x = 1\n")
    (tmp_path / "README").write_text("r\n")
    git("add", ".")
    git("commit", "-q", "-m", "c")
    head = git("rev-parse", "HEAD")
    assert code_version(tmp_path) == {"commit": head, "src_modified": False}
    monkeypatch.chdir(tmp_path)  # the default root is the working directory
    assert code_version() == {"commit": head, "src_modified": False}
    files = finished_cell(tmp_path / "cell", z=False)
    prov = publish_cell(**files, params=PARAMS, out_dir=tmp_path / "out")
    assert prov["code"] == {"commit": head, "src_modified": False}
    (tmp_path / "README").write_text("changed outside src\n")
    assert code_version(tmp_path) == {"commit": head, "src_modified": False}
    (tmp_path / "src" / "m.py").write_text("x = 2\n")
    assert code_version(tmp_path) == {"commit": head, "src_modified": True}


# -- publish_cell --------------------------------------------------------------------------


def finished_cell(tmp_path, *, z=True, shard_seconds=(30.0, 12.5)):
    tmp_path.mkdir(parents=True, exist_ok=True)
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    files = dict(checkpoint=ckpt)
    extra = {}
    if z:
        files["z"] = tmp_path / "z.json"
        files["z"].write_text(json.dumps({"z": 0.25, "z_stderr": 1e-4}))
        extra["z_sha256"] = file_sha256(files["z"])
        shards = []
        for i, s in enumerate(shard_seconds):
            shards.append(tmp_path / f"shard{i}.json")
            shards[-1].write_text(json.dumps({} if s is None else {"wall_time_s": s}))
        files["z_shards"] = tuple(shards)
    files["nll"] = tmp_path / "nll.json"
    record = nll_record(
        [-90.0, -91.0],
        **CELL,
        checkpoint_sha256=file_sha256(ckpt),
        dataset_sha256="d" * 64,
        wall_time_s=12.0,
        device="cpu",
        **extra,
    )
    files["nll"].write_text(json.dumps(record, indent=2))
    files["curve"] = tmp_path / "curve.tsv"
    files["curve"].write_text("step\tloss\n1\t100\n2\t90\n")
    files["train_log"] = tmp_path / "train.log"
    files["train_log"].write_text('[larsvae train] done: {"wall_time_s": 100.0}\n')
    return files


def test_publish_cell_writes_the_three_files_and_the_stamp(tmp_path):
    files = finished_cell(tmp_path)
    out, stamp = tmp_path / "results" / "cell", tmp_path / "stamp.json"
    prov = publish_cell(**files, params=PARAMS, out_dir=out, root=tmp_path, stamp=stamp)
    assert sorted(p.name for p in out.iterdir()) == ["curve.tsv", "nll.json", "provenance.json"]
    assert (out / "curve.tsv").read_bytes() == files["curve"].read_bytes()
    assert (out / "nll.json").read_bytes() == files["nll"].read_bytes()
    text = (out / "provenance.json").read_text()
    assert text == json.dumps(prov, indent=1, sort_keys=True) + "\n"
    assert stamp.read_text() == text
    published = prov.pop("published_utc")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", published)
    assert prov == {
        "format_version": 1,
        "cell": CELL,
        "params": PARAMS,
        "checkpoint_sha256": file_sha256(files["checkpoint"]),
        "dataset_sha256": "d" * 64,
        "nll_sha256": file_sha256(files["nll"]),
        "z": {"z": 0.25, "z_stderr": 1e-4},
        "code": {"commit": None, "src_modified": None},
        "cost_s": {"train": 100.0, "z": 42.5, "evaluate": 12.0},
        "device": "cpu",
    }


def test_publish_cell_without_z_or_stamp(tmp_path):
    files = finished_cell(tmp_path, z=False)
    out = tmp_path / "out"
    prov = publish_cell(**files, params=PARAMS, out_dir=out, root=tmp_path)
    assert prov["z"] is None and prov["cost_s"]["z"] is None


def test_z_cost_is_unknown_when_a_shard_did_not_record_its_time(tmp_path):
    files = finished_cell(tmp_path, shard_seconds=(30.0, None))
    prov = publish_cell(**files, params=PARAMS, out_dir=tmp_path / "out", root=tmp_path)
    assert prov["cost_s"]["z"] is None and prov["cost_s"]["train"] == 100.0


def test_publish_cell_refuses_a_record_that_is_not_a_finished_evaluation(tmp_path):
    files = finished_cell(tmp_path)
    record = json.loads(files["nll"].read_text())
    files["nll"].write_text(json.dumps({**record, "nll": 1.0}))
    where = re.escape(str(files["nll"]))
    with pytest.raises(UserError, match=f"^nll.json {where}: .* not the negative mean"):
        publish_cell(**files, params=PARAMS, out_dir=tmp_path / "out", root=tmp_path)
    assert not (tmp_path / "out").exists()


def test_publish_cell_names_a_z_or_shard_file_that_is_not_json(tmp_path):
    for key, flag in (("z", "--z"), ("z_shards", "--z-shard")):
        files = finished_cell(tmp_path / key)
        path = files[key] if key == "z" else files[key][1]
        path.write_text("{not json")
        if key == "z":  # the evaluation's z_sha256 is of the broken file: only JSON fails
            record = json.loads(files["nll"].read_text())
            files["nll"].write_text(json.dumps({**record, "z_sha256": file_sha256(path)}))
        with pytest.raises(UserError, match=f"^{flag} {re.escape(str(path))}: not valid JSON"):
            publish_cell(**files, params=PARAMS, out_dir=tmp_path / "out", root=tmp_path)


def test_publishing_again_replaces_the_cell(tmp_path):
    files = finished_cell(tmp_path)
    out = tmp_path / "out"
    publish_cell(**files, params=PARAMS, out_dir=out, root=tmp_path)
    files["curve"].write_text("step\tloss\n1\t80\n")
    publish_cell(**files, params=PARAMS, out_dir=out, root=tmp_path)
    assert (out / "curve.tsv").read_text() == "step\tloss\n1\t80\n"


def test_the_publication_time_is_utc_whatever_the_local_zone(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: a local clock is a day ahead
    time.tzset()
    try:
        before = datetime.now(timezone.utc).replace(microsecond=0, tzinfo=None)
        prov = publish_cell(**finished_cell(tmp_path), params=PARAMS, out_dir=tmp_path / "o")
        after = datetime.now(timezone.utc).replace(microsecond=0, tzinfo=None)
    finally:
        monkeypatch.undo()
        time.tzset()
    stamp = datetime.strptime(prov["published_utc"], "%Y-%m-%dT%H:%M:%SZ")
    assert before <= stamp <= after


def test_publish_cell_names_its_nll_file(tmp_path):
    files = finished_cell(tmp_path)
    files["nll"].write_text("[1, 2]")
    with pytest.raises(UserError, match=f"^--nll {re.escape(str(files['nll']))}: expected"):
        publish_cell(**files, params=PARAMS, out_dir=tmp_path / "out", root=tmp_path)


# -- check_published -----------------------------------------------------------------------


@pytest.fixture
def published(tmp_path):
    out = tmp_path / "cell"
    publish_cell(**finished_cell(tmp_path), params=PARAMS, out_dir=out, root=tmp_path)
    return out


def test_check_published_reads_only_the_five_cell_keys(published):
    prov = check_published(published, {**CELL, "label": "LARS"}, PARAMS, "d" * 64)
    assert prov["cell"] == CELL
    assert check_published(published, CELL, PARAMS, None) == prov  # data unknown: not checked


def test_check_published_names_a_cell_without_provenance(tmp_path):
    missing = re.escape(str(tmp_path / "provenance.json"))
    with pytest.raises(UserError, match=f"^published cell {missing}: no such file"):
        check_published(tmp_path, CELL, PARAMS, None)


def test_check_published_refuses_another_format(published):
    prov = json.loads((published / "provenance.json").read_text())
    (published / "provenance.json").write_text(json.dumps({**prov, "format_version": 2}))
    with pytest.raises(UserError, match="provenance format 2"):
        check_published(published, CELL, PARAMS, "d" * 64)


@pytest.mark.parametrize(
    "params, where",
    [
        ({**PARAMS, "evaluate": {"iwae_k": 6}}, "evaluate.iwae_k: 5 -> 6"),
        (
            {"train": {"train": {"iterations": 10}}, "evaluate": {"iwae_k": 5}},
            "train.train.lr: 0.001 -> None",
        ),
        ({**PARAMS, "z": {"z_samples": 9}}, "z: None -> {'z_samples': 9}"),
    ],
)
def test_check_published_names_the_first_param_that_differs(published, params, where):
    with pytest.raises(UserError, match=re.escape(f"made with other params ({where}")):
        check_published(published, CELL, params, "d" * 64)


def test_diff_walks_nested_keys_in_sorted_order():
    assert _diff({"a": 1, "b": {"c": [1]}}, {"a": 1, "b": {"c": [1]}}) is None
    assert _diff({"b": 1, "a": 1}, {"b": 2, "a": 2}) == "a: 1 -> 2"
    assert _diff({"a": {"x": 1, "y": 1}}, {"a": {"x": 1, "y": 2}}) == "a.y: 1 -> 2"
    assert _diff({"a": {"x": 1}}, {"a": 3}) == "a: {'x': 1} -> 3"
    assert _diff(1, 2) == ": 1 -> 2"


# -- cost_hours ----------------------------------------------------------------------------


def test_cost_hours_by_hand():
    prov = {"cell": CELL, "cost_s": {"train": 3600.0, "z": 1800.0, "evaluate": 900.0}}
    assert cost_hours(prov) == 1.75
    gaussian = {"cell": {**CELL, "prior": "gaussian"}, "cost_s": {"train": 3600.0}}
    gaussian["cost_s"]["evaluate"] = 360.0
    assert cost_hours(gaussian) == 1.1  # no Z to estimate
    for unknown in ({"train": None, "z": 1.0, "evaluate": 1.0}, {"train": 1.0, "z": math.nan}):
        assert cost_hours({"cell": CELL, "cost_s": {"evaluate": 1.0, **unknown}}) is None
    assert cost_hours({"cell": CELL, "cost_s": None}) is None
    assert cost_hours({"cell": CELL}) is None
