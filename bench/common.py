"""Helpers shared by the benchmark modules (``bench/bench_*.py``) and their runner.

Every module exposes ``run(device: str, quick: bool) -> list[dict]``; each dict is one row
of ``reports/benchmarks.json`` with the keys :data:`ROW_KEYS` (build it with :func:`row`).
Baseline and ours run side by side in the same process; :func:`timeit_pair` times them
alternately, so that a machine whose load changes (shared CI runners, laptops) slows both.

    from common import flop_rate, timeit, timeit_pair, row
"""

from __future__ import annotations

import copy
import functools
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

ROW_KEYS = (
    "workload",
    "setting",
    "baseline",
    "baseline_value",
    "ours_value",
    "unit",
    "higher_is_better",
    "ratio",
    "limit_value",
    "fraction_of_limit",
    "check",
    "check_passed",
    "goal",
    "goal_met",
)

#: Set by bench/run.py after it measured the FLOP rate, so modules use the same number.
FLOPS_ENV = "LARSVAE_BENCH_FLOPS_{}"


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timeit(
    fn: Callable[[], object], repeat: int = 3, device: str = "cpu", warmup: int = 1
) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeat`` calls after ``warmup`` calls;
    CUDA work is synchronised before the clock is read."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timeit_pair(
    fa: Callable[[], object],
    fb: Callable[[], object],
    repeat: int = 3,
    device: str = "cpu",
    warmup: int = 1,
) -> tuple[float, float]:
    """Medians of ``fa`` and ``fb`` timed alternately (a, b, a, b, ...), as :func:`timeit`."""
    ta, tb = [], []
    for _ in range(warmup):
        fa()
        fb()
    for _ in range(repeat):
        ta.append(timeit(fa, 1, device, warmup=0))
        tb.append(timeit(fb, 1, device, warmup=0))
    return statistics.median(ta), statistics.median(tb)


@functools.cache
def flop_rate(device: str = "cpu") -> float:
    """float32 matmul FLOP/s of this machine with the current thread setting: the best of a
    few timed n x n products (n = 2048 on a CPU, 8192 on a GPU with TF32 off). The runner
    exports its measurement in ``LARSVAE_BENCH_FLOPS_<DEVICE>``, which wins when set."""
    kind = torch.device(device).type
    env = os.environ.get(FLOPS_ENV.format(kind.upper()))
    if env:
        return float(env)
    n = 2048 if kind == "cpu" else 8192
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=g)
    b = torch.randn(n, n, device=device, generator=g)
    tf32 = kind == "cuda" and torch.backends.cuda.matmul.allow_tf32
    if kind == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    try:
        best = min(timeit(lambda: torch.mm(a, b), 1, device) for _ in range(5))
    finally:
        if kind == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
    return 2.0 * n**3 / best


def row(
    *,
    workload: str,
    setting: str,
    baseline: str,
    baseline_value: float,
    ours_value: float,
    unit: str,
    higher_is_better: bool,
    limit_value: float | None,
    check: str,
    check_passed: bool,
    goal: str,
    goal_met: bool,
) -> dict:
    """One report row; ``ratio`` (> 1: ours is better) and ``fraction_of_limit`` derived."""
    if higher_is_better:
        ratio = ours_value / baseline_value
        fraction = None if limit_value is None else ours_value / limit_value
    else:
        ratio = baseline_value / ours_value
        fraction = None if limit_value is None else limit_value / ours_value
    return {
        "workload": workload,
        "setting": setting,
        "baseline": baseline,
        "baseline_value": float(baseline_value),
        "ours_value": float(ours_value),
        "unit": unit,
        "higher_is_better": bool(higher_is_better),
        "ratio": float(ratio),
        "limit_value": None if limit_value is None else float(limit_value),
        "fraction_of_limit": None if fraction is None else float(fraction),
        "check": check,
        "check_passed": bool(check_passed),
        "goal": goal,
        "goal_met": bool(goal_met),
    }


def check_row(r: dict) -> None:
    """Raise ValueError unless ``r`` has exactly the keys of the row contract."""
    if not isinstance(r, dict) or set(r) != set(ROW_KEYS):
        got = sorted(r) if isinstance(r, dict) else type(r).__name__
        raise ValueError(f"benchmark row: expected keys {sorted(ROW_KEYS)}, got {got}")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_model()


def mlp_flops(dim: int, hidden: tuple[int, ...]) -> int:
    """FLOP of one plain forward of an MLP[dim-hidden-1] (2 per multiply-add)."""
    sizes = (dim, *hidden, 1)
    return 2 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


# -- a test case with a 1-D answer ------------------------------------------------------------


def rank_one_acceptance(dim: int, hidden: tuple[int, ...], seed: int = 0):
    """A float32 AcceptanceMLP of the paper's shape whose first layer has rank one, W = c v^T
    with |v| = 1: a(z) depends on z through t = v.z ~ N(0, 1) only, so Z, Var a and the LARS
    marginal of t are 1-D quadratures, while the cost per evaluation is that of the full net.
    Returns (acceptance, v)."""
    from larsvae.distributions import AcceptanceMLP

    g = torch.Generator().manual_seed(seed)
    acc = AcceptanceMLP(dim, hidden)
    v = torch.randn(dim, generator=g)
    v /= v.norm()
    with torch.no_grad():
        for m in acc.net:  # Glorot-uniform weights as in AcceptanceMLP, but from ``g``
            if isinstance(m, torch.nn.Linear):
                bound = math.sqrt(6.0 / (m.in_features + m.out_features))
                m.weight.uniform_(-bound, bound, generator=g)
                m.bias.uniform_(-1.0, 1.0, generator=g)
        first = acc.net[0]
        first.weight.copy_(torch.outer(2.0 * torch.randn(first.out_features, generator=g), v))
    return acc, v


_GRID_STEP = 1e-3


def line_grid() -> tuple[torch.Tensor, torch.Tensor]:
    """Grid t in [-10, 10] and quadrature weights of N(0, 1) on it, float64."""
    t = torch.arange(-10.0, 10.0 + _GRID_STEP / 2, _GRID_STEP, dtype=torch.float64)
    return t, torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi) * _GRID_STEP


def acceptance_on_line(acc, v: torch.Tensor, bias: float | None = None) -> torch.Tensor:
    """a(t v) on :func:`line_grid`, in float64 (optionally with another output bias)."""
    ref = copy.deepcopy(acc).double().cpu()
    t, _ = line_grid()
    with torch.no_grad():
        if bias is not None:
            ref.net[-1].bias.fill_(bias)
        return torch.sigmoid(ref(t[:, None] * v.double().cpu()))


def z_on_line(acc, v: torch.Tensor) -> tuple[float, float, float]:
    """Z, Var[a(z)] and Var[(a(z) + a(-z)) / 2] under N(0, I), by quadrature."""
    _, w = line_grid()
    a = acceptance_on_line(acc, v)
    pair = 0.5 * (a + a.flip(0))  # a(-t) on the symmetric grid
    z = float((w * a).sum())
    return z, float((w * a * a).sum()) - z * z, float((w * pair * pair).sum()) - z * z


def set_z_on_line(acc, v: torch.Tensor, target_z: float) -> float:
    """Set the output bias so that Z = target_z (bisection on the quadrature); returns Z."""
    _, w = line_grid()
    lo, hi = -40.0, 40.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        z = float((w * acceptance_on_line(acc, v, mid)).sum())
        lo, hi = (mid, hi) if z < target_z else (lo, mid)
    with torch.no_grad():
        acc.net[-1].bias.fill_(lo)
    return z_on_line(acc, v)[0]
