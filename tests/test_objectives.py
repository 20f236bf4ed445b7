"""Objectives and schedules (larsvae.objectives) against torch.distributions and hand values."""

from __future__ import annotations

import math

import pytest
import torch

from larsvae.config import TrainConfig
from larsvae.objectives import bernoulli_log_prob, gaussian_log_prob, iwae_bound, kl_beta, lr_at


def test_kl_beta_linear_warmup():
    assert kl_beta(0, 100) == 0.0
    assert kl_beta(25, 100) == pytest.approx(0.25)
    assert kl_beta(99, 100) == pytest.approx(0.99)
    assert kl_beta(100, 100) == 1.0
    assert kl_beta(10**9, 100) == 1.0
    assert kl_beta(0, 0) == 1.0 and kl_beta(5, 0) == 1.0  # no warm-up
    betas = [kl_beta(t, 7) for t in range(10)]
    assert betas == sorted(betas)
    with pytest.raises(ValueError):
        kl_beta(-1, 10)


def test_lr_schedule_steps_down_at_decay_step():
    cfg = TrainConfig(lr=3e-4, lr_final=1e-4, lr_decay_step=10)
    assert [lr_at(t, cfg) for t in (0, 9, 10, 11)] == [3e-4, 3e-4, 1e-4, 1e-4]
    assert lr_at(0, TrainConfig(lr_decay_step=0)) == TrainConfig().lr_final


def test_bernoulli_log_prob_matches_torch_including_extreme_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, 784, generator=g, dtype=torch.float64) * 5
    logits[0, 0, :10] = torch.tensor([80.0, -80.0, 500.0, -500.0, 0, 30, -30, 1e3, -1e3, 1e-9])
    x = (torch.rand(5, 1, 784, generator=g) < 0.4).double()
    ours = bernoulli_log_prob(x, logits)  # broadcasts x over the sample dim
    ref = torch.distributions.Bernoulli(logits=logits).log_prob(x.expand_as(logits)).sum(-1)
    assert ours.shape == (5, 3)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-9)
    assert (ours <= 0).all() and torch.isfinite(ours).all()


def test_gaussian_log_prob_matches_torch():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 6, 3, generator=g, dtype=torch.float64)
    mean = torch.randn(4, 1, 3, generator=g, dtype=torch.float64)
    log_std = torch.randn(4, 1, 3, generator=g, dtype=torch.float64)
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(gaussian_log_prob(z, mean, log_std), ref, rtol=1e-12, atol=1e-12)


def test_iwae_bound():
    log_w = torch.tensor([[0.0, math.log(3.0)], [-1000.0, -1000.0]], dtype=torch.float64)
    torch.testing.assert_close(
        iwae_bound(log_w), torch.tensor([math.log(2.0), -1000.0], dtype=torch.float64)
    )
    one = torch.randn(7, 1, dtype=torch.float64)
    torch.testing.assert_close(iwae_bound(one), one[:, 0])  # K = 1: the ELBO sample itself
