"""Appendix D tables (larsvae.reports.appendix) from hand-made result files.

Every expected number is computed here by hand (means, sd over seeds with n - 1), so a wrong
aggregation, a cell landing in the wrong row, or an invented number fails a test."""

from __future__ import annotations

import json
import statistics
from datetime import datetime, timezone

import pytest

from larsvae.reports.appendix import (
    render_table_d1,
    render_table_d2,
    render_table_d3,
    render_table_d6,
    render_table_d45,
    write_appendix,
)
from larsvae.reports.paper import (
    PAPER_TABLE_D1,
    PAPER_TABLE_D2,
    PAPER_TABLE_D3,
    PAPER_TABLE_D6,
    PAPER_TABLE_D45,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
ARCH = {"latent_dim": 50, "hidden": 300}
JOINT = {**ARCH, "acceptance_hidden": [100, 100], "truncation": 100}


def _cell(tmp_path, ds, prior, mode, variant, seed, model, nll=None, z=None, arch="vae"):
    """A spec cell; writes nll.json / z.json only when given (None = the file is missing)."""
    d = tmp_path / f"results/{ds}/{arch}/{prior}/{mode}/{variant}/seed{seed}"
    d.mkdir(parents=True)
    if nll is not None:
        (d / "nll.json").write_text(json.dumps({"n": 10000, "k": 1000, **nll}))
    if z is not None:
        (d / "z.json").write_text(json.dumps({"estimate": {}, **z}))
    lars = prior in ("lars", "lars_realnvp") or arch == "vae_rx"
    return dict(
        dataset=ds,
        arch=arch,
        prior=prior,
        mode=mode,
        variant=variant,
        seed=seed,
        nll=str((d / "nll.json").relative_to(tmp_path)),
        z=str((d / "z.json").relative_to(tmp_path)) if lars else None,
        curve="",
        manifest="missing.json",
        model=model,
    )


def _elbo(kl, rec):
    return {"neg_elbo": kl + rec, "kl": kl, "rec": rec, "elbo_samples": 1}


def _z(z, se, antithetic=True):
    return {"z": z, "z_stderr": se, "antithetic": antithetic}


@pytest.fixture
def spec(tmp_path):
    dm, om = "dynamic_mnist", "omniglot"
    c = []
    # standard prior, two seeds: -ELBO 89.0 / 89.4, KL 25.0 / 25.2, rec 64.0 / 64.2
    for seed, (nll, kl) in enumerate(((85.0, 25.0), (85.4, 25.2)), start=1):
        c.append(
            _cell(tmp_path, dm, "gaussian", "standard", "base", seed, ARCH,
                  {"nll": nll, **_elbo(kl, kl + 39.0)})
        )  # fmt: skip
    # post-hoc: seed 2 has no result files at all
    c.append(
        _cell(tmp_path, dm, "lars", "posthoc", "base", 1, JOINT,
              {"nll": 84.0, **_elbo(24.0, 64.0), "z": 0.025, "z_stderr": 1e-5}, _z(0.025, 1e-5))
    )  # fmt: skip
    c.append(_cell(tmp_path, dm, "lars", "posthoc", "base", 2, JOINT))
    # joint LARS, two seeds
    for seed, (nll, kl, rec, z, se) in enumerate(
        ((83.0, 24.5, 61.5, 0.015, 1e-5), (83.5, 24.9, 61.7, 0.017, 2e-5)), start=1
    ):
        c.append(
            _cell(tmp_path, dm, "lars", "standard", "base", seed, JOINT,
                  {"nll": nll, **_elbo(kl, rec), "z": z, "z_stderr": se}, _z(z, se))
        )  # fmt: skip
    # misnamed variant: called T100 but trained with T = 50 -> the T = 50 row, never T = 100
    c.append(
        _cell(tmp_path, dm, "lars", "standard", "T100", 1, {**JOINT, "truncation": 50},
              {"nll": 83.3, **_elbo(24.8, 62.1), "z": 0.031, "z_stderr": 4e-5}, _z(0.031, 4e-5))
    )  # fmt: skip
    # T = inf: Z of order 1e-6 (no Z in nll.json: it comes from z.json)
    c.append(
        _cell(tmp_path, dm, "lars", "standard", "Tinf", 1, {**JOINT, "truncation": None},
              {"nll": 82.7, **_elbo(24.8, 61.4)}, _z(2.5e-6, 3.1e-8))
    )  # fmt: skip
    c.append(
        _cell(tmp_path, dm, "lars", "standard", "a50x3", 1, {**JOINT, "acceptance_hidden": [50] * 3},
              {"nll": 83.1, "z": 0.0152, "z_stderr": 1e-5}, _z(0.0152, 1e-5))
    )  # fmt: skip
    c.append(_cell(tmp_path, dm, "realnvp", "standard", "base", 1, ARCH, {"nll": 81.9}))
    c.append(
        _cell(tmp_path, dm, "lars_realnvp", "standard", "base", 1, JOINT,
              {"nll": 81.2, "z": 0.03, "z_stderr": 2e-4}, _z(0.03, 2e-4, antithetic=False))
    )  # fmt: skip
    # a latent_dim variant of the standard prior: the budget's model section rules it out
    c.append(
        _cell(tmp_path, dm, "gaussian", "standard", "latent2", 1, {**ARCH, "latent_dim": 2},
              {"nll": 120.0, **_elbo(5.0, 115.0)})
    )  # fmt: skip
    # Omniglot: an nll.json without the ELBO keys, and a LARS cell whose files are missing
    c.append(_cell(tmp_path, om, "gaussian", "standard", "base", 1, ARCH, {"nll": 104.6}))
    c.append(_cell(tmp_path, om, "lars", "standard", "base", 1, JOINT))
    budget = {ds: {"vae": {"model": JOINT}} for ds in (dm, om)}
    return {"name": "unit", "seeds": [1, 2], "budget": budget, "cells": c}


def _pm(a, b, digits=2):
    return f"{statistics.fmean((a, b)):.{digits}f} ± {statistics.stdev((a, b)):.{digits}f}"


def _section(text, title):
    """The lines of one '### title' section of a rendered table."""
    return text.split(f"### {title}")[1].split("###")[0].split("\nNot run")[0]


def test_table_d1_post_hoc_vs_joint(spec, tmp_path):
    t = render_table_d1(spec, tmp_path, NOW)
    assert "Budget **`unit`**" in t and "mean ± sd over seeds" in t and "2024-05-01 12:00" in t
    dm = _section(t, "dynamicMNIST")
    # two seeds: mean ± sd; the latent_dim = 2 variant (-ELBO 120) is not averaged in
    assert (
        f"| standard prior N(0, I) | **{_pm(89.0, 89.4)}** / 89.0 | **{_pm(25.0, 25.2)}** / 25.8"
        f" | **{_pm(64.0, 64.2)}** / 63.2 | **1** / 1 | exact |"
    ) in dm
    # one of the two post-hoc seeds has no files: the mean says so
    assert (
        "| LARS post-hoc | **88.00** (1 of 2 seeds) / 87.3 | **24.00** (1 of 2 seeds) / 24.1 | "
        "**64.00** (1 of 2 seeds) / 63.2 | **0.025** (1 of 2 seeds) / 0.023 | "
        "1.00e-05 (1 of 2 seeds) |"
    ) in dm
    assert (
        f"| LARS joint (a = MLP[100-100], T = 100) | **{_pm(86.0, 86.6)}** / 86.6 | "
        f"**{_pm(24.5, 24.9)}** / 24.7 | **{_pm(61.5, 61.7)}** / 61.9 | **0.016 ± 0.0014** / "
        "0.015 | 2.00e-05 |"
    ) in dm
    om = _section(t, "Omniglot")
    # nll.json without neg_elbo / kl / rec: dashes, Z = 1 for the (run) normalised prior
    assert "| standard prior N(0, I) | — / 110.8 | — / 37.2 | — / 73.6 | **1** / 1 | exact |" in om
    assert "| LARS post-hoc | — / 108.8 | — / 35.2 | — / 73.6 | — / 0.015 | — |" in om
    assert "| LARS joint (a = MLP[100-100], T = 100) | — / 108.4 |" in om
    assert "Not run in this budget: Omniglot, LARS post-hoc." in t
    assert "results/omniglot/vae/lars/standard/base/seed1/nll.json` (missing)" in t
    assert "not used (other model keys differ from the budget's model section" in t
    assert "dynamicMNIST, standard prior N(0, I): variant `latent2` seed 1." in t
    assert "with 1 posterior sample per image (nll.json `elbo_samples`)" in t
    assert "high-precision estimate" in t
    assert "- dynamicMNIST, standard prior N(0, I): `dynamic_mnist/vae/gaussian/standard`, " \
        "variant `base`, seeds 1, 2" in t  # fmt: skip


def test_table_d2_rows_by_acceptance_network(spec, tmp_path):
    t = render_table_d2(spec, tmp_path, NOW)
    assert f"| standard prior N(0, I) | **{_pm(85.0, 85.4)}** / 84.97 | **1** / 1 | exact |" in t
    assert "| a = MLP[10-10] | — / 84.08 | — / 0.02 | — |" in t
    assert "| a = MLP[50-50] | — / 83.29 | — / 0.016 | — |" in t
    # only the two base seeds (T = 100); the T = 50 cell named "T100" is not averaged in
    assert f"| a = MLP[100-100] | **{_pm(83.0, 83.5)}** / 83.05 | **0.016 ± 0.0014** / 0.015 |" in t
    assert "| a = MLP[50-50-50] | **83.10** / 83.09 | **0.0152** / 0.015 | 1.00e-05 |" in t
    assert "| a = MLP[100-100-100] | — / 82.94 | — / 0.014 | — |" in t
    assert (
        "Not run in this budget: dynamicMNIST, a = MLP[10-10]; dynamicMNIST, a = MLP[50-50]; "
        "dynamicMNIST, a = MLP[100-100-100]."
    ) in t


def test_table_d3_rows_by_truncation_not_variant_name(spec, tmp_path):
    t = render_table_d3(spec, tmp_path, NOW)
    assert (
        f"| T = 100 | **{_pm(83.0, 83.5)}** / 83.05 | **0.016 ± 0.0014** / 0.014 | 2.00e-05 | "
        f"**{_pm(24.5, 24.9)}** / 24.7 | **{_pm(61.5, 61.7)}** / 61.9 |"
    ) in t
    assert "| T = 50 | **83.30** / 83.24 | **0.031** / 0.03 | 4.00e-05 | **24.80** / 24.8 |" in t
    assert "- dynamicMNIST, T = 50: `dynamic_mnist/vae/lars/standard`, variant `T100`, seeds 1" in t
    assert (
        "- dynamicMNIST, T = 100: `dynamic_mnist/vae/lars/standard`, variant `base`, seeds 1, 2"
        in t
    )
    # T = inf: Z and its SE in scientific notation (Z from z.json; nll.json has none)
    assert "| T = ∞ | **82.70** / 82.67 | **2.500e-06** / 2e-6 | 3.10e-08 | **24.80** / 24.8 |" in t
    assert "| T = 2 | — / 84.60 | — / 0.19 | — | — / 25.4 | — / 63.2 |" in t
    # the paper's first row: the standard prior the truncations are compared with
    assert (
        f"| standard prior N(0, I) | **{_pm(85.0, 85.4)}** / 84.97 | **1** / 1 | exact | "
        f"**{_pm(25.0, 25.2)}** / 25.8 | **{_pm(64.0, 64.2)}** / 63.3 |"
    ) in t
    assert "Not run in this budget: dynamicMNIST, T = 2; dynamicMNIST, T = 5; dynamicMNIST, T = 10." in t  # fmt: skip


def test_table_d45_flow_priors_and_plain_mc(spec, tmp_path):
    t = render_table_d45(spec, tmp_path, NOW)
    dm, om = _section(t, "Table D.4: dynamicMNIST"), _section(t, "Table D.5: Omniglot")
    # the paper prints Z = 1 for the normalised priors
    assert "| N(0, I) | **" in dm and " / 84.97 | **1** / 1 | exact | n/a (Z = 1) |" in dm
    assert "| RealNVP prior | **81.90** / 81.86 | **1** / 1 | exact | n/a (Z = 1) |" in dm
    assert "| MAF prior | — / 81.58 | — / 1 | — | — |" in dm
    assert f"| LARS over N(0, I) | **{_pm(83.0, 83.5)}** / 83.04 | **0.016 ± 0.0014** / 0.015 | 2.00e-05 | antithetic pairs |" in dm  # fmt: skip
    assert (
        "| LARS over a jointly trained RealNVP | **81.20** / 81.15 | **0.03** / 0.027 | "
        "2.00e-04 | plain MC |"
    ) in dm
    assert "MAF" not in om  # the paper has no MAF on Omniglot and we ran none
    assert "| N(0, I) | **104.60** / 104.53 | **1** / 1 | exact | n/a (Z = 1) |" in om
    assert "| RealNVP prior | — / 101.50 | — / 1 | — | — |" in om
    assert "| LARS over N(0, I) | — / 102.68 | — / 0.012 | — | — |" in om
    assert "plain Monte Carlo" in t


def test_every_paper_number_is_printed(spec, tmp_path):
    t1 = render_table_d1(spec, tmp_path, NOW)
    for rows in PAPER_TABLE_D1.values():
        for r in rows.values():
            for key in ("neg_elbo", "kl", "rec"):
                assert f" / {r[key]:.1f} |" in t1
    t2 = render_table_d2(spec, tmp_path, NOW)
    assert all(f" / {r['nll']:.2f} |" in t2 for r in PAPER_TABLE_D2.values())
    t3 = render_table_d3(spec, tmp_path, NOW)
    assert all(f" / {r['nll']:.2f} |" in t3 for r in PAPER_TABLE_D3.values())
    t45 = render_table_d45(spec, tmp_path, NOW)
    assert all(f" / {r['nll']:.2f} |" in t45 for d in PAPER_TABLE_D45.values() for r in d.values())


def test_ambiguous_rows_show_the_dash(spec, tmp_path):
    """Without a budget model section, the base and latent_dim = 2 standard priors both match
    the standard row: no number (neither, nor their mix), and the table says why."""
    spec = {**spec, "budget": {}}
    t = render_table_d1(spec, tmp_path, NOW)
    assert "| standard prior N(0, I) | — / 89.0 | — / 25.8 | — / 63.2 | — / 1 | — |" in t
    assert "cells of 2 model configurations match (variants `base`, `latent2`)" in t


def test_write_appendix_writes_the_four_tables(spec, tmp_path):
    out = tmp_path / "reports"
    paths = write_appendix(spec, out, root=tmp_path, now=NOW)
    names = ["table_d1.md", "table_d2.md", "table_d3.md", "table_d45.md", "table_d6.md"]
    assert [p.name for p in paths] == names
    renders = (render_table_d1, render_table_d2, render_table_d3, render_table_d45, render_table_d6)
    for p, render in zip(paths, renders, strict=True):
        assert p.read_text() == render(spec, tmp_path, NOW)


def test_nothing_run_renders_dashes_only(tmp_path):
    spec = {"name": "paper", "seeds": [1], "budget": {}, "cells": []}
    t = render_table_d3(spec, tmp_path, NOW)
    assert "| T = ∞ | — / 82.67 | — / 2e-6 | — | — / 24.8 | — / 61.5 |" in t
    assert "| standard prior N(0, I) | — / 84.97 | — / 1 | — | — / 25.8 | — / 63.3 |" in t
    assert "(single seed)" in t and "NOT the paper's budget" not in t


def test_table_d6_resampled_outputs(spec, tmp_path):
    """The resampled-outputs cell (arch vae_rx) lands in its own row, with the VAE-alone NLL
    and the mean log-term; without it the row shows the dash."""
    t = render_table_d6(spec, tmp_path, NOW)
    assert "| resampled outputs (LARS on x) | — / 83.63 | — / 0.014 |" in t
    rx = _cell(tmp_path, "dynamic_mnist", "gaussian", "standard", "base", 1,
               {**ARCH, "truncation": 100, "eps": 0.1, "train_z_samples": 1024},
               {"nll": 84.1, "z": 0.0123, "z_stderr": 2e-5, "nll_marginal": 87.6,
                "log_term_mean": 3.5}, _z(0.0123, 2e-5, antithetic=False), arch="vae_rx")  # fmt: skip
    t = render_table_d6({**spec, "cells": [*spec["cells"], rx]}, tmp_path, NOW)
    row = [line for line in t.splitlines() if line.startswith("| resampled outputs")][0]
    assert row.startswith(
        "| resampled outputs (LARS on x) | **84.10** / 83.63 | **0.0123** / 0.014"
    )
    assert "| **87.60** | **3.50** |" in row
    # the standard and resampled-prior rows are Table D.2's cells, seeds averaged
    assert f"| standard prior N(0, I) | **{_pm(85.0, 85.4)}** / 84.97 |" in t
    assert f"| resampled prior (LARS on z) | **{_pm(83.0, 83.5)}** / 83.04 |" in t
    assert all(f" / {r['nll']:.2f} |" in t for r in PAPER_TABLE_D6.values())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None, "84.1"])
def test_an_nll_that_is_not_a_number_is_refused_not_shown_as_not_run(spec, tmp_path, bad):
    """A failed evaluation's NaN must not pass for a cell that was not run (the dash)."""
    from larsvae.utils import UserError

    cell = next(c for c in spec["cells"] if c["prior"] == "realnvp")
    path = tmp_path / cell["nll"]
    path.write_text(json.dumps({"n": 10000, "k": 1000, "nll": bad}))
    with pytest.raises(UserError, match=f"{cell['nll']}: nll = .* is not a finite number"):
        write_appendix(spec, tmp_path / "reports", root=tmp_path, now=NOW)
    assert not (tmp_path / "reports").exists()
