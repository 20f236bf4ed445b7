"""The 2-D example end to end: fit a LARS prior to each target (Eq. 5), plot it, summarise.

:func:`make_figure` is the pipeline's step. Per target it builds the prior with
:func:`larsvae.distributions.build_prior` (LARS over N(0, I), or over a jointly trained
RealNVP), fits it to fresh target samples (:func:`~larsvae.toy2d.fit.fit_density`), installs
a high-precision Z and measures the test NLL of the target itself, N(0, I) and the fitted prior.

Random streams are ``derive_seed(seed, target index in TARGETS, stream)``: a target's numbers
do not depend on which other targets are drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from larsvae.config import LARS_PRIORS, ConfigError, ModelConfig, check_choice
from larsvae.distributions import StandardNormal, build_prior
from larsvae.toy2d.figure import Row, grid_panels, plot_rows
from larsvae.toy2d.fit import average_log_likelihood, fit_density
from larsvae.toy2d.targets import TARGETS, get_target
from larsvae.utils import UserError, derive_seed

_INIT, _FIT, _TEST, _SHOW = range(4)  # streams per target
_PROPOSAL_LABEL = {"lars": "N(0, I)", "lars_realnvp": "RealNVP, joint"}


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def make_figure(
    out_png: Path,
    *,
    steps: int,
    seed: int,
    prior: str = "lars",
    model: ModelConfig | None = None,
    targets: Sequence[str] = tuple(TARGETS),
    batch_size: int = 256,
    lr: float = 3e-3,
    z_samples: int = 1 << 20,
    test_samples: int = 10_000,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Fit ``prior`` to each target for ``steps`` Adam steps, write the figure to ``out_png``.

    Args:
        out_png: the PNG to write (atomically; parent folders are created).
        steps, seed: Adam steps per target; the one seed every random stream derives from.
        prior: ``"lars"`` (LARS over N(0, I)) or ``"lars_realnvp"`` (jointly trained RealNVP
            proposal).
        model: prior hyper-parameters (acceptance_hidden, truncation, eps, train_z_samples,
            flow_hidden, realnvp_couplings); ``latent_dim`` is ignored, the example is 2-D.
            Default ``ModelConfig()``: a(z) = MLP[2-100-100-1], T = 100, eps = 0.1, S = 1024.
        targets: names from :data:`~larsvae.toy2d.targets.TARGETS`, one figure row each.
        batch_size, lr: target samples per step, Adam learning rate.
        z_samples: proposals for the high-precision Z installed after training.
        test_samples: fresh target samples the test NLL is averaged over.
        progress: print the training loss every ~10% of the steps.

    Returns ``{target: {"nll", "nll_gaussian", "nll_true", "Z", "Z_stderr"}}``: test NLL in
    nats per point of the fitted prior, of N(0, I) and of the target density itself, and the
    installed Z (Eq. 2) with its Monte Carlo standard error.

    Raises :class:`~larsvae.utils.UserError` if ``out_png`` is not ``*.png`` and
    :class:`~larsvae.config.ConfigError` (a ``ValueError``) for an unknown prior or target,
    both before any training.
    """
    out_png = Path(out_png)
    if out_png.suffix.lower() != ".png":
        raise UserError(f"{out_png}: the 2-D figure is written as PNG; name it *.png")
    check_choice("prior", prior, LARS_PRIORS)
    if not targets:
        raise ConfigError(f"targets: expected at least one of: {', '.join(TARGETS)}")
    chosen = [get_target(name) for name in targets]
    model = ModelConfig() if model is None else model

    rows: list[Row] = []
    summary: dict[str, dict[str, float]] = {}
    for target in chosen:
        t = list(TARGETS).index(target.name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, t, _INIT))
            fitted = build_prior(prior, 2, model)
        hist = fit_density(
            fitted,
            target.sample,
            steps,
            batch_size=batch_size,
            lr=lr,
            seed=derive_seed(seed, t, _FIT),
            progress=progress,
            z_samples=z_samples,
        )
        test_x = target.sample(test_samples, _generator(seed, t, _TEST))
        s = summary[target.name] = {
            "nll": -average_log_likelihood(fitted, test_x),
            "nll_gaussian": -average_log_likelihood(StandardNormal(2), test_x),
            "nll_true": -target.log_prob(test_x.double()).mean().item(),
            "Z": math.exp(hist.final_log_z),
            "Z_stderr": hist.final_z_stderr,
        }
        show = target.sample(2000, _generator(seed, t, _SHOW))
        caption = f"LARS  (NLL {s['nll']:.2f} nats; N(0,I) {s['nll_gaussian']:.2f})"
        rows.append(
            Row(target.name, show, grid_panels(fitted, target.extent), target.extent, caption)
        )
    plot_rows(out_png, rows, _PROPOSAL_LABEL[prior])
    return summary


__all__ = ["make_figure"]
