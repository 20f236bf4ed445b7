"""The test-set ELBO terms of Table D.1 and D.3 (larsvae.evaluation.elbo_terms) against a
computation by hand from the model's networks: -ELBO = KL + reconstruction (Eq. 1)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_MODEL

from larsvae.config import model_config
from larsvae.evaluation import elbo_terms
from larsvae.models import build_model

pytestmark = pytest.mark.usefixtures("single_thread")


def _vae(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("vae", "gaussian", model_config(SMALL_MODEL)).eval()


def _images(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 784, generator=g) < 0.3).float()


def _by_hand(model, x, samples: int, batch_size: int, seed: int):
    """Per image: mean over ``samples`` draws z = mu + sigma eps of
    rec = -log Bernoulli(x; sigmoid(decoder(z))) and kl = log N(z; mu, sigma) - log N(z; 0, I),
    the draws taken from one generator in the order elbo_terms takes them."""
    gen = torch.Generator().manual_seed(seed)
    d = model.latent_dim
    rec, kl = torch.zeros(len(x), samples), torch.zeros(len(x), samples)
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size]
            mu, log_sigma = model.encoder_head(model.encoder(xb))  # (B, d)
            for s in range(samples):
                eps = torch.randn(len(xb), 1, d, generator=gen)[:, 0]
                z = mu + log_sigma.exp() * eps
                logits = model.decoder(z)
                rec[i : i + len(xb), s] = -(xb * logits - F.softplus(logits)).sum(-1)
                log_q = torch.distributions.Normal(mu, log_sigma.exp()).log_prob(z).sum(-1)
                log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
                kl[i : i + len(xb), s] = log_q - log_p
    return rec.double(), kl.double()


def test_elbo_terms_match_a_hand_computation():
    """Means over images of the per-image means over draws; -ELBO = KL + rec, and its SE is
    the sd over images / sqrt(n). Three batches (the last one short), three draws each."""
    model, x = _vae(), _images(10)
    got = elbo_terms(model, x, 3, 4, generator=torch.Generator().manual_seed(5))
    rec, kl = _by_hand(model, x, 3, 4, seed=5)
    rec_i, kl_i = rec.mean(1), kl.mean(1)  # (n,)
    total = rec_i + kl_i
    assert got.samples == 3 and got.n == 10
    assert got.rec == pytest.approx(float(rec_i.mean()), rel=1e-5)
    assert got.kl == pytest.approx(float(kl_i.mean()), rel=1e-5)
    assert got.neg_elbo == pytest.approx(float(total.mean()), rel=1e-5)
    assert got.neg_elbo == pytest.approx(got.kl + got.rec, rel=1e-12)  # Eq. 1
    assert got.neg_elbo_stderr == pytest.approx(float(total.std() / math.sqrt(10)), rel=1e-4)
    assert got.kl > 1.0 and got.rec > 1.0  # neither term vanishes: a sign error would show
    assert got.to_dict() == {
        "neg_elbo": got.neg_elbo,
        "kl": got.kl,
        "rec": got.rec,
        "neg_elbo_stderr": got.neg_elbo_stderr,
        "elbo_samples": 3,
    }


def test_kl_term_converges_to_the_closed_form_gaussian_kl():
    """Statistical: with many draws the KL term is KL(N(mu, sigma^2) || N(0, I)) =
    sum(mu^2 + sigma^2 - 1 - 2 log sigma) / 2, averaged over images, within 4 SE."""
    model, x = _vae(seed=3), _images(6, seed=2)
    got = elbo_terms(model, x, 400, 6, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        mu, log_sigma = model.encoder_head(model.encoder(x))
        exact = 0.5 * (mu**2 + (2 * log_sigma).exp() - 1 - 2 * log_sigma).sum(-1)
    _, kl = _by_hand(model, x, 400, 6, seed=7)
    se = float(kl.var(1).mean().sqrt() / math.sqrt(400 * 6))
    assert abs(got.kl - float(exact.mean())) < 4 * se
    assert se < 0.05 * float(exact.mean())  # the check is tight enough to mean something
