"""larsvae.config is the one source of truth: the generated JSON schema (what Snakemake's
validate() applies) and the library parser (what the CLI applies) accept and reject exactly
the same values, key by key (what the workflow's plan does with them: test_plan.py)."""

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


def test_prior_groups_select_the_keys_each_prior_reads():
    assert C.model_keys("gaussian") == ("latent_dim", "hidden")
    assert "truncation" in C.model_keys("lars") and "flow_hidden" not in C.model_keys("lars")
    assert {"flow_hidden", "realnvp_couplings", "truncation"} <= set(C.model_keys("lars_realnvp"))
    assert "maf_blocks" in C.model_keys("maf") and "realnvp_couplings" not in C.model_keys("maf")
    # resampled outputs: the VAE's keys and the output resampler's (a(x) is as wide as H)
    assert C.model_keys("gaussian", "vae_rx") == ("latent_dim", "hidden", *C.OUTPUT_LARS_KEYS)
