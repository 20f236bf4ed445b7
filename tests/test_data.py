"""Fast tests of the data layer: formats, binarization statistics, loaders, source errors.

Preparation of the real datasets lives in ``test_data_prepare.py`` (marked slow).
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import larsvae.data.prepare as prep
import larsvae.data.sources as src
from larsvae import cli
from larsvae.config import DATASETS
from larsvae.data import BatchStream, DataError, eval_tensor, load
from larsvae.data.checksums import SHA256, ChecksumMismatch, omniglot_zip_to_array, verify
from larsvae.utils import derive_seed

MIRROR = Path(__file__).resolve().parents[2] / "shared" / "datasets"
needs_mirror = pytest.mark.skipif(not MIRROR.is_dir(), reason=f"no dataset mirror at {MIRROR}")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    """No ambient mirrors and no network unless a test asks for them."""
    monkeypatch.delenv(src.MIRRORS_ENV, raising=False)
    monkeypatch.setenv(src.OFFLINE_ENV, "1")


# ---------------------------------------------------------------------------- raw formats


def test_amat_text_matches_larochelle_format_and_round_trips():
    x = np.zeros((2, 784), dtype=np.int8)
    x[0, 0] = 1
    x[1, -1] = 1
    text = prep.amat_text(x)
    lines = text.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3
    assert lines[0] == b"1" + b" 0" * 783
    assert lines[1] == b"0 " * 783 + b"1"
    np.testing.assert_array_equal(prep.parse_amat(text), x.astype(np.uint8))
    with pytest.raises(DataError):
        prep.parse_amat(text.replace(b"1", b"2", 1))


def test_parse_idx_reads_header_and_rejects_wrong_magic():
    imgs = np.arange(2 * 28 * 28, dtype=np.uint64).astype(np.uint8).reshape(2, 28, 28)
    raw = (0x803).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (2, 28, 28))
    np.testing.assert_array_equal(prep.parse_idx(raw + imgs.tobytes(), 3), imgs)
    with pytest.raises(DataError, match="IDX"):
        prep.parse_idx(raw + imgs.tobytes(), 1)


def test_area_matrix_windows_match_torch_and_downsampling_is_exact():
    b = prep.area_matrix()
    assert b.shape == (28, 105)
    assert set(b.sum(1).tolist()) == {4.0, 5.0}  # 105/28 = 3.75: overlapping 4- and 5-wide
    rng = np.random.default_rng(0)
    background = rng.random((64, 105, 105)) > 0.15
    got = prep.downsample_omniglot(background)
    strokes = torch.from_numpy((~background).astype(np.float64)).unsqueeze(1)
    ref = torch.nn.functional.adaptive_avg_pool2d(strokes, (28, 28)).reshape(64, 784).numpy()
    np.testing.assert_array_equal(got, np.rint(ref * 255).astype(np.uint8))
    # Closed forms: blank -> 0, full -> 255, one stroke pixel in a 4x4 window -> 255/16.
    one = np.ones((3, 105, 105), dtype=bool)
    one[1] = False
    one[2, 0, 0] = False
    out = prep.downsample_omniglot(one)
    assert out[0].max() == 0 and out[1].min() == 255
    assert out[2, 0] == 16 and out[2, 1:].max() == 0


def test_omniglot_zip_decoder_orders_alphabets_characters_drawers(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    imgs = rng.random((3, 20, 105, 105)) > 0.1  # 3 characters, True = background
    buf = io.BytesIO()
    names = [("Beta", "character02"), ("Alpha", "character01"), ("Beta", "character01")]
    order = sorted(range(3), key=lambda i: names[i])  # decoder sorts alphabet/character
    with zipfile.ZipFile(buf, "w") as zf:
        for ci, (alpha, char) in enumerate(names):
            for d in range(20):
                png = io.BytesIO()
                Image.fromarray(imgs[ci, d]).save(png, format="PNG")  # 1-bit, like Omniglot
                zf.writestr(
                    f"images_background/{alpha}/{char}/{ci:04d}_{d + 1:02d}.png", png.getvalue()
                )
    got = omniglot_zip_to_array(buf.getvalue(), "images_background")
    np.testing.assert_array_equal(got, imgs[order])


# ---------------------------------------------------------------------------- binarization


def _grey_ramp(n: int) -> np.ndarray:
    """(n, 784) grey levels covering 0..255, each pixel column a constant level."""
    levels = (np.arange(784) * 37) % 256
    return np.broadcast_to(levels, (n, 784)).astype(np.uint8).copy()


def _assert_bernoulli_means(samples: np.ndarray, levels: np.ndarray) -> None:
    p = levels / 255.0
    n = samples.shape[0]
    mean = samples.mean(0)
    assert np.all(mean[levels == 0] == 0) and np.all(mean[levels == 255] == 1)
    inner = (levels > 0) & (levels < 255)
    z = (mean[inner] - p[inner]) / np.sqrt(p[inner] * (1 - p[inner]) / n)
    assert np.abs(z).max() < 5.0  # 784 pixels; P(any |z| > 5) ~ 5e-4 under the right p
    assert abs(z.mean()) < 5.0 / np.sqrt(inner.sum())  # no systematic bias (e.g. v/256)


def test_binarize_once_is_bernoulli_v_over_255_and_seeded():
    x = _grey_ramp(20_000)
    b = prep.binarize_once(x, 0, "dynamic_mnist", "test")
    assert b.dtype == np.uint8 and set(np.unique(b)) <= {0, 1}
    _assert_bernoulli_means(b, x[0])
    np.testing.assert_array_equal(b, prep.binarize_once(x, 0, "dynamic_mnist", "test"))
    assert not np.array_equal(b, prep.binarize_once(x, 1, "dynamic_mnist", "test"))
    assert not np.array_equal(b, prep.binarize_once(x, 0, "dynamic_mnist", "valid"))
    # the documented derivation, so the fixed splits can be rebuilt outside larsvae
    seed = derive_seed(0, DATASETS.index("dynamic_mnist"), prep.SPLITS.index("test"))
    u = np.random.default_rng(seed).integers(0, 255, size=x.shape, dtype=np.uint8)
    np.testing.assert_array_equal(b, u < x)


# ---------------------------------------------------------------------------- BatchStream


def test_batch_stream_dynamic_binarization_statistics():
    x = _grey_ramp(1000)
    s = BatchStream(x, batch_size=500, seed=3)
    samples = torch.cat([s.batch(t) for t in range(40)]).numpy()  # 20,000 draws per pixel
    assert samples.dtype == np.float32 and set(np.unique(samples)) <= {0.0, 1.0}
    _assert_bernoulli_means(samples, x[0])


def test_batch_stream_depends_only_on_seed_and_step_and_resumes_exactly():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(103, 784), dtype=np.uint8)
    a = BatchStream(x, batch_size=10, seed=7)
    assert a.steps_per_epoch == 10  # the incomplete batch of 3 is dropped
    run = [a.batch(t) for t in range(35)]  # crosses three epoch boundaries
    b = BatchStream(torch.from_numpy(x), batch_size=10, seed=7)  # "restarted" at step 23
    for t in (23, 24, 30, 9, 10):
        torch.testing.assert_close(b.batch(t), run[t], rtol=0, atol=0)
    steps = [t for _, (t, _) in zip(range(5), b.iterate(start_step=12), strict=False)]
    assert steps == [12, 13, 14, 15, 16]
    c = BatchStream(x, batch_size=10, seed=8)
    assert not torch.equal(c.batch(0), run[0])
    # Every epoch visits 100 distinct examples, a fresh order each epoch.
    e0 = torch.cat([a.indices(t) for t in range(10)])
    e1 = torch.cat([a.indices(t) for t in range(10, 20)])
    assert len(set(e0.tolist())) == 100 and len(set(e1.tolist())) == 100
    assert not torch.equal(e0, e1)
    # Same step, same indices, different binarization noise across steps of equal content.
    assert torch.equal(a.indices(3), b.indices(3))


def test_batch_stream_static_data_and_kind_guards():
    rng = np.random.default_rng(0)
    binary = (rng.random((50, 784)) < 0.3).astype(np.uint8)
    s = BatchStream(binary, batch_size=5, seed=0, dynamic=False)
    torch.testing.assert_close(s.batch(4), torch.from_numpy(binary)[s.indices(4)].float())
    with pytest.raises(DataError, match="already binary"):
        BatchStream(binary, batch_size=5, seed=0)
    with pytest.raises(DataError, match="grey"):
        BatchStream(_grey_ramp(50), batch_size=5, seed=0, dynamic=False)
    with pytest.raises(DataError, match="batch_size"):
        BatchStream(binary, batch_size=51, seed=0, dynamic=False)


def test_load_and_eval_tensor(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "train": rng.integers(0, 256, (30, 784), dtype=np.uint8),
        "valid": (rng.random((7, 784)) < 0.5).astype(np.uint8),
        "test": (rng.random((9, 784)) < 0.5).astype(np.uint8),
    }
    path = tmp_path / "toy.npz"
    path.write_bytes(prep.npz_bytes(arrays))
    data = load(path)
    assert {k: (v.dtype, tuple(v.shape)) for k, v in data.items()} == {
        "train": (torch.uint8, (30, 784)),
        "valid": (torch.uint8, (7, 784)),
        "test": (torch.uint8, (9, 784)),
    }
    test = eval_tensor(data, "test")
    assert test.dtype == torch.float32 and torch.equal(
        test, torch.from_numpy(arrays["test"]).float()
    )
    with pytest.raises(DataError, match="grey"):
        eval_tensor(data, "train")
    with pytest.raises(DataError, match="not found"):
        load(tmp_path / "missing.npz")


def test_npz_bytes_are_deterministic():
    arrays = {"train": np.arange(784 * 3, dtype=np.uint64).astype(np.uint8).reshape(3, 784)}
    a = prep.npz_bytes(arrays)
    assert a == prep.npz_bytes(arrays)
    with zipfile.ZipFile(io.BytesIO(a)) as zf:
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


# ---------------------------------------------------------------------------- sources and errors


def test_nonexistent_mirror_folder_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "no-such-mirror"
    with pytest.raises(DataError, match="no-such-mirror.*does not exist"):
        prep.prepare("fashion_mnist", tmp_path / "out", [missing], download=False, registry=False)
    assert not (tmp_path / "out").exists()
    rc = cli.main(
        [
            "prepare-data",
            "--dataset",
            "fashion_mnist",
            "--out-dir",
            str(tmp_path / "out"),
            "--mirror",
            str(missing),
            "--no-download",
            "--no-registry",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("larsvae: error: mirror folder") and err.count("\n") == 1
    assert "Traceback" not in err


@needs_mirror
def test_unwritable_out_dir_is_a_data_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DataError, match="cannot write"):
        prep.prepare("static_mnist", blocker / "out", [MIRROR], download=False, registry=False)


@needs_mirror
def test_failed_write_leaves_neither_file_nor_temporaries(tmp_path):
    """The npz cannot be renamed into place (a folder has its name): no manifest appears,
    as a manifest must imply a complete npz, and no temporary is left behind."""
    out = tmp_path / "out"
    (out / "static_mnist.npz").mkdir(parents=True)
    with pytest.raises(DataError, match="cannot write static_mnist"):
        prep.prepare("static_mnist", out, [MIRROR], download=False, registry=False)
    assert [p.name for p in out.iterdir()] == ["static_mnist.npz"]
    assert (out / "static_mnist.npz").is_dir()


def test_env_mirror_that_does_not_exist_is_skipped_with_a_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv(src.MIRRORS_ENV, f"{tmp_path / 'gone'}::{tmp_path}")
    assert src.mirror_dirs() == [tmp_path]
    assert "gone" in caplog.text


@pytest.mark.parametrize("dataset", ["static_mnist", "omniglot"])
def test_no_source_error_names_files_checksums_and_the_fix(dataset, tmp_path):
    with pytest.raises(DataError) as e:
        prep.prepare(dataset, tmp_path / "out", registry=True)  # offline, no mirror
    msg = str(e.value)
    assert "\n" not in msg and src.MIRRORS_ENV in msg and "none exists" in msg
    for _, specs in src.VARIANTS[dataset]:
        for s in specs:
            assert s.name in msg and SHA256[s.key] in msg
    assert not (tmp_path / "out").exists()


def test_verify_rejects_wrong_content_naming_expected_and_actual():
    good = b"not the mnist labels"
    with pytest.raises(ChecksumMismatch) as e:
        verify("mnist/t10k-labels-idx1-ubyte", "x/t10k-labels-idx1-ubyte.gz", gzip.compress(good))
    msg = str(e.value)
    assert "x/t10k-labels-idx1-ubyte.gz" in msg
    assert SHA256["mnist/t10k-labels-idx1-ubyte"] in msg
    assert prep.sha256_hex(good) in msg
    with pytest.raises(ChecksumMismatch, match="not a valid gzip"):
        verify("mnist/t10k-labels-idx1-ubyte", "y.gz", b"\x1f\x8b garbage")


def _corrupt_copy(dst: Path) -> Path:
    """Copy the mirror's fashion_mnist/ and change one byte of one file's *content*."""
    shutil.copytree(MIRROR / "fashion_mnist", dst / "fashion_mnist")
    f = dst / "fashion_mnist" / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(f.read_bytes()))
    content[100] ^= 0xFF
    os.chmod(f, 0o644)
    f.write_bytes(gzip.compress(bytes(content)))
    return f


@needs_mirror
def test_corrupted_mirror_file_rejected_and_nothing_written(tmp_path, capsys):
    bad = _corrupt_copy(tmp_path / "bad")
    out = tmp_path / "out"
    out.mkdir()
    argv = [
        "prepare-data",
        "--dataset",
        "fashion_mnist",
        "--out-dir",
        str(out),
        "--mirror",
        str(tmp_path / "bad"),
        "--no-download",
        "--no-registry",
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    actual = prep.sha256_hex(gzip.decompress(bad.read_bytes()))
    assert str(bad) in err and SHA256["fashion/t10k-labels-idx1-ubyte"] in err and actual in err
    assert err.count("\n") == 1
    assert list(out.iterdir()) == []


@needs_mirror
def test_url_tier_downloads_verifies_and_falls_through(monkeypatch, tmp_path, caplog):
    """The URL tier, exercised with file:// URLs: a bad copy is rejected, the next URL wins."""
    _corrupt_copy(tmp_path / "bad")
    specs = tuple(
        src.FileSpec(
            s.key,
            s.name,
            urls=((tmp_path / "bad" / f"{s.name}.gz").as_uri(), (MIRROR / f"{s.name}.gz").as_uri()),
        )
        for s in src.FASHION_IDX
    )
    monkeypatch.setitem(src.VARIANTS, "fashion_mnist", (("fashion-idx", specs),))
    monkeypatch.delenv(src.OFFLINE_ENV)
    r = src.Resolver([], download=True, registry=False).resolve("fashion_mnist")
    assert r.sources["fashion/t10k-labels-idx1-ubyte"] == f"url {specs[3].urls[1]}"
    assert r.sources["fashion/train-images-idx3-ubyte"] == f"url {specs[0].urls[0]}"
    assert "rejected" in caplog.text and "t10k-labels" in caplog.text
    # Offline: the URL tier is skipped entirely, so nothing is found.
    monkeypatch.setenv(src.OFFLINE_ENV, "1")
    with pytest.raises(DataError, match="skipped \\(offline\\)"):
        src.Resolver([], download=True, registry=False).resolve("fashion_mnist")


def test_unreachable_canonical_urls_fail_fast(monkeypatch):
    import time

    monkeypatch.delenv(src.OFFLINE_ENV)
    monkeypatch.setattr(src, "URL_TIMEOUT_S", 2.0)
    spec = src.FileSpec(
        "mnist/t10k-labels-idx1-ubyte", "x", urls=("http://127.0.0.1:9/nothing.gz",)
    )
    r = src.Resolver([], download=True, registry=False, url_timeout=2.0)
    t = time.monotonic()
    assert r._from_url(spec) is None
    assert time.monotonic() - t < 5 and r.failures


@needs_mirror
@pytest.mark.parametrize("key", ["images_background", "images_evaluation"])
def test_the_real_omniglot_npz_passes_the_size_checks(key):
    """The mirror's .npz holds the images and one int64 label per image: its members'
    declared sizes must fit the zip-bomb cap (they once did not, and Omniglot could not be
    prepared from the mirror)."""
    raw = (MIRROR / "omniglot" / f"{key}.npz").read_bytes()
    assert verify(key, f"{key}.npz", raw).sha256 == SHA256[key]
