"""Class labels of a prepared dataset, as a separate artefact ``{dataset}.labels.npz``.

The prepared ``{dataset}.npz`` holds images only, and it must stay byte-identical (every
trained checkpoint records its sha256), so the labels that ship with MNIST live in a file of
their own, read from the same verified raw source as the images (the Fig. D.14 scatter of
Bauer & Mnih 2019 colours encoded test digits by class).

Format: ``y_train``, ``y_valid``, ``y_test``, each ``uint8`` (N,), row ``i`` the label of
row ``i`` of the same split of ``{dataset}.npz``. Written atomically and deterministically
(``np.savez_compressed`` stamps zip entries with a fixed date), so the sha256 that
:func:`prepare_labels` returns identifies the content.

Alignment: the raw source is resolved exactly as :func:`larsvae.data.prepare.prepare` does
(same resolver, same variant preference, same checksums) and the image arrays are rebuilt
from it by the same builder; given ``dataset_file``, those rebuilt arrays must equal the
prepared npz split for split, which proves that the labels are in its order.

Datasets with labels: ``dynamic_mnist`` (``mnist.pkl.gz`` labels, or the IDX label files)
and ``fashion_mnist`` (IDX). Not ``static_mnist`` (the pickled copy's labels do not belong
to its images, see the mirror README) nor ``omniglot``.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..utils import atomic_write_bytes, file_sha256
from .checksums import DataError
from .prepare import BUILDERS, DEFAULT_SEED, EXPECTED_SIZES, SPLITS, _unpickle, parse_idx
from .sources import Resolved, Resolver, mirror_dirs

LABELLED = ("dynamic_mnist", "fashion_mnist")
NUM_CLASSES = 10


def _idx_labels(r: Resolved, prefix: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    train = parse_idx(r.contents[f"{prefix}/train-labels-idx1-ubyte"].data, 1)
    test = parse_idx(r.contents[f"{prefix}/t10k-labels-idx1-ubyte"].data, 1)
    # the same cut as the images: valid = the last 10k of the 60k training images
    return train[:50_000], train[50_000:], test


def labels_from_source(dataset: str, r: Resolved) -> dict[str, np.ndarray]:
    """``{"train", "valid", "test"}`` -> uint8 (N,) labels from a resolved raw source."""
    if dataset == "dynamic_mnist" and r.variant == "mnist.pkl.gz":
        (_, ytr), (_, yva), (_, yte) = _unpickle(r.contents["mnist.pkl.gz"].data)
        ys = (ytr, yva, yte)
    elif dataset == "dynamic_mnist":
        ys = _idx_labels(r, "mnist")
    elif dataset == "fashion_mnist":
        ys = _idx_labels(r, "fashion")
    else:
        raise DataError(f"{dataset}: no labels to prepare (labels exist for {', '.join(LABELLED)})")
    out = {}
    for split, y in zip(SPLITS, ys, strict=True):
        y = np.asarray(y)
        if y.ndim != 1 or y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
            raise DataError(f"{dataset}.{split}: labels are not in 0..{NUM_CLASSES - 1}")
        out[split] = y.astype(np.uint8)
    sizes = tuple(len(out[s]) for s in SPLITS)
    if sizes != EXPECTED_SIZES[dataset]:
        raise DataError(f"{dataset}: label counts {sizes}, expected {EXPECTED_SIZES[dataset]}")
    return out


def _check_alignment(dataset: str, r: Resolved, dataset_file: Path) -> None:
    """Rebuild the image arrays from ``r`` with the preparation's own builder (and the seed
    of the prepared file's manifest) and require them to equal ``dataset_file``'s."""
    manifest_path = dataset_file.with_suffix(".json")
    try:
        manifest = json.loads(manifest_path.read_text())
        seed = int(manifest.get("seed", DEFAULT_SEED))
        with np.load(dataset_file, allow_pickle=False) as z:
            prepared = {s: z[s] for s in SPLITS}
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{dataset_file}: not a prepared {dataset} dataset ({e})") from e
    if manifest.get("dataset") != dataset:
        raise DataError(
            f"{dataset_file}: its manifest says dataset {manifest.get('dataset')!r}, "
            f"not {dataset!r}"
        )
    arrays = BUILDERS[dataset](r, seed)[0]
    for s in SPLITS:
        if not np.array_equal(arrays[s], prepared[s]):
            raise DataError(
                f"{dataset_file}: split {s!r} differs from the images of the verified source "
                f"({r.variant}), so labels read from that source would not line up with it; "
                "re-run `larsvae prepare-data`"
            )


def labels_npz_bytes(labels: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{f"y_{s}": labels[s] for s in SPLITS})
    return buf.getvalue()


def prepare_labels(
    dataset: str,
    out_npz: str | os.PathLike,
    mirrors: Iterable[str | os.PathLike] = (),
    *,
    dataset_file: str | os.PathLike | None = None,
    download: bool = True,
    registry: bool = True,
) -> str:
    """Write the labels of ``dataset`` to ``out_npz`` (``y_train/y_valid/y_test``, uint8).

    The raw files are found and checksum-verified exactly as in
    :func:`larsvae.data.prepare.prepare` (``mirrors`` first, then ``$LARSVAE_DATA_MIRRORS``,
    URLs unless ``download=False``, registries unless ``registry=False``). With
    ``dataset_file`` (the prepared ``{dataset}.npz``, its ``.json`` beside it) the images of
    that source must equal the prepared arrays, split for split, or nothing is written.
    Returns the sha256 of the written file. Raises :class:`DataError` on any user-facing
    problem.
    """
    if dataset not in LABELLED:
        raise DataError(
            f"{dataset!r}: no labels to prepare (labels exist for {', '.join(LABELLED)})"
        )
    resolved = Resolver(mirror_dirs(mirrors), download=download, registry=registry).resolve(dataset)
    labels = labels_from_source(dataset, resolved)
    if dataset_file is not None:
        _check_alignment(dataset, resolved, Path(dataset_file))
    out = Path(out_npz)
    try:
        atomic_write_bytes(out, labels_npz_bytes(labels))
    except OSError as e:
        raise DataError(f"cannot write labels to {str(out)!r}: {e.strerror or e}") from e
    return file_sha256(out)


def load_labels(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a labels file -> ``{"train", "valid", "test"}`` uint8 (N,) arrays."""
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {s: np.asarray(z[f"y_{s}"]) for s in SPLITS}
    except FileNotFoundError as e:
        raise DataError(f"labels file {str(path)!r} not found") from e
    except (KeyError, ValueError, OSError) as e:
        raise DataError(f"{path}: not a labels file (y_train, y_valid, y_test) ({e})") from e
    for s, y in out.items():
        if y.dtype != np.uint8 or y.ndim != 1:
            raise DataError(f"{path}: y_{s} is {y.dtype} {y.shape}, expected uint8 (N,)")
    return out


__all__ = ["LABELLED", "labels_from_source", "load_labels", "prepare_labels"]
