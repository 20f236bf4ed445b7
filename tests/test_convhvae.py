"""ConvHVAE (larsvae.models.convhvae) against Appendix C.2 of Bauer & Mnih (2019):
parameter count worked out by hand, output shapes, and the wiring of every conditional checked
against an independent functional forward pass."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Bernoulli, Normal

from larsvae.config import ModelConfig
from larsvae.distributions import StandardNormal
from larsvae.models import ARCHITECTURES, build_model
from larsvae.models.convhvae import FAST_DECODE_ROWS, ConvHVAE, conv_transpose_to_one_channel

pytestmark = pytest.mark.usefixtures("single_thread")

PAPER = ModelConfig()  # d = 50, H = 300


def _paper_model(seed: int = 0) -> ConvHVAE:
    torch.manual_seed(seed)
    return ConvHVAE(StandardNormal(PAPER.latent_dim), PAPER)


def _batch(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 784, generator=g) < 0.3).float()


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- (a) parameter count, by hand from Appendix C.2 (d = 50, H = 300, 4x4 kernels) ---------

CNN = (
    (1 * 32 * 4 * 4 + 32)  # conv 28x28x1 -> 14x14x32
    + (32 * 32 * 4 * 4 + 32)  # conv 14x14x32 -> 7x7x32
    + (32 * 32 * 4 * 4 + 32)  # conv 7x7x32 -> 4x4x32
)  # = 544 + 16416 + 16416 = 33376
HEADS_512 = 2 * (512 * 50 + 50)  # "- d" on 512 features: mean and log-std = 51300
HEADS_300 = 2 * (300 * 50 + 50)  # "- d" on 300 units: mean and log-std = 30100
EXPECTED = {
    # q(z2|x) = MLP[CNN[x] - d]
    "q2_cnn": CNN,
    "q2_head": HEADS_512,
    # q(z1|x, z2) = MLP[[CNN[x], MLP[d - 4x4x32]] - 300 - d]
    "q1_cnn": CNN,
    "q1_z2": 50 * 512 + 512,  # MLP[d - 4x4x32] = 26112
    "q1_trunk": (512 + 512) * 300 + 300,  # [CNN, MLP] - 300 = 307500
    "q1_head": HEADS_300,
    # p(z1|z2) = MLP[d - 300 - 300 - d]
    "p1_trunk": (50 * 300 + 300) + (300 * 300 + 300),  # 15300 + 90300
    "p1_head": HEADS_300,
    # p(x|z1, z2) = CNN^T[[MLP[d - 300], MLP[d - 300]] - 4x4x32 - 7x7x32 - 14x14x32 - 28x28x1]
    "px_z1": 50 * 300 + 300,  # MLP[d - 300] = 15300
    "px_z2": 50 * 300 + 300,  # MLP[d - 300] = 15300
    "px_to_map": (300 + 300) * 512 + 512,  # [.,.] - 4x4x32 = 307712
    "px_cnn": (
        (32 * 32 * 4 * 4 + 32)  # transposed conv 4x4x32 -> 7x7x32
        + (32 * 32 * 4 * 4 + 32)  # transposed conv 7x7x32 -> 14x14x32
        + (32 * 1 * 4 * 4 + 1)  # transposed conv 14x14x32 -> 28x28x1 (logits)
    ),  # = 16416 + 16416 + 513 = 33345
    "top_prior": 0,  # N(0, I)
}
# q(z2|x) 84676 + q(z1|x,z2) 397088 + p(z1|z2) 135700 + p(x|z1,z2) 371657
EXPECTED_TOTAL = 989_121


def test_parameter_count_matches_appendix_c2_by_hand():
    assert sum(EXPECTED.values()) == EXPECTED_TOTAL  # the arithmetic above adds up
    model = _paper_model()
    counts = {name: _count(child) for name, child in model.named_children()}
    assert counts == EXPECTED
    assert _count(model) == EXPECTED_TOTAL


# -- (b) shapes --------------------------------------------------------------------------


def _conv_output_shapes(seq: nn.Sequential, kind: type, run) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
        for m in seq
        if isinstance(m, kind)
    ]
    run()
    for h in hooks:
        h.remove()
    return shapes


def test_shapes_cnn_maps_log_weights_samples_and_28x28_logits():
    model = _paper_model().eval()
    x = _batch(3)
    z4 = torch.randn(4, 50)
    with torch.no_grad():
        enc = _conv_output_shapes(model.q2_cnn, nn.Conv2d, lambda: model.log_weights(x, 2))
        assert enc == [(32, 14, 14), (32, 7, 7), (32, 4, 4)]
        with torch.enable_grad():  # the module path (training); no_grad: see below
            dec = _conv_output_shapes(
                model.px_cnn, nn.ConvTranspose2d, lambda: model._decode_from_top(z4, None)
            )
        assert dec == [(32, 7, 7), (32, 14, 14), (1, 28, 28)]  # exactly 28x28, no cropping
        lw = model.log_weights(x, 5)
        assert lw.shape == (3, 5) and torch.isfinite(lw).all()
        s = model.sample(4)
        assert s.shape == (4, 784) and ((s > 0) & (s < 1)).all()
        logits = model._decode_from_top(torch.randn(4, 50), None)
        assert logits.shape == (4, 784)
    assert ARCHITECTURES["convhvae"] is ConvHVAE
    built = build_model("convhvae", "lars", PAPER)
    assert isinstance(built, ConvHVAE) and built.arch == "convhvae" and built.num_layers == 2


# -- (c) wiring --------------------------------------------------------------------------


def test_heads_read_cnn_features_directly_and_cnns_run_once_per_x():
    """q(z2|x)'s heads take the 512 CNN features as they are; q(z1|x, z2) concatenates its
    own CNN features with tanh(Linear(50, 512)(z2)); both CNNs see each x once, not K times."""
    model = _paper_model().eval()
    b, k = 3, 7
    seen: dict[str, list[torch.Tensor]] = {}

    def keep(name):
        return lambda m, i, o: seen.setdefault(name, []).append(o)

    def keep_input(name):
        return lambda m, i: seen.setdefault(name, []).append(i[0])

    model.q2_cnn.register_forward_hook(keep("q2_cnn"))
    model.q2_head.mean.register_forward_pre_hook(keep_input("q2_head.mean"))
    model.q1_cnn.register_forward_hook(keep("q1_cnn"))
    model.q1_z2.register_forward_pre_hook(keep_input("q1_z2.in"))
    model.q1_z2.register_forward_hook(keep("q1_z2"))
    model.q1_trunk.register_forward_pre_hook(keep_input("q1_trunk"))
    model.px_cnn.register_forward_pre_hook(keep_input("px_cnn"))
    with torch.enable_grad():  # px_cnn as a module: the training path (no_grad: see (d))
        _, z2 = model.log_weights(_batch(b), k, return_top_latent=True)

    assert len(seen["q2_cnn"]) == len(seen["q1_cnn"]) == 1
    assert seen["q2_cnn"][0].shape == seen["q1_cnn"][0].shape == (b, 512)
    assert torch.equal(seen["q2_head.mean"][0], seen["q2_cnn"][0])  # no layer in between
    assert [type(m) for m in model.q1_z2] == [nn.Linear, nn.Tanh]
    assert (model.q1_z2[0].in_features, model.q1_z2[0].out_features) == (50, 512)
    assert torch.equal(seen["q1_z2.in"][0], z2)  # (B, K, 50)
    trunk_in = seen["q1_trunk"][0]
    assert trunk_in.shape == (b, k, 1024)
    assert torch.equal(trunk_in[..., :512], seen["q1_cnn"][0].unsqueeze(1).expand(b, k, 512))
    assert torch.equal(trunk_in[..., 512:], seen["q1_z2"][0])
    to_cnn = seen["px_cnn"][0]
    assert to_cnn.shape == (b * k, 512) and (to_cnn.abs() < 1).all()  # tanh after MLP layers


def _reference_log_weights(model: ConvHVAE, x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """log p(x, z1, z2) - log q(z1, z2 | x) written out from Appendix C.2 with functional ops
    and torch.distributions; eps drawn in the model's order (z2's (B, K, d), then z1's)."""
    params = dict(model.named_parameters())
    used: set[str] = set()

    def p(name):
        used.add(name)
        return params[name]

    def lin(h, name):
        return F.linear(h, p(f"{name}.weight"), p(f"{name}.bias"))

    def cnn(name, img):  # 28 -> 14 -> 7 -> 4, kernel 4, stride 2, ReLU
        for i, pad in ((0, 1), (2, 1), (4, 2)):
            w, bias = p(f"{name}.{i}.weight"), p(f"{name}.{i}.bias")
            img = F.relu(F.conv2d(img, w, bias, stride=2, padding=pad))
        return img.flatten(1)  # (B, 512)

    def gaussian(h, name):
        return lin(h, f"{name}.mean"), lin(h, f"{name}.log_std").exp()

    b, d = x.shape[0], model.latent_dim
    g = torch.Generator().manual_seed(seed)
    img = x.view(b, 1, 28, 28)
    # q(z2|x) = MLP[CNN[x] - d]
    m2, s2 = gaussian(cnn("q2_cnn", img).unsqueeze(1), "q2_head")  # (B, 1, d)
    z2 = m2 + s2 * torch.randn(b, k, d, generator=g, dtype=x.dtype)
    log_q2 = Normal(m2, s2).log_prob(z2).sum(-1)
    # q(z1|x, z2) = MLP[[CNN[x], MLP[d - 4x4x32]] - 300 - d]
    fx = cnn("q1_cnn", img).unsqueeze(1).expand(b, k, 512)
    h = torch.tanh(lin(torch.cat([fx, torch.tanh(lin(z2, "q1_z2.0"))], -1), "q1_trunk.0"))
    m1, s1 = gaussian(h, "q1_head")
    z1 = m1 + s1 * torch.randn(b, k, d, generator=g, dtype=x.dtype)
    log_q1 = Normal(m1, s1).log_prob(z1).sum(-1)
    # p(z1|z2) = MLP[d - 300 - 300 - d]
    h = torch.tanh(lin(torch.tanh(lin(z2, "p1_trunk.0")), "p1_trunk.2"))
    pm, ps = gaussian(h, "p1_head")
    log_p1 = Normal(pm, ps).log_prob(z1).sum(-1)
    # p(x|z1, z2) = CNN^T[[MLP[d - 300], MLP[d - 300]] - 4x4x32 - 7x7x32 - 14x14x32 - 28x28x1]
    h = torch.cat([torch.tanh(lin(z1, "px_z1.0")), torch.tanh(lin(z2, "px_z2.0"))], -1)
    h = torch.tanh(lin(h, "px_to_map.0")).reshape(b * k, 32, 4, 4)
    for i, pad, out_pad, act in ((1, 2, 1, F.relu), (3, 1, 0, F.relu), (5, 1, 0, None)):
        w, bias = p(f"px_cnn.{i}.weight"), p(f"px_cnn.{i}.bias")
        h = F.conv_transpose2d(h, w, bias, stride=2, padding=pad, output_padding=out_pad)
        h = act(h) if act else h
    assert h.shape == (b * k, 1, 28, 28)
    log_px = Bernoulli(logits=h.reshape(b, k, 784)).log_prob(x.unsqueeze(1)).sum(-1)
    log_p2 = Normal(0.0, 1.0).log_prob(z2).sum(-1)  # N(0, I) top prior
    assert used == set(params), set(params) ^ used  # no parameter left unexplained
    return log_px + log_p2 + log_p1 - log_q2 - log_q1


def test_log_weights_match_an_independent_forward_pass_of_appendix_c2():
    """Every weight and bias perturbed (Glorot init zeroes the biases, hiding their wiring)."""
    model = _paper_model().double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for prm in model.parameters():
            prm.add_(0.1 * torch.randn(prm.shape, generator=g, dtype=prm.dtype))
    x = _batch(3, seed=2).double()
    with torch.no_grad():
        got = model.log_weights(x, 4, generator=torch.Generator().manual_seed(7))
        want = _reference_log_weights(model, x, 4, seed=7)
    assert got.shape == (3, 4)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-8)


def test_glorot_init_of_convolutions_and_linears():
    """Glorot-uniform bound sqrt(6 / (fan_in + fan_out)), fan = channels x 4 x 4 for the
    (transposed) convolutions; zero biases."""
    model = _paper_model()
    layers = [
        m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))
    ]
    assert len(layers) == 22  # 3 + 2 | 3 + 1 + 1 + 2 | 2 + 2 | 1 + 1 + 1 + 3
    for m in layers:
        w = m.weight.detach()
        receptive = w[0, 0].numel()  # 1 for Linear, 16 for a 4x4 kernel
        bound = math.sqrt(6 / ((w.shape[0] + w.shape[1]) * receptive))
        assert float(w.abs().max()) <= bound and torch.equal(m.bias, torch.zeros_like(m.bias))
        if w.numel() > 10_000:  # uniform(-b, b) has std b / sqrt(3)
            assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.03)


# -- (d) the no-grad (evaluation) decoder is the training decoder, re-arranged -------------


@pytest.mark.parametrize("padding", [1, 2])
def test_one_channel_transposed_convolution_equals_torch_s(padding):
    g = torch.Generator().manual_seed(padding)
    layer = nn.ConvTranspose2d(32, 1, 4, stride=2, padding=padding).double()
    with torch.no_grad():
        layer.bias.fill_(0.3)
        m = torch.randn(5, 32, 14, 14, generator=g, dtype=torch.float64)
        want = layer(m).reshape(5, -1)
        got = conv_transpose_to_one_channel(layer, m)
    assert want.shape == got.shape == (5, (28 + 2 - 2 * padding) ** 2)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="stride-2 4x4"):
        conv_transpose_to_one_channel(nn.ConvTranspose2d(32, 2, 4, stride=2), m.float())


@pytest.mark.parametrize("arch", ["convhvae"])
def test_no_grad_log_weights_equal_the_training_path(arch):
    """IWAE runs without autograd on a re-arranged decoder (channels-last maps, the last
    transposed convolution as one product; the Bernoulli sum as h.(W^T x)): in float64 it
    agrees with the autograd path to 1e-10 nats, in float32 to float rounding."""
    torch.manual_seed(0)
    model = build_model(arch, "gaussian", PAPER).eval()
    with torch.no_grad():
        for prm in model.parameters():  # non-zero biases, so their wiring shows
            prm.add_(0.05 * torch.randn_like(prm))
    x = _batch(3, seed=4)
    k = FAST_DECODE_ROWS // 3 + 1  # 3 * k rows: the no-grad decoder's path
    calls = []
    model.px_cnn[5].register_forward_hook(lambda *a: calls.append(1))  # the module path only
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-3)):
        model.to(dtype)
        noise = torch.randn(3, 2, k, 50, dtype=dtype, generator=torch.Generator().manual_seed(9))
        with torch.enable_grad():
            want = model.log_weights(x.to(dtype), k, noise=noise).detach()
        with torch.no_grad():
            got = model.log_weights(x.to(dtype), k, noise=noise)
        assert got.dtype == dtype and got.shape == (3, k)
        torch.testing.assert_close(got, want, rtol=0, atol=tol)
    assert len(calls) == 2  # the two autograd passes; the no-grad ones took the fast path
