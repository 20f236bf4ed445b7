"""Resampled outputs (LARS on the VAE's binary x; Table D.6, Fig. D.9).

The exact checks use the real 784-pixel model made tiny: d_z = 1, H = 4, and a decoder whose
last layer pins all pixels but FREE = 3 to a fixed pattern (logits +-40, so a pixel leaves it
with probability 4e-18). pi(x) then lives on 2^3 images up to ~3e-15, and it, Z = E_pi[a(x)]
and p_T(x) follow from Gauss-Hermite quadrature over z.
"""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from larsvae.checkpoint import CheckpointMeta
from larsvae.config import ModelConfig, TrainConfig
from larsvae.data import BatchStream, load
from larsvae.distributions import ResampledPrior, StandardNormal
from larsvae.models.resampled_outputs import (
    ResampledOutputsVAE,
    build_resampled_outputs,
    nll_summary,
    rank_outputs,
)
from larsvae.models.vae import VAE, LatentVariableModel
from larsvae.reports.acceptance import write_output_ranking
from larsvae.train import fit
from larsvae.zestimate import estimate_z

pytestmark = pytest.mark.usefixtures("single_thread")

FREE = 3  # pixels with z-dependent probabilities in the exact model
NODES = 120  # Gauss-Hermite nodes (the integrands are smooth: 120 and 240 agree to 1e-14)


def exact_model(truncation=100, seed=0, eps=0.1, S=64) -> ResampledOutputsVAE:
    cfg = ModelConfig(latent_dim=1, hidden=4, truncation=truncation, eps=eps, train_z_samples=S)
    torch.manual_seed(seed)
    m = build_resampled_outputs(cfg).double()
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    with torch.no_grad():
        m.decoder[0].weight.copy_(2.0 * randn(4, 1))
        out = m.decoder[-1]
        out.weight.zero_()
        out.weight[:FREE] = 2.5 * randn(FREE, 4)
        out.bias[:FREE] = randn(FREE)
        sign = torch.where(torch.rand(784 - FREE, generator=g) < 0.3, 1.0, -1.0)
        out.bias[FREE:] = 40.0 * sign.double()
        first = m.resampler.acceptance.net[0]
        first.weight.zero_()
        first.weight[:, :FREE] = 3.0 * randn(4, FREE)
        first.bias.copy_(randn(4))
        m.resampler.acceptance.net[-1].weight.copy_(2.0 * randn(1, 4))
    return m


def support(m) -> torch.Tensor:
    """The 2^FREE images pi(x) lives on: free pixels enumerated, the others at their mode."""
    mode = (m.decoder[-1].bias > 0).double()
    bits = torch.tensor(
        [[(i >> j) & 1 for j in range(FREE)] for i in range(2**FREE)], dtype=torch.float64
    )
    return torch.cat([bits, mode[FREE:].expand(2**FREE, -1)], dim=1)


def exact_log_pi(m, x: torch.Tensor) -> torch.Tensor:
    """log pi(x) = log int N(z) p(x|z) dz by Gauss-Hermite quadrature. (N, 784) -> (N,)"""
    t, w = np.polynomial.hermite_e.hermegauss(NODES)
    t = torch.from_numpy(t).unsqueeze(1)
    log_w = torch.from_numpy(np.log(w / math.sqrt(2 * math.pi)))
    with torch.no_grad():
        logits = m.decoder(t)  # (nodes, 784), plain torch.tanh
        log_px_z = (x.unsqueeze(1) * logits - F.softplus(logits)).sum(-1)  # (N, nodes)
    return torch.logsumexp(log_px_z + log_w, dim=1)


def exact_z(m) -> tuple[float, float]:
    """Z = E_pi[a(x)] and Var_pi[a(x)] over the support."""
    x = support(m)
    pi = exact_log_pi(m, x).exp()
    with torch.no_grad():
        a = torch.sigmoid(m.resampler.acceptance(x))
    z = float((pi * a).sum())
    return z, float((pi * a * a).sum()) - z * z


def exact_log_pt(m, x, z: float) -> torch.Tensor:
    """log p_T(x) from the formula (*) in plain float64 arithmetic (not log space)."""
    T = m.resampler.truncation
    with torch.no_grad():
        a = torch.sigmoid(m.resampler.acceptance(x))
    factor = a / z if T is None else a * (1 - (1 - z) ** (T - 1)) / z + (1 - z) ** (T - 1)
    return exact_log_pi(m, x) + torch.log(factor)


def frequencies(x: torch.Tensor, m) -> np.ndarray:
    """Counts of each support image among samples x; fails on anything off the support."""
    assert bool((x[:, FREE:] == support(m)[0, FREE:]).all())
    code = (x[:, :FREE] * (2 ** torch.arange(FREE, dtype=x.dtype))).sum(1).long()
    return np.bincount(code.numpy(), minlength=2**FREE)


# ---------------------------------------------------------------------------------------
# the density, the proposal, Z and the sampler against exact answers


@pytest.mark.parametrize("truncation", [2, 100, 10**6, None])
def test_resampled_density_sums_to_one_with_the_exact_z(truncation):
    m = exact_model(truncation)
    x = support(m)
    log_pi = exact_log_pi(m, x)
    assert float(log_pi.exp().sum()) == pytest.approx(1.0, abs=1e-12)  # the quadrature itself
    z, _ = exact_z(m)
    assert 0.02 < z < 0.8
    m.resampler.set_log_z(math.log(z))
    with torch.no_grad():
        log_pt = log_pi + m.resampler.log_term(x)
    assert float(log_pt.exp().sum()) == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(log_pt, exact_log_pt(m, x, z), atol=1e-12, rtol=0)
    # ... and it could fail: a Z 10% off does not normalise (for T = 2 the term is a + 1 - Z)
    m.resampler.set_log_z(math.log(1.1 * z))
    with torch.no_grad():
        off = float((log_pi + m.resampler.log_term(x)).exp().sum())
    assert abs(off - 1.0) > 1e-3


def test_proposal_draws_from_pi_and_estimate_z_is_unbiased():
    m = exact_model()
    prop = m.resampler.proposal
    assert prop.symmetric is False and prop.dim == 784
    x = prop.sample(20_000, generator=torch.Generator().manual_seed(1))
    assert x.dtype == torch.float64 and set(x.unique().tolist()) <= {0.0, 1.0}
    pi = exact_log_pi(m, support(m)).exp().numpy()
    counts = frequencies(x, m)
    assert stats.chisquare(counts, pi / pi.sum() * counts.sum()).pvalue > 1e-3

    z, var = exact_z(m)
    n = 40_000
    est = estimate_z(m.resampler.acceptance, prop, n, 4096, antithetic=False, seed=3)
    assert not est.antithetic
    assert abs(est.mean - z) < 4 * est.stderr
    assert est.stderr == pytest.approx(math.sqrt(var / n), rel=0.1)


@pytest.mark.parametrize("truncation", [2, 100])
def test_exact_sampler_draws_from_the_resampled_density(truncation):
    m = exact_model(truncation)
    z, _ = exact_z(m)
    m.resampler.set_log_z(math.log(z))
    x = m.sample(4000, generator=torch.Generator().manual_seed(2))
    p_t = exact_log_pt(m, support(m), z).exp().numpy()
    counts = frequencies(x, m)
    assert stats.chisquare(counts, p_t / p_t.sum() * counts.sum()).pvalue > 1e-3
    # the two truncations give measurably different densities here
    pi = exact_log_pi(m, support(m)).exp().numpy()
    assert np.abs(p_t - pi).max() > 0.02


# ---------------------------------------------------------------------------------------
# the training objective and its gradients


def small_model(seed=0, S=16, truncation=100) -> ResampledOutputsVAE:
    cfg = ModelConfig(latent_dim=2, hidden=8, truncation=truncation, train_z_samples=S)
    torch.manual_seed(seed)
    return build_resampled_outputs(cfg).double()


def by_hand(m, x, beta, seed, z_running, eps=0.1):
    """-(ELBO + log term) of Eq. D.24 from scratch, in float64 with torch.distributions;
    the Z of the log term has value Z_smooth and the gradient of Z_S (Algorithm 1)."""
    g = torch.Generator().manual_seed(seed)
    B, d = x.shape[0], m.latent_dim
    noise = torch.randn((B, 1, d), generator=g, dtype=torch.float64)[:, 0]
    h = m.encoder(x)
    mean, std = m.encoder_head.mean(h), m.encoder_head.log_std(h).exp()
    z = mean + std * noise
    log_q = torch.distributions.Normal(mean, std).log_prob(z).sum(-1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_px = torch.distributions.Bernoulli(logits=m.decoder(z)).log_prob(x).sum(-1)
    xs = m.resampler.proposal.sample(m.resampler.num_z_samples, generator=g)
    z_s = torch.sigmoid(m.resampler.acceptance.net(xs)).mean()
    z_smooth = (1 - eps) * z_running + eps * z_s.detach()
    zz = z_smooth + (z_s - z_s.detach())
    a = torch.sigmoid(m.resampler.acceptance.net(x)).squeeze(-1)
    T = m.resampler.truncation
    log_term = torch.log(a * (1 - (1 - zz) ** (T - 1)) / zz + (1 - zz) ** (T - 1))
    rec = -log_px - log_term
    kl = log_q - log_p
    return (rec + beta * kl).mean(), rec, kl, log_term, z_smooth


def _grads(loss, params):
    return torch.autograd.grad(loss, params, allow_unused=False)


def test_training_loss_and_gradients_equal_the_hand_computation():
    m = small_model()
    m.train()
    x = (torch.rand(5, 784, generator=torch.Generator().manual_seed(9)) < 0.3).double()
    m.resampler.set_log_z(math.log(0.3))
    out = m.loss(x, beta=0.7, generator=torch.Generator().manual_seed(5))
    assert math.exp(float(m.resampler.log_z)) != pytest.approx(0.3)  # <Z> moved ...
    m.resampler.set_log_z(math.log(0.3))  # ... put it back for the hand computation
    loss, rec, kl, log_term, z_smooth = by_hand(m, x, 0.7, 5, 0.3)
    assert float(out["loss"].detach()) == pytest.approx(float(loss.detach()), rel=1e-12)
    for key, want in (("rec", rec), ("kl", kl), ("log_term", log_term)):
        assert torch.allclose(out[key], want, rtol=1e-10, atol=1e-10), key
    assert torch.allclose(out["elbo"], -(rec + kl), rtol=1e-12)
    assert math.exp(float(m.resampler.last_log_z_smooth)) == pytest.approx(float(z_smooth))

    acc = list(m.resampler.acceptance.parameters())
    vae = [p for n, p in m.named_parameters() if not n.startswith("resampler.")]
    for mine, hand in zip(_grads(out["loss"], acc + vae), _grads(loss, acc + vae), strict=True):
        assert torch.allclose(mine, hand, rtol=1e-8, atol=1e-12)


def test_the_decoder_never_sees_the_z_estimate():
    """Encoder and decoder gradients are those of the plain VAE ELBO (same noise), whatever
    <Z> and S are; a(x)'s gradients do depend on both (so the comparison could fail)."""
    x = (torch.rand(6, 784, generator=torch.Generator().manual_seed(9)) < 0.3).double()
    grads = {}
    for label, z_running, S in (("a", 0.3, 16), ("b", 0.02, 64)):
        m = small_model(S=S)
        m.resampler.set_log_z(math.log(z_running))
        vae = [p for n, p in m.named_parameters() if not n.startswith("resampler.")]
        acc = list(m.resampler.acceptance.parameters())
        loss = m.loss(x, 0.5, generator=torch.Generator().manual_seed(4))["loss"]
        grads[label] = _grads(loss, vae + acc)
        plain = LatentVariableModel.loss(m, x, 0.5, generator=torch.Generator().manual_seed(4))
        for mine, ref in zip(grads[label][: len(vae)], _grads(plain["loss"], vae), strict=True):
            assert torch.equal(mine, ref)
    n_vae = len(vae)
    assert all(
        torch.equal(a, b) for a, b in zip(grads["a"][:n_vae], grads["b"][:n_vae], strict=True)
    )
    assert not torch.allclose(grads["a"][n_vae], grads["b"][n_vae])


class _ZeroLogPi(torch.nn.Module):
    """Stand-in proposal for the latent LARS prior: samples of pi, log pi := 0, so that
    ResampledPrior.train_log_prob returns exactly the log term."""

    def __init__(self, proposal):
        super().__init__()
        self.inner, self.dim = proposal, proposal.dim

    def sample(self, n, generator=None):
        return self.inner.sample(n, generator=generator)

    def log_prob(self, x):
        return torch.zeros(x.shape[0], dtype=x.dtype)


def test_train_log_term_mirrors_algorithm_1_of_the_latent_prior():
    m = small_model(S=32)
    res = m.resampler
    ref = ResampledPrior(
        _ZeroLogPi(res.proposal), res.acceptance, res.truncation, res.eps, res.num_z_samples
    )
    ref.train()
    x = (torch.rand(4, 784, generator=torch.Generator().manual_seed(1)) < 0.4).double()
    for step in range(3):
        mine = res.train_log_term(x, generator=torch.Generator().manual_seed(step))
        theirs = ref.train_log_prob(x, None, generator=torch.Generator().manual_seed(step))
        assert torch.allclose(mine, theirs, rtol=1e-12, atol=1e-12)
        assert float(res.log_z) == pytest.approx(float(ref.log_z), abs=1e-13)
        acc = list(res.acceptance.parameters())
        for a, b in zip(_grads(mine.sum(), acc), _grads(theirs.sum(), acc), strict=True):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-13)


def _curve(path):
    with open(path) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f, delimiter="\t")]


def test_fit_trains_a_and_the_vae_part_is_a_standard_vae(tmp_path, tiny_dataset_npz):
    """train.fit unchanged: the loss falls, a(x) learns to favour data over decoded samples
    (mean log term > 0; 0 for a constant a) and the VAE's weights are bitwise those of a
    plain VAE trained with the same seed: nothing from the log term reaches them."""
    stream = BatchStream(load(tiny_dataset_npz)["train"], 32, seed=5, device="cpu")
    mcfg = ModelConfig(latent_dim=4, hidden=32, train_z_samples=64)
    tcfg = TrainConfig(
        iterations=80, batch_size=32, lr=1e-3, warmup_steps=0, log_every=20, checkpoint_every=1000
    )
    rx_meta = CheckpointMeta("vae_rx", "gaussian", mcfg)
    meta = CheckpointMeta("vae", "gaussian", mcfg)
    torch.manual_seed(1)
    rx = build_resampled_outputs(mcfg)
    torch.manual_seed(1)
    plain = VAE(StandardNormal(4), mcfg)
    fit(rx, stream, tcfg, tmp_path / "rx" / "model.pt", seed=3, meta=rx_meta, progress=False)
    fit(plain, stream, tcfg, tmp_path / "vae" / "model.pt", seed=3, meta=meta, progress=False)

    curve = _curve(tmp_path / "rx" / "curve.tsv")
    assert curve[-1]["loss"] < curve[0]["loss"] - 50
    mine, ref = rx.state_dict(), plain.state_dict()
    assert {k for k in mine if not k.startswith("resampler.")} == set(ref)
    assert all(torch.equal(mine[k], v) for k, v in ref.items())
    assert -5.0 < float(rx.resampler.log_z) < 0.0
    rx.eval()
    with torch.no_grad():
        log_term = rx.loss(stream.batch(1000))["log_term"]
    assert float(log_term.mean()) > 0.1


# ---------------------------------------------------------------------------------------
# test NLL and ranking


@pytest.mark.parametrize("truncation", [100, None])
def test_nll_is_iwae_of_pi_plus_the_log_term(truncation):
    m = exact_model(truncation)
    with torch.no_grad():  # q(z|x) = N(0, 1): the IWAE weights are p(x|z_k), z_k ~ N(0, 1)
        for lin in (m.encoder_head.mean, m.encoder_head.log_std):
            lin.weight.zero_()
            lin.bias.zero_()
    z, _ = exact_z(m)
    m.resampler.set_log_z(math.log(z))
    m.eval()
    x = support(m)
    k = 2000
    bound = m.log_prob_bound(x, k, seed=0)
    # relative spread of p(x|z) under N(0, 1) by quadrature gives the IWAE error scale
    t, w = np.polynomial.hermite_e.hermegauss(NODES)
    w = torch.from_numpy(w / math.sqrt(2 * math.pi))
    with torch.no_grad():
        logits = m.decoder(torch.from_numpy(t).unsqueeze(1))
        p = (x.unsqueeze(1) * logits - F.softplus(logits)).sum(-1).exp()  # (8, nodes)
    rel_sd = ((p * p * w).sum(1) / (p * w).sum(1) ** 2 - 1).sqrt()
    exact = exact_log_pt(m, x, z)
    assert ((bound - exact).abs() < 5 * rel_sd / math.sqrt(k) + 1e-9).all()

    summary = nll_summary(m, x, k, seed=0, z_estimate=SimpleNamespace(mean=z, stderr=0.01 * z))
    assert torch.allclose(summary.summary.log_px, bound, rtol=0, atol=1e-12)
    parts = summary.nll_marginal - summary.log_term_mean
    assert summary.summary.nll == pytest.approx(parts, abs=1e-10)
    # the model's own log weights carry the log term: the library's IWAE gives the same
    from larsvae.evaluation import iwae_log_likelihood

    assert torch.allclose(iwae_log_likelihood(m, x, k, seed=0), bound, atol=1e-10)
    # d NLL / d log Z against central differences of the bound (same IWAE noise)
    h = 1e-5
    up = float(-m.log_prob_bound(x, k, seed=0, log_z=math.log(z) + h).mean())
    down = float(-m.log_prob_bound(x, k, seed=0, log_z=math.log(z) - h).mean())
    assert summary.summary.dnll_dlogz == pytest.approx((up - down) / (2 * h), abs=1e-6)
    if truncation is None:
        assert summary.summary.dnll_dlogz == pytest.approx(1.0, abs=1e-12)
    assert summary.summary.nll_z_stderr == pytest.approx(0.01 * abs(summary.summary.dnll_dlogz))
    with pytest.raises(ValueError, match="set_log_z"):
        nll_summary(m, x, 10, z_estimate=SimpleNamespace(mean=0.5 * z, stderr=0.0))


def test_ranking_scores_decoded_samples_by_a_of_x(tmp_path):
    m = exact_model()
    z, _ = exact_z(m)
    r = rank_outputs(m, 3000, seed=0)
    assert r.x.shape == (3000, 784) and set(np.unique(r.x)) <= {0.0, 1.0}
    with torch.no_grad():
        want = F.logsigmoid(m.resampler.acceptance(torch.tensor(r.x, dtype=torch.float64)))
    assert np.allclose(r.log_a, want.numpy(), atol=1e-12)
    assert np.array_equal(rank_outputs(m, 3000, seed=0).log_a, r.log_a)
    summary = write_output_ranking(m, tmp_path / "rank", n=3000, seed=0, extra={"arch": "vae_rx"})
    for name in ("grid.png", "acceptance.png", "samples.npz", "summary.json"):
        assert (tmp_path / "rank" / name).stat().st_size > 0
    assert summary["arch"] == "vae_rx"
    assert abs(summary["a_mean"] - z) < 4 * summary["a_mean_stderr"]
    saved = np.load(tmp_path / "rank" / "samples.npz")
    assert np.all(np.diff(saved["log_a"]) <= 0) and saved["x"].max() == 255


# ---------------------------------------------------------------------------------------
# state and boundaries


def test_state_dict_round_trip_and_boundaries():
    m = small_model()
    m.resampler.set_log_z(-4.2)
    state = m.state_dict()
    assert not any(k.startswith("resampler.proposal") for k in state)  # decoder stored once
    fresh = build_resampled_outputs(m.cfg).double()
    fresh.load_state_dict(state)
    x = (torch.rand(3, 784, generator=torch.Generator().manual_seed(0)) < 0.5).double()
    with torch.no_grad():
        assert torch.equal(fresh.resampler.log_term(x), m.resampler.log_term(x))
    m.float()
    assert m.resampler.log_z.dtype == torch.float64 and float(m.resampler.log_z) == -4.2
    assert m.resampler.proposal.sample(2).dtype == torch.float32

    with pytest.raises(ValueError, match="no Z estimate"):
        build_resampled_outputs(m.cfg).eval().log_weights(x.float(), 2)
    with pytest.raises(TypeError):
        m.resampler.log_prob(x)
    with pytest.raises(ValueError, match="resamples its outputs"):
        m.make_posthoc()
    from larsvae.distributions import build_prior

    with pytest.raises(ValueError, match="N\\(0, I\\)"):
        ResampledOutputsVAE(build_prior("lars", 2, m.cfg), m.cfg)
