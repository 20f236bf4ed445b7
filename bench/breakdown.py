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
- Training step by architecture (VAE, HVAE, ConvHVAE; N(0, I) and LARS): the step ``fit``
  runs, its self time grouped (products, Adam, random numbers, copies, elementwise,
  autograd, views, op dispatch and Python), its products timed alone at the step's shapes,
  and two ceilings with the products at the faster of their two times (everything else
  free; the rest as it is); every
  convolution of the ConvHVAE step alone, in the default layout and channels-last; and what
  the LARS step adds, by group.
- IWAE (K = 1000, each architecture with N(0, I) and LARS, the quick budget's iwae_batch 100 and
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
import copy
import datetime as dt
import math
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
from larsvae.models.convhvae import conv_transpose_to_one_channel

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


def _matmuls(prof, n: int) -> list[tuple[str, list[int], list[int], int, float, float]]:
    """(op, shape a, shape b, calls, us per call in the profile, us alone) of every matmul
    :data:`PRODUCTS` names in ``prof`` (recorded with its shapes), by op and shape; alone:
    the same product of contiguous operands, warm caches, mean of ``n`` calls."""
    out = []
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key not in PRODUCTS["products: matmuls"]:
            continue
        a, b = [s for s in e.input_shapes if s][-2:]  # addmm/baddbmm: after the added term
        x, y = torch.randn(*a), torch.randn(*b)
        product = torch.bmm if len(a) == 3 else torch.mm
        alone = _us(lambda x=x, y=y, product=product: product(x, y), n=n)
        out.append((e.key, a, b, e.count, e.self_cpu_time_total / e.count, alone))
    return out


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
    rows = [
        (in_step * count, op[6:], a, b, count, in_step, alone, 2 * math.prod(a) * b[-1])
        for op, a, b, count, in_step, alone in _matmuls(prof, n=50)
    ]
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


#: torch.profiler op names of the products, what the FLOP limit counts (FlopCounterMode's
#: matmuls and convolutions, and the kernels that run under them); shared by the training
#: step's groups and IWAE's
PRODUCTS = {
    "products: matmuls": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "products: convolutions": (
        "aten::_convolution",
        "aten::mkldnn_convolution",
        "aten::convolution",
        "aten::convolution_backward",
        "aten::slow_conv_transpose2d",
        "aten::_slow_conv2d_forward",
    ),
}
#: the training step's other groups (self time); see ``_step_group``
STEP_OTHER = {
    "Adam (fused kernel, its Python, zero_grad)": (
        "aten::_fused_adam_",
        "Optimizer.step#Adam.step",
        "Optimizer.zero_grad#Adam.zero_grad",
    ),
    "random numbers (binarisation, noise, proposals)": (
        "aten::random_",
        "aten::normal_",
        "aten::uniform_",
        "aten::bernoulli_",
        "aten::randn",
        "aten::rand",
        "aten::randint",
        "aten::randperm",
    ),
    "copies, cat, allocation": (
        "aten::copy_",
        "aten::cat",
        "aten::_to_copy",
        "aten::empty",
        "aten::empty_strided",
        "aten::fill_",
        "aten::zero_",
        "aten::zeros",
        "aten::clone",
        "aten::contiguous",
        "aten::empty_like",
        "aten::zeros_like",
        "aten::ones_like",
        "aten::new_empty",
        "aten::new_zeros",
        "aten::full",
        "aten::ones",
        "aten::stack",
        "aten::index",
        "aten::index_select",
    ),
}
#: ops that only make views, or only dispatch to other ops (linear, conv2d, matmul: their
#: self time is the dispatch, their arithmetic is the products'): with everything not aten
#: (autograd nodes, Python functions) they form AUTOGRAD
VIEW_OPS = {
    "aten::linear",
    "aten::matmul",
    "aten::conv2d",
    "aten::conv_transpose2d",
    "aten::as_strided_",
    "aten::view",
    "aten::t",
    "aten::transpose",
    "aten::as_strided",
    "aten::reshape",
    "aten::_reshape_alias",
    "aten::expand",
    "aten::unsqueeze",
    "aten::squeeze",
    "aten::permute",
    "aten::slice",
    "aten::select",
    "aten::_unsafe_view",
    "aten::detach",
    "aten::detach_",
    "aten::alias",
    "aten::split",
    "aten::split_with_sizes",
    "aten::narrow",
    "aten::unbind",
    "aten::flatten",
    "aten::unflatten",
    "aten::result_type",
    "aten::to",
    "aten::lift_fresh",
    "aten::item",
    "aten::_local_scalar_dense",
    "aten::numpy_T",
    "aten::resolve_conj",
    "aten::resolve_neg",
}
ELEMENTWISE = "elementwise (activations and their gradients, losses, sums)"
AUTOGRAD = "autograd, views, op dispatch, Python"
STEP_ARCHS = {"vae": 30, "hvae": 20, "convhvae": 6}  # steps per timed round
PROFILED_ROUNDS = 4  # profiled steps: this many rounds' worth


def _step_group(key: str) -> str:
    for groups in (PRODUCTS, STEP_OTHER):
        for name, ops in groups.items():
            if key in ops:
                return name
    if key.startswith("aten::") and key not in VIEW_OPS:
        return ELEMENTWISE
    return AUTOGRAD


def _conv_calls(model, step, t: int) -> list[tuple[str, torch.nn.Module, torch.Tensor]]:
    """(name, module, input) of every convolution call in step ``t``; the input requires
    grad where the step needs its gradient."""
    names = {m: n for n, m in model.named_modules()}
    convs = [m for m in names if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    seen = []

    def hook(m, args):
        x = args[0]
        seen.append((names[m], m, x.detach().clone().requires_grad_(x.requires_grad)))

    hooks = [m.register_forward_pre_hook(hook) for m in convs]
    step(t)
    for h in hooks:
        h.remove()
    return seen


def _conv_us(m: torch.nn.Module, x: torch.Tensor, channels_last: bool = False):
    """(us, FLOP) of one convolution's forward and backward on its own (warm caches):
    gradients of its weight, bias and, where ``x`` requires grad, its input."""
    if channels_last:
        m = copy.deepcopy(m).to(memory_format=torch.channels_last)
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(x.requires_grad)
    wrt = [x, *m.parameters()] if x.requires_grad else list(m.parameters())
    g = torch.randn_like(m(x))

    def fwd_bwd():
        return torch.autograd.grad(m(x), wrt, g)

    # counted through .backward (FlopCounterMode cannot follow autograd.grad to a leaf)
    flop = bench_arch.count_flops(lambda: m(x).backward(g))
    return _us(fwd_bwd, n=10, repeat=5), flop


def conv_layers(rate: float, convs: list[tuple]) -> list[str]:
    """Every convolution of the ConvHVAE's step on its own (``convs``: name, module, input,
    us and FLOP in the default layout, as :func:`_arch_steps` timed them), and again in
    channels-last, against the 2048^3 rate: what the convolutions can reach at these shapes
    on one thread."""
    lines = [
        "Each convolution of the ConvHVAE step (N(0, I)) alone, forward and backward on its "
        "input of one step (oneDNN through `torch.nn`, warm caches):",
        "",
        "| module | input | MFLOP | default layout (us) | GFLOP/s | % of 2048^3 rate "
        "| channels-last (us) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    tot_us, tot_flop = 0.0, 0
    for name, m, x, us, flop in convs:
        us_cl, _ = _conv_us(m, x, channels_last=True)
        tot_us, tot_flop = tot_us + us, tot_flop + flop
        lines.append(
            f"| {name} ({type(m).__name__}) | {tuple(x.shape)} | {flop / 1e6:.0f} | {us:.0f} | "
            f"{flop / us / 1e3:.0f} | {100 * flop / us / 1e3 / (rate / 1e9):.0f}% | {us_cl:.0f} |"
        )
    lines += [
        "",
        f"All of them: {tot_us / 1e3:.2f} ms, {tot_flop / tot_us / 1e3:.0f} GFLOP/s "
        f"({100 * tot_flop / tot_us / 1e3 / (rate / 1e9):.0f}% of the 2048^3 rate).",
        "",
    ]
    name, last, x, _, _ = convs[-1]  # the transposed convolution to one channel
    with torch.no_grad():
        module = _us(lambda: last(x), n=10, repeat=5)
        product = _us(lambda: conv_transpose_to_one_channel(last, x), n=10, repeat=5)
    return lines + [
        f"The last one, {name} (32 channels to 1), is oneDNN's worst case. Its forward alone "
        f"takes {module:.0f} us as the module and {product:.0f} us as one product and 16 adds "
        "(`conv_transpose_to_one_channel`, the form IWAE's no-grad decoder uses). Training "
        "keeps the module: another form sums in another order, so it changes the bits of "
        "every ConvHVAE training run, and the published cells would have to be trained "
        "again.",
        "",
    ]


GROUPS = [*PRODUCTS, ELEMENTWISE, AUTOGRAD, *STEP_OTHER]
SHORT = {  # column heads of the LARS table
    "products: matmuls": "matmuls",
    "products: convolutions": "convolutions",
    ELEMENTWISE: "elementwise",
    AUTOGRAD: "autograd, views, dispatch, Python",
    "Adam (fused kernel, its Python, zero_grad)": "Adam",
    "random numbers (binarisation, noise, proposals)": "random numbers",
    "copies, cat, allocation": "copies",
}


def _arch_steps(arch: str, rate: float) -> dict[str, dict]:
    """Both priors' trainer steps of one architecture: timed alternately on one clock, each
    profiled by group, its products timed alone, its FLOP limit."""
    cfg = TrainConfig(batch_size=bench_arch.BATCH, warmup_steps=1000)
    n = STEP_ARCHS[arch]
    res = {}
    for prior in ("gaussian", "lars"):
        model = bench_arch.make_model(arch, prior, ModelConfig())
        stream = bench_arch.grey_stream(bench_arch.BATCH, "cpu")
        flops = bench_arch.train_step_flops(model, stream, cfg)
        res[prior] = {"model": model, "flops": flops, "limit": flops / rate * 1e3}
        res[prior]["step"] = bench_arch.trainer_step(model, stream, cfg)
    std, lars = res["gaussian"], res["lars"]
    t_std, t_lars = bench_arch.time_steps(std["step"], lars["step"], n, 5, "cpu", start=100)
    std["ms"], lars["ms"] = t_std * 1e3, t_lars * 1e3
    for r in res.values():
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for t in range(5000, 5000 + PROFILED_ROUNDS * n):
                r["step"](t)
        r["groups"] = dict.fromkeys(GROUPS, 0.0)
        for e in prof.key_averages():
            r["groups"][_step_group(e.key)] += e.self_cpu_time_total / (PROFILED_ROUNDS * n) / 1e3
        r["convs"] = [
            (*call, *_conv_us(*call[1:])) for call in _conv_calls(r["model"], r["step"], 6000)
        ]
        matmuls = sum(count * alone for *_, count, _, alone in _matmuls(prof, n=20))
        r["alone"] = matmuls / (PROFILED_ROUNDS * n) / 1e3 + sum(c[3] for c in r["convs"]) / 1e3
    return res


def _ceilings(arch: str, prior: str, r: dict) -> str:
    """Why the step stays where it is: its products' rate in the step and alone, and the
    share of the limit it would reach with the products at the faster of the two times and
    the rest free, or the rest as it is. (Alone can be the slower: a convolution timed on
    its own pays autograd's engine for its one node.)"""
    total = sum(r["groups"].values())
    products = sum(v for g, v in r["groups"].items() if g.startswith("products"))
    best = min(products, r["alone"])
    rest = r["ms"] * (1 - products / total)  # the unprofiled step's share
    return (
        f"- {arch}, {prior}: products {products:.2f} ms in the step "
        f"({r['flops'] / products / 1e6:.0f} GFLOP/s, {100 * r['limit'] / products:.0f}% of "
        f"the 2048^3 rate), {r['alone']:.2f} ms alone at the same shapes "
        f"({100 * r['limit'] / r['alone']:.0f}%); everything else "
        f"{100 * (1 - products / total):.0f}% of the step (~{rest:.2f} ms). Ceilings, the "
        f"products at the faster of the two: with everything else free, "
        f"{100 * r['limit'] / best:.0f}% of the limit; with the rest as it is, "
        f"{100 * r['limit'] / (best + rest):.0f}%."
    )


def training_by_arch(rate: float) -> list[str]:
    """The trainer step of every architecture and prior split into groups, its products
    timed alone, why the step stays below half its FLOP limit, and what LARS adds."""
    lines = [
        "## Training step by architecture (batch 128, fused Adam, the step `fit` runs)",
        "",
        "The two priors' steps timed alternately on one clock (median of 5 rounds). Self time "
        "by group: torch.profiler over further steps; its totals include the profiler's own "
        "cost, so they exceed the step. `products` is what the FLOP limit counts "
        "(FlopCounterMode: matmuls and convolutions, forward and backward); `alone` times "
        "each product of the step on its own at the same shapes (matmuls by recorded shape, "
        "every convolution module forward and backward on its input).",
        "",
        "| architecture | prior | step (ms) | FLOP limit (ms) | % of limit | group | ms/step "
        "| % of the profiled step |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    notes = []
    extra = [
        "| architecture | N(0, I) step (ms) | LARS step (ms) | LARS adds | its FLOPs add | "
        + " | ".join(SHORT[g] for g in GROUPS)
        + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(GROUPS),
    ]
    convs = []
    for arch in STEP_ARCHS:
        res = _arch_steps(arch, rate)
        if res["gaussian"]["convs"]:  # the ConvHVAE's, for the table below
            convs = res["gaussian"]["convs"]
        for prior, r in res.items():
            total = sum(r["groups"].values())
            head = (
                f"| {arch} | {prior} | {r['ms']:.2f} | {r['limit']:.2f} | "
                f"{100 * r['limit'] / r['ms']:.0f}% |"
            )
            for i, (g, ms) in enumerate(sorted(r["groups"].items(), key=lambda kv: -kv[1])):
                first = head if i == 0 else "| | | | | |"
                lines.append(f"{first} {g} | {ms:.2f} | {100 * ms / total:.0f}% |")
            notes.append(_ceilings(arch, prior, r))
        std, lars = res["gaussian"], res["lars"]
        diff = " | ".join(f"{lars['groups'][g] - std['groups'][g]:+.2f}" for g in GROUPS)
        extra.append(
            f"| {arch} | {std['ms']:.2f} | {lars['ms']:.2f} | "
            f"{100 * (lars['ms'] / std['ms'] - 1):+.0f}% | "
            f"{100 * (lars['flops'] / std['flops'] - 1):+.0f}% | {diff} |"
        )
    return [
        *lines,
        "",
        *notes,
        "",
        *conv_layers(rate, convs),
        "What the LARS step adds over the N(0, I) step (a(z) = MLP[50-100-100-1] over the "
        "batch and S = 1024 proposals, forward and backward, and Z's estimate in float64); "
        "the group columns are the profiled difference in ms/step:",
        "",
        *extra,
        "",
    ]


#: torch.profiler op names by group (self time); anything else is "other"
IWAE_GROUPS = {
    **PRODUCTS,
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
        "## IWAE (K = 1000, iwae_batch 100, k_chunk 1000)",
        "",
        "Time per image: median of 3 runs after warm ones. Self time by group: "
        "torch.profiler over one further run (its totals include the profiler's own cost). "
        "`products` is what the FLOP limit counts (FlopCounterMode: matmuls and "
        "convolutions, forward).",
        "",
        "| architecture | prior | ms/image | FLOP limit ms/image | % of limit | group "
        "| ms/image | % of the profiled time |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    notes = []
    for arch, n in IWAE_IMAGES.items():
        for prior in ("gaussian", "lars"):
            model = bench_arch.make_model(arch, prior, ModelConfig()).eval()
            x = bench_arch.binary_images(n, "cpu")
            flops = bench_arch.iwae_image_flops(model, x, 1000, 100, 1000)

            def run(x=x, model=model):
                iwae_log_likelihood(model, x, k=1000, batch_size=100, k_chunk=1000, seed=0)

            total = _us(run, n=1, repeat=3) / n / 1e3
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                run()
            groups = {g: us / n / 1e3 for g, us in _iwae_groups(prof).items()}
            profiled = sum(groups.values())
            limit = flops / rate * 1e3
            products = sum(v for g, v in groups.items() if g.startswith("products"))
            head = f"| {arch} | {prior} | {total:.2f} | {limit:.2f} | {100 * limit / total:.0f}% |"
            for i, (g, ms) in enumerate(sorted(groups.items(), key=lambda kv: -kv[1])):
                first = head if i == 0 else "| | | | | |"
                lines.append(f"{first} {g} | {ms:.2f} | {100 * ms / profiled:.0f}% |")
            notes.append(
                f"- {arch}, {prior}: the products run at {flops / products / 1e6:.0f} GFLOP/s "
                f"({100 * limit / products:.0f}% of the 2048^3 rate) and take "
                f"{100 * products / profiled:.0f}% of the time; with every other operation "
                f"free the IWAE would reach {100 * limit / products:.0f}% of its limit."
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
    lines += z_chunk(rate) + training(rate) + weight_gradient_product()
    lines += training_by_arch(rate) + iwae_profile(rate)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
