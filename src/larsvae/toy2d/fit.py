"""Fit a prior to samples by maximum likelihood: the paper's 2-D illustrative example.

Section 3 / Eq. 5 of Bauer & Mnih (2019): to fit LARS to data directly (no encoder) we
maximise the average of

    log p(x) = log pi(x) + log a(x) - log Z,    Z ~ Z_S = (1/S) sum_s a(z_s), z_s ~ pi,

(with truncation the density is Eq. A.14 instead; Algorithm 1 supplies the smoothed Z with
the gradient of the current estimate). ``prior.train_log_prob(x, None)`` computes exactly
this for :class:`~larsvae.distributions.ResampledPrior` and the plain ``log_prob`` for flows,
so one loop fits every prior of :mod:`larsvae.distributions`. A ResampledPrior whose
proposal is a RealNVP trains the proposal jointly (all parameters are in the optimiser,
and proposal samples for Z_S are reparameterised).

After training, a LARS prior gets a high-precision Z (:func:`larsvae.zestimate.estimate_prior_z`)
so that :func:`average_log_likelihood` evaluates the normalised density.

Random streams (minibatches, proposal samples for Z_S, the final Z) are separate seeds
``derive_seed(seed, stream)`` of the run's one ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from larsvae.distributions.lars import ResampledPrior
from larsvae.utils import derive_seed, module_device
from larsvae.zestimate import estimate_prior_z

Sampler = Callable[[int, torch.Generator], Tensor]

# Streams of one fit_density run: derive_seed(seed, stream)
_PROPOSAL_STREAM, _DATA_STREAM, _Z_STREAM = 0, 1, 2


@dataclass
class FitHistory:
    """What :func:`fit_density` did: per-step training loss (negative mean Eq. 5 objective),
    for LARS the running Z of Algorithm 1 per step, and the final high-precision Z."""

    loss: list[float] = field(default_factory=list)
    log_z: list[float] = field(default_factory=list)  # LARS only: running <Z> after each step
    final_log_z: float | None = None  # LARS only: installed high-precision log Z
    final_z_stderr: float | None = None  # its Monte Carlo standard error (on Z, not log Z)


def _minibatch(
    data: Tensor | Sampler, n: int, generator: torch.Generator, device: torch.device
) -> Tensor:
    if callable(data):
        x = data(n, generator)
    else:
        idx = torch.randint(data.shape[0], (n,), generator=generator)
        x = data[idx.to(data.device)]
    return x.to(device=device, dtype=torch.get_default_dtype())


def install_high_precision_z(
    prior: ResampledPrior, num_samples: int = 1 << 20, batch_size: int = 1 << 16, seed: int = 0
) -> tuple[float, float]:
    """Estimate Z = E_pi[a(z)] (Eq. 2) with ``num_samples`` proposals and install it.

    Antithetic pairs are used when the proposal is symmetric (N(0, I)). Returns
    (log Z, standard error of Z).
    """
    antithetic = bool(getattr(prior.proposal, "symmetric", False))
    if antithetic:  # pairs need even sizes
        num_samples += num_samples % 2
        batch_size += batch_size % 2
    est = estimate_prior_z(prior, num_samples, batch_size, antithetic=antithetic, seed=seed)
    prior.set_log_z(est.log_mean)
    return float(est.log_mean), float(est.stderr)


def fit_density(
    prior: nn.Module,
    data: Tensor | Sampler,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
    *,
    train_proposal: bool = True,
    z_samples: int = 1 << 20,
    z_batch: int = 1 << 16,
) -> FitHistory:
    """Maximise the likelihood of target samples under ``prior`` with Adam (Eq. 5).

    Args:
        prior: any prior of :mod:`larsvae.distributions` (trained in place).
        data: an (N, D) tensor of samples (minibatches drawn uniformly with replacement) or a
            sampler ``data(n, generator) -> (n, D)`` giving fresh samples every step.
        steps, batch_size, lr: optimisation schedule (Adam, constant learning rate).
        seed: the whole run (minibatches, proposal samples for Z_S, the final Z estimate)
            depends only on it and the prior's initial state; the caller's global RNG state
            is left untouched.
        progress: print the loss every ~10% of the steps.
        train_proposal: for a ResampledPrior, also train its proposal (joint training, e.g. a
            RealNVP proposal); ``False`` trains the acceptance network only.
        z_samples, z_batch: proposals for the final high-precision Z of a LARS prior.

    Returns a :class:`FitHistory`. The prior is left in eval mode.
    """
    if steps < 0 or batch_size < 1 or not lr > 0:
        raise ValueError(
            f"need steps >= 0, batch_size >= 1, lr > 0; got {steps}, {batch_size}, {lr}"
        )
    is_lars = isinstance(prior, ResampledPrior)
    if is_lars and not train_proposal:
        params = [p for p in prior.acceptance.parameters() if p.requires_grad]
    else:
        params = [p for p in prior.parameters() if p.requires_grad]
    device = module_device(prior)
    history = FitHistory()
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(derive_seed(seed, _PROPOSAL_STREAM))  # Z_S proposals in train_log_prob
        data_gen = torch.Generator().manual_seed(derive_seed(seed, _DATA_STREAM))
        opt = torch.optim.Adam(params, lr=lr) if params else None
        prior.train()
        report_every = max(1, steps // 10)
        for step in range(steps):
            x = _minibatch(data, batch_size, data_gen, device)
            loss = -prior.train_log_prob(x, None).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"fit_density: non-finite loss {loss.item()} at step {step}"
                )
            if opt is not None:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            history.loss.append(loss.item())
            if is_lars:
                history.log_z.append(float(prior.log_z))
            if progress and (step + 1) % report_every == 0:
                print(f"step {step + 1}/{steps}  loss {loss.item():.4f}", flush=True)
        prior.eval()
        if is_lars:
            log_z, se = install_high_precision_z(
                prior, z_samples, z_batch, seed=derive_seed(seed, _Z_STREAM)
            )
            history.final_log_z, history.final_z_stderr = log_z, se
    return history


@torch.no_grad()
def average_log_likelihood(prior: nn.Module, x: Tensor, batch_size: int = 4096) -> float:
    """Mean of ``prior.log_prob`` over the rows of x (stored Z for LARS), as a float."""
    was_training = prior.training
    prior.eval()
    device = module_device(prior)
    total = math.fsum(
        prior.log_prob(chunk.to(device=device, dtype=torch.get_default_dtype()))
        .double()
        .sum()
        .item()
        for chunk in x.split(batch_size)
    )
    prior.train(was_training)
    return total / x.shape[0]


__all__ = ["FitHistory", "fit_density", "average_log_likelihood", "install_high_precision_z"]
