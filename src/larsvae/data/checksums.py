"""Pinned sha256 digests of every raw dataset file, and how a file's digest is defined.

A file is identified by the sha256 of its *decompressed content*, so that the same data
fetched from different sources (a recompressed ``.gz`` in a Debian package, the original
``.gz`` from a URL, an uncompressed copy in a mirror) verifies against one digest:

- ``*.gz``: sha256 of the gunzipped bytes;
- Omniglot image archives (``images_{background,evaluation}``, either the mirror's ``.npz``
  or the Omniglot repository's PNG ``.zip``): sha256 of the decoded pixel array, ``bool`` of
  shape (characters, 20, 105, 105), C order, True = white background;
- anything else: sha256 of the file bytes.

Where the digests come from (computed once, offline, and hard-coded here):

- static MNIST ``.amat``: the canonical digests published in the mirror README;
  ``mnist_salakhutdinov.pkl`` is accepted only because rewriting it as ``.amat`` text
  reproduces those three digests (checked again on every run, see ``prepare.py``);
- MNIST IDX: computed from ``mnist.pkl.gz`` (whose pixels are ``uint8 / 256`` exactly, so the
  IDX bytes are recoverable); ``train-images-idx3-ubyte`` matches the well-known digest
  ``ba891046...`` of the original file;
- Fashion-MNIST IDX: the gunzipped Debian/mirror files, which the distributor only recompressed;
- Omniglot: the decoded arrays of the mirror ``.npz`` files.

IWAE's 28x28 Omniglot ``chardata.mat`` has no digest we could pin offline, so it is not
used (an unverified file is never used); Omniglot is derived from the 105x105 originals.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np


class DataError(ValueError):
    """A user-facing data problem (missing source, bad checksum, bad mirror folder).

    The message is one paragraph that says what is wrong and how to fix it; the CLI prints
    it as one line and exits with status 2.
    """


class ChecksumMismatch(DataError):
    """A candidate file whose content digest differs from the pinned one (it is skipped)."""


#: Decompressed-content sha256 of every raw file the preparation may use.
SHA256: dict[str, str] = {
    # MNIST, classic pickled 50k/10k/10k split (float32 = uint8/256).
    "mnist.pkl.gz": "08c3b55725c13d27ee9f14f47c34689eebd9c3d611c9aa144e0f91d85b297337",
    # MNIST, original IDX files (torchvision mirrors).
    "mnist/train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "mnist/train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "mnist/t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "mnist/t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    # Statically binarized MNIST (Larochelle & Murray 2011), canonical text files.
    "binarized_mnist_train.amat": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "binarized_mnist_valid.amat": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "binarized_mnist_test.amat": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
    # ... and the same images pickled (int8); verified through the three .amat digests too.
    "mnist_salakhutdinov.pkl.gz": "a816af4016bb59ee2daed9a94d08baf7b7d68b0268ed62a2b14e5ec474f2c39c",
    # Omniglot 105x105 originals (Lake et al. 2015), decoded pixel arrays.
    "images_background": "97db6dcdf39955c3a949e197621f8f318092986b37e116c9b4996150e8d2d8a3",
    "images_evaluation": "a76180acf0908643e1a9494a1a841d2af4bbbbdc6d7e01e0db92eed7d1c6f902",
    # Fashion-MNIST, IDX.
    "fashion/train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "fashion/train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "fashion/t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "fashion/t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

#: Omniglot archive shapes (characters, drawers, 105, 105).
OMNIGLOT_SHAPES = {
    "images_background": (964, 20, 105, 105),
    "images_evaluation": (659, 20, 105, 105),
}

#: Bytes of every logical file's decompressed content (Omniglot: of the decoded bool array),
#: known like the digests: nothing larger is ever inflated or read (gzip bombs, a multi-GB
#: file with the right name), and the digest check rejects anything smaller or different.
SIZE: dict[str, int] = {
    "mnist.pkl.gz": 220_080_342,
    "mnist/train-images-idx3-ubyte": 47_040_016,
    "mnist/train-labels-idx1-ubyte": 60_008,
    "mnist/t10k-images-idx3-ubyte": 7_840_016,
    "mnist/t10k-labels-idx1-ubyte": 10_008,
    "binarized_mnist_train.amat": 78_400_000,
    "binarized_mnist_valid.amat": 15_680_000,
    "binarized_mnist_test.amat": 15_680_000,
    "mnist_salakhutdinov.pkl.gz": 55_440_338,
    "images_background": 964 * 20 * 105 * 105,
    "images_evaluation": 659 * 20 * 105 * 105,
    "fashion/train-images-idx3-ubyte": 47_040_016,
    "fashion/train-labels-idx1-ubyte": 60_008,
    "fashion/t10k-images-idx3-ubyte": 7_840_016,
    "fashion/t10k-labels-idx1-ubyte": 10_008,
}
#: An Omniglot archive (compressed .npz or the repository's PNG .zip) is far below this.
OMNIGLOT_ARCHIVE_MAX = 64 << 20
#: room for a .npy header in an .npz member
_NPY_HEADER_MAX = 4096


def _omniglot_npz_max(key: str) -> int:
    """An Omniglot .npz holds the images and one int64 label per image, each member with a
    .npy header (the mirror's images_background.npz: 212,562,128 + 154,368 bytes)."""
    alphabets_chars, drawers = OMNIGLOT_SHAPES[key][0], OMNIGLOT_SHAPES[key][1]
    return SIZE[key] + 8 * alphabets_chars * drawers + 2 * _NPY_HEADER_MAX


def max_raw_bytes(key: str) -> int:
    """The most bytes a raw file holding ``key`` can have: its content plus gzip's worst-case
    overhead (stored blocks: 5 bytes per 64 KB, and the header); an archive's fixed cap."""
    if key in OMNIGLOT_SHAPES:
        return OMNIGLOT_ARCHIVE_MAX
    return SIZE[key] + SIZE[key] // 1000 + (64 << 10)


def gunzip(raw: bytes, limit: int) -> bytes:
    """Decompress a (possibly multi-member) gzip stream, refusing once it exceeds ``limit``
    bytes: a bomb costs at most ``limit`` bytes of memory, never its inflated size."""
    out = bytearray()
    data = raw
    while True:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        buf = data
        while buf and not d.eof:
            out += d.decompress(buf, limit + 1 - len(out))
            if len(out) > limit:
                raise DataError(
                    f"decompresses to more than {limit:,} bytes, the size of the real file "
                    "(a gzip bomb?); not inflated further"
                )
            buf = d.unconsumed_tail
        if not d.eof:
            raise DataError("not a valid gzip file (truncated)")
        data = d.unused_data
        if not data.strip(b"\0"):  # trailing zero padding is allowed after the last member
            return bytes(out)


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Content:
    """Verified content of one logical file: ``data`` is bytes, or an ndarray for Omniglot."""

    key: str
    data: bytes | np.ndarray
    sha256: str


def decode(key: str, filename: str, raw: bytes) -> bytes | np.ndarray:
    """Decompressed content of a raw file named ``filename`` holding logical file ``key``."""
    if len(raw) > max_raw_bytes(key):
        raise DataError(f"{len(raw):,} bytes, more than the real file's {max_raw_bytes(key):,}")
    if key in OMNIGLOT_SHAPES:
        if filename.endswith(".npz"):
            _check_zip_members(raw, _omniglot_npz_max(key))
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                images = np.ascontiguousarray(z["images"])
        elif filename.endswith(".zip"):
            _check_zip_members(raw, OMNIGLOT_ARCHIVE_MAX)
            images = omniglot_zip_to_array(raw, key)
        else:
            raise DataError("expected an Omniglot .npz or .zip archive")
        if images.dtype != np.bool_ or images.shape != OMNIGLOT_SHAPES[key]:
            raise DataError(
                f"expected bool images of shape {OMNIGLOT_SHAPES[key]}, "
                f"got {images.dtype} {images.shape}"
            )
        return images
    if filename.endswith(".gz"):
        try:
            return gunzip(raw, SIZE[key])
        except zlib.error as e:  # not gzip, corrupt
            raise DataError(f"not a valid gzip file ({e})") from e
    return raw


def _check_zip_members(raw: bytes, limit: int) -> None:
    """The members of a zip (an .npz) declare their sizes; zipfile never inflates a member
    past its declared size, so checking the declarations bounds the memory."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            total = sum(i.file_size for i in zf.infolist())
    except zipfile.BadZipFile as e:
        raise DataError(f"not a valid zip/npz archive ({e})") from e
    if total > limit:
        raise DataError(
            f"its members decompress to {total:,} bytes, more than the real archive's "
            f"{limit:,} (a zip bomb?); not inflated"
        )


def content_digest(data: bytes | np.ndarray) -> str:
    if isinstance(data, np.ndarray):
        return sha256_hex(np.ascontiguousarray(data).tobytes())
    return sha256_hex(data)


def verify(key: str, filename: str, raw: bytes, label: str | None = None) -> Content:
    """Decode ``raw`` and check its content digest; raise :class:`ChecksumMismatch` if wrong.

    ``filename`` (its suffix) selects the decoder; ``label`` names the file in messages.
    """
    label = label or filename
    try:
        data = decode(key, filename, raw)
    except DataError as e:
        raise ChecksumMismatch(f"{label}: {e}; expected content sha256 {SHA256[key]}") from e
    except Exception as e:  # a corrupted archive can fail in many ways
        raise ChecksumMismatch(
            f"{label}: cannot decode ({type(e).__name__}: {e}); "
            f"expected content sha256 {SHA256[key]}"
        ) from e
    actual = content_digest(data)
    if actual != SHA256[key]:
        raise ChecksumMismatch(
            f"{label}: checksum mismatch (sha256 of the decompressed content: "
            f"expected {SHA256[key]}, actual {actual})"
        )
    return Content(key, data, actual)


def omniglot_zip_to_array(raw: bytes, key: str) -> np.ndarray:
    """Decode the Omniglot repository's ``images_*.zip`` (1-bit PNGs) into (C, 20, 105, 105).

    Order: alphabets sorted by name, characters sorted within an alphabet, drawers sorted by
    file name (``{id}_{drawer:02d}.png``); the digest check against the pinned array catches
    any disagreement with that order. PNG decoding uses Pillow (a torchvision dependency),
    imported lazily.
    """
    from PIL import Image  # noqa: PLC0415  (optional dependency, only for this source)

    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png"))
        chars: dict[str, list[str]] = {}
        for n in names:
            parts = n.split("/")
            if len(parts) != 4 or parts[0] != key:
                raise DataError(f"{key}.zip: unexpected member {n!r}")
            chars.setdefault("/".join(parts[1:3]), []).append(n)
        out = np.empty((len(chars), 20, 105, 105), dtype=np.bool_)
        for ci, char in enumerate(sorted(chars)):
            files = chars[char]
            if len(files) != 20:
                raise DataError(f"{key}.zip: {char} has {len(files)} drawings, expected 20")
            for di, n in enumerate(files):
                with Image.open(io.BytesIO(zf.read(n))) as img:
                    out[ci, di] = np.asarray(img.convert("L")) > 127
    return out
