"""The checkpoint file format and its checks, rule by rule: every refusal of
``load_checkpoint`` / ``CheckpointMeta.from_dict`` / ``check_cell`` / ``check_size`` (each
file breaks one rule, the message names the file and the rule), the typed meta written back
exactly as training writes it, the RNG state round trip, and the model rebuilt from a
checkpoint (post-hoc models included) equal to the one saved."""

from __future__ import annotations

import dataclasses
import random
import re

import numpy as np
import pytest
import torch
from conftest import SMALL_MODEL

from larsvae.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    CheckpointMeta,
    _one_line,
    build_from_meta,
    check_cell,
    check_size,
    get_rng_state,
    load_checkpoint,
    load_model,
    model_from_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from larsvae.config import SEED_MAX, TrainConfig, model_config, to_dict
from larsvae.distributions import ResampledPrior

TINY = {**SMALL_MODEL, "latent_dim": 2, "hidden": 8, "acceptance_hidden": [4]}
SHA = "ab" * 32
#: a meta as ``larsvae train`` writes it: every key, in its order
META = {
    "arch": "vae",
    "prior": "lars",
    "variant": "base",
    "mode": "standard",
    "dataset": "tiny",
    "dataset_sha256": SHA,
    "model_config": to_dict(model_config(TINY)),
    "seed": 3,
    "train_config": to_dict(TrainConfig(iterations=7)),
}


#: the order of the meta's keys in a checkpoint: larsvae.steps.train's dict, then train.fit's
TRAINING_ORDER = (
    *("arch", "prior", "variant", "mode", "dataset", "dataset_sha256", "model_config", "seed"),
    *("base_prior", "init_sha256", "flow_lr_warmup", "train_config"),
)


def typed(meta):
    return CheckpointMeta.from_dict(meta, "m.pt")


def saved(tmp_path, meta=META, name="model.pt", **payload):
    """A checkpoint of the model ``meta`` describes (its weights unless ``model`` is given)."""
    model = build_from_meta(typed(meta))
    path = tmp_path / name
    save_checkpoint(
        {"kind": "final", "meta": meta, "model": model.state_dict(), "step": 7, **payload}, path
    )
    return path, model


def refused(path, *words):
    """load_checkpoint(path) raises a CheckpointError naming the file and ``words``."""
    pattern = f"^checkpoint {re.escape(str(path))}: " + ".*".join(map(re.escape, words))
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(path)


def test_a_saved_checkpoint_loads_with_its_format_fields(tmp_path):
    path, _ = saved(tmp_path)
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == FORMAT == "larsvae-checkpoint"
    assert ckpt["format_version"] == FORMAT_VERSION == 1
    assert ckpt["kind"] == "final" and ckpt["step"] == 7
    assert isinstance(ckpt["meta"], CheckpointMeta) and ckpt["meta"].to_dict() == META
    assert ckpt["meta"].model_config == model_config(TINY)
    assert ckpt["meta"].train_config == TrainConfig(iterations=7)


def test_a_missing_file_is_named(tmp_path):
    refused(tmp_path / "gone.pt", "no such file")
    (tmp_path / "dir.pt").mkdir()
    refused(tmp_path / "dir.pt", "no such file")


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip file at all\nsecond line")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(garbage)
    message = str(info.value)
    assert message.startswith(f"checkpoint {garbage}: cannot be read (truncated or corrupt file?)")
    assert "\n" not in message  # one line, fit for the CLI
    for payload in ({"format": "other"}, [1, 2], {"meta": META, "model": {}, "step": 0}):
        path = tmp_path / "foreign.pt"
        torch.save(payload, path)
        refused(path, "not a larsvae checkpoint")


def test_another_format_version_is_named(tmp_path):
    path = tmp_path / "v2.pt"
    torch.save({"format": FORMAT, "format_version": 2, "meta": META, "model": {}, "step": 0}, path)
    refused(path, "format version 2, this larsvae reads version 1")
    torch.save({"format": FORMAT, "meta": META, "model": {}, "step": 0}, path)
    refused(path, "format version None")


@pytest.mark.parametrize("key", ["meta", "model", "step"])
def test_each_required_entry_is_named(tmp_path, key):
    path = tmp_path / "partial.pt"
    payload = {"format": FORMAT, "format_version": 1, "meta": META, "model": {}, "step": 0}
    del payload[key]
    torch.save(payload, path)
    refused(path, f"missing entry '{key}'")


@pytest.mark.parametrize(
    "change, words",
    [
        ({"arch": "mlp"}, ("meta arch = 'mlp' is not one of vae, hvae",)),
        ({"arch": None}, ("meta arch = None",)),
        ({"prior": "laplace"}, ("meta prior = 'laplace' is not one of gaussian, lars",)),
        ({"mode": "finetune"}, ("meta mode = 'finetune' is not standard or posthoc",)),
        ({"seed": -1}, ("meta seed = -1 is not an integer in [0, 2147483647]",)),
        ({"seed": SEED_MAX + 1}, ("meta seed = 2147483648",)),
        ({"seed": True}, ("meta seed = True",)),
        ({"seed": 2.0}, ("meta seed = 2.0",)),
        ({"model_config": {**TINY, "hidden": 0}}, ("meta model_config.hidden",)),
        ({"model_config": {**TINY, "width": 3}}, ("meta model_config",)),
        ({"model_config": None}, ("meta model_config = None is not a dict",)),
        ({"train_config": None}, ("meta train_config = None is not a dict",)),
        ({"train_config": {"lr": -1.0}}, ("meta train_config.lr",)),
        ({"width": 3}, ("meta has unknown key 'width'",)),
        ({7: 3, "width": 3}, ("meta has unknown key 7",)),  # keys of any type, sorted as text
        ({"prior": "gaussian", "mode": "posthoc"}, ("meta prior = 'gaussian' with mode",)),
        ({"variant": "T 2"}, ("meta variant = 'T 2' is not a variant name",)),
        ({"variant": None}, ("meta variant = None",)),
        ({"dataset": 5}, ("meta dataset = 5 is not a dataset name",)),
        ({"dataset_sha256": "abc"}, ("meta dataset_sha256 = 'abc' is not a sha256",)),
        ({"init_sha256": SHA.upper()}, (f"meta init_sha256 = '{SHA.upper()}' is not a sha256",)),
        (
            {"base_prior": "gaussian"},
            ("meta base_prior = 'gaussian' is not 'gaussian' of a post-hoc model",),
        ),
        ({"flow_lr_warmup": False}, ("meta flow_lr_warmup = False is not true",)),
    ],
)
def test_meta_refuses_each_bad_field(tmp_path, change, words):
    path = tmp_path / "bad.pt"
    torch.save(
        {"format": FORMAT, "format_version": 1, "meta": {**META, **change}, "model": {}, "step": 0},
        path,
    )
    refused(path, *words)


def test_meta_defaults_and_bounds(tmp_path):
    bare = {k: META[k] for k in ("arch", "prior", "model_config")}
    meta = typed(bare)  # standard, seed 0, the base variant; no provenance
    assert (meta.mode, meta.seed, meta.variant, meta.dataset, meta.train_config) == (
        "standard",
        0,
        "base",
        None,
        None,
    )
    assert meta.to_dict() == {**bare, "variant": "base", "mode": "standard", "seed": 0}
    for meta in (
        {**META, "seed": 0},
        {**META, "seed": SEED_MAX},
        {**META, "mode": "posthoc", "base_prior": "gaussian", "init_sha256": SHA},
        {**META, "variant": "t2", "flow_lr_warmup": True},
    ):
        assert typed(meta).to_dict() == meta
    with pytest.raises(CheckpointError, match="^checkpoint m.pt: meta is not a dict"):
        typed([META])
    with pytest.raises(CheckpointError, match="^checkpoint m.pt: meta has no model_config"):
        typed({"arch": "vae", "prior": "lars"})


@pytest.mark.parametrize("kind", ["joint", "posthoc", "flow"])
def test_meta_is_written_back_exactly_as_training_writes_it(tmp_path, kind):
    """The typed meta adds nothing and loses nothing: keys, their order and their values
    (so a checkpoint written through ``to_dict`` has the bytes it always had)."""
    meta = {
        "joint": META,
        "posthoc": {**META, "mode": "posthoc", "base_prior": "gaussian", "init_sha256": SHA},
        "flow": {**META, "prior": "realnvp", "flow_lr_warmup": True},
    }[kind]
    meta = {k: meta[k] for k in TRAINING_ORDER if k in meta}
    assert list(typed(meta).to_dict().items()) == list(meta.items())
    model = build_from_meta(typed(meta))
    payload = {"kind": "final", "model": model.state_dict(), "step": 0}
    save_checkpoint({**payload, "meta": meta}, tmp_path / "dict.pt")
    save_checkpoint({**payload, "meta": typed(meta)}, tmp_path / "typed.pt")
    assert (tmp_path / "dict.pt").read_bytes() == (tmp_path / "typed.pt").read_bytes()


def test_a_checkpoint_in_the_folder_of_another_cell_is_refused(tmp_path):
    cell = tmp_path / "runs" / "models" / "tiny" / "vae" / "lars" / "standard" / "seed3"
    cell.mkdir(parents=True)
    path, _ = saved(cell)
    assert load_checkpoint(path)["meta"].seed == 3  # its own cell
    for change, words in (
        ({"mode": "posthoc", "base_prior": "gaussian"}, "mode = 'posthoc' but it sits in"),
        ({"variant": "t2"}, "prior = 'lars-t2' but it sits in the folder of prior = 'lars'"),
        ({"seed": 4}, "seed = '4' but it sits in the folder of seed = '3'"),
        ({"dataset": "other"}, "dataset = 'other'"),
    ):
        path, _ = saved(cell, meta={**META, **change})
        refused(path, "its meta says", words, "a checkpoint of another cell")
    check_cell(typed({**META, "seed": 4}), tmp_path / "elsewhere" / "model.pt")  # no cell
    variant = cell.parent.parent.parent / "lars-t2" / "standard" / "seed3"
    variant.mkdir(parents=True)
    path, _ = saved(variant, meta={**META, "variant": "t2"})
    assert load_checkpoint(path)["meta"].prior_tag == "lars-t2"


def test_errors_are_worded_on_one_line():
    assert _one_line(ValueError("bad  header\n in file. Try again.")) == "bad header in file"
    assert _one_line(ValueError("")) == "ValueError"
    assert _one_line(ValueError("corrupt file.")) == "corrupt file"  # the full stop goes
    assert _one_line(ValueError("no key X.")) == "no key X"
    assert _one_line(ValueError(".5 is not an int")) == ".5 is not an int"
    long = _one_line(ValueError("x" * 200))
    assert len(long) == 120 and long == "x" * 117 + "..."
    assert _one_line(ValueError("y" * 120)) == "y" * 120
    assert _one_line(ValueError("z" * 30), limit=10) == "z" * 7 + "..."


# -- RNG state -----------------------------------------------------------------------------


def test_rng_state_round_trip_restores_every_generator():
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.standard_normal()  # numpy now holds a cached Gaussian
    state = get_rng_state()
    want = (torch.rand(3), np.random.standard_normal(3), np.random.random(), random.random())
    assert isinstance(state["numpy"]["keys"], torch.Tensor)  # plain tensors: weights_only
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    set_rng_state(state)
    got = (torch.rand(3), np.random.standard_normal(3), np.random.random(), random.random())
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert got[2:] == want[2:]


def test_rng_state_survives_a_checkpoint(tmp_path):
    random.seed(5)
    np.random.seed(5)
    random.gauss(0.0, 1.0)  # python now holds a cached Gaussian (gauss_next)
    state = get_rng_state()
    want = (random.gauss(0.0, 1.0), np.random.random(), torch.rand(2))
    path = tmp_path / "resume.pt"
    save_checkpoint({"kind": "resume", "meta": META, "model": {}, "step": 0, "rng": state}, path)
    random.seed(0)
    np.random.seed(0)
    set_rng_state(load_checkpoint(path)["rng"])
    got = (random.gauss(0.0, 1.0), np.random.random(), torch.rand(2))
    assert got[:2] == want[:2] and torch.equal(got[2], want[2])


# -- models from checkpoints ---------------------------------------------------------------


def test_load_model_returns_the_saved_weights_in_eval_mode(tmp_path):
    path, model = saved(tmp_path)
    with torch.no_grad():
        model.top_prior.set_log_z(-0.75)
    save_checkpoint({"kind": "final", "meta": META, "model": model.state_dict(), "step": 7}, path)
    loaded, ckpt = load_model(path)
    assert not loaded.training and ckpt["step"] == 7
    assert isinstance(loaded.top_prior, ResampledPrior)
    assert loaded.top_prior.log_z.item() == -0.75 and bool(loaded.top_prior.log_z_initialised)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_a_posthoc_checkpoint_is_a_gaussian_model_with_an_acceptance(tmp_path):
    meta = {**META, "prior": "lars", "mode": "posthoc"}
    model = build_from_meta(typed(meta))
    assert isinstance(model.top_prior, ResampledPrior)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".acceptance." in n for n in trainable)  # the rest is frozen
    path, _ = saved(tmp_path, meta=meta)
    loaded, _ = load_model(path)
    assert set(loaded.state_dict()) == set(model.state_dict())


def test_models_load_on_the_device_asked_for(tmp_path):
    path, _ = saved(tmp_path)
    model, _ = load_model(path, device="meta")  # a device without storage
    assert {p.device.type for p in model.parameters()} == {"meta"}
    cpu = model_from_checkpoint(load_checkpoint(path), path)  # the default is the CPU
    assert {p.device.type for p in cpu.parameters()} == {"cpu"} and not cpu.training


def test_weights_of_another_size_than_the_meta_describes_are_refused(tmp_path):
    path, model = saved(tmp_path)
    ckpt = load_checkpoint(path)
    mcfg = ckpt["meta"].model_config
    bigger = dataclasses.replace(ckpt["meta"], model_config=dataclasses.replace(mcfg, hidden=9))
    with pytest.raises(CheckpointError, match=r"describes a model of [\d,]+ numbers but the file"):
        check_size({**ckpt, "meta": bigger}, path)
    with pytest.raises(CheckpointError, match="'model' entry is not a state dict"):
        check_size({**ckpt, "model": [1.0]}, path)
    check_size(ckpt, path)  # the true meta passes


def test_weights_of_the_right_size_but_wrong_names_are_refused(tmp_path):
    path, model = saved(tmp_path)
    ckpt = load_checkpoint(path)
    renamed = {"x" + k: v for k, v in ckpt["model"].items()}
    path2 = tmp_path / "renamed.pt"
    save_checkpoint({**ckpt, "model": renamed}, path2)
    where = re.escape(str(path2))
    with pytest.raises(CheckpointError, match=f"^checkpoint {where}: does not match the model"):
        load_model(path2)
    bigger = tmp_path / "bigger.pt"
    meta = {**META, "model_config": {**META["model_config"], "hidden": 9}}
    save_checkpoint({**ckpt, "meta": meta}, bigger)
    where = re.escape(str(bigger))
    with pytest.raises(CheckpointError, match=f"^checkpoint {where}: its meta describes a model"):
        load_model(bigger)


@pytest.mark.parametrize(
    "meta, lars, z",
    [
        ({"prior": "lars", "arch": "vae"}, True, True),
        ({"prior": "trs", "arch": "vae"}, True, True),
        ({"prior": "lars", "arch": "vae", "mode": "posthoc"}, True, True),
        ({"prior": "gaussian", "arch": "vae", "mode": "standard"}, False, False),
        ({"prior": "gaussian", "arch": "vae_rx"}, False, True),
        ({"prior": "realnvp", "arch": "hvae"}, False, False),
    ],
)
def test_which_checkpoints_hold_a_lars_prior_or_a_z(meta, lars, z):
    meta = typed({**meta, "model_config": META["model_config"]})
    assert meta.is_lars is lars and meta.has_z is z
