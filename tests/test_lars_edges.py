"""LARS at its edges, exactly: the boundaries of the hyper-parameters, E[proposals per
sample] when Z underflows, the proposal blocks the sampler draws (about rows missing x
E[proposals per row], Section 3's efficiency claim), and the chunked / antithetic logits of
the acceptance network against the module itself."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from larsvae.distributions import AcceptanceMLP, ResampledPrior, StandardNormal
from larsvae.distributions.lars import (
    _acceptance_logits,
    _AcceptanceLogits,
    _FusedMLPLogits,
    chunk_rows,
    default_max_block,
    lars_log_density,
)


class ConstantAcceptance(nn.Module):
    """a(z) = sigmoid(logit) for every z: Z = a exactly."""

    def __init__(self, logit: float):
        super().__init__()
        self.logit = logit

    def forward(self, z):
        return torch.full(z.shape[:1], self.logit, dtype=z.dtype)


class CountingNormal(StandardNormal):
    """N(0, I) that records how many proposals each call draws."""

    def __init__(self, dim: int):
        super().__init__(dim)
        self.sizes: list[int] = []

    def sample(self, n, generator=None):
        self.sizes.append(n)
        return super().sample(n, generator=generator)


def prior_with(logit: float, truncation, log_z: float | None) -> ResampledPrior:
    prior = ResampledPrior(CountingNormal(1), ConstantAcceptance(logit), truncation)
    if log_z is not None:
        prior.set_log_z(log_z)
    return prior


# -- hyper-parameters ----------------------------------------------------------------------


def test_defaults_are_the_papers():
    """T = 100, S = 1024 proposals per step for Z, eps = 0.1 (Appendix C.2 / Algorithm 1);
    no Z estimate and no diagnostics before the first step."""
    p = ResampledPrior(StandardNormal(2), AcceptanceMLP(2, (4,)))
    assert (p.truncation, p.num_z_samples, p.eps) == (100, 1024, 0.1)
    assert not bool(p.log_z_initialised) and p.last_log_z_s is None
    assert p.last_log_z_smooth is None


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"dim": 0}, "dim"),
        ({"dim": 2.0}, "dim"),
        ({"dim": True}, "dim"),
        ({"dim": "2"}, "dim"),
        ({"dim": 2, "hidden": (0,)}, "hidden"),
        ({"dim": 2, "hidden": (4, 2.0)}, "hidden"),
        ({"dim": 2, "hidden": (True,)}, "hidden"),
    ],
)
def test_acceptance_mlp_refuses_sizes_that_are_not_positive_integers(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}: expected (a )?positive"):
        AcceptanceMLP(**kwargs)


def test_acceptance_mlp_of_the_smallest_sizes():
    acc = AcceptanceMLP(1, (1, 1))
    assert acc.dim == 1 and [m.out_features for m in acc.net[0::2]] == [1, 1, 1]
    assert acc(torch.zeros(5, 1)).shape == (5,)


def test_hyperparameter_boundaries_are_accepted():
    for kw in ({"truncation": 1}, {"truncation": None}, {"eps": 1.0}, {"eps": 1e-12}):
        ResampledPrior(StandardNormal(2), AcceptanceMLP(2, (4,)), **kw)
    p = ResampledPrior(StandardNormal(2), AcceptanceMLP(2, (4,)), 7, eps=1, num_z_samples=1)
    assert p.eps == 1.0 and isinstance(p.eps, float) and p.num_z_samples == 1
    assert p.extra_repr() == "truncation=7, eps=1.0, num_z_samples=1"


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"eps": True}, "eps"),
        ({"eps": "0.1"}, "eps"),
        ({"eps": -0.1}, "eps"),
        ({"num_z_samples": True}, "num_z_samples"),
        ({"num_z_samples": 2.0}, "num_z_samples"),
        ({"truncation": -1}, "truncation"),
    ],
)
def test_hyperparameters_out_of_bounds_are_refused(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}: expected"):
        ResampledPrior(StandardNormal(2), AcceptanceMLP(2, (4,)), **kwargs)


def test_log_z_follows_the_device_in_float64():
    """.to(device) moves the Z estimate with the module; .half() does not round it."""
    prior = prior_with(0.0, 10, -0.125)
    prior.half()
    assert prior.log_z.dtype == torch.float64 and prior.log_z.item() == -0.125
    prior.to("meta")  # a device without storage: no accelerator needed
    assert prior.log_z.device.type == "meta" and prior.log_z.dtype == torch.float64


def test_z_of_one_and_of_zero_can_be_installed():
    p = prior_with(0.0, 10, 0.0)
    assert p.z == 1.0 and bool(p.log_z_initialised)
    p.set_log_z(-1000)  # Z underflows to 0.0: still a valid log Z
    assert p.log_z.item() == -1000.0 and p.z == 0.0


@pytest.mark.parametrize("truncation, want", [(None, math.inf), (1, 1.0), (5, 5.0)])
def test_expected_proposals_when_z_underflows(truncation, want):
    """Z = exp(-1000) = 0.0 in float64: every row runs to T (or forever for T = inf)."""
    assert prior_with(0.0, truncation, -1000.0).expected_num_proposals() == want


def test_expected_proposals_at_z_one_and_by_hand():
    assert prior_with(0.0, 10, 0.0).expected_num_proposals() == 1.0
    assert prior_with(0.0, None, 0.0).expected_num_proposals() == 1.0
    # Z = 1/2, T = 3: (1 - (1/2)^3) / (1/2) = 7/4
    assert prior_with(0.0, 3, math.log(0.5)).expected_num_proposals() == pytest.approx(1.75)
    assert prior_with(0.0, None, math.log(0.5)).expected_num_proposals() == 2.0


@pytest.mark.parametrize("truncation", [None, 10])
def test_a_python_float_log_z_is_used_in_float64(truncation):
    """All Z arithmetic is float64 (the module docstring), also for log Z given as a float:
    -0.1234567890123 has no float32 twin, so a float32 log Z would change the density."""
    log_pi = torch.zeros(3, dtype=torch.float64)
    log_a = torch.tensor([-0.1, -1.0, -3.0], dtype=torch.float64)
    log_z = -0.1234567890123
    want = lars_log_density(log_pi, log_a, torch.tensor(log_z, dtype=torch.float64), truncation)
    assert torch.equal(lars_log_density(log_pi, log_a, log_z, truncation), want)


def test_default_blocks_and_chunks_per_device():
    assert default_max_block(torch.device("cpu")) == 1 << 16
    assert default_max_block(torch.device("cuda")) == 1 << 22
    assert chunk_rows(torch.device("cpu")) == 2048
    assert chunk_rows(torch.device("cuda")) == 1 << 22


# -- the blocks of the sampler -------------------------------------------------------------


def test_every_proposal_accepted_draws_rows_plus_two_percent_and_16():
    """a = 1 (Z = 1): a row is one proposal; 1000 rows take one block of
    ceil(1000 x 1 x 1.02) + 16 = 1036 proposals."""
    prior = prior_with(50.0, None, 0.0)
    z, counts = prior.sample(1000, torch.Generator().manual_seed(0), return_num_proposals=True)
    assert prior.proposal.sizes == [1036]
    assert z.shape == (1000, 1) and bool((counts == 1).all())


def test_the_next_block_follows_the_rate_seen_so_far():
    """max_block 600: the first block gives 600 rows at 1 proposal per row, so the second
    asks for ceil(400 x 600 / 600 x 1.02) + 16 = 424."""
    prior = prior_with(50.0, None, 0.0)
    prior.sample(1000, torch.Generator().manual_seed(0), max_block=600)
    assert prior.proposal.sizes == [600, 424]


def test_rows_forced_at_truncation_take_t_proposals_each():
    """a = 0 (Z underflows): every row is cut at its T = 4th proposal; 100 rows, one block
    of ceil(100 x 4 x 1.02) + 16 = 424 proposals, no more."""
    prior = prior_with(-60.0, 4, -1000.0)
    z, counts = prior.sample(100, torch.Generator().manual_seed(0), return_num_proposals=True)
    assert prior.proposal.sizes == [424]
    assert bool((counts == 4).all()) and z.shape == (100, 1)
    ref = torch.randn(424, 1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(z, ref[3::4][:100])  # each row's 4th proposal


def test_blocks_look_further_ahead_while_no_row_has_ended():
    """No Z installed: 2 proposals per row are guessed; a = 0 and T = 1000, so no row ends
    before 1000 proposals. The guess grows to max(4 x guess, 2 x drawn) each block:
    19 = ceil(2.04) + 16, then guesses 38, 152, 608, 2432."""
    prior = prior_with(-60.0, 1000, None)
    z, counts = prior.sample(1, torch.Generator().manual_seed(0), return_num_proposals=True)
    assert prior.proposal.sizes == [19, 55, 172, 637, 2497]
    assert counts.tolist() == [1000] and z.shape == (1, 1)


def test_a_row_in_progress_carries_over_into_the_next_block():
    """T = 5, a = 0, blocks of 3: rows end at stream positions 5, 10, 15 (1-based)."""
    prior = prior_with(-60.0, 5, -1000.0)
    gen = torch.Generator().manual_seed(1)
    z, counts = prior.sample(3, gen, return_num_proposals=True, max_block=3)
    assert counts.tolist() == [5, 5, 5] and set(prior.proposal.sizes) == {3}
    assert sum(prior.proposal.sizes) == 15


def test_the_sampler_is_rejection_sampling_on_one_stream_with_float64_uniforms():
    """Z = 1/2 (a = 1/2 everywhere), T = inf, 50 rows: one block of ceil(50 x 2 x 1.02) + 16
    = 118 proposals, then 118 float64 uniforms from the same generator; row r ends at the
    r-th proposal whose uniform is below 1/2."""
    prior = prior_with(0.0, None, math.log(0.5))
    z, counts = prior.sample(50, torch.Generator().manual_seed(0), return_num_proposals=True)
    gen = torch.Generator().manual_seed(0)
    cand = torch.randn(118, 1, generator=gen)
    ends = (torch.rand(118, dtype=torch.float64, generator=gen) < 0.5).nonzero().squeeze(1)
    assert ends.numel() >= 50 and prior.proposal.sizes == [118]
    assert torch.equal(z, cand[ends[:50]])
    assert counts.tolist() == torch.diff(ends[:50], prepend=torch.tensor([-1])).tolist()


# -- Algorithm 1 when a per-example Z exceeds 1 --------------------------------------------


def one_step(truncation, log_w: float):
    """One training step of a prior with a = 1 (Z_S = 1 exactly), eps = 1 (the smoothed Z is
    the current one) and S = 4: importance weight w = exp(log_w) gives
    Z_r,curr = (4 x 1 + w x 1) / 5. Returns the RuntimeWarnings it raised."""
    prior = ResampledPrior(StandardNormal(1), ConstantAcceptance(200.0), truncation, 1.0, 4)
    z = torch.zeros(2, 1)
    log_q = prior.proposal.log_prob(z) - log_w
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prior.train_log_prob(z, log_q, generator=torch.Generator().manual_seed(0))
    return prior, [w for w in caught if issubclass(w.category, RuntimeWarning)]


def test_a_per_example_z_above_one_is_reported_for_finite_truncation():
    """w = 3: Z_r = 7/5 > 1, log Z_r = 0.34 (also below 1): Eq. A.14 is evaluated at Z = 1."""
    prior, caught = one_step(10, math.log(3.0))
    assert len(caught) == 1 and "exceed 1" in str(caught[0].message)
    assert float(prior.last_log_z_s) == 0.0  # log Z_S, a = 1
    smooth = prior.last_log_z_smooth
    assert smooth.shape == (2,) and torch.allclose(smooth, torch.full((2,), math.log(1.4)).double())


def test_no_report_for_z_of_exactly_one_or_for_infinite_truncation():
    """w = 1: Z_r = 1 exactly (log 0), a possible Z; T = inf: Eq. A.7 has no (1 - Z)^(T-1)."""
    assert one_step(10, 0.0)[1] == []
    assert one_step(None, math.log(3.0))[1] == []


# -- logits of the acceptance network ------------------------------------------------------


def reference(acc: nn.Module, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return acc(z)


@pytest.mark.parametrize("hidden", [(), (3,), (5, 4)])
def test_chunked_and_antithetic_logits_equal_the_module(hidden):
    torch.manual_seed(0)
    acc = AcceptanceMLP(3, hidden).double()
    with torch.no_grad():
        for m in acc.net:
            if isinstance(m, nn.Linear):
                m.bias.uniform_(-1.0, 1.0)
    z = torch.randn(2 * chunk_rows(torch.device("cpu")) + 5, 3, dtype=torch.float64)
    want, want_neg = reference(acc, z), reference(acc, -z)
    for ev in (_acceptance_logits(acc), _AcceptanceLogits(acc)):
        torch.testing.assert_close(ev.chunked(z), want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ev.pm(z[:7]), torch.cat([want[:7], want_neg[:7]]))
        torch.testing.assert_close(ev(z[:4]), want[:4], rtol=1e-12, atol=1e-12)
    assert isinstance(_acceptance_logits(acc), _FusedMLPLogits)


def test_fused_logits_reuse_and_grow_their_buffers():
    torch.manual_seed(0)
    acc = AcceptanceMLP(2, (6, 6)).double()
    ev = _acceptance_logits(acc)
    z = torch.randn(10, 2, dtype=torch.float64)
    a = ev(z[:3]).clone()  # small buffers first
    b = ev(z).clone()  # then grown
    c = ev(z[:3]).clone()  # a prefix of the grown ones
    torch.testing.assert_close(b, reference(acc, z), rtol=1e-12, atol=1e-12)
    assert torch.equal(a, c) and torch.equal(a, b[:3])
    d = ev.pm(z)
    torch.testing.assert_close(d, torch.cat([reference(acc, z), reference(acc, -z)]))


def test_fused_buffers_grow_with_the_rows_not_the_width():
    """Width 16 > 10 rows: a buffer of 3 rows must still be replaced for 10 (torch would
    otherwise resize the too-small out= view, with a deprecation warning)."""
    torch.manual_seed(0)
    acc = AcceptanceMLP(2, (16, 16)).double()
    ev = _acceptance_logits(acc)
    z = torch.randn(10, 2, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ev(z[:3])
        torch.testing.assert_close(ev(z), reference(acc, z), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)),
        lambda: nn.Sequential(nn.Linear(2, 4, bias=False), nn.Tanh(), nn.Linear(4, 1)),
        lambda: nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2)),
        lambda: nn.Sequential(nn.Linear(2, 1), nn.Tanh()),
    ],
)
def test_only_tanh_mlps_with_biases_and_one_output_are_fused(make):
    """An AcceptanceMLP whose layers were replaced keeps its own forward."""
    acc = AcceptanceMLP(2, (4,))
    acc.net = make()
    assert type(_acceptance_logits(acc)) is _AcceptanceLogits
