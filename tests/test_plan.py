"""The workflow's plan (workflow/plan.py): every params key is read by some pipeline step, the
overrides apply per architecture and dataset, and the cells a budget asks for (post-hoc
starting points, the 2-D latent figures' cells) are the ones the paper's programme names."""

from __future__ import annotations

import dataclasses

import jsonschema
import plan as PL
import pytest

from larsvae import config as C


def test_posthoc_training_reads_the_lars_keys_whatever_the_prior():
    # post-hoc training builds LARS over the trained N(0, I), whatever the cell's prior says
    assert PL.step_keys("train_posthoc", "gaussian")["model"] == C.model_keys("lars")


def test_every_key_is_read_by_some_step():
    read = {
        (s, k)
        for step in PL.STEPS
        for prior in C.PRIORS
        for arch in C.ARCHS
        for s, keys in PL.step_keys(step, prior, arch).items()
        for k in keys
    }
    read |= {("evaluate", "z_shards")}  # names the shard files (the rules' wildcard)
    declared = {(s, f.name) for s, cls in C.SECTIONS.items() for f in dataclasses.fields(cls)}
    assert declared - read == set()
    assert read - declared == set()


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
    p = PL.parse_params(raw)
    assert p.runs == "runs/t" and len(p.cells) == 2 * 2 * 2
    assert p.section("train", "static_mnist", "vae").lr == 1e-3
    assert p.section("train", "omniglot", "vae").lr == C.TrainConfig().lr
    cell = PL.Cell("static_mnist", "vae", "lars", "posthoc", 1)
    assert p.step_params("train_posthoc", cell)["posthoc"]["lr"] == C.TrainConfig().lr
    assert set(p.step_params("estimate_z", cell)["evaluate"]) == {
        "z_samples",
        "z_batch",
        "z_antithetic",
    }
    raw["overrides"]["omniglot"] = {"model": {"truncation": 0}}
    with pytest.raises(C.ConfigError, match=r"^overrides\.omniglot\.model\.truncation"):
        PL.parse_params(raw)


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
    p = PL.parse_params(raw)
    conv, vae = p.section("train", "omniglot", "convhvae"), p.section("train", "omniglot", "vae")
    assert (conv.iterations, conv.lr) == (600, 1e-3)
    assert (vae.iterations, vae.lr) == (C.TrainConfig().iterations, C.TrainConfig().lr)
    static_conv = p.section("train", "static_mnist", "convhvae")  # the dataset's key wins
    assert (static_conv.iterations, static_conv.lr, static_conv.eval_every) == (600, 2e-3, 10)
    cell = PL.Cell("omniglot", "convhvae", "gaussian", "standard", 1)
    assert p.step_params("train", cell)["train"]["iterations"] == 600
    seeds = sorted(c.seed for c in p.cells if c.prior == "lars")
    assert seeds == [1, 7] and p.seeds == (1, 7) and len(p.cells) == 4 + 2
    with pytest.raises(C.ConfigError, match=r"overrides\.convhvae\.train\.iterations: expected"):
        PL.parse_params({**raw, "overrides": {"convhvae": {"train": {"iterations": 0}}}})


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
    return PL.parse_params(raw)


def test_posthoc_starts_from_the_standard_cell_with_the_same_vae():
    p = _two_d_params(
        {
            "z2": {"latent_dim": 2},
            "z2small": {"latent_dim": 2, "acceptance_hidden": [10, 10]},
            "t2": {"truncation": 2},
        }
    )

    def init(variant):
        c = p.posthoc_init(PL.Cell("dynamic_mnist", "vae", "lars", "posthoc", 3, variant))
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
