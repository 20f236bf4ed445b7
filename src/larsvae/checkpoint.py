"""Checkpoint files: safe loading, RNG state capture, model reconstruction.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts only, so that it
loads with ``torch.load(..., weights_only=True)``: a checkpoint from a stranger cannot execute
code. Layout (``format_version`` 1)::

    format          "larsvae-checkpoint"
    format_version  1
    kind            "resume" (mid-training state) or "final" (the rule's output)
    version         larsvae library version that wrote it
    meta            {"arch", "prior", "mode", "dataset", "dataset_sha256", "seed",
                     "model_config": {...}, "train_config": {...}}
    model           model.state_dict()   (includes the LARS running Z buffer ``log_z``)
    step            completed optimisation steps (= data position: batch t is a pure
                    function of (seed, t), see larsvae.data.BatchStream)
    curve           training curve rows so far (list of dicts), rewritten as TSV on resume
    resume only:    optimizer, schedule, rng, window, best, evals
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import (
    ARCHS,
    LARS_PRIORS,
    PRIORS,
    SEED_MAX,
    ConfigError,
    model_config,
)
from .config import has_z as _has_z
from .models import build_model
from .utils import UserError, atomic_torch_save

FORMAT = "larsvae-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated, corrupt or of the wrong kind."""


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``payload`` atomically (temporary file + fsync + rename)."""
    atomic_torch_save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, path)


def _one_line(exc: BaseException, limit: int = 120) -> str:
    """The first sentence of an exception message, on one line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text.split(". ")[0].rstrip(".")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a larsvae checkpoint with ``weights_only=True``.

    Raises :class:`CheckpointError` naming the file for a missing, truncated, corrupt or
    foreign file (one line, fit for the CLI).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # zip/pickle errors: truncated, corrupt, or unsafe content
        raise CheckpointError(
            f"checkpoint {path}: cannot be read (truncated or corrupt file?): {_one_line(exc)}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a larsvae checkpoint")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path}: format version {ckpt.get('format_version')!r}, "
            f"this larsvae reads version {FORMAT_VERSION}"
        )
    for key in ("meta", "model", "step"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {path}: missing entry {key!r}")
    check_meta(ckpt["meta"], path)
    return ckpt


def check_meta(meta: Any, path: str | os.PathLike) -> None:
    """A checkpoint's ``meta`` is validated like a params file before anything trusts it:
    arch, prior and mode are known names, the seed an integer in [0, 2^31 - 1], and
    ``model_config`` passes :func:`larsvae.config.model_config` (types and upper bounds), so
    that a small file whose meta says ``hidden: 300000`` is refused before a model is built."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: meta is not a dict")
    for key, choices in (("arch", ARCHS), ("prior", PRIORS)):
        if meta.get(key) not in choices:
            raise CheckpointError(
                f"checkpoint {path}: meta {key} = {meta.get(key)!r} is not one of "
                f"{', '.join(choices)}"
            )
    if meta.get("mode", "standard") not in ("standard", "posthoc"):
        raise CheckpointError(
            f"checkpoint {path}: meta mode = {meta.get('mode')!r} is not standard or posthoc"
        )
    seed = meta.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise CheckpointError(
            f"checkpoint {path}: meta seed = {seed!r} is not an integer in [0, {SEED_MAX}]"
        )
    try:
        model_config(meta.get("model_config"), "model_config")
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path}: meta {exc}") from None


# ---------------------------------------------------------------------------------------
# RNG states as plain tensors/numbers (weights_only-safe)


def get_rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_state[0]),
            "state": torch.tensor(py_state[1], dtype=torch.int64),
            "gauss_next": py_state[2],
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# ---------------------------------------------------------------------------------------
# Model reconstruction


def build_from_meta(meta: dict[str, Any]) -> torch.nn.Module:
    """Rebuild the (untrained) module described by a checkpoint's ``meta``.

    Post-hoc models are a ``gaussian`` model passed through ``make_posthoc``, exactly as
    training built them, so that the state dict keys line up.
    """
    cfg = model_config(meta["model_config"])
    if meta.get("mode") == "posthoc":
        model = build_model(meta["arch"], meta.get("base_prior", "gaussian"), cfg)
        model.make_posthoc(cfg)
    else:
        model = build_model(meta["arch"], meta["prior"], cfg)
    return model


def load_model(
    path: str | os.PathLike, device: Any = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a trained model from a checkpoint (final or resume). Returns (model, ckpt).

    The model is in eval mode on ``device``; ``ckpt["meta"]`` says what it is.
    """
    ckpt = load_checkpoint(path)
    return model_from_checkpoint(ckpt, path, device), ckpt


def check_size(ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """The model the meta describes (built on PyTorch's ``meta`` device: no storage is
    allocated) holds exactly as many numbers as the weights in the file, so that a forged
    meta costs nothing."""
    weights = ckpt["model"]
    if not isinstance(weights, dict):
        raise CheckpointError(f"checkpoint {path}: its 'model' entry is not a state dict")
    have = sum(t.numel() for t in weights.values() if isinstance(t, torch.Tensor))
    try:
        with torch.device("meta"):
            described = build_from_meta(ckpt["meta"]).state_dict()
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"checkpoint {path}: its meta does not describe a model: {_one_line(exc)}"
        ) from None
    params = sum(t.numel() for t in described.values())
    if have != params:
        raise CheckpointError(
            f"checkpoint {path}: its meta describes a model of {params:,} numbers but "
            f"the file holds {have:,}: meta and weights do not match"
        )


def model_from_checkpoint(
    ckpt: dict[str, Any], path: str | os.PathLike, device: Any = "cpu"
) -> torch.nn.Module:
    """The model of a loaded checkpoint, after :func:`check_size`. Whether it fits in memory
    is the caller's question, asked before (:func:`larsvae.memory.load_job`)."""
    check_size(ckpt, path)
    try:
        model = build_from_meta(ckpt["meta"])
        model.load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path}: does not match the model it describes: {_one_line(exc)}"
        ) from None
    model.to(device)
    model.eval()
    return model


def is_lars(meta: dict[str, Any]) -> bool:
    return meta.get("prior") in LARS_PRIORS or meta.get("mode") == "posthoc"


def has_z(meta: dict[str, Any]) -> bool:
    """A LARS prior or LARS on the outputs: the model has a normalising constant Z."""
    return _has_z(meta.get("prior"), meta.get("arch"), meta.get("mode", "standard"))
