"""Frozen configuration dataclasses: the library's half of the params contract.

Parameters flow one way: ``params/*.yaml`` -> schema-validated Snakemake config ->
rule ``params:`` (a JSON object per section) -> ``larsvae <command> --params JSON`` ->
these dataclasses -> library calls. The library never opens a params file itself.

Each YAML section maps 1:1 onto one dataclass here (same key names):

    model:    ModelConfig      (architecture hyper-parameters, prior hyper-parameters)
    train:    TrainConfig      (standard and joint-LARS training, Appendix C.3)
    posthoc:  TrainConfig      (post-hoc LARS training of the acceptance network only)
    evaluate: EvalConfig       (Z estimation and IWAE NLL)

``from_dict`` rejects unknown keys, wrong types and out-of-range values with a
:class:`ConfigError` whose message names the offending key (``train.lr: expected a
positive number, got -1``) so that the CLI can print one line and exit non-zero.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DATASETS = ("static_mnist", "dynamic_mnist", "omniglot", "fashion_mnist")
ARCHS = ("vae", "hvae", "convhvae")
#: Prior on the top latent. "gaussian" = N(0, I); "lars" = LARS over N(0, I);
#: "realnvp" / "maf" = flow priors; "lars_realnvp" = LARS with a RealNVP proposal.
PRIORS = ("gaussian", "lars", "realnvp", "maf", "lars_realnvp")
LARS_PRIORS = ("lars", "lars_realnvp")


class ConfigError(ValueError):
    """A user error in parameters; the message names the key and what was expected."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and prior hyper-parameters (paper Appendix C.2)."""

    latent_dim: int = 50
    hidden: int = 300  # width of the encoder/decoder MLPs
    acceptance_hidden: tuple[int, ...] = (100, 100)  # a(z) = MLP[d-100-100-1]
    truncation: int | None = 100  # T; None = resampling ad infinitum
    eps: float = 0.1  # Algorithm 1 smoothing of the running Z
    train_z_samples: int = 1024  # S = 2^10 proposal samples per step for Z (Alg. 1)
    flow_hidden: tuple[int, ...] = (100, 100)
    realnvp_couplings: int = 4
    maf_blocks: int = 5


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation schedule (paper Appendix C.3)."""

    iterations: int = 10_000_000
    batch_size: int = 128
    lr: float = 3e-4
    lr_final: float = 1e-4
    lr_decay_step: int = 1_000_000  # lr drops from lr to lr_final after this many steps
    warmup_steps: int = 100_000  # KL weight beta rises linearly 0 -> 1 over these steps
    checkpoint_every: int = 1000
    log_every: int = 100
    # Early stopping on validation NLL (used for staticMNIST in the paper); 0 disables.
    early_stopping_patience: int = 0
    eval_every: int = 0  # validation ELBO/NLL every N steps; 0 disables
    eval_k: int = 100  # importance samples for the validation NLL


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation: high-precision Z (sharded) and IWAE NLL."""

    z_samples: int = 10_000_000_000  # S = 1e10 in the paper
    z_shards: int = 4
    z_batch: int = 1_000_000
    z_antithetic: bool = True
    iwae_k: int = 1000
    iwae_batch: int = 100  # data points per chunk
    iwae_k_chunk: int = 1000  # importance samples per chunk
    test_subset: int | None = None  # evaluate on the first N test images (None = all)


def _check_int(key: str, v: Any, *, minimum: int = 0, allow_none: bool = False) -> int | None:
    if v is None and allow_none:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)  # YAML writes 1e7 as a float
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{key}: expected an integer >= {minimum}, got {v!r}")
    if v < minimum:
        raise ConfigError(f"{key}: expected an integer >= {minimum}, got {v!r}")
    return v


def _check_float(key: str, v: Any, *, lo: float, hi: float, lo_open: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{key}: expected a number, got {v!r}")
    v = float(v)
    bad_lo = v <= lo if lo_open else v < lo
    if bad_lo or v > hi:
        lb = "(" if lo_open else "["
        raise ConfigError(f"{key}: expected a number in {lb}{lo}, {hi}], got {v!r}")
    return v


def _check_sizes(key: str, v: Any) -> tuple[int, ...]:
    if not isinstance(v, (list, tuple)) or not v:
        raise ConfigError(f"{key}: expected a non-empty list of layer widths, got {v!r}")
    return tuple(_check_int(f"{key}[{i}]", x, minimum=1) for i, x in enumerate(v))


def _unknown_keys(section: str, cls: type, d: Mapping[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    for k in d:
        if k not in names:
            raise ConfigError(
                f"{section}.{k}: unknown key (expected one of: {', '.join(sorted(names))})"
            )


def model_config(d: Mapping[str, Any], section: str = "model") -> ModelConfig:
    _unknown_keys(section, ModelConfig, d)
    c = dict(d)
    out: dict[str, Any] = {}
    for k in ("latent_dim", "hidden", "train_z_samples", "realnvp_couplings", "maf_blocks"):
        if k in c:
            out[k] = _check_int(f"{section}.{k}", c[k], minimum=1)
    if "truncation" in c:
        out["truncation"] = _check_int(
            f"{section}.truncation", c["truncation"], minimum=1, allow_none=True
        )
    if "eps" in c:
        out["eps"] = _check_float(f"{section}.eps", c["eps"], lo=0.0, hi=1.0)
    for k in ("acceptance_hidden", "flow_hidden"):
        if k in c:
            out[k] = _check_sizes(f"{section}.{k}", c[k])
    return ModelConfig(**out)


def train_config(d: Mapping[str, Any], section: str = "train") -> TrainConfig:
    _unknown_keys(section, TrainConfig, d)
    out: dict[str, Any] = {}
    for k, lo in (
        ("iterations", 1),
        ("batch_size", 1),
        ("lr_decay_step", 0),
        ("warmup_steps", 0),
        ("checkpoint_every", 1),
        ("log_every", 1),
        ("early_stopping_patience", 0),
        ("eval_every", 0),
        ("eval_k", 1),
    ):
        if k in d:
            out[k] = _check_int(f"{section}.{k}", d[k], minimum=lo)
    for k in ("lr", "lr_final"):
        if k in d:
            out[k] = _check_float(f"{section}.{k}", d[k], lo=0.0, hi=1.0)
    return TrainConfig(**out)


def eval_config(d: Mapping[str, Any], section: str = "evaluate") -> EvalConfig:
    _unknown_keys(section, EvalConfig, d)
    out: dict[str, Any] = {}
    for k in ("z_samples", "z_shards", "z_batch", "iwae_k", "iwae_batch", "iwae_k_chunk"):
        if k in d:
            out[k] = _check_int(f"{section}.{k}", d[k], minimum=1)
    if "test_subset" in d:
        out["test_subset"] = _check_int(
            f"{section}.test_subset", d["test_subset"], minimum=1, allow_none=True
        )
    if "z_antithetic" in d:
        if not isinstance(d["z_antithetic"], bool):
            raise ConfigError(f"{section}.z_antithetic: expected true or false, got {d['z_antithetic']!r}")
        out["z_antithetic"] = d["z_antithetic"]
    return EvalConfig(**out)


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{key}: unknown value {value!r} (expected one of: {', '.join(choices)})")
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-JSON view of a config (tuples become lists), e.g. for checkpoints."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


__all__ = [
    "ARCHS",
    "DATASETS",
    "PRIORS",
    "LARS_PRIORS",
    "ConfigError",
    "ModelConfig",
    "TrainConfig",
    "EvalConfig",
    "model_config",
    "train_config",
    "eval_config",
    "check_choice",
    "to_dict",
]
