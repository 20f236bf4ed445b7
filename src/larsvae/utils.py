"""Small shared helpers: atomic file writes, per-step seeds, device choice.

Atomic writes follow the usual recipe (temporary file in the destination directory, flush,
``fsync``, ``os.replace``, ``fsync`` of the directory), so a reader -- or Snakemake, which
only looks at whether an output exists -- never sees a half-written file, even after
``kill -9`` or a power cut.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

#: Prefix of the temporary files written by :func:`atomic_write`; a directory that still
#: holds one after a crash holds a partial output (the tests look for these).
TMP_PREFIX = ".larsvae-tmp-"


class UserError(Exception):
    """A problem the user can fix (bad path, bad argument); the CLI prints one line."""


class TrainingDiverged(UserError):
    """The training loss became NaN/inf; the last good checkpoint is kept (CLI status 1)."""


class DiskFull(UserError):
    """No space left (ENOSPC, or the quota: EDQUOT) while writing ``path``; the partial
    temporary was removed and ``path`` is untouched."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        super().__init__(
            f"{path}: no space left on device while writing it (nothing was written); "
            "free some space and rerun the same command"
        )


#: errno values that mean "the disk (or the quota) is full"
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: mkstemp creates 0600 files; the renamed output gets the permissions ``open`` would give
_FILE_MODE = 0o666 & ~_current_umask()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it atomically becomes ``path``.

    On any exception (including ``KeyboardInterrupt``) the temporary file is removed and
    ``path`` is left untouched; a full disk raises :class:`DiskFull` naming ``path``.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
        os.fchmod(fd, _FILE_MODE)
        with _open_fd(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        root = _root_cause(exc)
        if isinstance(root, OSError) and root.errno in DISK_FULL_ERRNOS:
            raise DiskFull(path) from None
        if isinstance(root, KeyboardInterrupt) and root is not exc:
            raise root from None
        raise
    _fsync_dir(path.parent)


def _root_cause(exc: BaseException) -> BaseException:
    """The disk-full error or interrupt behind ``exc``, else ``exc``. A writer may wrap
    the error its ``write`` raised: ``torch.save`` into a file raises its own RuntimeError
    when the zip's end cannot be written, with the ENOSPC as ``__context__``."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, KeyboardInterrupt) or (
            isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS
        ):
            return e
        e = e.__cause__ or e.__context__
    return exc


#: how :func:`atomic_write` opens its temporary (the tests put a full disk here)
_open_fd = os.fdopen


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_write`, streamed to the temporary file: no
    in-memory copy of the checkpoint (a training checkpoint is weights and both Adam
    moments, three times the model), so saving adds nothing to the step's peak memory."""
    import torch  # loaded late: the CLI answers argument errors without torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends only on ``parts`` (e.g. ``(seed, step)``).

    SHA-256 of the decimal parts: independent-looking streams for neighbouring steps or
    shards, identical across processes, platforms and Python versions (unlike ``hash``).
    """
    h = hashlib.sha256(":".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def choose_device(name: str = "auto") -> Any:
    """``auto``: CUDA if available (respects ``CUDA_VISIBLE_DEVICES``), else CPU."""
    import torch  # imported late: the CLI reports argument errors without loading torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine")
        return torch.device(name)
    raise UserError(f"--device {name!r}: expected auto, cpu or cuda")


def module_tensor(module: Any, default: Any = None) -> Any:
    """The first parameter of ``module``, else its first buffer, else ``default``.

    Its ``device``/``dtype`` are the module's (all tensors of a module share them here).
    """
    return next(itertools.chain(module.parameters(), module.buffers()), default)


def module_device(module: Any) -> Any:
    """The ``torch.device`` of ``module``'s first parameter/buffer; CPU if it has none."""
    t = module_tensor(module)
    if t is not None:
        return t.device
    import torch  # imported late: the CLI reports argument errors without loading torch

    return torch.device("cpu")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def existing_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path if it is a regular file, or one line naming it."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} {path}: no such file")
    if not p.is_file():
        raise UserError(f"{what} {path}: not a regular file")
    return p


def read_json(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The JSON object in ``path``, or one line naming the file (``what``: how the user
    named it, e.g. ``--z``)."""
    try:
        obj = json.loads(existing_file(path, what).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{what} {path}: expected a JSON object")
    return obj


def library_version() -> str:
    try:
        from importlib.metadata import version  # read once, when a version is recorded

        return version("larsvae")
    except Exception:  # running from a source tree that is not installed
        return "unknown"


def remove_quietly(*paths: str | os.PathLike) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def remove_stale_temporaries(*paths: str | os.PathLike) -> None:
    """Delete temporaries that :func:`atomic_write` left for ``paths`` when it was killed."""
    for p in paths:
        p = Path(p)
        if p.parent.is_dir():
            for tmp in p.parent.glob(TMP_PREFIX + p.name + ".*"):
                remove_quietly(tmp)


def progress_bar(
    total: int, initial: int = 0, desc: str = "", enabled: bool = True, unit: str = "it"
) -> Any:
    """A tqdm bar on stderr (so it ends up in the per-rule log), or a no-op stand-in.

    The stand-in is also used when tqdm (an optional dependency) is not installed.
    """
    if enabled:
        try:
            from tqdm.auto import tqdm  # optional dependency, only for a visible bar

            return tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit=unit,
                dynamic_ncols=True,
                mininterval=1.0,
                smoothing=0.05,
            )
        except ImportError:
            pass
    return _NoBar()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass
