"""ConvHVAE of Bauer & Mnih (AISTATS 2019), Appendix C.2: the L=2 hierarchical VAE with a
CNN on x in both encoders and a transposed CNN in the decoder.

Notation as in :mod:`larsvae.models.vae`: MLP[a-b] is a tanh layer, MLP[[f, g]-h] concatenates
f and g and continues with a tanh layer of width h, a final "- d" is a diagonal-Gaussian head
(mean and log-std, no non-linearity). H = ``cfg.hidden`` (300), d = ``cfg.latent_dim`` (50),
CNN[x] is the CNN 28x28x1 -> 14x14x32 -> 7x7x32 -> 4x4x32 flattened to 4*4*32 = 512 features.
Module by module, with the line of Appendix C.2 each one implements:

    q(z2|x)      = MLP[CNN[x] - d]
        q2_cnn     CNN[x]                                    (B, 1, 28, 28) -> (B, 512)
        q2_head    "- d": Linear(512, d) twice, straight on the CNN features (no hidden layer)
    q(z1|x, z2)  = MLP[[CNN[x], MLP[d - 4x4x32]] - H - d]
        q1_cnn     CNN[x], a second CNN with its own weights  (B, 1, 28, 28) -> (B, 512)
        q1_z2      MLP[d - 4x4x32]: Linear(d, 512) + tanh     (B, K, d) -> (B, K, 512)
        q1_trunk   "- H": Linear(512 + 512, H) + tanh         (B, K, 1024) -> (B, K, H)
        q1_head    "- d": Linear(H, d) twice
    p(z1|z2)     = MLP[d - H - H - d]                         (as for the HVAE)
        p1_trunk   Linear(d, H) + tanh, Linear(H, H) + tanh
        p1_head    "- d": Linear(H, d) twice
    p(x|z1, z2)  = CNN^T[[MLP[d - H], MLP[d - H]] - 4x4x32 - 7x7x32 - 14x14x32 - 28x28x1]
        px_z1      MLP[d - H]: Linear(d, H) + tanh
        px_z2      MLP[d - H]: Linear(d, H) + tanh
        px_to_map  "- 4x4x32": Linear(2H, 512) + tanh (tanh after every MLP layer), the input
                   of the transposed CNN; there is no further hidden layer in between
        px_cnn     transposed CNN 4x4x32 -> 7x7x32 -> 14x14x32 -> 28x28x1: Bernoulli logits
    p(z2)        = the pluggable top prior (``larsvae.distributions``)

Convolutions (:func:`conv_encoder`) have 32 channels, 4x4 kernels, stride 2 and a ReLU after
each, with paddings 1, 1, 2: out = floor((in + 2p - 4) / 2) + 1 gives 28 -> 14 -> 7 -> 4. The
transposed CNN (:func:`conv_decoder`) mirrors it, out = (in - 1) * 2 - 2p + 4 + output_padding:
4 -> 7 needs p=2 and output_padding=1 (6 - 4 + 4 + 1; without it the layer would give 6, and
7 -> 4 and 8 -> 4 are both valid forward steps, so the output size must be pinned), then
7 -> 14 and 14 -> 28 with p=1, so the logits land exactly on 28x28 with no cropping. ReLU
follows every transposed convolution but the last. The map sizes and the MLP wiring above are
Appendix C.2's; the kernel size, stride, paddings and ReLUs could not be checked against the
paper's text when this was written (not reachable here) and are this implementation's choice.

The CNN features of x are computed once per example and broadcast over the K importance
samples; only the z-dependent layers run B*K times. Glorot-uniform weights, zero biases
(``glorot_init`` via ``_finish_init``), as for the MLP models.

References: Bauer & Mnih (2019) Eq. 1 (ELBO) and Appendix C.2 (architectures); Burda et al.
(2016) (importance weights).
"""

from __future__ import annotations

import torch
from torch import nn

from larsvae.config import ModelConfig
from larsvae.models.vae import (
    DATA_DIM,
    IMAGE_SIDE,
    GaussianHead,
    LatentVariableModel,
    _reparameterise,
    _Terms,
    mlp,
)
from larsvae.objectives import bernoulli_log_prob, gaussian_log_prob

CONV_CHANNELS = 32
_CONV_SIDE = 4  # side of the feature map at the bottom of the CNN
_CONV_FLAT = CONV_CHANNELS * _CONV_SIDE * _CONV_SIDE  # 4x4x32 = 512
#: Rows (point, sample) from which the decoder takes :func:`conv_decoder_no_grad` on the CPU
#: without autograd (IWAE's tiles of ~1,000 samples); fewer (sampling a handful, the memory
#: estimator's one-image pass through the modules) take the modules themselves.
FAST_DECODE_ROWS = 64


def conv_encoder() -> nn.Sequential:
    """CNN[x]: 28x28x1 -> 14x14x32 -> 7x7x32 -> 4x4x32 (kernel 4, stride 2, ReLU), flattened.

    (B, 1, 28, 28) -> (B, 512). Paddings 1, 1, 2 (see the module docstring).
    """
    return nn.Sequential(
        nn.Conv2d(1, CONV_CHANNELS, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(CONV_CHANNELS, CONV_CHANNELS, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(CONV_CHANNELS, CONV_CHANNELS, 4, stride=2, padding=2),
        nn.ReLU(),
        nn.Flatten(),
    )


def conv_decoder() -> nn.Sequential:
    """CNN^T: 4x4x32 -> 7x7x32 -> 14x14x32 -> 28x28x1 (kernel 4, stride 2): Bernoulli logits.

    (N, 512) -> (N, 784). The mirror of :func:`conv_encoder`; ReLU after every transposed
    convolution except the last (see the module docstring for the output sizes).
    """
    return nn.Sequential(
        nn.Unflatten(-1, (CONV_CHANNELS, _CONV_SIDE, _CONV_SIDE)),
        nn.ConvTranspose2d(CONV_CHANNELS, CONV_CHANNELS, 4, stride=2, padding=2, output_padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(CONV_CHANNELS, CONV_CHANNELS, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(CONV_CHANNELS, 1, 4, stride=2, padding=1),
        nn.Flatten(),
    )


def conv_decoder_no_grad(cnn: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
    """:func:`conv_decoder`'s map (N, 512) -> (N, 784) on the CPU without autograd, arranged
    for speed: the same weights and sums, up to float rounding (another summation order).

    The 32-channel transposed convolutions run on channels-last maps (oneDNN's fast kernels;
    the default layout takes a generic path 2-3x slower), and the last one, 32 -> 1 channel,
    is :func:`conv_transpose_to_one_channel`.
    """
    _, up1, _, up2, _, up3, _ = cnn  # Unflatten, (ConvTranspose2d, ReLU) x 2, ..., Flatten
    m = h.reshape(-1, CONV_CHANNELS, _CONV_SIDE, _CONV_SIDE)
    m = up1(m.contiguous(memory_format=torch.channels_last)).relu_()
    m = up2(m).relu_()
    return conv_transpose_to_one_channel(up3, m)


def conv_transpose_to_one_channel(layer: nn.ConvTranspose2d, m: torch.Tensor) -> torch.Tensor:
    """A stride-2, 4x4 transposed convolution to one channel as one product and 16 adds.

    m (N, C, S, S) -> (N, O^2), O = 2S + 2 - 2p (28 for S = 14, p = 1). Input pixel (i, j) adds W[:, :, t, u] . m[:, :, i, j] to
    output pixel (2i - p + t, 2j - p + u): the product gives all 16 taps of every pixel,
    (16, N*S*S), and each tap is added onto its stride-2 phase of the output, whose rows and
    columns are split as (block, parity) so that every add is a plain slice.
    """
    n, c, s, _ = m.shape
    k, p = layer.kernel_size[0], layer.padding[0]
    if (layer.out_channels, layer.stride, layer.kernel_size, layer.output_padding) != (
        1,
        (2, 2),
        (4, 4),
        (0, 0),
    ):
        raise ValueError(f"expected a stride-2 4x4 transposed convolution to 1 channel: {layer}")
    rows = m.permute(0, 2, 3, 1).reshape(-1, c)  # (N*S*S, C): a view of channels-last maps
    taps = torch.mm(layer.weight.reshape(c, k * k).t(), rows.t()).view(k, k, n, s, s)
    side = s + 1  # output rows 2i + t for t < 4 are blocks i .. i+1 of 2 rows
    out = m.new_zeros(n, side, 2, side, 2)  # (N, block row, parity, block col, parity)
    for t in range(k):
        for u in range(k):
            out[:, t // 2 : t // 2 + s, t % 2, u // 2 : u // 2 + s, u % 2] += taps[t, u]
    o = 2 * s + 2 - 2 * p
    out = out.view(n, 2 * side, 2 * side)[:, p : p + o, p : p + o] + layer.bias
    return out.reshape(n, -1)


class ConvHVAE(LatentVariableModel):
    """L=2 hierarchical VAE with convolutional encoders and decoder (Appendix C.2).

    q(z2|x) = MLP[CNN[x] - d]; q(z1|x, z2) = MLP[[CNN[x], MLP[d - 4x4x32]] - H - d];
    p(z1|z2) = MLP[d - H - H - d]; p(x|z1, z2) = CNN^T[[MLP[d - H], MLP[d - H]] - 4x4x32];
    p(z2) pluggable. See the module docstring for each submodule and its shapes.
    """

    arch = "convhvae"
    num_layers = 2

    def __init__(self, prior: nn.Module, cfg: ModelConfig):
        super().__init__(prior, cfg)
        h, d = cfg.hidden, cfg.latent_dim
        # q(z2 | x) = MLP[CNN[x] - d]
        self.q2_cnn = conv_encoder()
        self.q2_head = GaussianHead(_CONV_FLAT, d)
        # q(z1 | x, z2) = MLP[[CNN[x], MLP[d - 4x4x32]] - H - d]
        self.q1_cnn = conv_encoder()
        self.q1_z2 = mlp([d, _CONV_FLAT])
        self.q1_trunk = mlp([2 * _CONV_FLAT, h])
        self.q1_head = GaussianHead(h, d)
        # p(z1 | z2) = MLP[d - H - H - d]
        self.p1_trunk = mlp([d, h, h])
        self.p1_head = GaussianHead(h, d)
        # p(x | z1, z2) = CNN^T[[MLP[d - H], MLP[d - H]] - 4x4x32 - ... - 28x28x1]
        self.px_z1 = mlp([d, h])
        self.px_z2 = mlp([d, h])
        self.px_to_map = mlp([2 * h, _CONV_FLAT])
        self.px_cnn = conv_decoder()
        self._finish_init(prior)

    def _decode(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits (..., 784) of p(x | z1, z2); z1, z2: (..., d)."""
        h = self.px_to_map(torch.cat([self.px_z1(z1), self.px_z2(z2)], dim=-1))  # (..., 512)
        lead = h.shape[:-1]
        h = h.reshape(-1, _CONV_FLAT)
        if torch.is_grad_enabled() or h.device.type != "cpu" or h.shape[0] < FAST_DECODE_ROWS:
            return self.px_cnn(h).reshape(*lead, DATA_DIM)
        return conv_decoder_no_grad(self.px_cnn, h).reshape(*lead, DATA_DIM)

    def _terms(self, x, k, generator):
        b = x.shape[0]
        img = x.reshape(b, 1, IMAGE_SIDE, IMAGE_SIDE)
        mean2, log_std2 = self.q2_head(self.q2_cnn(img))  # (B, d): CNN once per x
        mean2 = mean2.unsqueeze(1).expand(-1, k, -1)
        log_std2 = log_std2.unsqueeze(1).expand(-1, k, -1)
        z2, log_q2 = _reparameterise(mean2, log_std2, generator)  # (B, K, d), (B, K)

        fx = self.q1_cnn(img).unsqueeze(1).expand(-1, k, -1)  # (B, K, 512): CNN once per x
        mean1, log_std1 = self.q1_head(self.q1_trunk(torch.cat([fx, self.q1_z2(z2)], dim=-1)))
        z1, log_q1 = _reparameterise(mean1, log_std1, generator)  # (B, K, d), (B, K)

        pm, pls = self.p1_head(self.p1_trunk(z2))
        log_p1 = gaussian_log_prob(z1, pm, pls)  # (B, K)
        log_px = bernoulli_log_prob(x.unsqueeze(1), self._decode(z1, z2))  # (B, K)
        return _Terms(log_px, z2, log_q2, log_q1, log_p1)

    def _decode_from_top(self, z_top, generator):
        pm, pls = self.p1_head(self.p1_trunk(z_top))  # (n, d)
        z1, _ = _reparameterise(pm, pls, generator)
        return self._decode(z1, z_top)  # (n, 784)


__all__ = [
    "CONV_CHANNELS",
    "ConvHVAE",
    "FAST_DECODE_ROWS",
    "conv_decoder",
    "conv_decoder_no_grad",
    "conv_encoder",
    "conv_transpose_to_one_channel",
]
