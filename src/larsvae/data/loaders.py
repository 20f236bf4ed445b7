"""Load prepared datasets and stream deterministic, dynamically binarized training batches.

Dynamic binarization (paper Appendix C.1, following Salakhutdinov & Murray 2008): every
time a training image with grey levels v in {0..255} is used it is resampled as
x ~ Bernoulli(v / 255), pixel-wise and independently. Here this is exact: x = [u < v] with
u uniform on {0, ..., 254}, drawn on the training device.

Determinism and exact resume: the batch at step t depends only on (seed, t). Step t lies in
epoch e = t // steps_per_epoch (``steps_per_epoch = N // batch_size``, the incomplete last
batch of an epoch is dropped); the epoch's order is ``torch.randperm`` from a CPU generator
seeded with (seed, e) (so it is the same on every device), and the binarization noise comes
from a generator on the target device seeded with (seed, t). Re-creating a stream and calling
``batch(t)`` therefore reproduces a run from any step. Values are identical across runs on
the same device type; CPU and CUDA draw different (equally valid) binarization noise.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..utils import derive_seed
from .checksums import DataError

SPLITS = ("train", "valid", "test")
#: a manifest is a few KB; anything far larger is not one (and is not read)
MANIFEST_MAX_BYTES = 1 << 20
_STREAM_PERMUTATION = 0
_STREAM_BINARIZE = 1


def load(
    path: str | os.PathLike, device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    """Read ``{dataset}.npz`` -> ``{"train", "valid", "test"}`` uint8 tensors of shape (N, 784)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {s: torch.from_numpy(np.ascontiguousarray(z[s])) for s in SPLITS}
    except FileNotFoundError as e:
        raise DataError(f"dataset file {str(path)!r} not found; run `larsvae prepare-data`") from e
    except (KeyError, ValueError, OSError) as e:
        raise DataError(f"{path}: not a prepared larsvae dataset ({e})") from e
    for s, t in out.items():
        if t.dtype != torch.uint8 or t.ndim != 2 or t.shape[1] != 784:
            raise DataError(
                f"{path}: split {s!r} is {t.dtype} {tuple(t.shape)}, expected uint8 (N, 784)"
            )
    if device is not None:
        out = {s: t.to(device) for s, t in out.items()}
    return out


def load_manifest(path: str | os.PathLike) -> dict:
    """The JSON manifest beside a prepared npz (``foo.npz`` -> ``foo.json``)."""
    p = Path(path)
    p = p.with_suffix(".json") if p.suffix == ".npz" else p
    redo = "run `larsvae prepare-data` again"
    try:
        if p.stat().st_size > MANIFEST_MAX_BYTES:  # before reading: never a multi-GB read
            raise DataError(f"manifest {p}: {p.stat().st_size} bytes, not a manifest; {redo}")
        manifest = json.loads(p.read_text())
    except FileNotFoundError:
        raise DataError(f"manifest {str(p)!r} not found; run `larsvae prepare-data`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"manifest {p}: not valid JSON (truncated?): {e}; {redo}") from None
    if not isinstance(manifest, dict):
        raise DataError(f"manifest {p}: expected a JSON object; {redo}")
    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        raise DataError(f"manifest {p}: no 'splits' entry; {redo}")
    for s in SPLITS:
        entry = splits.get(s)
        if not isinstance(entry, dict) or entry.get("values") not in ("grey", "binary"):
            raise DataError(
                f"manifest {p}: splits.{s} must record values 'grey' or 'binary'; {redo}"
            )
        n = entry.get("n")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise DataError(f"manifest {p}: splits.{s}.n must be an integer >= 0, got {n!r}")
    return manifest


def is_grey(manifest: dict, split: str) -> bool:
    """Whether a split holds grey levels (binarize dynamically) rather than {0, 1}."""
    return manifest["splits"][split]["values"] == "grey"


def eval_tensor(
    data: dict[str, torch.Tensor], split: str = "test", device: torch.device | str | None = None
) -> torch.Tensor:
    """Fixed-binarized evaluation split as float32 {0, 1} of shape (N, 784) on ``device``.

    Valid/test were binarized once at preparation time (fixed, documented seed), so
    evaluation is deterministic; a grey split here is an error rather than silently wrong.
    """
    x = data[split]
    if x.numel() and int(x.max()) > 1:
        raise DataError(
            f"split {split!r} holds grey levels, not binary values; cannot evaluate on it"
        )
    return x.to(device=device, dtype=torch.float32)


class BatchStream:
    """Deterministic training batches: ``batch(step)`` depends only on (seed, step).

    ``data``: uint8 (N, 784), grey levels if ``dynamic`` else {0, 1}; it is moved to
    ``device`` once. ``batch(step)`` -> float32 (B, 784) in {0, 1} on ``device``.
    """

    def __init__(
        self,
        data: torch.Tensor | np.ndarray,
        batch_size: int,
        seed: int,
        device: torch.device | str | None = None,
        dynamic: bool = True,
    ) -> None:
        if isinstance(data, np.ndarray):
            data = torch.from_numpy(np.ascontiguousarray(data))
        if data.dtype != torch.uint8 or data.ndim != 2:
            raise DataError(
                f"BatchStream expects uint8 (N, D) data, got {data.dtype} {tuple(data.shape)}"
            )
        if not 1 <= batch_size <= data.shape[0]:
            raise DataError(f"batch_size must be in [1, {data.shape[0]}], got {batch_size}")
        is_binary = int(data.max()) <= 1
        if dynamic and is_binary:
            raise DataError("data are already binary; use dynamic=False (e.g. static_mnist)")
        if not dynamic and not is_binary:
            raise DataError("data hold grey levels; use dynamic=True to binarize them")
        self.device = torch.device(device) if device is not None else data.device
        self.data = data.to(self.device)  # (N, D), kept on the device
        self.batch_size = batch_size
        self.seed = int(seed)
        self.dynamic = dynamic
        self.num_examples = data.shape[0]
        self.steps_per_epoch = self.num_examples // batch_size
        self._epoch = -1
        self._perm: torch.Tensor | None = None
        self._gen = torch.Generator(device=self.device)

    def permutation(self, epoch: int) -> torch.Tensor:
        """Order of the examples in ``epoch`` (N,), int64 on the device."""
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, _STREAM_PERMUTATION, epoch))
            self._perm = torch.randperm(self.num_examples, generator=g).to(self.device)
            self._epoch = epoch
        assert self._perm is not None
        return self._perm

    def indices(self, step: int) -> torch.Tensor:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, i = divmod(step, self.steps_per_epoch)
        return self.permutation(epoch)[i * self.batch_size : (i + 1) * self.batch_size]

    def batch(self, step: int) -> torch.Tensor:
        """Training batch at ``step``: float32 (B, D) in {0, 1}, x ~ Bernoulli(v/255) if dynamic."""
        x = torch.index_select(
            self.data, 0, self.indices(step)
        )  # (B, D) uint8; `[idx]` is ~30x slower on CPU
        if not self.dynamic:
            return x.float()
        self._gen.manual_seed(derive_seed(self.seed, _STREAM_BINARIZE, step))
        u = torch.randint(
            0, 255, x.shape, generator=self._gen, device=self.device, dtype=torch.uint8
        )
        return (u < x).float()

    def iterate(self, start_step: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
        """Endless ``(step, batch)`` pairs from ``start_step`` (resume by passing the step)."""
        step = start_step
        while True:
            yield step, self.batch(step)
            step += 1


def train_stream(
    data: dict[str, torch.Tensor],
    manifest: dict,
    batch_size: int,
    seed: int,
    device: torch.device | str | None = None,
) -> BatchStream:
    """A :class:`BatchStream` over the train split, dynamic iff the manifest says grey."""
    return BatchStream(data["train"], batch_size, seed, device, dynamic=is_grey(manifest, "train"))
