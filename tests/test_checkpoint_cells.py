"""A checkpoint of another cell, planted in a cell's folder, is refused by every reader.

``load_checkpoint`` checks a checkpoint against the cell its path names (dataset, arch,
prior with its variant, mode, seed: larsvae.paths), so every step that reads a cell's
checkpoint refuses another cell's by construction: estimate-z, evaluate, sample, rank (the
library's and the step's), latent2d, the prior report's timing, post-hoc training's
``--init`` and the CLI. Each refusal is one line naming the file and what differs, and
nothing is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import SMALL_MODEL, cli_in_process, make_tiny_dataset, z_args

from larsvae import steps
from larsvae.checkpoint import CheckpointError, load_checkpoint, load_model
from larsvae.config import EvalConfig, model_config, train_config
from larsvae.paths import Layout
from larsvae.reports import priors
from larsvae.reports.acceptance import rank_checkpoint
from larsvae.utils import file_sha256

pytestmark = pytest.mark.usefixtures("single_thread")

EVAL = EvalConfig(z_samples=1000, z_batch=500, iwae_k=4, iwae_batch=8, test_subset=8)
MCFG = model_config(SMALL_MODEL)
TCFG = train_config({"iterations": 4, "batch_size": 16})


def _cell(root: Path, prior: str, mode: str = "standard") -> Path:
    lay = Layout(str(root / "runs"), str(root / "reports"))
    w = dict(dataset="dynamic_mnist", arch="vae", prior=prior, mode=mode, seed=1)
    return Path(lay.model(**w))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Four cells trained in their own folders: gaussian, joint LARS, its variant t2 and
    post-hoc LARS (whose ``--init`` is read, and checked, from the gaussian cell)."""
    root = tmp_path_factory.mktemp("cells")
    data = make_tiny_dataset(root / "data")
    out = {"data": data, "root": root}
    for name, prior, variant in (
        ("gaussian", "gaussian", "base"),
        ("joint", "lars", "base"),
        ("t2", "lars", "t2"),
    ):
        out[name] = _cell(root, prior if variant == "base" else f"{prior}-{variant}")
        steps.train(data, "vae", prior, 1, MCFG, TCFG, out[name], variant=variant, progress=False)
    out["posthoc"] = _cell(root, "lars", "posthoc")
    steps.train(
        data, "vae", "lars", 1, MCFG, TCFG, out["posthoc"], init=out["gaussian"], progress=False
    )
    return out


#: each reader of a cell's checkpoint, called as its step calls it, writing under ``out``
READERS = {
    "estimate-z": lambda c, d, out: steps.estimate_z(c, EVAL, 0, 1, out / "s.json", progress=False),
    "evaluate": lambda c, d, out: steps.evaluate(c, d, EVAL, out / "nll.json", progress=False),
    "sample": lambda c, d, out: steps.sample_grid(c, 4, 0, out / "grid.png"),
    "rank": lambda c, d, out: steps.rank(c, out / "ranking", n=16, seed=0),
    "rank_checkpoint": lambda c, d, out: rank_checkpoint(c, out / "ranking", n=16, seed=0),
    "latent2d": lambda c, d, out: steps.latent2d(
        {"LARS": c}, {}, d, d, out / "latent2d", grid=8, seed=0
    ),
    "priors timing": lambda c, d, out: priors._checkpoint_prior(
        {"checkpoint": str(c)}, {"checkpoint_sha256": file_sha256(c)}, Path("/")
    ),
    "load_model": lambda c, d, out: load_model(c),
}

#: (planted model, what its meta says against the joint cell's folder)
PLANTED = {
    "posthoc": "its meta says mode = 'posthoc' but it sits in the folder of mode = 'standard'",
    "t2": "its meta says prior = 'lars-t2' but it sits in the folder of prior = 'lars'",
}


@pytest.fixture(scope="module")
def planted(trained, tmp_path_factory):
    """The joint cell's folder (of another run tree) holding each planted model."""
    out = {}
    for name in PLANTED:
        root = tmp_path_factory.mktemp(f"planted_{name}")
        out[name] = _cell(root, "lars")
        out[name].parent.mkdir(parents=True)
        shutil.copy(trained[name], out[name])
    return out


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("name", list(PLANTED))
def test_each_reader_refuses_a_checkpoint_of_another_cell(trained, planted, reader, name, tmp_path):
    with pytest.raises(CheckpointError) as info:
        READERS[reader](planted[name], trained["data"], tmp_path)
    message = str(info.value)
    assert message == f"checkpoint {planted[name]}: {PLANTED[name]}: a checkpoint of another cell"
    assert "\n" not in message
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("reader", ["estimate-z", "sample", "rank", "load_model"])
def test_the_cells_own_checkpoint_in_the_same_folder_passes(trained, reader, tmp_path):
    joint = _cell(tmp_path / "tree", "lars")
    joint.parent.mkdir(parents=True)
    shutil.copy(trained["joint"], joint)
    READERS[reader](joint, trained["data"], tmp_path)


def test_posthoc_init_from_another_cells_checkpoint_is_refused(trained, tmp_path):
    gaussian = _cell(tmp_path, "gaussian")
    gaussian.parent.mkdir(parents=True)
    shutil.copy(trained["joint"], gaussian)  # a LARS model in the gaussian cell's folder
    out = _cell(tmp_path, "lars", "posthoc")
    with pytest.raises(CheckpointError, match="prior = 'lars' but it sits in the folder of prior"):
        steps.train(
            trained["data"], "vae", "lars", 1, MCFG, TCFG, out, init=gaussian, progress=False
        )
    assert not out.exists()


def test_the_cli_refuses_it_on_one_line(trained, planted, tmp_path):
    rc, err = cli_in_process(z_args(planted["posthoc"], tmp_path / "shard.json"))
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "a checkpoint of another cell" in lines[0], err
    assert str(planted["posthoc"]) in lines[0]
    assert not (tmp_path / "shard.json").exists()


def test_the_trained_cells_load_from_their_own_folders(trained):
    for name, prior in (("gaussian", "gaussian"), ("joint", "lars"), ("t2", "lars-t2")):
        meta = load_checkpoint(trained[name])["meta"]
        assert meta.prior_tag == prior and meta.mode == "standard" and meta.seed == 1
    meta = load_checkpoint(trained["posthoc"])["meta"]
    assert (meta.mode, meta.base_prior, meta.init_sha256) == (
        "posthoc",
        "gaussian",
        file_sha256(trained["gaussian"]),
    )


def test_cell_of_path_names_every_architecture():
    """Every arch, ``vae_rx`` (an underscore) included, is read from a cell's folder, so
    its checkpoints are checked against their cell like the others'."""
    from larsvae.config import ARCHS
    from larsvae.paths import cell_of_path

    for arch in ARCHS:
        where = cell_of_path(f"runs/quick/models/dynamic_mnist/{arch}/lars-t2/posthoc/seed3/m.pt")
        assert where == {
            "dataset": "dynamic_mnist",
            "arch": arch,
            "prior": "lars-t2",
            "mode": "posthoc",
            "seed": "3",
        }


@pytest.mark.parametrize(
    ("variant", "dataset", "message"),
    [
        ("T2", "dynamic_mnist", "meta variant = 'T2'"),  # not a variant name
        ("base", "omniglot", "its meta says dataset = 'dynamic_mnist' but it sits in the folder"),
    ],
    ids=["variant-name", "other-dataset"],
)
def test_training_refuses_a_checkpoint_no_reader_would_accept_before_its_first_step(
    tmp_path, variant, dataset, message
):
    """The meta training will write is validated and checked against the folder first: a
    run whose checkpoint every reader would refuse never starts, and writes nothing."""
    data = make_tiny_dataset(tmp_path / "data")
    lay = Layout(str(tmp_path / "runs"), str(tmp_path / "reports"))
    out = Path(lay.model(dataset=dataset, arch="vae", prior="lars", mode="standard", seed=1))
    with pytest.raises(CheckpointError, match=message) as info:
        steps.train(data, "vae", "lars", 1, MCFG, TCFG, out, variant=variant, progress=False)
    assert "\n" not in str(info.value) and str(out) in str(info.value)
    assert not (tmp_path / "runs").exists() or not any(
        p.is_file() for p in (tmp_path / "runs").rglob("*")
    )
