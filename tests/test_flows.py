"""Flow priors (RealNVP, MAF) and the prior factory.

The flows are checked against the mathematics of the change of variables: densities of a
flow pushed far from the identity integrate to one, inverse(transform(u)) = u, the log-det
terms equal log|det J| from autograd, MADE is autoregressive, and samples are distributed
according to log_prob (chi-square against quadrature masses).
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from larsvae.config import PRIORS, ConfigError, ModelConfig
from larsvae.distributions import (
    MAF,
    AcceptanceMLP,
    RealNVP,
    ResampledPrior,
    StandardNormal,
    build_prior,
)
from larsvae.distributions.flows import MADE

FLOWS = [RealNVP, MAF]


def _perturbed(flow: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Add N(0, scale^2) noise to every parameter: a flow far from its near-identity init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return flow


def _make(cls, dim: int, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return _perturbed(cls(dim), scale=scale, seed=seed + 1).double()


def _grid(half_width: float, n: int) -> tuple[torch.Tensor, float]:
    g = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    x, y = torch.meshgrid(g, g, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], -1), float(g[1] - g[0])


@pytest.mark.parametrize("cls", FLOWS)
def test_density_integrates_to_one_in_2d(cls):
    flow = _make(cls, 2)
    pts, h = _grid(8.0, 161)
    with torch.no_grad():
        lp = flow.log_prob(pts)
        # the perturbed flow is far from N(0, I) ...
        ref = StandardNormal(2).double().log_prob(pts)
        gap = ((lp.exp() - ref.exp()).abs().sum() * h * h).item()  # L1 distance
        assert gap > 0.3, f"perturbed flow too close to N(0, I): L1 = {gap}"
        mass_in_box = (lp.exp().sum() * h * h).item()
        # ... and mass escaping the box is measured by sampling, not assumed to be zero
        z = flow.sample(20_000, generator=torch.Generator().manual_seed(3))
    outside = (z.abs() > 8.0).any(-1).double().mean().item()
    assert mass_in_box + outside == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("cls", FLOWS)
def test_samples_follow_log_prob_chi_square(cls):
    """Sample counts in 12x12 cells vs masses of exp(log_prob) by quadrature."""
    flow = _make(cls, 2, seed=4)
    edges = torch.linspace(-4.0, 4.0, 13, dtype=torch.float64)
    sub = 10  # quadrature points per cell side (midpoint rule)
    fine = torch.linspace(-4.0, 4.0, 12 * sub + 1, dtype=torch.float64)
    mid = 0.5 * (fine[1:] + fine[:-1])
    h = float(fine[1] - fine[0])
    x, y = torch.meshgrid(mid, mid, indexing="ij")
    with torch.no_grad():
        dens = flow.log_prob(torch.stack([x.reshape(-1), y.reshape(-1)], -1)).exp()
        mass = dens.view(12, sub, 12, sub).sum((1, 3)).reshape(-1) * h * h  # (144,)
        n = 20_000
        z = flow.sample(n, generator=torch.Generator().manual_seed(5))
    inside = ((z > -4) & (z < 4)).all(-1)
    ij = torch.bucketize(z[inside].contiguous(), edges) - 1
    counts = torch.bincount(ij[:, 0] * 12 + ij[:, 1], minlength=144).double()
    obs = torch.cat([counts, torch.tensor([float(n - inside.sum())], dtype=torch.float64)])
    exp = torch.cat([mass, (1.0 - mass.sum()).clamp(min=0).reshape(1)]) * n
    keep = exp > 5  # chi-square validity: pool sparse cells
    obs_k = torch.cat([obs[keep], obs[~keep].sum().reshape(1)])
    exp_k = torch.cat([exp[keep], exp[~keep].sum().reshape(1)])
    exp_k = exp_k * (obs_k.sum() / exp_k.sum())  # quadrature error ~1e-4 in total mass
    p = stats.chisquare(obs_k.numpy(), exp_k.numpy()).pvalue
    assert keep.sum() > 40
    assert p > 1e-3, f"samples disagree with log_prob (chi-square p = {p:.2e})"


@pytest.mark.parametrize("cls", FLOWS)
@pytest.mark.parametrize("dim", [1, 2, 3, 5, 50])
def test_inverse_of_transform_is_identity(cls, dim):
    flow = _make(cls, dim, seed=dim)
    u = torch.randn(64, dim, generator=torch.Generator().manual_seed(dim), dtype=torch.float64)
    with torch.no_grad():
        z, ld_fwd = flow.transform(u)
        u2, ld_inv = flow.inverse(z)
    assert z.shape == (64, dim) and ld_fwd.shape == (64,)
    assert not torch.allclose(z, u, atol=1e-2), "perturbed flow should not be the identity"
    torch.testing.assert_close(u2, u, atol=1e-8, rtol=0)
    torch.testing.assert_close(ld_inv, -ld_fwd, atol=1e-8, rtol=0)


@pytest.mark.parametrize("cls", FLOWS)
@pytest.mark.parametrize("dim", [3, 4, 5])
def test_log_det_matches_autograd_jacobian(cls, dim):
    flow = _make(cls, dim, seed=10 + dim)
    gen = torch.Generator().manual_seed(dim)
    for u in torch.randn(3, dim, generator=gen, dtype=torch.float64):
        jac = torch.autograd.functional.jacobian(lambda v: flow.transform(v[None])[0][0], u)
        _, ld = flow.transform(u[None])
        assert torch.linalg.slogdet(jac).logabsdet.item() == pytest.approx(ld.item(), abs=1e-8)
        z = flow.transform(u[None])[0][0].detach()
        jac_inv = torch.autograd.functional.jacobian(lambda v: flow.inverse(v[None])[0][0], z)
        _, ld_inv = flow.inverse(z[None])
        assert torch.linalg.slogdet(jac_inv).logabsdet.item() == pytest.approx(
            ld_inv.item(), abs=1e-8
        )


def test_made_is_autoregressive():
    """d(shift_i, log-scale_i)/dx_j = 0 for j >= i, and nonzero below the diagonal."""
    torch.manual_seed(0)
    made = _perturbed(MADE(6, (20, 20))).double()
    x = torch.randn(6, dtype=torch.float64)
    for k in range(2):
        jac = torch.autograd.functional.jacobian(lambda v, k=k: made(v[None])[k][0], x)  # (6, 6)
        assert torch.equal(torch.triu(jac), torch.zeros_like(jac))
        assert (torch.tril(jac, -1).abs() > 0).sum() == 15


@pytest.mark.parametrize("cls", FLOWS)
def test_sample_log_prob_consistent_with_base_noise(cls):
    """log_prob(sample) (one-pass density direction) = log N(u) - log|det df/du| of the
    sequential/generative direction, with the same base noise u."""
    dim = 7
    flow = _make(cls, dim, seed=2)
    with torch.no_grad():
        z = flow.sample(256, generator=torch.Generator().manual_seed(9))
        u = torch.randn(256, dim, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        z_ref, ld = flow.transform(u)
        expected = -0.5 * (u**2).sum(-1) - 0.5 * dim * math.log(2 * math.pi) - ld
    torch.testing.assert_close(z, z_ref, atol=0, rtol=0)
    torch.testing.assert_close(flow.log_prob(z).detach(), expected, atol=1e-8, rtol=0)


@pytest.mark.parametrize("cls", FLOWS)
def test_near_identity_init_but_trainable(cls):
    torch.manual_seed(0)
    flow = cls(4)
    z = torch.randn(32, 4)
    ref = StandardNormal(4).log_prob(z)
    diff = (flow.log_prob(z) - ref).abs().max().item()
    assert 0 < diff < 0.5
    # samples are reparameterised: gradients reach the conditioner parameters
    flow.sample(16).pow(2).sum().backward()
    grads = [p.grad for p in flow.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


def test_flow_interface_attributes_and_state():
    nvp, maf = RealNVP(5), MAF(5, perm_seed=3)
    assert nvp.symmetric is False and maf.symmetric is False and nvp.dim == maf.dim == 5
    z = torch.randn(8, 5)
    torch.testing.assert_close(nvp.train_log_prob(z, None), nvp.log_prob(z))
    torch.testing.assert_close(maf.train_log_prob(z, torch.zeros(8)), maf.log_prob(z))
    # permutations are buffers: part of the state, reproducible from perm_seed
    sd = maf.state_dict()
    assert all(f"perm{k}" in sd for k in range(5))
    assert torch.equal(MAF(5, perm_seed=3).perm2, maf.perm2)
    assert not all(
        torch.equal(MAF(5, perm_seed=4).get_buffer(f"perm{k}"), sd[f"perm{k}"]) for k in range(5)
    )
    assert len(nvp.couplings) == 4 and len(maf.blocks) == 5


CFG = ModelConfig(
    acceptance_hidden=(16, 16),
    truncation=50,
    eps=0.2,
    train_z_samples=64,
    flow_hidden=(32, 32),
    realnvp_couplings=3,
    maf_blocks=2,
)


# The VampPrior needs its model's encoder (build_model binds it): tests/test_priors.py
@pytest.mark.parametrize("name", [p for p in PRIORS if p != "vamp"])
@pytest.mark.parametrize("dim", [2, 50])
def test_build_prior_samples_have_finite_log_prob(name, dim):
    torch.manual_seed(0)
    prior = build_prior(name, dim, CFG)
    assert prior.dim == dim
    with torch.no_grad():
        z = prior.sample(64, generator=torch.Generator().manual_seed(1))
        lp = prior.log_prob(z)
    assert z.shape == (64, dim) and lp.shape == (64,)
    assert torch.isfinite(lp).all()
    prior.train()
    tlp = prior.train_log_prob(z, None)
    assert tlp.shape == (64,) and torch.isfinite(tlp).all()


def test_build_prior_wires_the_config():
    g = build_prior("gaussian", 3, CFG)
    assert isinstance(g, StandardNormal)
    nvp = build_prior("realnvp", 3, CFG)
    assert isinstance(nvp, RealNVP) and len(nvp.couplings) == 3
    assert nvp.couplings[0].net[0].out_features == 32
    maf = build_prior("maf", 3, CFG)
    assert isinstance(maf, MAF) and len(maf.blocks) == 2
    for name, proposal_cls in (("lars", StandardNormal), ("lars_realnvp", RealNVP)):
        lars = build_prior(name, 3, CFG)
        assert isinstance(lars, ResampledPrior) and isinstance(lars.proposal, proposal_cls)
        assert isinstance(lars.acceptance, AcceptanceMLP)
        assert (lars.truncation, lars.eps, lars.num_z_samples) == (50, 0.2, 64)
        assert lars.acceptance.net[0].out_features == 16
    assert build_prior("lars", 3).truncation == ModelConfig().truncation  # default config


def test_build_prior_rejects_unknown_name():
    with pytest.raises(ConfigError, match=r"'vampire'.*gaussian, lars, realnvp, maf, lars_realnvp"):
        build_prior("vampire", 2, CFG)
