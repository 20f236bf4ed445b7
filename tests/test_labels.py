"""Labels as a separate artefact (larsvae.data.labels) against the real mirror.

Alignment is proven twice: ``prepare_labels(..., dataset_file=...)`` rebuilds the images from
the verified source and requires them to equal the prepared npz, and here, independently of
the library's builders, the raw pickle's images read alongside its labels equal the npz rows
(so row i of ``y_train`` belongs to row i of ``train``). Known facts of MNIST (first labels,
test-set class counts) check that the labels are the right ones, not merely aligned.
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from larsvae.data.checksums import SHA256, DataError, sha256_hex
from larsvae.data.labels import load_labels, prepare_labels
from larsvae.data.prepare import prepare
from larsvae.utils import TMP_PREFIX, file_sha256

MIRROR = Path(os.environ.get("LARSVAE_DATA_MIRRORS", "/work/shared/datasets").split(":")[0])
MNIST_PKL = MIRROR / "mnist" / "mnist.pkl.gz"
FASHION = MIRROR / "fashion_mnist"

needs_mnist = pytest.mark.skipif(not MNIST_PKL.is_file(), reason=f"no MNIST mirror at {MIRROR}")
needs_fashion = pytest.mark.skipif(
    not (FASHION / "train-labels-idx1-ubyte.gz").is_file(), reason=f"no Fashion mirror {MIRROR}"
)
OFFLINE = {"download": False, "registry": False}


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist")
    npz = prepare("dynamic_mnist", out, [MIRROR], **OFFLINE)
    sha = prepare_labels(
        "dynamic_mnist", out / "dynamic_mnist.labels.npz", [MIRROR], dataset_file=npz, **OFFLINE
    )
    return npz, out / "dynamic_mnist.labels.npz", sha


@needs_mnist
def test_mnist_labels_line_up_with_the_prepared_images(mnist):
    npz, labels_path, sha = mnist
    assert sha == file_sha256(labels_path)
    y = load_labels(labels_path)
    with np.load(npz) as z:
        prepared = {s: z[s] for s in ("train", "valid", "test")}
    # independent reading of the raw file: images and labels travel together in the pickle
    raw = gzip.decompress(MNIST_PKL.read_bytes())
    assert sha256_hex(raw) == SHA256["mnist.pkl.gz"]
    splits = pickle.loads(raw, encoding="latin1")
    for s, (x, labels) in zip(("train", "valid", "test"), splits, strict=True):
        assert y[s].dtype == np.uint8 and np.array_equal(y[s], labels)
        assert len(y[s]) == len(prepared[s])
        grey = np.rint(x * 256).astype(np.uint8)
        if s == "train":  # stored as grey levels: the very same rows
            assert np.array_equal(grey, prepared[s])
        else:  # binarised once, with 1 iff u < v: a 0 pixel stays 0, ink only where grey > 0
            assert not (prepared[s].astype(bool) & (grey == 0)).any()
            # per row, the binarised ink is strongly correlated with the grey image of the
            # same row and not with the next row's: a shifted labelling would fail this
            same = (prepared[s] * grey).sum(1) / np.maximum(grey.sum(1), 1)
            shifted = (prepared[s] * np.roll(grey, 1, 0)).sum(1) / np.maximum(grey.sum(1), 1)
            assert (same > shifted).mean() > 0.99
    # well-known MNIST facts: the first labels and the test set's class counts
    assert y["train"][:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert y["test"][:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(y["test"]).tolist() == [
        980,
        1135,
        1032,
        1010,
        982,
        892,
        958,
        1028,
        974,
        1009,
    ]


@needs_mnist
def test_labels_are_deterministic_and_refuse_a_misaligned_dataset(mnist, tmp_path):
    npz, _, sha = mnist
    again = prepare_labels("dynamic_mnist", tmp_path / "a.labels.npz", [MIRROR], **OFFLINE)
    assert again == sha  # byte-identical without the alignment check too
    # a prepared file whose train rows were swapped no longer lines up: nothing is written
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    with np.load(npz) as z:
        arrays = {s: z[s].copy() for s in ("train", "valid", "test")}
    arrays["train"][[0, 1]] = arrays["train"][[1, 0]]
    np.savez_compressed(bad_dir / "dynamic_mnist.npz", **arrays)
    (bad_dir / "dynamic_mnist.json").write_bytes(npz.with_suffix(".json").read_bytes())
    out = bad_dir / "dynamic_mnist.labels.npz"
    with pytest.raises(DataError, match="split 'train' differs"):
        prepare_labels(
            "dynamic_mnist", out, [MIRROR], dataset_file=bad_dir / "dynamic_mnist.npz", **OFFLINE
        )
    assert not out.exists() and not list(bad_dir.glob(TMP_PREFIX + "*"))


@needs_fashion
def test_fashion_labels_from_idx(tmp_path):
    sha = prepare_labels("fashion_mnist", tmp_path / "f.labels.npz", [MIRROR], **OFFLINE)
    y = load_labels(tmp_path / "f.labels.npz")
    assert sha == file_sha256(tmp_path / "f.labels.npz")
    assert [len(y[s]) for s in ("train", "valid", "test")] == [50_000, 10_000, 10_000]
    # Fashion-MNIST is balanced: 6,000 training and 1,000 test images per class
    assert (np.bincount(y["train"]) + np.bincount(y["valid"])).tolist() == [6000] * 10
    assert np.bincount(y["test"]).tolist() == [1000] * 10


def test_datasets_without_labels_are_refused(tmp_path):
    for name in ("static_mnist", "omniglot", "cifar"):
        with pytest.raises(DataError, match="no labels to prepare"):
            prepare_labels(name, tmp_path / "x.npz", **OFFLINE)
    assert not (tmp_path / "x.npz").exists()
