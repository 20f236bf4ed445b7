"""Sharded, antithetic Monte Carlo estimation of Z against closed forms; exact merging."""

from __future__ import annotations

import copy
import json
import math
import random
import statistics

import pytest
import torch
from _helpers import GaussianAcceptance, rank_one_acceptance

from larsvae.distributions import AcceptanceMLP, ResampledPrior, StandardNormal
from larsvae.zestimate import ZEstimate, estimate_prior_z, estimate_z


class LogisticAcceptance(torch.nn.Module):
    """a(z) = sigmoid(w.z + b): monotone along w, so a(z) and a(-z) are negatively correlated."""

    def __init__(self, w, b):
        super().__init__()
        self.register_buffer("w", torch.tensor(w))
        self.b = b

    def forward(self, z):
        return z @ self.w + self.b


@pytest.mark.parametrize("d, c, s", [(1, 0.9, 0.7), (3, 0.8, 1.5), (10, 0.5, 2.0)])
def test_estimate_matches_closed_form_and_stderr(d, c, s):
    acc = GaussianAcceptance(c, s)
    z_true, var_true = acc.closed_form(d)
    n = 200_000
    est = estimate_z(acc, StandardNormal(d), n, 30_000, antithetic=False, seed=1)
    assert est.n == n and est.samples == n and not est.antithetic
    assert abs(est.mean - z_true) < 4 * est.stderr
    # The reported SE estimates sd / sqrt(n); its relative error here is well below 3 %.
    assert est.stderr == pytest.approx(math.sqrt(var_true / n), rel=0.03)
    assert est.log_mean == pytest.approx(math.log(est.mean), rel=1e-15)
    assert est.sum_sq / est.n - est.mean**2 == pytest.approx(var_true, rel=0.03)


def test_stderr_pools_the_spread_within_and_between_batches():
    """Units 0, 0 in batch 0 and 1, 1 in batch 1: no spread inside either batch, all of it
    between them. Unbiased variance 1/3, so SE = sqrt(1/3 / 4), whatever the grouping."""
    from larsvae.zestimate import BatchPartial

    parts = (BatchPartial(0, 2, 2, 0.0, 0.0, 0.0), BatchPartial(1, 2, 2, 2.0, 2.0, 0.0))
    est = ZEstimate(parts, seed=0, batch_size=2, num_samples=4, antithetic=False)
    assert est.mean == 0.5 and est.stderr == pytest.approx(math.sqrt(1 / 3 / 4), rel=1e-15)
    whole = (BatchPartial(0, 4, 4, 2.0, 2.0, 1.0),)  # the same four units in one batch
    one = ZEstimate(whole, seed=0, batch_size=4, num_samples=4, antithetic=False)
    assert one.stderr == pytest.approx(est.stderr, rel=1e-15)


@pytest.mark.parametrize("antithetic", [False, True])
def test_stderr_matches_the_spread_of_many_small_batch_estimates(antithetic):
    """400 independent estimates (seeds) of 2-unit batches: the mean reported variance SE^2
    is the variance of the estimates across seeds. Within 2-unit batches alone it would be
    about half of that, so this fails if the merge loses the between-batch spread."""
    acc = GaussianAcceptance(0.8, 1.2)
    batch = 4 if antithetic else 2  # evaluations: 2 units either way
    runs = [
        estimate_z(acc, StandardNormal(3), 64, batch, antithetic=antithetic, seed=s)
        for s in range(400)
    ]
    means = torch.tensor([e.mean for e in runs], dtype=torch.float64)
    reported = statistics.fmean(e.stderr**2 for e in runs)
    # the sample variance of 400 means has a relative sd of about sqrt(2 / 399) = 7 %
    assert 0.75 < reported / float(means.var()) < 1.33, reported / float(means.var())


def test_tiny_z_is_estimated_in_float64():
    acc = GaussianAcceptance(1e-30, 1.0)
    z_true, var_true = acc.closed_form(2)
    est = estimate_z(acc, StandardNormal(2), 100_000, 25_000, antithetic=False, seed=2)
    assert abs(est.mean - z_true) < 4 * est.stderr
    assert est.stderr == pytest.approx(math.sqrt(var_true / est.n), rel=0.03)
    assert est.log_mean == pytest.approx(math.log(z_true), abs=0.02)


def test_acceptance_below_float32_range_is_not_lost():
    """Logits about -120 (a ~ 1e-52, below float32's smallest subnormal ~1e-45): a(z) must be
    computed in float64, or every a(z) underflows to 0 and so does Z."""
    const = estimate_z(
        LogisticAcceptance([0.0, 0.0], -120.0), StandardNormal(2), 1_000, 500, seed=4
    )
    # log sigmoid(-120) = -120 - log1p(e^-120) = -120 in float64
    assert const.mean > 0
    assert const.log_mean == pytest.approx(-120.0, abs=1e-12)
    # logit = -120 + z_0 / 2: Z = E[sigmoid] = exp(-120 + 1/8) (1 + O(e^-120))
    acc = LogisticAcceptance([0.5, 0.0], -120.0)
    est = estimate_z(acc, StandardNormal(2), 20_000, 5_000, antithetic=True, seed=5)
    z_true = math.exp(-120.0 + 0.125)
    assert est.stderr > 0 and abs(est.mean - z_true) < 4 * est.stderr
    assert est.log_mean == pytest.approx(math.log(z_true), abs=0.01)


def test_antithetic_pairs_lower_variance_for_monotone_acceptance():
    acc = LogisticAcceptance([2.0, -1.0, 0.5], -1.0)
    # Z for a logistic-normal: 1-D quadrature over t = w.z ~ N(0, |w|^2).
    sd = math.sqrt(4.0 + 1.0 + 0.25)
    t = torch.linspace(-12, 12, 240_001, dtype=torch.float64) * sd
    dens = torch.exp(-0.5 * (t / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
    z_true = float((torch.sigmoid(t - 1.0) * dens).sum() * (t[1] - t[0]))
    n = 200_000
    plain = estimate_z(acc, StandardNormal(3), n, 50_000, antithetic=False, seed=3)
    anti = estimate_z(acc, StandardNormal(3), n, 50_000, antithetic=True, seed=3)
    assert anti.antithetic and anti.n == n // 2 and anti.samples == n
    for est in (plain, anti):
        assert abs(est.mean - z_true) < 4 * est.stderr
    # Same number of a(z) evaluations, several times less variance.
    assert anti.stderr < 0.5 * plain.stderr


def test_symmetric_acceptance_antithetic_is_still_unbiased():
    acc = GaussianAcceptance(0.8, 1.5)  # a(z) = a(-z): pairs carry one unit of information
    z_true, var_true = acc.closed_form(3)
    est = estimate_z(acc, StandardNormal(3), 200_000, 40_000, antithetic=True, seed=4)
    assert abs(est.mean - z_true) < 4 * est.stderr
    assert est.stderr == pytest.approx(math.sqrt(var_true / est.n), rel=0.03)


@pytest.mark.parametrize("antithetic", [False, True])
def test_sharded_merge_is_bitwise_identical(antithetic):
    torch.manual_seed(0)
    acc = AcceptanceMLP(4, hidden=(32,))
    prop = StandardNormal(4)
    kw = dict(antithetic=antithetic, seed=7)
    n, bs = 123_456, 10_000  # 13 batches, the last one partial
    full = estimate_z(acc, prop, n, bs, **kw)
    assert full.complete and full.samples == n and len(full.partials) == 13
    for shards in (2, 3, 5, 13, 20):
        parts = [
            estimate_z(acc, prop, n, bs, shard=i, num_shards=shards, **kw) for i in range(shards)
        ]
        assert sum(len(p.partials) for p in parts) == 13
        assert not any(p.complete for p in parts if len(p.partials) < 13)
        random.Random(shards).shuffle(parts)
        merged = ZEstimate.merge(parts)
        assert merged == full
        for key in ("n", "samples", "sum", "sum_sq", "mean", "stderr", "log_mean"):
            assert getattr(merged, key) == getattr(full, key), key
    # Merging in stages gives the same bits as well.
    parts = [estimate_z(acc, prop, n, bs, shard=i, num_shards=4, **kw) for i in range(4)]
    staged = ZEstimate.merge([ZEstimate.merge(parts[:3]), parts[3]])
    assert staged.mean.hex() == full.mean.hex() and staged.stderr.hex() == full.stderr.hex()


def test_batches_depend_only_on_seed_and_index():
    acc = AcceptanceMLP(2, hidden=(8,))
    prop = StandardNormal(2)
    a = estimate_z(acc, prop, 40_000, 10_000, seed=1)
    b = estimate_z(acc, prop, 40_000, 10_000, seed=1, shard=1, num_shards=2)
    assert a.partials[2:] == b.partials
    # A fresh AcceptanceMLP is odd (zero biases), so every antithetic pair averages to 1/2
    # whatever the seed: compare plain Monte Carlo sums.
    c = estimate_z(acc, prop, 40_000, 10_000, seed=2, antithetic=False)
    d = estimate_z(acc, prop, 40_000, 10_000, seed=1, antithetic=False)
    assert c.sum != d.sum


def test_json_round_trip_is_exact(tmp_path):
    acc = AcceptanceMLP(3, hidden=(8,))
    est = estimate_z(
        acc, StandardNormal(3), 30_001, 7_000, antithetic=False, seed=5, shard=1, num_shards=2
    )
    path = tmp_path / "z.json"
    path.write_text(json.dumps(est.to_dict()))
    back = ZEstimate.from_dict(json.loads(path.read_text()))
    assert back == est
    assert back.mean.hex() == est.mean.hex() and back.stderr.hex() == est.stderr.hex()
    with pytest.raises(ValueError, match="format"):
        ZEstimate.from_dict({"mean": 0.5})


def test_merge_rejects_mismatched_or_duplicated_shards():
    acc = AcceptanceMLP(2, hidden=(8,))
    prop = StandardNormal(2)
    s0 = estimate_z(acc, prop, 20_000, 5_000, seed=1, shard=0, num_shards=2)
    other = estimate_z(acc, prop, 20_000, 5_000, seed=2, shard=1, num_shards=2)
    with pytest.raises(ValueError, match="different runs"):
        ZEstimate.merge([s0, other])
    with pytest.raises(ValueError, match="duplicate"):
        ZEstimate.merge([s0, s0])


class ShiftedNormal(StandardNormal):
    symmetric = False

    def sample(self, n, generator=None):
        return super().sample(n, generator) + 1.0


def test_antithetic_falls_back_for_asymmetric_proposal():
    acc = AcceptanceMLP(2, hidden=(8,))
    with pytest.warns(UserWarning, match="symmetric"):
        est = estimate_z(acc, ShiftedNormal(2), 10_000, 5_000, antithetic=True)
    assert not est.antithetic and est.n == 10_000
    assert est == estimate_z(acc, ShiftedNormal(2), 10_000, 5_000, antithetic=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_samples": 0}, "num_samples"),
        ({"batch_size": 999}, "even"),
        ({"shard": 2, "num_shards": 2}, "shard"),
        ({"num_shards": 0}, "num_shards"),
    ],
)
def test_argument_validation(kwargs, match):
    args = {"num_samples": 10_000, "batch_size": 1_000, **kwargs}
    with pytest.raises(ValueError, match=match):
        estimate_z(AcceptanceMLP(2), StandardNormal(2), **args)


def test_estimate_prior_z_and_install():
    torch.manual_seed(0)
    prior = ResampledPrior(StandardNormal(2), AcceptanceMLP(2, hidden=(8,)), truncation=None)
    est = estimate_prior_z(prior, 20_000, 4_000, seed=3, progress=True)
    assert est == estimate_z(prior.acceptance, prior.proposal, 20_000, 4_000, seed=3)
    prior.set_log_z(est.log_mean)
    assert prior.z == pytest.approx(est.mean, rel=1e-15)


def rank_one_mlp(dim: int, seed: int = 0) -> tuple[AcceptanceMLP, torch.Tensor]:
    """A float32 AcceptanceMLP[dim-100-100-1] that depends on z through t = v.z only (|v| = 1),
    so that E[f(a(z))] under N(0, I) is a 1-D quadrature over t ~ N(0, 1)."""
    return rank_one_acceptance(dim, (100, 100), seed, uniform_biases=True)


def quadrature(acc: AcceptanceMLP, v: torch.Tensor) -> tuple[float, float, float]:
    """Z, Var[a(z)] and Var[(a(z) + a(-z)) / 2] under N(0, I), in float64."""
    h = 1e-3
    t = torch.arange(-10.0, 10.0 + h / 2, h, dtype=torch.float64)
    w = torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi) * h
    ref = copy.deepcopy(acc).double()
    with torch.no_grad():
        a = torch.sigmoid(ref(t[:, None] * v.double()))
    pair = 0.5 * (a + a.flip(0))  # a(-t) on the symmetric grid
    z = float((w * a).sum())
    return z, float((w * a * a).sum()) - z * z, float((w * pair * pair).sum()) - z * z


@pytest.mark.parametrize("antithetic", [False, True])
def test_fused_float32_mlp_matches_quadrature(antithetic):
    """The fast path (fused float32 AcceptanceMLP, d = 50): mean within 4 SE of the
    quadrature Z, and the reported SE is the unit's true sd / sqrt(n)."""
    acc, v = rank_one_mlp(50)
    z_true, var_plain, var_pair = quadrature(acc, v)
    est = estimate_z(acc, StandardNormal(50), 400_000, 100_000, antithetic=antithetic, seed=3)
    assert abs(est.mean - z_true) < 4 * est.stderr
    var = var_pair if antithetic else var_plain
    assert est.stderr == pytest.approx(math.sqrt(var / est.n), rel=0.03)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("antithetic", [False, True])
def test_cuda_estimate_matches_quadrature_and_merges(antithetic):
    """On the GPU: the same statistics as on the CPU (not the same bits), exact merging."""
    acc, v = rank_one_mlp(50)
    z_true, _, _ = quadrature(acc, v)
    kw = dict(antithetic=antithetic, seed=5, device="cuda")
    est = estimate_z(acc, StandardNormal(50), 2_000_000, 300_000, **kw)
    assert acc.net[0].weight.device.type == "cuda"
    assert abs(est.mean - z_true) < 4 * est.stderr
    parts = [
        estimate_z(acc, StandardNormal(50), 2_000_000, 300_000, shard=i, num_shards=3, **kw)
        for i in range(3)
    ]
    assert ZEstimate.merge(parts) == est
    gauss = GaussianAcceptance(1e-30, 1.0)  # generic module, a ~ 1e-30
    z_g, _ = gauss.closed_form(2)
    est = estimate_z(gauss, StandardNormal(2), 200_000, 50_000, **kw)
    assert abs(est.mean - z_g) < 4 * est.stderr
