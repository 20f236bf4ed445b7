"""Frozen configuration dataclasses: the single source of truth for every parameter.

Parameters flow one way: ``params/*.yaml`` -> one ``validate(config, schema=...)`` in
Snakemake (the schema is *generated* from this module: ``python -m larsvae.config``) ->
rule ``params:`` carrying exactly the keys a step reads (``step_keys``, in the workflow's plan,
workflow/plan.py) -> the CLI, which parses them once into these dataclasses ->
:mod:`larsvae.steps`. Library code never opens a params file, and constructors trust their
typed configs.

Each YAML section maps onto one dataclass (same key names); every field declares its type,
range and *group* here, once:

    model:    ModelConfig   groups: arch (every model), lars, flow, realnvp, maf, mixture,
                            snis, lars_dim
    train:    TrainConfig   standard and joint-LARS training, Appendix C.3
    posthoc:  TrainConfig   post-hoc LARS training of the acceptance network only
    evaluate: EvalConfig    groups: z (Z estimation), iwae (test NLL)
    report:   ReportConfig  figures only

:func:`parse` rejects unknown keys, wrong types, non-finite and out-of-range values with a
:class:`ConfigError` naming the key (``train.lr: expected a number in (0.0, 1.0], got -1.0``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DATASETS = ("static_mnist", "dynamic_mnist", "omniglot", "fashion_mnist")
ARCHS = ("vae", "hvae", "convhvae", "vae_rx")
#: architectures whose *outputs* are resampled by LARS (Table D.6): an N(0, I) VAE and
#: a(x) = MLP[784-H-H-1]; their cells need a Z like the LARS priors'
OUTPUT_LARS_ARCHS = ("vae_rx",)
#: the model keys of the output resampler besides the VAE's (a(x) is as wide as the encoder)
OUTPUT_LARS_KEYS = ("truncation", "eps", "train_z_samples")
#: Prior on the top latent. "gaussian" = N(0, I); "lars" = LARS over N(0, I);
#: "realnvp" / "maf" = flow priors; "lars_realnvp" = LARS with a RealNVP proposal.
#: Comparison priors: "vamp" = VampPrior, "vamp_sg" = the VampPrior whose encoder weights get
#: no gradient through its components (the same density), "mog" = mixture of Gaussians,
#: "trs" / "snis" = the energy-inspired priors of Lawson et al. (2019), "lars_dim" =
#: dimension-wise LARS.
PRIORS = (
    "gaussian",
    "lars",
    "realnvp",
    "maf",
    "lars_realnvp",
    "vamp",
    "vamp_sg",
    "mog",
    "trs",
    "snis",
    "lars_dim",
)
#: Priors with a normalising constant Z to estimate (has_z): the LARS sampler and its a(z).
#: "trs" is the LARS sampler and density (Eq. A.14) trained with another objective, so it
#: needs Z like LARS. The others have none: "vamp(_sg)" and "mog" are finite mixtures and "snis"
#: is evaluated through its unbiased density estimate (exact log densities or bounds,
#: larsvae.distributions), "lars_dim" integrates its one-dimensional Z_i by quadrature.
LARS_PRIORS = ("lars", "lars_realnvp", "trs")
#: standard: trained from scratch (any prior; LARS = joint training); posthoc: a(z) trained
#: on a frozen 'gaussian' standard checkpoint of the same cell (Sec. 4.1).
MODES = ("standard", "posthoc")
#: largest seed (seeds become path components and 63-bit derive_seed inputs)
SEED_MAX = 2**31 - 1
#: the variant name of the model section itself (cells without a named prior variant)
BASE = "base"
#: Which ModelConfig groups each prior reads (ModelConfig's ``group`` metadata).
PRIOR_GROUPS = {
    "gaussian": ("arch",),
    "lars": ("arch", "lars"),
    "realnvp": ("arch", "flow", "realnvp"),
    "maf": ("arch", "flow", "maf"),
    "lars_realnvp": ("arch", "lars", "flow", "realnvp"),
    "vamp": ("arch", "mixture"),
    "vamp_sg": ("arch", "mixture"),
    "mog": ("arch", "mixture"),
    "trs": ("arch", "lars"),
    "snis": ("arch", "snis"),
    "lars_dim": ("arch", "lars_dim"),
}


class ConfigError(ValueError):
    """A user error in parameters; the message names the key and what was expected."""


def has_z(prior: str, arch: str, mode: str) -> bool:
    """A LARS prior (joint or post hoc) or LARS on the outputs: the model has a normalising
    constant Z to estimate; every other prior has Z = 1 exactly."""
    return prior in LARS_PRIORS or mode == "posthoc" or arch in OUTPUT_LARS_ARCHS


def _key(
    default: Any,
    group: str,
    help: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
) -> Any:
    """A config field: default, group (who reads it), range [lo, hi] (lo open if lo_open)."""
    meta = {"group": group, "help": help, "lo": lo, "hi": hi, "lo_open": lo_open}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and prior hyper-parameters (paper Appendix C.2)."""

    latent_dim: int = _key(50, "arch", "latent units d (per layer for L=2)", lo=1, hi=10_000)
    hidden: int = _key(300, "arch", "width of the encoder/decoder MLPs", lo=1, hi=100_000)
    acceptance_hidden: tuple[int, ...] = _key(
        (100, 100), "lars", "a(z) = MLP[d-...-1]", lo=1, hi=100_000
    )
    truncation: int | None = _key(
        100, "lars", "T; null = resampling ad infinitum (Eq. A.7)", lo=1, hi=1_000_000_000
    )
    eps: float = _key(
        0.1, "lars", "Algorithm 1 smoothing of the running Z", lo=0.0, hi=1.0, lo_open=True
    )
    train_z_samples: int = _key(
        1024, "lars", "S proposal samples per step for Z (Alg. 1)", lo=1, hi=10_000_000
    )
    flow_hidden: tuple[int, ...] = _key(
        (100, 100), "flow", "flow conditioner widths", lo=1, hi=100_000
    )
    realnvp_couplings: int = _key(4, "realnvp", "RealNVP coupling layers", lo=1, hi=1000)
    maf_blocks: int = _key(5, "maf", "MAF MADE blocks", lo=1, hi=1000)
    mixture_components: int = _key(
        500, "mixture", "K components of the VampPrior / mixture of Gaussians", lo=1, hi=100_000
    )
    snis_proposals: int = _key(
        1024, "snis", "K proposals per SNIS sample (Lawson et al. 2019)", lo=1, hi=1_000_000
    )
    energy_hidden: tuple[int, ...] = _key(
        (100, 100), "snis", "SNIS log-weight MLP[d-...-1]", lo=1, hi=100_000
    )
    dimwise_hidden: tuple[int, ...] = _key(
        (20, 20), "lars_dim", "each a_i(z_i) = MLP[1-...-1] of dimension-wise LARS", lo=1, hi=10_000
    )
    dimwise_truncation: int | None = _key(
        100, "lars_dim", "T of each unit's sampler; null = ad infinitum", lo=1, hi=1_000_000_000
    )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation schedule (paper Appendix C.3)."""

    iterations: int = _key(10_000_000, "train", "Adam steps", lo=1, hi=1_000_000_000)
    batch_size: int = _key(128, "train", "images per step", lo=1, hi=1_000_000)
    lr: float = _key(3e-4, "train", "learning rate", lo=0.0, hi=1.0, lo_open=True)
    lr_final: float = _key(
        1e-4, "train", "learning rate after lr_decay_step", lo=0.0, hi=1.0, lo_open=True
    )
    lr_decay_step: int = _key(
        1_000_000, "train", "lr -> lr_final after this many steps", lo=0, hi=1_000_000_000
    )
    warmup_steps: int = _key(
        100_000, "train", "KL weight 0 -> 1 over these steps", lo=0, hi=1_000_000_000
    )
    checkpoint_every: int = _key(
        1000, "train", "resume checkpoint every N steps", lo=1, hi=1_000_000_000
    )
    log_every: int = _key(100, "train", "training-curve row every N steps", lo=1, hi=1_000_000_000)
    early_stopping_patience: int = _key(
        0, "train", "evaluations without improvement; 0 = off", lo=0, hi=1_000_000
    )
    eval_every: int = _key(
        0, "train", "validation NLL every N steps; 0 = off", lo=0, hi=1_000_000_000
    )
    eval_k: int = _key(100, "train", "importance samples of the validation NLL", lo=1, hi=100_000)


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation: high-precision Z (sharded, group z) and IWAE test NLL (group iwae)."""

    z_samples: int = _key(
        10_000_000_000, "z", "proposal samples for Z (paper: 1e10)", lo=1, hi=10_000_000_000_000
    )
    z_shards: int = _key(4, "z", "independent jobs the Z estimate is split into", lo=1, hi=4096)
    z_batch: int = _key(
        1_000_000, "z", "a(z) evaluations per batch (speed only)", lo=1, hi=1_000_000_000
    )
    z_antithetic: bool = _key(True, "z", "antithetic pairs (z, -z) for symmetric proposals")
    iwae_k: int = _key(1000, "iwae", "importance samples K per test image", lo=1, hi=100_000)
    iwae_batch: int = _key(100, "iwae", "test images per chunk (speed only)", lo=1, hi=1_000_000)
    iwae_k_chunk: int = _key(
        1000, "iwae", "importance samples per chunk (speed only)", lo=1, hi=1_000_000
    )
    test_subset: int | None = _key(
        None,
        "iwae",
        "N test images evenly spaced over the test split (the same for every cell of a "
        "dataset; a test split sorted by class keeps its class mix); null = all",
        lo=1,
        hi=10_000_000,
    )
    elbo_samples: int = _key(
        10, "iwae", "posterior draws per image for the test ELBO", lo=1, hi=10_000
    )


@dataclass(frozen=True)
class ReportConfig:
    """Figures that read only trained models (no training or evaluation key)."""

    samples: int = _key(64, "report", "images in each model's sample grid", lo=1, hi=10_000)
    toy2d_steps: int = _key(
        2000, "report", "Adam steps per target of the 2-D figure", lo=1, hi=10_000_000
    )
    toy2d_seed: int = _key(0, "report", "seed of the 2-D figure", lo=0, hi=SEED_MAX)
    rank_samples: int = _key(
        10_000, "report", "proposal samples ranked by a(z) (Figs. D.5-D.8)", lo=1, hi=10_000_000
    )
    mog_steps: int = _key(
        10_000,
        "report",
        "Adam steps per model of the 2-D mixture (Figs. 2, D.3, D.4)",
        lo=1,
        hi=10_000_000,
    )
    mog_seed: int = _key(0, "report", "seed of the 2-D mixture experiment", lo=0, hi=SEED_MAX)
    mog_z_samples: int = _key(
        1 << 22,
        "report",
        "proposal samples of each 2-D mixture model's final Z",
        lo=2,
        hi=10_000_000_000,
    )
    mog_test_samples: int = _key(
        200_000,
        "report",
        "target samples of the KL(q || p) estimates (2-D mixture)",
        lo=2,
        hi=100_000_000,
    )
    latent2d_grid: int = _key(
        300,
        "report",
        "grid points per axis on [-6, 6]^2 of the 2-D latent figures (D.10-D.14)",
        lo=10,
        hi=2000,
    )


#: params-file section -> dataclass (``posthoc`` shares TrainConfig with ``train``).
SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "train": TrainConfig,
    "posthoc": TrainConfig,
    "evaluate": EvalConfig,
    "report": ReportConfig,
}


# ---------------------------------------------------------------------------------------
# Parsing


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _kind(tp: Any) -> tuple[str, bool]:
    """('int' | 'float' | 'bool' | 'str' | 'widths', nullable) of an annotation."""
    nullable = False
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        nullable, tp = True, args[0]
    if typing.get_origin(tp) is tuple:
        return "widths", nullable
    return tp.__name__, nullable


def _range_text(meta: Mapping[str, Any], kind: str = "float") -> str:
    lo, hi = meta["lo"], meta["hi"]
    if kind == "int":  # upper bounds: a size that would hang or exhaust memory is an error
        return f">= {lo}" + (f" and <= {hi:,}" if hi is not None else "")
    if hi is None:
        return f">= {lo}" if not meta["lo_open"] else f"> {lo}"
    return f"in {'(' if meta['lo_open'] else '['}{lo}, {hi}]"


def _parse_value(key: str, v: Any, kind: str, nullable: bool, meta: Mapping[str, Any]) -> Any:
    if v is None and nullable:
        return None
    if kind == "bool":
        if not isinstance(v, bool):
            raise ConfigError(f"{key}: expected true or false, got {v!r}")
        return v
    if kind == "str":
        if not isinstance(v, str):
            raise ConfigError(f"{key}: expected a string, got {v!r}")
        return v
    if kind == "widths":
        if not isinstance(v, (list, tuple)) or not v:
            raise ConfigError(f"{key}: expected a non-empty list of layer widths, got {v!r}")
        return tuple(_parse_value(f"{key}[{i}]", x, "int", False, meta) for i, x in enumerate(v))
    if kind == "int":
        if isinstance(v, float) and v.is_integer():
            v = int(v)  # YAML writes 1.0e7 as a float
        hi = meta["hi"]
        if (
            isinstance(v, bool)
            or not isinstance(v, int)
            or v < meta["lo"]
            or (hi is not None and v > hi)
        ):
            raise ConfigError(f"{key}: expected an integer {_range_text(meta, 'int')}, got {v!r}")
        return v
    assert kind == "float", kind
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{key}: expected a number {_range_text(meta)}, got {v!r}")
    v = float(v)
    lo, hi = meta["lo"], meta["hi"]
    if (v <= lo if meta["lo_open"] else v < lo) or (hi is not None and v > hi):
        raise ConfigError(f"{key}: expected a number {_range_text(meta)}, got {v!r}")
    return v


def parse(cls: type, d: Mapping[str, Any] | None, section: str) -> Any:
    """``cls(**d)`` with every key checked against its declared type and range.

    Missing keys take the dataclass defaults (the paper's values)."""
    d = {} if d is None else d
    if not isinstance(d, Mapping):
        raise ConfigError(f"{section}: expected a mapping of keys, got {d!r}")
    hints = _field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for k, v in d.items():
        if k not in fields:
            raise ConfigError(
                f"{section}.{k}: unknown key (expected one of: {', '.join(sorted(fields))})"
            )
        kind, nullable = _kind(hints[k])
        out[k] = _parse_value(f"{section}.{k}", v, kind, nullable, fields[k].metadata)
    return cls(**out)


def model_config(d: Mapping[str, Any] | None, section: str = "model") -> ModelConfig:
    return parse(ModelConfig, d, section)


def train_config(d: Mapping[str, Any] | None, section: str = "train") -> TrainConfig:
    return parse(TrainConfig, d, section)


def eval_config(d: Mapping[str, Any] | None, section: str = "evaluate") -> EvalConfig:
    return parse(EvalConfig, d, section)


def report_config(d: Mapping[str, Any] | None, section: str = "report") -> ReportConfig:
    return parse(ReportConfig, d, section)


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{key}: unknown value {value!r} (expected one of: {', '.join(choices)})")
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-JSON view of a config (tuples become lists), e.g. for checkpoints."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


# ---------------------------------------------------------------------------------------
# What each pipeline step reads (the rules pass exactly these keys: rerun triggers)


def group_keys(cls: type, groups: tuple[str, ...]) -> tuple[str, ...]:
    """The fields of ``cls`` whose ``group`` metadata is one of ``groups``, in field order."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata["group"] in groups)


def model_keys(prior: str, arch: str = "vae") -> tuple[str, ...]:
    """The ``model`` keys a model with top prior ``prior`` and architecture ``arch`` is built
    from (resampled outputs add the output resampler's keys)."""
    keys = group_keys(ModelConfig, PRIOR_GROUPS[check_choice("prior", prior, PRIORS)])
    if arch in OUTPUT_LARS_ARCHS:
        keys += tuple(k for k in OUTPUT_LARS_KEYS if k not in keys)
    return keys


# ---------------------------------------------------------------------------------------
# The params file: its JSON schema (generated) and its parse into typed, per-dataset configs


def _field_schema(tp: Any, meta: Mapping[str, Any]) -> dict[str, Any]:
    kind, nullable = _kind(tp)
    if kind == "widths":
        s: dict[str, Any] = {
            "type": "array",
            "minItems": 1,
            "items": {"type": "integer", "minimum": meta["lo"], "maximum": meta["hi"]},
        }
    elif kind in ("int", "float"):
        s = {"type": "integer" if kind == "int" else "number"}
        s["exclusiveMinimum" if meta["lo_open"] else "minimum"] = meta["lo"]
        if meta["hi"] is not None:
            s["maximum"] = meta["hi"]
    else:
        s = {"type": {"bool": "boolean", "str": "string"}[kind]}
    if nullable:
        s = {"oneOf": [s, {"type": "null"}]}
    return {"description": meta["help"], **s}


def section_schema(cls: type) -> dict[str, Any]:
    hints = _field_types(cls)
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            f.name: _field_schema(hints[f.name], f.metadata) for f in dataclasses.fields(cls)
        },
    }


def _seeds_schema(description: str | None = None) -> dict[str, Any]:
    return {
        **({"description": description} if description else {}),
        "type": "array",
        "minItems": 1,
        "uniqueItems": True,
        "items": {"type": "integer", "minimum": 0, "maximum": SEED_MAX},
    }


def _paths_schema() -> dict[str, Any]:
    return {
        "description": "where this budget's outputs live (relative to the repository)",
        "type": "object",
        "additionalProperties": False,
        "required": ["runs", "reports"],
        "properties": {
            "runs": {"description": "models, results, logs", "type": "string"},
            "reports": {"description": "tables and figures", "type": "string"},
            "results": {
                "description": "published cells (committed, so a grid resumes in a "
                "fresh clone; larsvae.publish): the reports read them from here",
                "type": "string",
            },
        },
    }


def _data_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "properties": {
            "mirrors": {
                "description": "local mirror folders (relative to the repository) tried "
                "before the canonical URLs",
                "type": "array",
                "items": {"type": "string"},
                "default": [],
            }
        },
    }


def _experiments_schema() -> dict[str, Any]:
    names = {"type": "array", "minItems": 1}
    posthoc_is_lars = {
        "if": {"properties": {"mode": {"const": "posthoc"}}},
        "then": {"properties": {"prior": {"const": "lars"}}},
    }
    run = {
        "type": "object",
        "additionalProperties": False,
        "required": ["prior", "mode"],
        "properties": {
            "prior": {"enum": list(PRIORS)},
            "mode": {"enum": list(MODES)},
            "variant": {"type": "string", "pattern": "^[a-z0-9_]+$"},
        },
        **posthoc_is_lars,
    }
    return {
        "type": "array",
        "minItems": 1,
        "items": {
            "type": "object",
            "additionalProperties": False,
            "required": ["datasets", "archs", "runs"],
            "properties": {
                "seeds": _seeds_schema("this experiment's seeds (default: the top-level seeds)"),
                "appendix": {
                    "description": "appendix experiment: in the appendix reports, "
                    "not in Table 1 (cells identical to Table 1's are shared)",
                    "type": "boolean",
                },
                "datasets": {**names, "items": {"enum": list(DATASETS)}},
                "archs": {**names, "items": {"enum": list(ARCHS)}},
                "runs": {**names, "items": run},
            },
        },
    }


def params_schema() -> dict[str, Any]:
    """The JSON schema of a params file (workflow/schemas/params.schema.yaml is this)."""
    defs = {
        name: section_schema(cls)
        for name, cls in (
            ("model", ModelConfig),
            ("train", TrainConfig),
            ("evaluate", EvalConfig),
            ("report", ReportConfig),
        )
    }
    sections = {
        name: {"$ref": f"#/$defs/{'train' if name == 'posthoc' else name}"} for name in SECTIONS
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "description": "Parameters of the larsvae workflow (params/*.yaml). GENERATED by "
        "`python -m larsvae.config` from larsvae/config.py: do not edit.",
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "paths", "seeds", *SECTIONS, "experiments"],
        "$defs": defs,
        "properties": {
            "name": {
                "description": "budget name printed in every report header",
                "type": "string",
                "pattern": "^[A-Za-z0-9_.-]+$",
            },
            "paths": _paths_schema(),
            "data": _data_schema(),
            "seeds": _seeds_schema(),
            **sections,
            "variants": {
                "description": "named prior variants: model keys set over the model section "
                "(experiments' runs name them; paths tag the prior as <prior>-<variant>)",
                "type": "object",
                "default": {},
                "propertyNames": {"pattern": "^[a-z0-9_]+$", "not": {"const": BASE}},
                "additionalProperties": {"$ref": "#/$defs/model"},
            },
            "overrides": {
                "description": "per-architecture and per-dataset values deep-merged over the "
                "sections above (an architecture's first, then the dataset's on top)",
                "type": "object",
                "default": {},
                "propertyNames": {"enum": [*ARCHS, *DATASETS]},
                "additionalProperties": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": sections,
                },
            },
            "experiments": _experiments_schema(),
        },
    }


if __name__ == "__main__":  # python -m larsvae.config > workflow/schemas/params.schema.yaml
    import yaml  # only this generator writes YAML

    print("# GENERATED by `python -m larsvae.config` from src/larsvae/config.py: do not edit.")
    print(yaml.safe_dump(params_schema(), sort_keys=False, width=100), end="")
