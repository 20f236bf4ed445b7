"""Flow priors (RealNVP, MAF) and the prior factory.

The flows are checked against the mathematics of the change of variables: densities of a
flow pushed far from the identity integrate to one, inverse(transform(u)) = u, the log-det
terms equal log|det J| from autograd, MADE is autoregressive, and samples are distributed
according to log_prob (chi-square against quadrature masses).

Training: the KL warm-up reaches a flow's parameters (their Adam learning rate is scaled by
beta, ``larsvae.train.group_lr``), training with the N(0, I) and LARS priors is the loop it
always was, bit for bit, and on dynamicMNIST a RealNVP prior no longer collapses the
posterior during the warm-up (``reports/flow_collapse.md``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from larsvae.checkpoint import CheckpointMeta
from larsvae.config import PRIORS, ConfigError, ModelConfig, TrainConfig
from larsvae.data import BatchStream, load, load_manifest, train_stream
from larsvae.distributions import (
    MAF,
    AcceptanceMLP,
    RealNVP,
    ResampledPrior,
    StandardNormal,
    build_prior,
    warmup_parameters,
)
from larsvae.distributions.flows import MADE
from larsvae.models import build_model
from larsvae.train import fit
from larsvae.utils import derive_seed

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
@pytest.mark.parametrize("name", [p for p in PRIORS if not p.startswith("vamp")])
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


# -- the KL warm-up and the flow's parameters --------------------------------------------

TINY = ModelConfig(
    latent_dim=4,
    hidden=32,
    acceptance_hidden=(16, 16),
    train_z_samples=32,
    flow_hidden=(16, 16),
    realnvp_couplings=2,
    maf_blocks=2,
)
WARM = TrainConfig(
    iterations=8,
    batch_size=16,
    lr=1e-3,
    lr_final=5e-4,
    lr_decay_step=5,
    warmup_steps=1000,  # beta <= 0.007: the regime where the flow prior collapsed
    checkpoint_every=100,
    log_every=4,
)


def _tiny_stream() -> BatchStream:
    rng = np.random.default_rng(0)
    protos = rng.random((4, 784)) < 0.3
    flips = rng.random((64, 784)) < 0.05
    data = (protos[rng.integers(0, 4, 64)] ^ flips).astype(np.uint8) * 255
    return BatchStream(data, WARM.batch_size, seed=1)


def _tiny_model(prior: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("vae", prior, TINY)


TABLE_PRIORS = ["gaussian", "lars", "realnvp", "maf", "lars_realnvp"]
#: the priors whose parameters train under the KL warm-up
WARM_PRIORS = ["realnvp", "maf", "lars_realnvp"]


@pytest.mark.parametrize("prior", TABLE_PRIORS + ["vamp", "mog", "trs", "snis", "lars_dim"])
def test_warmup_parameters_are_those_of_the_flows(prior):
    model = _tiny_model(prior)
    got = [id(p) for p in warmup_parameters(model)]
    free = {
        "realnvp": model.top_prior,
        "maf": model.top_prior,
        "lars_realnvp": getattr(model.top_prior, "proposal", None),
    }.get(prior)
    assert got == ([] if free is None else [id(p) for p in free.parameters()])


@pytest.mark.parametrize("prior", TABLE_PRIORS + ["vamp", "mog"])
def test_fit_is_adam_with_the_flow_learning_rate_times_beta(prior, tmp_path):
    """fit == a hand-written loop. For N(0, I) and LARS it is the loop of Appendix C.3 as
    it was before flows had their own group: one fused Adam over all parameters, lr ->
    lr_final, loss rec + beta kl; bit for bit, so their trainings are unchanged. For the
    flow priors the flow's parameters take steps of lr * beta."""
    stream = _tiny_stream()
    fitted = _tiny_model(prior)
    meta = CheckpointMeta("vae", prior, TINY)
    fit(fitted, stream, WARM, tmp_path / "model.pt", seed=3, meta=meta, progress=False)

    model = _tiny_model(prior)
    flow = {id(p) for p in warmup_parameters(model)}
    params = list(model.parameters())
    if flow:
        groups = [
            {"params": [p for p in params if id(p) not in flow], "warm": False},
            {"params": [p for p in params if id(p) in flow], "warm": True},
        ]
        opt = torch.optim.Adam(groups, lr=WARM.lr, fused=True)
    else:
        opt = torch.optim.Adam(params, lr=WARM.lr, fused=True)
    for t in range(WARM.iterations):
        torch.manual_seed(derive_seed(3, t))
        beta = min(1.0, t / WARM.warmup_steps)
        lr = WARM.lr if t < WARM.lr_decay_step else WARM.lr_final
        for g in opt.param_groups:
            g["lr"] = lr * beta if g.get("warm") else lr
        loss = model.loss(stream.batch(t), beta)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    for (name, a), b in zip(fitted.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{prior}: {name} differs from the reference loop"


@pytest.mark.parametrize("prior", WARM_PRIORS)
def test_the_kl_warmup_slows_the_flow(prior, tmp_path):
    """While beta is small a flow moves beta times as far as the encoder and decoder.

    Adam's steps do not depend on the scale of a gradient, so the beta in front of the KL
    alone left a flow prior training at the full learning rate from the first step (it
    moved as far as the encoder: ratio ~1): it then fitted the aggregate posterior of an
    untrained decoder and the posterior collapsed onto it.
    """
    model = _tiny_model(prior)
    flow = {id(p) for p in warmup_parameters(model)}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    meta = CheckpointMeta("vae", prior, TINY)
    fit(model, _tiny_stream(), WARM, tmp_path / "model.pt", seed=3, meta=meta, progress=False)
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()}
    in_flow = max(moved[n] for n, p in model.named_parameters() if id(p) in flow)
    elsewhere = max(moved[n] for n, p in model.named_parameters() if id(p) not in flow)
    max_beta = (WARM.iterations - 1) / WARM.warmup_steps
    assert in_flow > 0, "the flow must still train during the warm-up"
    assert in_flow < 5 * max_beta * elsewhere, (in_flow, elsewhere)


DYNAMIC_MNIST = Path(__file__).resolve().parents[1] / "data/processed/dynamic_mnist.npz"


@pytest.mark.skipif(not DYNAMIC_MNIST.exists(), reason="needs `larsvae prepare-data` output")
def test_realnvp_prior_does_not_collapse_the_posterior_on_dynamic_mnist(tmp_path):
    """The quick budget's VAE with a RealNVP prior, 300 steps of its 3000-step warm-up.

    Before the flow's learning rate followed the warm-up, the posterior means first jumped
    to a common offset (RMS ~3) while beta was ~0, the flow moved its mass there at the
    full learning rate and the KL fell to ~1 nat by step 300 (N(0, I): ~33 nats) with the
    reconstruction stuck at the z-free ~207 nats (N(0, I): ~180).
    """
    data = load(DYNAMIC_MNIST)
    data["train"] = data["train"][:12_800]
    stream = train_stream(data, load_manifest(DYNAMIC_MNIST), 128, seed=1)
    cfg = TrainConfig(
        iterations=300,
        batch_size=128,
        lr=3e-4,
        warmup_steps=3000,
        checkpoint_every=1000,
        log_every=100,
    )
    torch.manual_seed(1)
    model = build_model("vae", "realnvp", ModelConfig())
    meta = CheckpointMeta("vae", "realnvp", ModelConfig())
    fit(model, stream, cfg, tmp_path / "model.pt", seed=1, meta=meta, progress=False)
    last = (tmp_path / "curve.tsv").read_text().splitlines()
    header, row = last[0].split("\t"), last[-1].split("\t")
    r = dict(zip(header, map(float, row), strict=True))
    assert r["step"] == 300
    assert r["kl"] > 10.0, f"posterior collapsed onto the flow prior: KL {r['kl']:.2f} nats"
    assert r["rec"] < 200.0, f"decoder ignores z: reconstruction {r['rec']:.1f} nats"
