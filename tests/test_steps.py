"""The pipeline steps called in-process, as the rules call them through the CLI: a joint and a
post-hoc LARS cell through train -> sharded Z -> reduce -> evaluate -> sample grid."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import SMALL_MODEL

from larsvae import steps
from larsvae.config import EvalConfig, model_config, train_config
from larsvae.utils import UserError, file_sha256
from larsvae.zestimate import ZEstimate

pytestmark = pytest.mark.usefixtures("single_thread")

EVAL = EvalConfig(
    z_samples=4000,
    z_shards=2,
    z_batch=500,
    iwae_k=20,
    iwae_k_chunk=10,
    iwae_batch=8,
    test_subset=16,
)


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    from conftest import make_tiny_dataset

    root = tmp_path_factory.mktemp("steps")
    data = make_tiny_dataset(root / "data")
    mcfg, tcfg = model_config(SMALL_MODEL), train_config({"iterations": 6, "batch_size": 16})
    out = {"data": data, "root": root}
    for name, prior in (("gaussian", "gaussian"), ("joint", "lars")):
        out[name] = root / name / "model.pt"
        steps.train(data, "vae", prior, 1, mcfg, tcfg, out[name], progress=False)
    out["posthoc"] = root / "posthoc" / "model.pt"
    steps.train(
        data, "vae", "lars", 1, mcfg, tcfg, out["posthoc"], init=out["gaussian"], progress=False
    )
    return out


@pytest.mark.parametrize("cell", ["joint", "posthoc"])
def test_sharded_z_reduces_to_the_unsharded_estimate_and_evaluates(cells, cell, tmp_path):
    ckpt = cells[cell]
    shards = [tmp_path / f"shard{i}of2.json" for i in range(2)]
    for i, s in enumerate(shards):
        steps.estimate_z(ckpt, EVAL, i, 2, s, progress=False)
    z = steps.reduce_z(list(reversed(shards)), tmp_path / "z.json")
    whole = steps.estimate_z(ckpt, EVAL, 0, 1, tmp_path / "whole.json", progress=False)
    assert z["z"] == ZEstimate.from_dict(whole["estimate"]).mean  # bitwise: the same batches
    assert 0 < z["z"] <= 1 and z["z_stderr"] > 0
    nll = steps.evaluate(
        ckpt, cells["data"], EVAL, tmp_path / "nll.json", z=tmp_path / "z.json", progress=False
    )
    assert json.loads((tmp_path / "nll.json").read_text()) == json.loads(json.dumps(nll))
    assert nll["mode"] == ("posthoc" if cell == "posthoc" else "standard")
    assert nll["n"] == 16 and nll["k"] == 20 and math.isfinite(nll["nll"]) and nll["nll"] > 0
    # T = 100: proposals per sample (1 - (1 - Z)^T) / Z, the truncated geometric mean
    zz = z["z"]
    assert nll["mean_proposals"] == pytest.approx((1 - (1 - zz) ** 100) / zz, rel=1e-9)
    steps.sample_grid(ckpt, 9, 0, tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_posthoc_cell_keeps_the_standard_models_networks(cells):
    from larsvae.checkpoint import load_checkpoint

    base, post = load_checkpoint(cells["gaussian"]), load_checkpoint(cells["posthoc"])
    assert post["meta"].mode == "posthoc" and post["meta"].base_prior == "gaussian"
    for k, v in base["model"].items():
        assert torch.equal(v, post["model"][k]), k
    assert any(k.startswith("top_prior.acceptance") for k in post["model"])


def test_steps_refuse_mismatched_inputs_naming_the_file(cells, tmp_path):
    with pytest.raises(UserError, match="has no normalising constant Z"):
        steps.estimate_z(cells["gaussian"], EVAL, 0, 1, tmp_path / "z.json", progress=False)
    with pytest.raises(UserError, match="'gaussian' standard checkpoint"):
        steps.train(
            cells["data"],
            "vae",
            "lars",
            1,
            model_config(SMALL_MODEL),
            train_config({"iterations": 1}),
            tmp_path / "m.pt",
            init=cells["joint"],
            progress=False,
        )
    with pytest.raises(UserError, match="--z: required"):
        steps.evaluate(cells["joint"], cells["data"], EVAL, tmp_path / "nll.json", progress=False)
    assert not list(tmp_path.iterdir())  # nothing written


# ---------------------------------------------------------------------------------------
# Provenance: an artefact used in the wrong place is one clear error, nothing written


def _shards_and_z(ckpt, tmp_path):
    shards = [tmp_path / f"shard{i}of2.json" for i in range(2)]
    for i, s in enumerate(shards):
        steps.estimate_z(ckpt, EVAL, i, 2, s, progress=False)
    steps.reduce_z(shards, tmp_path / "z.json")
    return shards, tmp_path / "z.json"


def test_a_checkpoint_of_another_cell_is_refused(cells, tmp_path):
    import shutil

    from larsvae.paths import Layout

    lay = Layout(str(tmp_path / "runs"), str(tmp_path / "reports"))
    joint = lay.model(dataset="dynamic_mnist", arch="vae", prior="lars", mode="standard", seed=1)
    Path(joint).parent.mkdir(parents=True)
    shutil.copy(cells["posthoc"], joint)  # the post-hoc model planted in the joint cell
    with pytest.raises(UserError, match="mode = 'posthoc'.*mode = 'standard'"):
        steps.estimate_z(joint, EVAL, 0, 1, tmp_path / "s.json", progress=False)
    shutil.copy(cells["joint"], joint)  # the right one passes
    steps.estimate_z(joint, EVAL, 0, 1, tmp_path / "s.json", progress=False)


def test_another_dataset_is_refused(cells, tmp_path):
    from conftest import make_tiny_dataset

    other = make_tiny_dataset(tmp_path / "other", seed=7)  # same name, other images
    with pytest.raises(UserError, match="not the data .* was trained on"):
        steps.evaluate(cells["gaussian"], other, EVAL, tmp_path / "nll.json", progress=False)
    assert not (tmp_path / "nll.json").exists()


def test_z_must_be_complete_finite_and_tied_to_the_model(cells, tmp_path):
    shards, z = _shards_and_z(cells["joint"], tmp_path)
    nll = tmp_path / "nll.json"

    def evaluate(zfile):
        steps.evaluate(cells["joint"], cells["data"], EVAL, nll, z=zfile, progress=False)

    with pytest.raises(UserError, match="one Z shard"):
        evaluate(shards[0])
    obj = json.loads(z.read_text())
    for name, edit, msg in [
        ("nosha.json", {"checkpoint_sha256": None}, "records no checkpoint_sha256"),
        ("other.json", {"checkpoint_sha256": "0" * 64}, "another checkpoint"),
    ]:
        (tmp_path / name).write_text(json.dumps({**obj, **edit}))
        with pytest.raises(UserError, match=msg):
            evaluate(tmp_path / name)
    with pytest.raises(UserError, match="Z was estimated for another checkpoint"):
        steps.evaluate(cells["posthoc"], cells["data"], EVAL, nll, z=z, progress=False)
    # a batch sum of NaN in a shard: reduce-z refuses it, naming the shard
    bad = json.loads(shards[1].read_text())
    bad["estimate"]["batches"][0][3] = float("nan").hex()  # [index, units, samples, sum, ...]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match="bad.json: a batch sum is NaN"):
        steps.reduce_z([shards[0], tmp_path / "bad.json"], tmp_path / "zbad.json")
    assert not (tmp_path / "zbad.json").exists() and not nll.exists()


def test_identical_training_gives_identical_bytes(cells, tmp_path):
    """No wall time or resume history in model.pt: its sha256 (and DVC hash) is a function
    of the inputs."""
    from larsvae.utils import file_sha256

    mcfg, tcfg = model_config(SMALL_MODEL), train_config({"iterations": 6, "batch_size": 16})
    out = tmp_path / "again" / "model.pt"
    steps.train(cells["data"], "vae", "lars", 1, mcfg, tcfg, out, progress=False)
    assert file_sha256(out) == file_sha256(cells["joint"])
    assert (
        out.with_name("curve.tsv").read_bytes()
        == cells["joint"].with_name("curve.tsv").read_bytes()
    )


def test_check_data_verifies_every_split_against_the_manifest(tmp_path):
    """A modified split (same shapes, one pixel changed) or a renamed dataset is refused before
    any training or evaluation job may start (the rules need the stamp)."""
    import hashlib

    import numpy as np
    from conftest import make_tiny_dataset

    data = make_tiny_dataset(tmp_path / "d")
    with np.load(data) as z:
        arrays = {s: z[s] for s in ("train", "valid", "test")}
    manifest = json.loads(data.with_suffix(".json").read_text())
    manifest["array_sha256"] = {
        s: hashlib.sha256(a.tobytes()).hexdigest() for s, a in arrays.items()
    }
    data.with_suffix(".json").write_text(json.dumps(manifest))
    stamp = steps.check_data(data, tmp_path / "ok.json")
    assert stamp["array_sha256"] == manifest["array_sha256"]
    renamed = tmp_path / "renamed" / "static_mnist.npz"  # intact arrays under another name
    renamed.parent.mkdir()
    renamed.write_bytes(data.read_bytes())
    renamed.with_suffix(".json").write_text(data.with_suffix(".json").read_text())
    with pytest.raises(UserError, match="describes dataset 'dynamic_mnist', not 'static_mnist'"):
        steps.check_data(renamed, tmp_path / "renamed.json")
    assert not (tmp_path / "renamed.json").exists()
    arrays["test"][0, 0] ^= 1  # one flipped pixel
    np.savez_compressed(data, **arrays)
    with pytest.raises(UserError, match="split 'test' has sha256"):
        steps.check_data(data, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


# ---------------------------------------------------------------------------------------
# Z files: every reader refuses what cannot be Z = E[a(z)], a in [0, 1]


def _rewritten_z(src: Path, dst: Path, partials) -> Path:
    """``src`` (a z.json or shard) with its estimate rebuilt from ``partials``."""
    obj = json.loads(src.read_text())
    old = ZEstimate.from_dict(obj["estimate"])
    est = ZEstimate(tuple(partials), old.seed, old.batch_size, old.num_samples, old.antithetic)
    obj["estimate"] = est.to_dict()
    dst.write_text(json.dumps(obj))
    return dst


def _scaled(partials, factor: float):
    """Every batch's sums multiplied by ``factor`` (a mean ``factor`` times as large)."""
    from dataclasses import replace

    return [
        replace(p, sum=p.sum * factor, sum_sq=p.sum_sq * factor**2, m2=p.m2 * factor**2)
        for p in partials
    ]


def test_evaluate_refuses_a_z_above_one_and_an_incomplete_estimate(cells, tmp_path):
    _, z = _shards_and_z(cells["joint"], tmp_path)
    est = ZEstimate.from_dict(json.loads(z.read_text())["estimate"])
    assert est.complete and len(est.partials) == 8 and 0 < est.mean <= 1
    nll = tmp_path / "nll.json"
    big = _rewritten_z(z, tmp_path / "big.json", _scaled(est.partials, 1.5 / est.mean))
    with pytest.raises(UserError, match=r"big.json: Z = .* > 1 is impossible"):
        steps.evaluate(cells["joint"], cells["data"], EVAL, nll, z=big, progress=False)
    part = _rewritten_z(z, tmp_path / "part.json", est.partials[:-1])
    with pytest.raises(UserError, match="part.json: holds 7 of 8 batches"):
        steps.evaluate(cells["joint"], cells["data"], EVAL, nll, z=part, progress=False)
    assert not nll.exists()


def test_reduce_z_refuses_shards_of_two_checkpoints(cells, tmp_path):
    """Shard 0 of the joint model and shard 1 of the post-hoc one (same seed, same batches):
    their merge would pass for a Z of the joint model."""
    a, b = tmp_path / "shard0of2.json", tmp_path / "shard1of2.json"
    steps.estimate_z(cells["joint"], EVAL, 0, 2, a, progress=False)
    steps.estimate_z(cells["posthoc"], EVAL, 1, 2, b, progress=False)
    with pytest.raises(UserError, match="shard1of2.json: checkpoint_sha256 = .* differs from"):
        steps.reduce_z([a, b], tmp_path / "z.json")
    assert not (tmp_path / "z.json").exists()


def test_reduce_z_and_figure_a2_refuse_an_impossible_z(cells, tmp_path):
    shards, z = _shards_and_z(cells["joint"], tmp_path)
    est = ZEstimate.from_dict(json.loads(shards[1].read_text())["estimate"])
    big = _rewritten_z(shards[1], tmp_path / "big.json", _scaled(est.partials, 3.0 / est.mean))
    with pytest.raises(UserError, match=r"shard .*big.json: Z = .* > 1 is impossible"):
        steps.reduce_z([shards[0], big], tmp_path / "zbig.json")
    assert not (tmp_path / "zbig.json").exists()
    whole = ZEstimate.from_dict(json.loads(z.read_text())["estimate"])
    nan = float("nan")
    for name, partials, msg in [
        ("above_one.json", _scaled(whole.partials, 1.5 / whole.mean), "> 1 is impossible"),
        ("nan.json", _scaled(whole.partials, nan), "is not a finite number"),
    ]:
        _rewritten_z(z, tmp_path / name, partials)
        out = tmp_path / "fig_a2.png"
        with pytest.raises(UserError, match=f"{name}: Z = .* {msg}"):
            steps.z_convergence({"LARS joint": z, "bad": tmp_path / name}, out)
        assert not out.exists()
    steps.z_convergence({"LARS joint": z}, tmp_path / "fig_a2.png")  # the real one is drawn
    assert (tmp_path / "fig_a2.png").read_bytes()[:4] == b"\x89PNG"


def test_rank_refuses_a_checkpoint_of_another_cell(cells, tmp_path):
    """As estimate-z and sampling: a post-hoc model in the joint cell's folder is refused,
    never published under the joint cell's name."""
    import shutil

    from larsvae.paths import Layout

    lay = Layout(str(tmp_path / "runs"), str(tmp_path / "reports"))
    joint = lay.model(dataset="dynamic_mnist", arch="vae", prior="lars", mode="standard", seed=1)
    Path(joint).parent.mkdir(parents=True)
    shutil.copy(cells["posthoc"], joint)
    out = tmp_path / "ranking"
    with pytest.raises(UserError, match="mode = 'posthoc'.*mode = 'standard'"):
        steps.rank(joint, out, n=64, seed=0)
    assert not out.exists()
    shutil.copy(cells["joint"], joint)  # the right one is ranked
    assert steps.rank(joint, out, n=64, seed=0)["n"] == 64


def test_sample_grid_is_ordered_by_acceptance_best_first(cells, tmp_path, monkeypatch):
    """The PNG's tiles, read back and matched to the decoded samples, come in the order of
    their scores a(z), highest first (the paper's quality ranking, Sec. 5)."""
    import numpy as np
    from PIL import Image

    from larsvae.checkpoint import load_model
    from larsvae.distributions import ResampledPrior

    drawn = []
    sample = ResampledPrior.sample

    def spy(self, n, *args, **kwargs):
        z = sample(self, n, *args, **kwargs)
        drawn.append(z.clone())
        return z

    monkeypatch.setattr(ResampledPrior, "sample", spy)
    n, side = 16, 4  # a 4 x 4 grid, 2 pixels of padding around each 28 x 28 tile
    steps.sample_grid(cells["joint"], n, 3, tmp_path / "grid.png")
    (z,) = drawn
    png = np.asarray(Image.open(tmp_path / "grid.png").convert("L"), dtype=np.int64)
    tiles = [
        png[
            2 + 30 * (k // side) : 30 * (k // side) + 30, 2 + 30 * (k % side) : 30 * (k % side) + 30
        ]
        for k in range(n)
    ]
    model, _ = load_model(cells["joint"])
    with torch.no_grad():
        score = model.top_prior.acceptance(z).double()  # a(z) in logit space: same order
        x = model.decode(z).view(n, 28, 28)
    ref = (x * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy().astype(np.int64)
    order = []
    for t in tiles:
        dist = np.abs(ref - t).reshape(n, -1).max(1)
        best, second = np.sort(dist)[:2]
        assert best <= 1 < second, (best, second)  # one sample matches, the others do not
        order.append(int(dist.argmin()))
    assert sorted(order) == list(range(n))
    got = score[order]
    assert torch.all(got[:-1] >= got[1:]), got
    assert got[0] > got[-1]  # the scores differ: the order is a real check


def test_posthoc_training_never_resumes_from_another_init(cells, tmp_path, monkeypatch):
    """init_sha256 in the post-hoc meta: a resume checkpoint of a post-hoc run started from
    one standard model is not continued from another (it would carry the first model's
    frozen encoder and decoder under the second one's name)."""
    import functools

    import larsvae.train
    from larsvae.checkpoint import load_checkpoint

    mcfg, tcfg = model_config(SMALL_MODEL), train_config({"iterations": 6, "batch_size": 16})
    other = tmp_path / "other" / "model.pt"
    steps.train(cells["data"], "vae", "gaussian", 2, mcfg, tcfg, other, progress=False)
    out = tmp_path / "posthoc" / "model.pt"
    fit = steps.fit
    monkeypatch.setattr(steps, "fit", functools.partial(fit, stop_after=3))
    steps.train(cells["data"], "vae", "lars", 1, mcfg, tcfg, out, init=other, progress=False)
    assert not out.exists() and larsvae.train.resume_path_for(out).exists()
    monkeypatch.setattr(steps, "fit", fit)
    s = steps.train(
        cells["data"], "vae", "lars", 1, mcfg, tcfg, out, init=cells["gaussian"], progress=False
    )
    assert s["resumed_from"] == 0 and s["finished"]
    assert out.read_bytes() == cells["posthoc"].read_bytes()  # as if the other never ran
    assert load_checkpoint(out)["meta"].init_sha256 == file_sha256(cells["gaussian"])
