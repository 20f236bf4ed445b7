"""larsvae.config is the one source of truth: the generated JSON schema (what Snakemake's
validate() applies) and the library parser (what the CLI applies) accept and reject exactly
the same values, key by key, and every key is read by some pipeline step."""

from __future__ import annotations

import dataclasses
import math

import jsonschema
import pytest

from larsvae import config as C

SECTIONS = [(name, cls) for name, cls in C.SECTIONS.items() if name != "posthoc"]
FIELDS = [(name, cls, f) for name, cls in SECTIONS for f in dataclasses.fields(cls)]


def _both(cls, section: str, key: str, value) -> tuple[bool, bool]:
    """(schema accepts, parser accepts) for {key: value} in ``section``."""
    schema_ok = jsonschema.Draft202012Validator(C.section_schema(cls)).is_valid({key: value})
    try:
        C.parse(cls, {key: value}, section)
        parse_ok = True
    except C.ConfigError as err:
        assert str(err).startswith(f"{section}.{key}"), err  # the message names the key
        parse_ok = False
    return schema_ok, parse_ok


def _probes(cls, f) -> list[tuple[object, bool]]:
    """(value, should be accepted) around the declared range of field ``f``."""
    kind, nullable = C._kind(C._field_types(cls)[f.name])
    m = f.metadata
    out: list[tuple[object, bool]] = [("text", kind == "str"), (None, nullable)]
    if kind == "int":
        out += [
            (m["lo"], True),
            (m["lo"] - 1, False),
            (m["hi"], True),  # every size has an upper bound naming the limit
            (m["hi"] + 1, False),
            (10**30, False),
            (2.5, False),
            (True, False),
        ]
    elif kind == "float":
        lo, hi = m["lo"], m["hi"]
        out += [
            (lo, not m["lo_open"]),
            (lo - 1e-9, False),
            ((lo + hi) / 2, True),
            (hi, True),
            (hi + 1e-9, False),
            (True, False),
        ]
    elif kind == "widths":
        out += [
            ([m["lo"], m["lo"] + 3], True),
            ([m["lo"] - 1], False),
            ([m["hi"] + 1], False),
            ([], False),
            (7, False),
        ]
    elif kind == "bool":
        out += [(True, True), (False, True), (1, False)]
    return out


@pytest.mark.parametrize(
    ("section", "cls", "f"), FIELDS, ids=[f"{s}.{f.name}" for s, _, f in FIELDS]
)
def test_schema_and_parser_agree_on_every_key_and_range(section, cls, f):
    for value, want in _probes(cls, f):
        assert _both(cls, section, f.name, value) == (want, want), (f.name, value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused_naming_the_key(bad):
    with pytest.raises(C.ConfigError, match=r"^train\.lr: expected a number in \(0\.0, 1\.0\]"):
        C.train_config({"lr": bad})


def test_unknown_key_names_the_choices():
    with pytest.raises(C.ConfigError, match=r"^model\.latent_dm: unknown key .*latent_dim"):
        C.model_config({"latent_dm": 3})


def test_every_key_is_read_by_some_step():
    read = {
        (s, k)
        for step in C.STEPS
        for prior in C.PRIORS
        for arch in C.ARCHS
        for s, keys in C.step_keys(step, prior, arch).items()
        for k in keys
    }
    read |= {("evaluate", "z_shards")}  # names the shard files (the rules' wildcard)
    declared = {(s, f.name) for s, cls in C.SECTIONS.items() for f in dataclasses.fields(cls)}
    assert declared - read == set()
    assert read - declared == set()


def test_prior_groups_select_the_keys_each_prior_reads():
    assert C.model_keys("gaussian") == ("latent_dim", "hidden")
    assert "truncation" in C.model_keys("lars") and "flow_hidden" not in C.model_keys("lars")
    assert {"flow_hidden", "realnvp_couplings", "truncation"} <= set(C.model_keys("lars_realnvp"))
    assert "maf_blocks" in C.model_keys("maf") and "realnvp_couplings" not in C.model_keys("maf")
    # post-hoc training builds LARS over the trained N(0, I), whatever the cell's prior says
    assert C.step_keys("train_posthoc", "gaussian")["model"] == C.model_keys("lars")
    # resampled outputs: the VAE's keys and the output resampler's (a(x) is as wide as H)
    assert C.model_keys("gaussian", "vae_rx") == ("latent_dim", "hidden", *C.OUTPUT_LARS_KEYS)


def test_parse_params_applies_overrides_per_dataset_and_lists_cells():
    raw = {
        "name": "t",
        "paths": {"runs": "runs/t/", "reports": "reports/t"},
        "seeds": [1, 2],
        **{name: {} for name in C.SECTIONS},
        "overrides": {"static_mnist": {"train": {"lr": 1e-3}}},
        "experiments": [
            {
                "datasets": ["static_mnist", "omniglot"],
                "archs": ["vae"],
                "runs": [
                    {"prior": "gaussian", "mode": "standard"},
                    {"prior": "lars", "mode": "posthoc"},
                ],
            }
        ],
    }
    p = C.parse_params(raw)
    assert p.runs == "runs/t" and len(p.cells) == 2 * 2 * 2
    assert p.section("train", "static_mnist", "vae").lr == 1e-3
    assert p.section("train", "omniglot", "vae").lr == C.TrainConfig().lr
    cell = C.Cell("static_mnist", "vae", "lars", "posthoc", 1)
    assert p.step_params("train_posthoc", cell)["posthoc"]["lr"] == C.TrainConfig().lr
    assert set(p.step_params("estimate_z", cell)["evaluate"]) == {
        "z_samples",
        "z_batch",
        "z_antithetic",
    }
    raw["overrides"]["omniglot"] = {"model": {"truncation": 0}}
    with pytest.raises(C.ConfigError, match=r"^overrides\.omniglot\.model\.truncation"):
        C.parse_params(raw)


def test_arch_overrides_go_under_the_dataset_ones_and_experiments_take_own_seeds():
    raw = {
        "name": "t",
        "paths": {"runs": "runs/t", "reports": "reports/t"},
        "seeds": [1],
        **{name: {} for name in C.SECTIONS},
        "overrides": {
            "convhvae": {"train": {"iterations": 600, "lr": 1e-3}},
            "static_mnist": {"train": {"lr": 2e-3, "eval_every": 10}},
        },
        "experiments": [
            {
                "datasets": ["static_mnist", "omniglot"],
                "archs": ["vae", "convhvae"],
                "runs": [{"prior": "gaussian", "mode": "standard"}],
            },
            {
                "datasets": ["omniglot"],
                "archs": ["vae"],
                "seeds": [1, 7],
                "runs": [{"prior": "lars", "mode": "standard"}],
            },
        ],
    }
    jsonschema.validate(raw, C.params_schema())
    p = C.parse_params(raw)
    conv, vae = p.section("train", "omniglot", "convhvae"), p.section("train", "omniglot", "vae")
    assert (conv.iterations, conv.lr) == (600, 1e-3)
    assert (vae.iterations, vae.lr) == (C.TrainConfig().iterations, C.TrainConfig().lr)
    static_conv = p.section("train", "static_mnist", "convhvae")  # the dataset's key wins
    assert (static_conv.iterations, static_conv.lr, static_conv.eval_every) == (600, 2e-3, 10)
    cell = C.Cell("omniglot", "convhvae", "gaussian", "standard", 1)
    assert p.step_params("train", cell)["train"]["iterations"] == 600
    seeds = sorted(c.seed for c in p.cells if c.prior == "lars")
    assert seeds == [1, 7] and p.seeds == (1, 7) and len(p.cells) == 4 + 2
    with pytest.raises(C.ConfigError, match=r"overrides\.convhvae\.train\.iterations: expected"):
        C.parse_params({**raw, "overrides": {"convhvae": {"train": {"iterations": 0}}}})


def _two_d_params(variants):
    raw = {
        "name": "t",
        "paths": {"runs": "runs/t", "reports": "reports/t"},
        "seeds": [3],
        **{name: {} for name in C.SECTIONS},
        "variants": variants,
        "experiments": [
            {
                "datasets": ["dynamic_mnist"],
                "archs": ["vae"],
                "runs": [
                    {"prior": "gaussian", "mode": "standard", "variant": "z2"},
                    {"prior": "lars", "mode": "standard", "variant": "z2"},
                    {"prior": "lars", "mode": "standard", "variant": "z2small"},
                    {"prior": "lars", "mode": "posthoc", "variant": "z2"},
                    {"prior": "lars", "mode": "posthoc", "variant": "z2small"},
                    {"prior": "lars", "mode": "posthoc", "variant": "t2"},
                    {"prior": "lars", "mode": "standard"},
                ],
            }
        ],
    }
    return C.parse_params(raw)


def test_posthoc_starts_from_the_standard_cell_with_the_same_vae():
    p = _two_d_params(
        {
            "z2": {"latent_dim": 2},
            "z2small": {"latent_dim": 2, "acceptance_hidden": [10, 10]},
            "t2": {"truncation": 2},
        }
    )

    def init(variant):
        c = p.posthoc_init(C.Cell("dynamic_mnist", "vae", "lars", "posthoc", 3, variant))
        assert (c.dataset, c.arch, c.prior, c.mode, c.seed) == (
            "dynamic_mnist", "vae", "gaussian", "standard", 3,
        )  # fmt: skip
        return c.variant

    assert init("t2") == C.BASE  # prior keys only: the base VAE
    assert init("z2") == "z2"
    assert init("z2small") == "z2"  # the pure VAE variant with the same latent_dim
    # without a pure VAE variant, a variant that changes the VAE starts from its own
    p = _two_d_params(
        {"z2": {"latent_dim": 2, "eps": 0.5}, "z2small": {"latent_dim": 2}, "t2": {"truncation": 2}}
    )
    assert init("z2") == "z2small" and init("z2small") == "z2small"


def test_latent2d_cells_are_labelled_by_mode_and_the_size_of_a():
    p = _two_d_params(
        {
            "z2": {"latent_dim": 2},
            "z2small": {"latent_dim": 2, "acceptance_hidden": [10, 10]},
            "t2": {"truncation": 2},
        }
    )
    got = {k: (c.tag, c.mode) for k, c in p.latent2d_cells().items()}
    assert got == {
        "standard": ("gaussian-z2", "standard"),
        "joint (large a)": ("lars-z2", "standard"),
        "joint (small a)": ("lars-z2small", "standard"),
        # the first 2-D post-hoc cell in params order
        "post-hoc": ("lars-z2", "posthoc"),
    }
