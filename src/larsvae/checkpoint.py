"""Checkpoint files: safe loading, RNG state capture, model reconstruction.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts only, so that it
loads with ``torch.load(..., weights_only=True)``: a checkpoint from a stranger cannot execute
code. Layout (``format_version`` 1)::

    format          "larsvae-checkpoint"
    format_version  1
    kind            "resume" (mid-training state) or "final" (the rule's output)
    version         larsvae library version that wrote it
    meta            CheckpointMeta.to_dict(): {"arch", "prior", "variant", "mode",
                     "dataset", "dataset_sha256", "model_config": {...}, "seed",
                     post hoc: "base_prior", "init_sha256"; flow priors: "flow_lr_warmup";
                     "train_config": {...}}
    model           model.state_dict()   (includes the LARS running Z buffer ``log_z``)
    step            completed optimisation steps (= data position: batch t is a pure
                    function of (seed, t), see larsvae.data.BatchStream)
    curve           training curve rows so far (list of dicts), rewritten as TSV on resume
    resume only:    optimizer, schedule, rng, window, best, evals
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch

from .config import (
    ARCHS,
    BASE,
    LARS_PRIORS,
    MODES,
    PRIORS,
    SEED_MAX,
    ConfigError,
    ModelConfig,
    TrainConfig,
    model_config,
    to_dict,
    train_config,
)
from .config import has_z as _has_z
from .models import build_model
from .paths import cell_of_path
from .utils import UserError, atomic_torch_save

FORMAT = "larsvae-checkpoint"
FORMAT_VERSION = 1

_SHA256 = re.compile(r"[0-9a-f]{64}")
_VARIANT = re.compile(r"[a-z0-9_]+")
#: what a meta without these keys means (every meta training writes has them)
_DEFAULTS = {"variant": BASE, "mode": "standard", "seed": 0}


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated, corrupt, of the wrong kind or of another cell."""


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint is, validated once (:meth:`from_dict`) when it is loaded.

    ``to_dict`` is the ``meta`` entry on disk, keys in the order training writes them; the
    optional provenance fields (None / False) are left out, as training leaves them out.
    ``base_prior`` ("gaussian", post-hoc models only) is recorded, never read: a post-hoc
    model is always a 'gaussian' model with a ResampledPrior over it."""

    arch: str
    prior: str
    model_config: ModelConfig
    variant: str = BASE
    mode: str = "standard"
    seed: int = 0
    dataset: str | None = None
    dataset_sha256: str | None = None  # of the npz it was trained on
    base_prior: str | None = None
    init_sha256: str | None = None  # of the 'gaussian' checkpoint a post-hoc model started from
    flow_lr_warmup: bool = False  # a flow prior's learning rate followed the KL warm-up
    train_config: TrainConfig | None = None

    @classmethod
    def from_dict(cls, d: Any, path: str | os.PathLike) -> CheckpointMeta:
        """The meta of checkpoint ``path``, validated like a params file before anything
        trusts it: known keys only, arch, prior and mode known names (post hoc: prior
        'lars'), the seed an integer in [0, 2^31 - 1], ``model_config`` and ``train_config``
        through :func:`larsvae.config.model_config` / ``train_config`` (types and upper
        bounds: a small file whose meta says ``hidden: 300000`` is refused before a model is
        built). Raises :class:`CheckpointError`, one line naming the file and the key."""
        if not isinstance(d, dict):
            raise CheckpointError(f"checkpoint {path}: meta is not a dict")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)}, key=str)
        if unknown:
            raise CheckpointError(f"checkpoint {path}: meta has unknown key {unknown[0]!r}")
        d = {**_DEFAULTS, **d}
        for key, choices in (("arch", ARCHS), ("prior", PRIORS), ("mode", MODES)):
            if d.get(key) not in choices:
                words = "standard or posthoc" if key == "mode" else f"one of {', '.join(choices)}"
                raise CheckpointError(
                    f"checkpoint {path}: meta {key} = {d.get(key)!r} is not {words}"
                )
        if d["mode"] == "posthoc" and d["prior"] != "lars":
            raise CheckpointError(
                f"checkpoint {path}: meta prior = {d['prior']!r} with mode = 'posthoc' "
                "(post-hoc training learns a 'lars' prior)"
            )
        seed = d["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
            raise CheckpointError(
                f"checkpoint {path}: meta seed = {seed!r} is not an integer in [0, {SEED_MAX}]"
            )
        _check_provenance(d, path)
        if "model_config" not in d:
            raise CheckpointError(f"checkpoint {path}: meta has no model_config")
        for key in ("model_config", "train_config"):
            if key in d and not isinstance(d[key], dict):
                raise CheckpointError(f"checkpoint {path}: meta {key} = {d[key]!r} is not a dict")
        try:
            mcfg = model_config(d["model_config"], "model_config")
            tcfg = train_config(d["train_config"], "train_config") if "train_config" in d else None
        except ConfigError as exc:
            raise CheckpointError(f"checkpoint {path}: meta {exc}") from None
        return cls(**{**d, "model_config": mcfg, "train_config": tcfg})

    def to_dict(self) -> dict[str, Any]:
        """The ``meta`` entry as training writes it (same keys, order and values)."""
        d: dict[str, Any] = {
            "arch": self.arch,
            "prior": self.prior,
            "variant": self.variant,
            "mode": self.mode,
            "dataset": self.dataset,
            "dataset_sha256": self.dataset_sha256,
            "model_config": to_dict(self.model_config),
            "seed": self.seed,
            "base_prior": self.base_prior,
            "init_sha256": self.init_sha256,
            "flow_lr_warmup": self.flow_lr_warmup or None,
            "train_config": None if self.train_config is None else to_dict(self.train_config),
        }
        return {k: v for k, v in d.items() if v is not None}

    @property
    def prior_tag(self) -> str:
        """The prior's path component: the prior, or ``<prior>-<variant>`` (larsvae.paths)."""
        return self.prior if self.variant == BASE else f"{self.prior}-{self.variant}"

    @property
    def is_lars(self) -> bool:
        """A LARS prior (joint or post hoc): the model has an acceptance function a(z)."""
        return self.prior in LARS_PRIORS or self.mode == "posthoc"

    @property
    def has_z(self) -> bool:
        """A LARS prior or LARS on the outputs: the model has a normalising constant Z."""
        return _has_z(self.prior, self.arch, self.mode)


def _check_provenance(d: dict[str, Any], path: str | os.PathLike) -> None:
    """The meta's optional names, hashes and flags have their types (absent is fine)."""
    checks = (
        ("variant", lambda v: isinstance(v, str) and _VARIANT.fullmatch(v), "a variant name"),
        ("dataset", lambda v: isinstance(v, str) and v, "a dataset name"),
        ("dataset_sha256", lambda v: isinstance(v, str) and _SHA256.fullmatch(v), "a sha256"),
        ("init_sha256", lambda v: isinstance(v, str) and _SHA256.fullmatch(v), "a sha256"),
        (
            "base_prior",
            lambda v: v == "gaussian" and d["mode"] == "posthoc",
            "'gaussian' of a post-hoc model",
        ),
        ("flow_lr_warmup", lambda v: v is True, "true"),
    )
    for key, ok, words in checks:
        if key in d and not ok(d[key]):
            raise CheckpointError(f"checkpoint {path}: meta {key} = {d[key]!r} is not {words}")


class _CheckpointEntries(TypedDict):
    meta: CheckpointMeta
    model: dict[str, torch.Tensor]
    step: int


class Checkpoint(_CheckpointEntries, total=False):
    """A loaded checkpoint (:func:`load_checkpoint`): the file's dict, its meta typed."""

    format: str
    format_version: int
    kind: str  # "resume" or "final"
    version: str
    curve: dict[str, Any]
    summary: dict[str, Any]
    # resume checkpoints only
    optimizer: dict[str, Any]
    schedule: dict[str, Any]
    rng: dict[str, Any]
    data_position: int
    window: dict[str, Any]
    best: dict[str, Any]
    evals: torch.Tensor


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``payload`` atomically (temporary file + fsync + rename); a
    :class:`CheckpointMeta` is written as its :meth:`~CheckpointMeta.to_dict`."""
    if isinstance(payload.get("meta"), CheckpointMeta):
        payload = {**payload, "meta": payload["meta"].to_dict()}
    atomic_torch_save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, path)


def _one_line(exc: BaseException, limit: int = 120) -> str:
    """The first sentence of an exception message, on one line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text.split(". ")[0].rstrip(".")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Checkpoint:
    """Load a larsvae checkpoint with ``weights_only=True``, its meta validated and typed
    (:meth:`CheckpointMeta.from_dict`) and checked against the cell its path names
    (:func:`check_cell`): every reader of a cell's checkpoint refuses another cell's.

    Raises :class:`CheckpointError` naming the file for a missing, truncated, corrupt,
    foreign or misplaced file (one line, fit for the CLI).
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
    ckpt["meta"] = CheckpointMeta.from_dict(ckpt["meta"], path)
    check_cell(ckpt["meta"], path)
    return ckpt


def check_cell(meta: CheckpointMeta, path: str | os.PathLike) -> None:
    """A checkpoint at ``.../{dataset}/{arch}/{prior}/{mode}/seed{seed}/<file>``
    (larsvae.paths) is of that cell: its meta names the same five. A path outside the
    layout (a checkpoint a researcher saved elsewhere) is not checked."""
    where = cell_of_path(path)
    if where is None:
        return
    have = {
        "dataset": meta.dataset,
        "arch": meta.arch,
        "prior": meta.prior_tag,
        "mode": meta.mode,
        "seed": str(meta.seed),
    }
    for key, value in where.items():
        if have[key] != value:
            raise CheckpointError(
                f"checkpoint {path}: its meta says {key} = {have[key]!r} but it sits in the "
                f"folder of {key} = {value!r}: a checkpoint of another cell"
            )


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


def build_cell_model(arch: str, prior: str, mode: str, mcfg: ModelConfig) -> torch.nn.Module:
    """The (untrained) module of a cell, as training builds it: post-hoc models are a
    ``gaussian`` model passed through ``make_posthoc``, so that the state dict keys line up."""
    if mode == "posthoc":
        model = build_model(arch, "gaussian", mcfg)
        model.make_posthoc(mcfg)
        return model
    return build_model(arch, prior, mcfg)


def build_from_meta(meta: CheckpointMeta) -> torch.nn.Module:
    """Rebuild the (untrained) module described by a checkpoint's ``meta``."""
    return build_cell_model(meta.arch, meta.prior, meta.mode, meta.model_config)


def load_model(path: str | os.PathLike, device: Any = "cpu") -> tuple[torch.nn.Module, Checkpoint]:
    """Rebuild a trained model from a checkpoint (final or resume). Returns (model, ckpt).

    The model is in eval mode on ``device``; ``ckpt["meta"]`` (a :class:`CheckpointMeta`)
    says what it is.
    """
    ckpt = load_checkpoint(path)
    return model_from_checkpoint(ckpt, path, device), ckpt


def check_size(ckpt: Checkpoint, path: str | os.PathLike) -> None:
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
    ckpt: Checkpoint, path: str | os.PathLike, device: Any = "cpu"
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
