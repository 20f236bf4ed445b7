"""bench/breakdown.py's training-step profile: its groups put each op where the report says,
and the convolutions it times alone are the step's own, with the step's FLOPs (so "alone"
is the same work as "in the step")."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
from torch.utils.flop_counter import FlopCounterMode

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import bench_arch  # noqa: E402
import breakdown  # noqa: E402

from larsvae.config import ModelConfig, TrainConfig  # noqa: E402

SMALL = ModelConfig(latent_dim=8, hidden=32, acceptance_hidden=(16, 16), train_z_samples=64)


@pytest.mark.parametrize(
    ("op", "group"),
    [
        ("aten::mm", "products: matmuls"),
        ("aten::addmm", "products: matmuls"),
        ("aten::convolution_backward", "products: convolutions"),
        ("aten::mkldnn_convolution", "products: convolutions"),
        ("aten::_fused_adam_", "Adam (fused kernel, its Python, zero_grad)"),
        ("Optimizer.step#Adam.step", "Adam (fused kernel, its Python, zero_grad)"),
        ("aten::random_", "random numbers (binarisation, noise, proposals)"),
        ("aten::normal_", "random numbers (binarisation, noise, proposals)"),
        ("aten::copy_", "copies, cat, allocation"),
        ("aten::cat", "copies, cat, allocation"),
        ("aten::tanh_backward", breakdown.ELEMENTWISE),
        ("aten::softplus", breakdown.ELEMENTWISE),
        ("aten::threshold_backward", breakdown.ELEMENTWISE),
        ("aten::view", breakdown.AUTOGRAD),
        ("aten::t", breakdown.AUTOGRAD),
        ("AddmmBackward0", breakdown.AUTOGRAD),
        ("_SigmoidTanh", breakdown.AUTOGRAD),
        ("aten::linear", breakdown.AUTOGRAD),
        ("aten::conv_transpose2d", breakdown.AUTOGRAD),
        ("aten::randn", "random numbers (binarisation, noise, proposals)"),
        ("aten::empty_like", "copies, cat, allocation"),
    ],
)
def test_step_group_of_an_op(op, group):
    assert breakdown._step_group(op) == group
    assert group in breakdown.GROUPS


def test_convolutions_alone_are_the_steps_own():
    """Every convolution call of a ConvHVAE trainer step is captured (two encoders of three
    layers, the decoder's three), and their forward-and-backward FLOPs alone add up to the
    step's counted convolution FLOPs: the input gradient is taken exactly where the step
    takes it (not into the image)."""
    b = 4
    cfg = TrainConfig(batch_size=b, warmup_steps=10)
    model = bench_arch.make_model("convhvae", "gaussian", SMALL)
    step = bench_arch.trainer_step(model, bench_arch.grey_stream(b, "cpu", images=64), cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        step(0)
        calls = breakdown._conv_calls(model, step, 1)
        with FlopCounterMode(display=False) as counter:
            step(2)
    names = [name for name, _, _ in calls]
    assert names == [f"{enc}.{i}" for enc in ("q2_cnn", "q1_cnn") for i in (0, 2, 4)] + [
        f"px_cnn.{i}" for i in (1, 3, 5)
    ]
    assert [x.requires_grad for _, _, x in calls] == [False, True, True] * 2 + [True] * 3
    counts = counter.get_flop_counts()["Global"]
    in_step = sum(v for op, v in counts.items() if "convolution" in str(op))
    alone = sum(breakdown._conv_us(m, x)[1] for _, m, x in calls)
    assert alone == in_step > 0
