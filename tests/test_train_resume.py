"""Training loop: schedule, exact resume (in-process and after kill -9), NaN guard, early
stopping, post-hoc initialisation, checkpoint safety."""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path

import pytest
import torch
from conftest import SMALL_MODEL, make_tiny_dataset

from larsvae import cli
from larsvae.checkpoint import (
    CheckpointError,
    CheckpointMeta,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from larsvae.config import TrainConfig, model_config
from larsvae.data import BatchStream, load
from larsvae.models import build_model
from larsvae.train import TrainingDiverged, fit, resume_path_for
from larsvae.utils import TMP_PREFIX, derive_seed

CFG = TrainConfig(
    iterations=40,
    batch_size=32,
    checkpoint_every=6,
    log_every=4,
    warmup_steps=20,
    lr_decay_step=25,
    lr=1e-3,
    lr_final=3e-4,
)
META = CheckpointMeta(
    arch="vae", prior="lars", model_config=model_config(SMALL_MODEL), dataset="tiny"
)


def _model(init_seed: int = 0, prior: str = "lars") -> torch.nn.Module:
    torch.manual_seed(init_seed)
    return build_model("vae", prior, model_config(SMALL_MODEL))


@pytest.fixture
def stream(tiny_dataset_npz: Path) -> BatchStream:
    return BatchStream(load(tiny_dataset_npz)["train"], CFG.batch_size, seed=5, device="cpu")


def _fit(model, stream, out, cfg=CFG, **kw):
    return fit(model, stream, cfg, out, seed=11, meta=META, progress=False, **kw)


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def _assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"tensors differ: {diff}"


def test_resume_in_process_is_bitwise_exact(tmp_path, stream):
    ref = tmp_path / "ref" / "model.pt"
    _fit(_model(), stream, ref)
    out = tmp_path / "int" / "model.pt"
    s1 = _fit(_model(), stream, out, stop_after=10)
    assert not s1["finished"] and resume_path_for(out).exists() and not out.exists()
    # a differently initialised model: everything must come from the checkpoint
    s2 = _fit(_model(init_seed=99), stream, out, stop_after=23)
    assert s2["resumed_from"] == 10 and s2["step"] == 23
    s3 = _fit(_model(init_seed=7), stream, out)
    assert s3["resumed_from"] == 23 and s3["finished"]
    _assert_bitwise_equal(_state(ref), _state(out))
    assert float(_state(out)["top_prior.log_z"]) != 0.0  # the running Z moved and was carried
    assert ref.with_name("curve.tsv").read_bytes() == out.with_name("curve.tsv").read_bytes()
    assert sorted(os.listdir(out.parent)) == ["curve.tsv", "model.pt"]


def test_resume_detects_a_perturbed_running_z(tmp_path, stream):
    """The comparison above can fail: nudging the checkpointed <Z> changes the result."""
    ref = tmp_path / "ref" / "model.pt"
    _fit(_model(), stream, ref)
    out = tmp_path / "int" / "model.pt"
    _fit(_model(), stream, out, stop_after=12)
    rp = resume_path_for(out)
    ck = load_checkpoint(rp)
    ck["model"]["top_prior.log_z"] += 1e-6
    save_checkpoint({k: v for k, v in ck.items() if k not in ("format", "format_version")}, rp)
    _fit(_model(), stream, out)
    a, b = _state(ref), _state(out)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_fit_follows_the_paper_schedule(tmp_path, stream):
    """fit == a hand-written loop: Adam (fused: one kernel for all parameters), lr ->
    lr_final at lr_decay_step, beta = t / warmup (Appendix C.3), step t seeded by (seed, t),
    batch t = stream.batch(t)."""
    out = tmp_path / "fit" / "model.pt"
    _fit(_model(), stream, out)
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=CFG.lr, fused=True)
    for t in range(CFG.iterations):
        torch.manual_seed(derive_seed(11, t))
        for g in opt.param_groups:
            g["lr"] = CFG.lr if t < CFG.lr_decay_step else CFG.lr_final
        loss = model.loss(stream.batch(t), min(1.0, t / CFG.warmup_steps))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    _assert_bitwise_equal(_state(out), model.state_dict())
    rows = out.with_name("curve.tsv").read_text().splitlines()
    header = rows[0].split("\t")
    for line in rows[1:]:
        r = dict(zip(header, map(float, line.split("\t")), strict=True))
        t = int(r["step"]) - 1  # the row's last step, 0-based
        assert r["beta"] == pytest.approx(min(1.0, t / CFG.warmup_steps))
        assert r["lr"] == (CFG.lr if t < CFG.lr_decay_step else CFG.lr_final)
        if t - 3 >= CFG.warmup_steps:  # window of 4 steps at beta = 1: loss = rec + kl
            assert r["loss"] == pytest.approx(r["rec"] + r["kl"], rel=1e-5)
            assert r["neg_elbo"] == pytest.approx(r["rec"] + r["kl"], rel=1e-5)
    assert [int(float(x.split("\t")[0])) for x in rows[1:]] == list(range(4, 41, 4))


def test_nan_loss_stops_with_the_step_and_keeps_last_good_checkpoint(tmp_path, stream):
    model = _model()
    loss, calls = model.loss, [0]

    def nan_at_8(x, beta=1.0):
        calls[0] += 1
        out = loss(x, beta)
        if calls[0] == 8:
            out["loss"] = out["loss"] * float("nan")
        return out

    model.loss = nan_at_8
    out = tmp_path / "m" / "model.pt"
    cfg = TrainConfig(iterations=20, batch_size=32, checkpoint_every=5)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 8; .*\(step 5\) is kept"):
        _fit(model, stream, out, cfg=cfg)
    ck = load_checkpoint(resume_path_for(out))
    assert ck["step"] == 5
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert sorted(os.listdir(out.parent)) == ["model.pt.resume.pt"]


def test_early_stopping_keeps_the_best_weights(tmp_path, stream):
    metrics = iter([5.0, 4.0, 3.0, 3.5, 3.6, 9.0, 9.0])
    cfg = TrainConfig(
        iterations=40,
        batch_size=32,
        checkpoint_every=3,
        eval_every=2,
        early_stopping_patience=2,
        warmup_steps=10,
    )
    out = tmp_path / "es" / "model.pt"
    s = _fit(
        _model(),
        stream,
        out,
        cfg=cfg,
        valid=torch.zeros(2, 784),
        valid_metric=lambda m, x, k: next(metrics),
    )
    assert s["stopped_early"] and s["step"] == 10 and s["best_step"] == 6
    assert s["best_valid_nll"] == 3.0
    # weights of the best evaluation == an uninterrupted run of 6 steps
    six = tmp_path / "six" / "model.pt"
    _fit(_model(), stream, six, cfg=TrainConfig(iterations=6, batch_size=32, warmup_steps=10))
    _assert_bitwise_equal(_state(six), _state(out))
    header = out.with_name("curve.tsv").read_text().splitlines()[0].split("\t")
    assert header[-1] == "valid_nll"


def test_posthoc_trains_only_the_acceptance(tmp_path, tiny_dataset_npz, capsys):
    mp = json.dumps(SMALL_MODEL)
    base = tmp_path / "gauss" / "model.pt"
    common = [
        "--dataset-file",
        str(tiny_dataset_npz),
        "--arch",
        "vae",
        "--seed",
        "1",
        "--model-params",
        mp,
        "--no-progress",
    ]
    assert (
        cli.main(
            [
                "train",
                *common,
                "--prior",
                "gaussian",
                "--out",
                str(base),
                "--train-params",
                '{"iterations": 6, "batch_size": 16}',
            ]
        )
        == 0
    )
    post = tmp_path / "post" / "model.pt"
    assert (
        cli.main(
            [
                "train",
                *common,
                "--prior",
                "lars",
                "--out",
                str(post),
                "--init",
                str(base),
                "--train-params",
                '{"iterations": 8, "batch_size": 16, "lr": 0.01}',
            ]
        )
        == 0
    )
    a, b = _state(base), _state(post)
    assert {k for k in b if k.startswith("top_prior.acceptance")}
    for k, v in a.items():
        assert torch.equal(v, b[k]), k  # encoder and decoder frozen
    model, ck = load_model(post)  # rebuilt from the metadata as a post-hoc model
    assert ck["meta"].mode == "posthoc" and model.is_posthoc
    assert float(model.top_prior.log_z) == float(b["top_prior.log_z"]) != 0.0
    torch.manual_seed(0)
    fresh = build_model("vae", "gaussian", model_config(SMALL_MODEL))
    fresh.make_posthoc()
    moved = [
        k
        for k, v in fresh.top_prior.acceptance.state_dict().items()
        if not torch.equal(v, b["top_prior.acceptance." + k])
    ]
    assert moved  # the acceptance network did learn


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_loading_is_safe_and_names_the_file(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint({"kind": "final", "meta": META, "model": {}, "step": 0}, good)
    assert load_checkpoint(good)["kind"] == "final"
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"trunc\.pt: cannot be read"):
        load_checkpoint(trunc)
    # a pickle that would run code on load is refused (weights_only=True)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "larsvae-checkpoint", "x": Evil()}, evil, pickle_protocol=2)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(evil)
    assert not marker.exists()
    other = tmp_path / "other.pt"
    other.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="other.pt"):
        load_checkpoint(other)
    assert not list(tmp_path.glob(TMP_PREFIX + "*"))


@pytest.mark.slow
def test_kill9_at_random_steps_then_resume_is_bitwise_identical(kill_resume_result):
    r = kill_resume_result
    assert r.final_rc == 0, r.stderr_tail
    kills = r.kills[:-1]
    assert len(kills) >= 3
    for k in kills:
        assert k["was_running"] and k["returncode"] == -9, k
    for k, nxt in zip(kills, r.kills[1:], strict=True):
        # the next run resumed from a checkpoint no later than the kill, replaying lost steps
        assert 0 <= nxt["resumed_at"] <= k["killed_at"], (k, nxt)
    assert any(
        nxt["resumed_at"] < k["killed_at"] for k, nxt in zip(kills, r.kills[1:], strict=True)
    )
    assert r.tensors_compared > 0 and r.tensors_equal == r.tensors_compared, r.mismatched
    assert math.isfinite(r.log_z_ref) and r.log_z_ref != 0.0
    assert r.curves_equal
    assert r.leftovers == []


def test_tiny_dataset_fixture_roundtrips(tmp_path):
    p = make_tiny_dataset(tmp_path)
    d = load(p)
    assert d["train"].shape == (256, 784) and int(d["train"].max()) > 1
    assert int(d["test"].max()) == 1


def test_resume_file_of_other_settings_is_not_used(tmp_path, stream):
    """Changed parameters (here lr) must not continue a run made with the old ones."""
    out = tmp_path / "m" / "model.pt"
    cfg = TrainConfig(iterations=8, batch_size=32, checkpoint_every=2, warmup_steps=4)
    _fit(_model(), stream, out, cfg=cfg, stop_after=4)
    other = TrainConfig(iterations=8, batch_size=32, checkpoint_every=2, warmup_steps=4, lr=1e-3)
    s = _fit(_model(), stream, out, cfg=other)
    assert s["resumed_from"] == 0 and s["finished"]
    ref = tmp_path / "ref" / "model.pt"
    _fit(_model(), stream, ref, cfg=other)
    _assert_bitwise_equal(_state(ref), _state(out))


def test_cuda_graph_flag_changes_nothing_on_the_cpu(tmp_path, stream, monkeypatch):
    """The CPU always takes the eager step: the flag that turns CUDA graphs off is a no-op."""
    from larsvae import train

    a, b = tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt"
    cfg = TrainConfig(iterations=12, batch_size=32, checkpoint_every=5, warmup_steps=6)
    monkeypatch.setattr(train, "CUDA_GRAPHS", True)
    _fit(_model(), stream, a, cfg=cfg)
    monkeypatch.setattr(train, "CUDA_GRAPHS", False)
    _fit(_model(), stream, b, cfg=cfg)
    _assert_bitwise_equal(_state(a), _state(b))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("prior", ["gaussian", "lars"])
def test_cuda_graph_training_resumes_exactly_and_matches_eager(
    tmp_path, tiny_dataset_npz, monkeypatch, prior
):
    """On CUDA a step is one replayed graph, reseeded from (seed, t): an interrupted run
    resumes to the same bits as an uninterrupted one, and the curve is the eager one up to
    float32 rounding (same random numbers, other kernels)."""
    from larsvae import train

    cuda_stream = BatchStream(
        load(tiny_dataset_npz)["train"], CFG.batch_size, seed=5, device="cuda"
    )
    cfg = TrainConfig(
        iterations=24,
        batch_size=32,
        checkpoint_every=5,
        log_every=4,
        warmup_steps=10,
        lr_decay_step=15,
        lr=1e-3,
        lr_final=3e-4,
    )

    def run(out, **kw):
        return _fit(_model(prior=prior).cuda(), cuda_stream, out, cfg=cfg, **kw)

    monkeypatch.setattr(train, "CUDA_GRAPHS", True)
    ref = tmp_path / "ref" / "model.pt"
    run(ref)
    out = tmp_path / "int" / "model.pt"
    assert not run(out, stop_after=9)["finished"]
    assert run(out)["resumed_from"] == 9
    _assert_bitwise_equal(_state(ref), _state(out))
    monkeypatch.setattr(train, "CUDA_GRAPHS", False)
    eager = tmp_path / "eager" / "model.pt"
    run(eager)
    curves = [p.with_name("curve.tsv").read_text().splitlines()[1:] for p in (ref, eager)]
    for g, e in zip(*curves, strict=True):
        loss_g, loss_e = float(g.split("\t")[1]), float(e.split("\t")[1])
        assert loss_g == pytest.approx(loss_e, rel=1e-3), (g, e)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_nan_is_named_and_the_last_good_checkpoint_kept(
    tmp_path, tiny_dataset_npz, monkeypatch
):
    """The graph path reads losses back only at log/checkpoint time; a NaN in step 8 is
    still reported as step 8, and the resume file stays at step 5."""
    from larsvae import train

    monkeypatch.setattr(train, "CUDA_GRAPHS", True)
    base = BatchStream(load(tiny_dataset_npz)["train"], 32, seed=5, device="cuda")

    class NanAt8:
        def batch(self, t):
            x = base.batch(t)
            return x * float("nan") if t == 7 else x

    out = tmp_path / "m" / "model.pt"
    cfg = TrainConfig(iterations=20, batch_size=32, checkpoint_every=5, log_every=10)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 8; .*\(step 5\) is kept"):
        _fit(_model().cuda(), NanAt8(), out, cfg=cfg)
    assert load_checkpoint(resume_path_for(out))["step"] == 5
