"""Where the CPU time of the training step and IWAE goes, as Markdown.

    python bench/breakdown.py [--out reports/profile_cpu.md]

- Z: one chunk of ``estimate_z`` (2048 proposal evaluations: 1024 antithetic pairs, the
  paper's a = MLP[50-100-100-1]) split into its operations, each timed on its own with
  the chunk's real operands, against the chunk as ``estimate_z`` runs it and the FLOP limit.
- Training step (VAE L = 1, batch 128, Adam): the step as ``fit`` runs it; the same step at
  tiny widths (H = 4, d = 2, batch 2: what remains is per-operation overhead, the same
  number of operations); and every matmul of the step timed by ``torch.profiler`` in the
  step against the same product timed alone (warm caches); the largest weight-gradient
  product alone with a transposed operand and after the caches were emptied.
- IWAE (K = 1000, N(0, I), each architecture, the quick budget's iwae_batch 100 and
  k_chunk 1000): ``iwae_log_likelihood`` profiled by ``torch.profiler``, its self time
  grouped into products (matmuls, convolutions: what the FLOP limit counts), the Bernoulli
  log-likelihood's softplus over K x 784 logits, other elementwise operations and copies;
  the products' own rate against the 2048^3 rate; and softplus against one ``exp`` pass
  over the same logits (its cost is transcendental functions, which no FLOP count sees).

One thread, medians. A measurement for reading, not a benchmark row: ratios against
baselines live in ``bench/run.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
import warnings
from pathlib import Path

import bench_arch
import bench_train
import torch
import torch.nn.functional as F
from common import cpu_model, flop_rate, mlp_flops
from torch.profiler import ProfilerActivity, profile

from larsvae import train
from larsvae.config import ModelConfig, TrainConfig
from larsvae.distributions import AcceptanceMLP, StandardNormal
from larsvae.distributions.lars import _acceptance_logits
from larsvae.evaluation import iwae_log_likelihood

REPO = Path(__file__).resolve().parent.parent


def _us(fn, n: int = 300, repeat: int = 7) -> float:
    """Median over ``repeat`` rounds of the mean microseconds of ``n`` calls."""
    for _ in range(5):
        fn()
    rounds = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(rounds)


def z_chunk(rate: float) -> list[str]:
    torch.manual_seed(0)
    logits = _acceptance_logits(AcceptanceMLP(50, (100, 100)))
    proposal = StandardNormal(50)
    gen = torch.Generator().manual_seed(1)
    k = 1024
    z = proposal.sample(k, generator=gen)
    (w1, b1), (w2, b2) = logits.hidden
    wz, h1 = torch.empty(k, 100), torch.empty(2 * k, 100)
    torch.mm(z, w1, out=wz)
    torch.add(b1, wz, out=h1[:k])
    torch.sub(b1, wz, out=h1[k:])
    h1.sigmoid_()
    h2 = torch.addmm(b2, h1, w2).sigmoid_()
    lg = torch.addmv(logits.b_out, h2, logits.w_out)
    x = torch.empty(k, dtype=torch.float64)
    scratch = h1.clone()

    def chunk():
        a = logits.pm(proposal.sample(k, generator=gen)).double().sigmoid_()
        torch.add(a[:k], a[k:], out=x)

    parts = [
        ("randn (1024, 50): the proposals", lambda: proposal.sample(k, generator=gen)),
        ("first layer z W1 (1024 rows; -z reuses it)", lambda: torch.mm(z, w1, out=wz)),
        (
            "b1 + Wz, b1 - Wz",
            lambda: (torch.add(b1, wz, out=h1[:k]), torch.sub(b1, wz, out=h1[k:])),
        ),
        ("copy + sigmoid, first layer (2048, 100)", lambda: scratch.copy_(h1).sigmoid_()),
        (
            "copy (2048, 100) alone (subtract from the two copy + sigmoid rows)",
            lambda: scratch.copy_(h1),
        ),
        ("second layer h1 W2 + b2 (2048 rows)", lambda: torch.addmm(b2, h1, w2, out=scratch)),
        ("copy + sigmoid, second layer (2048, 100)", lambda: scratch.copy_(h2).sigmoid_()),
        ("output layer h2 w3 + b3", lambda: torch.addmv(logits.b_out, h2, logits.w_out)),
        (
            "float64 sigmoid and pair sums",
            lambda: torch.add(*lg.double().sigmoid_().split(k), out=x),
        ),
    ]
    total = _us(chunk)
    limit = 2 * k * mlp_flops(50, (100, 100)) / rate * 1e6
    lines = [
        "## Z: one chunk of estimate_z (2048 proposal evaluations)",
        "",
        f"The chunk as `estimate_z` runs it: **{total:.0f} us** ({2 * k / total:.2f} M samples/s); "
        f"FLOP limit (plain forward of z and -z, {rate / 1e9:.1f} GFLOP/s): {limit:.0f} us "
        f"({100 * limit / total:.0f}% of it reached).",
        "",
        "| operation | us | % of the chunk |",
        "|---|---:|---:|",
    ]
    for name, fn in parts:
        us = _us(fn)
        lines.append(f"| {name} | {us:.0f} | {100 * us / total:.0f}% |")
    return lines + [""]


def _vae_step(prior: str, cfg: ModelConfig, batch: int, images: int):
    model, stream = bench_train._setup(prior, "cpu", cfg, batch, images)
    tc = TrainConfig(batch_size=batch, warmup_steps=1000)
    opt = train.make_optimizer(list(model.parameters()), tc.lr)
    return train._make_step(model, opt, stream, tc, 3, print)


def _step_ms(step, n: int) -> float:
    for t in range(20):
        step(t)
    rounds = []
    for r in range(5):
        t0 = time.perf_counter()
        for t in range(n):
            step(100 + r * n + t)
        rounds.append((time.perf_counter() - t0) / n * 1e3)
    return statistics.median(rounds)


def training(rate: float) -> list[str]:
    tiny = ModelConfig(hidden=4, latent_dim=2, acceptance_hidden=(4, 4), train_z_samples=4)
    lines = [
        "## Training step (VAE L = 1, batch 128, Adam)",
        "",
        "| prior | step (ms) | FLOP limit (ms) | same step at H = 4, d = 2, batch 2 (ms) |",
        "|---|---:|---:|---:|",
    ]
    steps = {}
    for prior in ("gaussian", "lars"):
        steps[prior] = _vae_step(prior, ModelConfig(), 128, 4096)
        full = _step_ms(steps[prior], 40)
        small = _step_ms(_vae_step(prior, tiny, 2, 64), 200)
        limit = bench_train.step_flop(prior == "lars") / rate * 1e3
        lines.append(f"| {prior} | {full:.2f} | {limit:.2f} | {small:.2f} |")

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for t in range(1000, 1040):  # the standard step, warm from the timing above
            steps["gaussian"](t)
    rows = []
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key not in ("aten::mm", "aten::addmm"):
            continue
        shapes = [s for s in e.input_shapes if s]
        a, b = shapes[-2], shapes[-1]
        x, y = torch.randn(*a), torch.randn(*b)
        alone = _us(lambda x=x, y=y: torch.mm(x, y), n=50)
        in_step = e.self_cpu_time_total / e.count
        flop = 2 * a[0] * a[1] * b[1]
        rows.append((in_step * e.count, e.key[6:], a, b, e.count, in_step, alone, flop))
    lines += [
        "",
        "Matmuls of the standard step (torch.profiler, 40 steps) against the same product "
        "alone (contiguous operands, warm caches):",
        "",
        "| op | (m, k) x (k, n) | calls/step | in the step (us) | alone (us) | GFLOP/s in the step |",
        "|---|---|---:|---:|---:|---:|",
    ]
    total_in, total_alone = 0.0, 0.0
    for _, op, a, b, count, in_step, alone, flop in sorted(rows, key=lambda r: -r[0]):
        per = count // 40
        total_in += in_step * per
        total_alone += alone * per
        lines.append(
            f"| {op} | {tuple(a)} x {tuple(b)} | {per} | {in_step:.0f} | {alone:.0f} | "
            f"{flop / in_step / 1e3:.0f} |"
        )
    lines += [
        "",
        f"Per step: matmuls {total_in / 1e3:.2f} ms in the step, {total_alone / 1e3:.2f} ms alone.",
        "",
    ]
    return lines


def weight_gradient_product() -> list[str]:
    """The step's (300, 128) x (128, 784) weight-gradient product on its own, three ways:
    what the "alone" column above leaves out (operand layout, caches, fresh outputs)."""
    h, g = torch.randn(128, 300), torch.randn(128, 784)
    h_t, out = h.t().contiguous(), torch.empty(300, 784)
    sweep = torch.zeros(8 << 20)  # 32 MB: more than the caches hold

    def cold(n: int = 200) -> float:
        times = []
        for _ in range(n + 20):
            sweep.add_(1.0)
            t0 = time.perf_counter()
            torch.mm(h.t(), g)
            times.append(time.perf_counter() - t0)
        return statistics.median(times[20:]) * 1e6

    cases = [
        ("contiguous operands, output reused, warm caches", _us(lambda: torch.mm(h_t, g, out=out))),
        (
            "a transposed operand (as autograd passes it), fresh output, warm caches",
            _us(lambda: torch.mm(h.t(), g)),
        ),
        ("the same after a 32 MB sweep (caches emptied, as by the rest of a step)", cold()),
    ]
    lines = [
        "The step's (300, 128) x (128, 784) weight-gradient product on its own:",
        "",
        "| operands and caches | us |",
        "|---|---:|",
    ]
    return lines + [f"| {name} | {us:.0f} |" for name, us in cases] + [""]


#: torch.profiler op names by group (self time); anything else is "other"
IWAE_GROUPS = {
    "products: matmuls": ("aten::mm", "aten::addmm", "aten::bmm"),
    "products: convolutions": (
        "aten::_convolution",
        "aten::mkldnn_convolution",
        "aten::convolution",
        "aten::slow_conv_transpose2d",
        "aten::_slow_conv2d_forward",
    ),
    "softplus (Bernoulli log-likelihood)": ("aten::softplus",),
    "tanh, sigmoid, exp, log": ("aten::tanh", "aten::sigmoid", "aten::exp", "aten::log"),
    "add, sub, mul, sum, clamp": (
        "aten::add",
        "aten::add_",
        "aten::sub",
        "aten::sub_",
        "aten::mul",
        "aten::mul_",
        "aten::sum",
        "aten::clamp_min",
        "aten::clamp_min_",
        "aten::pow",
    ),
    "copies, cat, random numbers": (
        "aten::copy_",
        "aten::cat",
        "aten::normal_",
        "aten::fill_",
        "aten::_to_copy",
    ),
}
IWAE_IMAGES = {"vae": 16, "hvae": 8, "convhvae": 4}


def _iwae_groups(prof) -> dict[str, float]:
    """Self CPU microseconds per group of :data:`IWAE_GROUPS` (and "other")."""
    groups = dict.fromkeys([*IWAE_GROUPS, "other"], 0.0)
    for e in prof.key_averages():
        name = next((g for g, ops in IWAE_GROUPS.items() if e.key in ops), "other")
        groups[name] += e.self_cpu_time_total
    return groups


def iwae_profile(rate: float) -> list[str]:
    lines = [
        "## IWAE (K = 1000, N(0, I), iwae_batch 100, k_chunk 1000)",
        "",
        "Self time of `iwae_log_likelihood` by group (torch.profiler, one run after a warm "
        "one); `products` is what the FLOP limit counts (FlopCounterMode: matmuls and "
        "convolutions, forward).",
        "",
        "| architecture | ms/image | FLOP limit ms/image | % of limit | group | ms/image "
        "| % of the time |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    notes = []
    for arch, n in IWAE_IMAGES.items():
        model = bench_arch.make_model(arch, "gaussian", ModelConfig()).eval()
        x = bench_arch.binary_images(n, "cpu")
        flops = bench_arch.iwae_image_flops(model, x, 1000, 100, 1000)

        def run(x=x, model=model):
            iwae_log_likelihood(model, x, k=1000, batch_size=100, k_chunk=1000, seed=0)

        run()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            run()
            total = (time.perf_counter() - t0) / n * 1e3
        groups = {g: us / n / 1e3 for g, us in _iwae_groups(prof).items()}
        limit = flops / rate * 1e3
        products = sum(v for g, v in groups.items() if g.startswith("products"))
        head = f"| {arch} | {total:.2f} | {limit:.2f} | {100 * limit / total:.0f}% |"
        for i, (g, ms) in enumerate(sorted(groups.items(), key=lambda kv: -kv[1])):
            first = head if i == 0 else "| | | | |"
            lines.append(f"{first} {g} | {ms:.2f} | {100 * ms / total:.0f}% |")
        notes.append(
            f"- {arch}: the products run at {flops / products / 1e6:.0f} GFLOP/s "
            f"({100 * limit / products:.0f}% of the 2048^3 rate); with every other "
            f"operation free the IWAE would reach {100 * limit / products:.0f}% of its limit."
        )
    logits = torch.randn(256, 784) * 4  # one CPU decoder tile's logits
    soft = _us(lambda: F.softplus(logits).sum(-1), n=100)
    one_exp = _us(lambda: torch.exp(logits), n=100)
    per = 1000 * 784 / logits.numel()
    lines += [
        "",
        *notes,
        f"- softplus over one (256, 784) tile of logits: {soft:.0f} us ({soft * per / 1e3:.2f} "
        f"ms per image of K = 1000); one `exp` pass over the same tile: {one_exp:.0f} us. "
        "softplus is exp then log1p per logit (bitwise the published numbers' formula); a "
        "cheaper form (fewer logarithms) changes the evaluation's bits.",
        "",
    ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "reports" / "profile_cpu.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RuntimeWarning)  # Z_r > 1 on an untrained net
    rate = flop_rate("cpu")
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# CPU profile of the unmet performance goals",
        "",
        "Generated by `python bench/breakdown.py`; do not edit. One thread of "
        f"{cpu_model()}, torch {torch.__version__}, {now}; float32 matmul rate "
        f"{rate / 1e9:.1f} GFLOP/s (2048^3).",
        "",
    ]
    lines += z_chunk(rate) + training(rate) + weight_gradient_product() + iwae_profile(rate)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
