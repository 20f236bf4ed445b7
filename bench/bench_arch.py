"""Every architecture of Table 1 against its FLOP limit: the training step (batch 128) and
IWAE with K = 1000 per image, for the VAE (L = 1), the HVAE and the ConvHVAE (L = 2,
App. C.2), each with the N(0, I) prior and joint LARS (Algorithm 1, S = 1024).

Ours, through the library's own code paths: the step :func:`larsvae.train.fit` runs
(``train._make_step``: eager on the CPU, one CUDA graph on CUDA) over a real
``BatchStream``, and :func:`larsvae.evaluation.iwae_log_likelihood` at the evaluate step's
settings (``EvalConfig``'s iwae_batch 100, iwae_k_chunk 1000). Baselines, in the same
process, timed alternately with ours:

- training: the loop of a PyTorch tutorial around the same model, ``torch.manual_seed``,
  ``torch.optim.Adam`` (its default foreach kernels), ``loss.item()`` every step. Check:
  after a few steps from the same weights and the same (seed, t), the parameters of both
  agree to 1% of the largest update ours made (fused and foreach Adam round differently;
  a wrong learning rate, warm-up or random stream moves them by whole updates);
- IWAE: the per-image loop, ``model.log_weights(x_i, 1000, generator=g)`` and a float64
  logsumexp. Check: the same random numbers (on CUDA passed as ``noise=``) give the same
  log p(x) to float32 resolution (1e-6 |log p|).

FLOP limit: the FLOPs of matrix products and convolutions counted by
``torch.utils.flop_counter.FlopCounterMode`` (forward and backward of one training step,
Adam and elementwise work not counted; the forward of IWAE on one image), at the measured
float32 matmul rate (``common.flop_rate``). Goal: every row at >= 50% of its limit, and the
LARS step of each architecture within its extra FLOPs plus 10% of the standard step.

    python bench/run.py --only arch [--device cuda] [--quick]

``bench/grid_cost.py`` times a budget's cells with the helpers here.
"""

from __future__ import annotations

import copy
import functools
import math
import warnings

import torch
from bench_train import _run_steps
from common import flop_rate, row, timeit_pair
from torch.utils.flop_counter import FlopCounterMode

from larsvae import train
from larsvae.config import EvalConfig, ModelConfig, TrainConfig
from larsvae.data import BatchStream
from larsvae.evaluation import iwae_log_likelihood
from larsvae.models import build_model
from larsvae.objectives import kl_beta, lr_at
from larsvae.utils import derive_seed
from larsvae.zestimate import estimate_z

ARCHS = ("vae", "hvae", "convhvae")
PRIORS = ("gaussian", "lars")
ARCH_NAME = {"vae": "VAE L=1", "hvae": "HVAE L=2", "convhvae": "ConvHVAE L=2"}
PRIOR_NAME = {"gaussian": "N(0,I)", "lars": "LARS joint (S=1024)"}
BATCH = 128
EVAL = EvalConfig()  # iwae_k 1000, iwae_batch 100, iwae_k_chunk 1000: the evaluate step's
SEED = 3
CHECK_STEPS = 5  # steps from the same weights, ours and the textbook loop, for the check
GOAL_FRACTION = 0.5
LARS_SLACK = 0.10  # the LARS step may cost its extra FLOPs plus this share of the standard


# -- models, data and the two steps ----------------------------------------------------------


def make_model(arch: str, prior: str, cfg: ModelConfig, device: str = "cpu"):
    """``build_model`` from a fixed seed; a LARS prior gets a Z from 2e4 proposal samples
    (IWAE refuses a prior without one)."""
    torch.manual_seed(0)
    model = build_model(arch, prior, cfg).to(device)
    top = model.top_prior
    if hasattr(top, "acceptance") and hasattr(top, "proposal"):  # one a(z) over one proposal
        with torch.no_grad():
            est = estimate_z(top.acceptance, top.proposal, 20_000, 20_000, seed=0, device=device)
        top.set_log_z(min(est.log_mean, 0.0))
    return model


def grey_stream(batch: int, device: str, images: int = 4096) -> BatchStream:
    """Dynamic binarisation over ``images`` random grey images (as the train split)."""
    g = torch.Generator().manual_seed(0)
    grey = torch.randint(0, 256, (images, 784), generator=g, dtype=torch.uint8)
    return BatchStream(grey, batch, seed=1, device=device)


def binary_images(n: int, device: str) -> torch.Tensor:
    """n binary test-like images: noisy copies of 10 random prototypes."""
    g = torch.Generator().manual_seed(1)
    protos = torch.rand(10, 784, generator=g) < 0.25
    flip = torch.rand(n, 784, generator=g) < 0.05
    return (protos[torch.arange(n) % 10] ^ flip).float().to(device)


def trainer_step(model, stream, cfg: TrainConfig):
    """The step fit runs for ``model`` (train mode, fused Adam, ``train._make_step``)."""
    model.train()
    opt = train.make_optimizer(train.trainable_parameters(model), cfg.lr)
    return train._make_step(model, opt, stream, cfg, SEED, print)


class TextbookStep:
    """A PyTorch tutorial's training step around the same model and schedule."""

    def __init__(self, model, stream, cfg: TrainConfig):
        self.model, self.stream, self.cfg = model.train(), stream, cfg
        self.opt = torch.optim.Adam(train.trainable_parameters(model), lr=cfg.lr)

    def __call__(self, t: int) -> float:
        torch.manual_seed(derive_seed(SEED, t))
        for g in self.opt.param_groups:
            g["lr"] = lr_at(t, self.cfg)
        out = self.model.loss(self.stream.batch(t), kl_beta(t, self.cfg.warmup_steps))
        self.opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        self.opt.step()
        return out["loss"].item()


def count_flops(fn) -> int:
    """Matmul and convolution FLOPs of ``fn()`` (FlopCounterMode: 2 per multiply-add)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def train_step_flops(model, stream, cfg: TrainConfig) -> int:
    """Forward and backward FLOPs of one trainer step (step 0 after one warm-up step, on a
    copy; Adam has no products). On CUDA the step is replayed as a graph, which the counter
    cannot see: an eager copy is counted instead (the same operations)."""
    m = copy.deepcopy(model)
    opt = train.make_optimizer(train.trainable_parameters(m), cfg.lr)
    step = train._EagerStep(m, opt, stream, cfg, SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Z_r > 1 on an untrained net
        step(0)
        return count_flops(lambda: step(1))


def iwae_image_flops(model, x: torch.Tensor, k: int, batch: int, k_chunk: int) -> float:
    """Forward FLOPs of ``iwae_log_likelihood`` per image (counted on two images)."""
    xs = x[:2]
    flops = count_flops(
        lambda: iwae_log_likelihood(model, xs, k=k, batch_size=batch, k_chunk=k_chunk, seed=0)
    )
    return flops / xs.shape[0]


def time_steps(step_a, step_b, steps: int, repeat: int, device: str, start: int = 0):
    """Seconds per step of two step objects, timed alternately on one clock."""
    clock = [start]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ta, tb = timeit_pair(
            functools.partial(_run_steps, step_a, clock, steps),
            functools.partial(_run_steps, step_b, clock, steps),
            repeat,
            device,
        )
    return ta / steps, tb / steps


def per_image_loop(model, x: torch.Tensor, k: int, seed: int, noise=None) -> torch.Tensor:
    """The plain IWAE baseline: log_weights of one image at a time, float64 logsumexp."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    out = []
    with torch.no_grad():
        for i in range(x.shape[0]):
            if noise is None:
                lw = model.log_weights(x[i : i + 1], k, generator=g)
            else:
                lw = model.log_weights(x[i : i + 1], k, noise=noise[i : i + 1])
            out.append(torch.logsumexp(lw.double(), 1) - math.log(k))
    return torch.cat(out).cpu()


def noise_as_iwae(model, n: int, k: int, batch: int, device: str, seed: int) -> torch.Tensor:
    """The noise iwae_log_likelihood draws: (batch, L, K, d) per block from one generator."""
    g = torch.Generator(device=device).manual_seed(seed)
    shape = (model.num_layers, k, model.latent_dim)
    blocks = [
        torch.randn((min(batch, n - i), *shape), generator=g, device=device)
        for i in range(0, n, batch)
    ]
    return torch.cat(blocks)


def same_updates(model, stream, cfg: TrainConfig, textbook_cfg: TrainConfig | None = None):
    """CHECK_STEPS trainer steps and textbook steps (schedule ``textbook_cfg``, default
    ``cfg``) from copies of ``model``, on the same (seed, t). Returns (max |ours - textbook|
    over the parameters, the largest change ours made, our step, the textbook step); the
    steps go on from step CHECK_STEPS."""
    ours_model, tb_model = copy.deepcopy(model), copy.deepcopy(model)
    start = [p.detach().clone() for p in ours_model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ours = trainer_step(ours_model, stream, cfg)
        textbook = TextbookStep(tb_model, stream, textbook_cfg or cfg)
        _run_steps(ours, [0], CHECK_STEPS)
        _run_steps(textbook, [0], CHECK_STEPS)
    with torch.no_grad():
        moved = max(
            float((p - s).abs().max()) for p, s in zip(ours_model.parameters(), start, strict=True)
        )
        apart = max(
            float((a - b).abs().max())
            for a, b in zip(ours_model.parameters(), tb_model.parameters(), strict=True)
        )
    return apart, moved, ours, textbook


# -- the rows --------------------------------------------------------------------------------

#: where a row that misses its goal has its time broken down, by device type
_WHY = {"cpu": " (where the time goes and why: reports/profile_cpu.md)"}


def _why(device: str, met: bool) -> str:
    return "" if met else _WHY.get(torch.device(device).type, "")


def _goal(device: str, met: bool) -> str:
    return f">= {100 * GOAL_FRACTION:.0f}% of the FLOP limit" + _why(device, met)


def _train_row(arch, prior, device, cfg, steps, repeat, rate):
    """One training-step row; returns (row, our step, its FLOPs)."""
    model = make_model(arch, prior, ModelConfig(), device)
    stream = grey_stream(BATCH, device)
    flops = train_step_flops(model, stream, cfg)
    apart, moved, ours, textbook = same_updates(model, stream, cfg)
    t_tb, t_ours = time_steps(textbook, ours, steps, repeat, device, start=CHECK_STEPS)
    t_tb, t_ours = t_tb * 1e3, t_ours * 1e3
    limit = flops / rate * 1e3
    where = "one CUDA graph per step" if isinstance(ours, train._GraphStep) else "eager"
    r = row(
        workload=f"training step, {ARCH_NAME[arch]}, {PRIOR_NAME[prior]}, batch {BATCH}, Adam",
        setting=(
            f"{device}, {where}, {torch.get_num_threads()} thread(s); "
            f"{flops / 1e6:.0f} MFLOP forward+backward (FlopCounterMode)"
        ),
        baseline="textbook step: torch.manual_seed, torch.optim.Adam (foreach), loss.item()",
        baseline_value=t_tb,
        ours_value=t_ours,
        unit="ms/step",
        higher_is_better=False,
        limit_value=limit,
        check=(
            f"parameters after {CHECK_STEPS} steps from the same weights: max |ours - "
            f"textbook| = {apart:.1e}, {100 * apart / moved:.2f}% of the largest update "
            f"{moved:.1e} (pass if <= 1%)"
        ),
        check_passed=apart <= 0.01 * moved,
        goal=_goal(device, limit / t_ours >= GOAL_FRACTION),
        goal_met=limit / t_ours >= GOAL_FRACTION,
    )
    return r, ours, flops


def _iwae_row(arch, prior, device, n_ours, n_loop, repeat, rate):
    cuda = torch.device(device).type == "cuda"
    model = make_model(arch, prior, ModelConfig(), device).eval()
    k, batch, chunk = EVAL.iwae_k, EVAL.iwae_batch, EVAL.iwae_k_chunk
    x_ours, x_loop = binary_images(n_ours, device), binary_images(n_loop, device)
    flops = iwae_image_flops(model, x_ours, k, batch, chunk)
    seed = 7
    res: dict = {}
    noise = noise_as_iwae(model, n_loop, k, batch, device, seed) if cuda else None

    def loop():
        res["loop"] = per_image_loop(model, x_loop, k, seed, noise=noise)

    def ours():
        res["ours"] = iwae_log_likelihood(
            model, x_ours, k=k, batch_size=batch, k_chunk=chunk, seed=seed
        )

    t_loop, t_ours = timeit_pair(loop, ours, repeat, device)
    t_loop, t_ours = t_loop / n_loop * 1e3, t_ours / n_ours * 1e3
    ref, got = res["loop"], res["ours"][:n_loop]
    diff = float((got - ref).abs().max())
    tol = 1e-6 * float(ref.abs().max())
    limit = flops / rate * 1e3
    return row(
        workload=f"IWAE, K={k}, {ARCH_NAME[arch]}, {PRIOR_NAME[prior]}, {n_ours} images",
        setting=(
            f"{device}, iwae_log_likelihood(iwae_batch={batch}, k_chunk={chunk}); "
            f"{flops / 1e6:.0f} MFLOP forward per image (FlopCounterMode)"
        ),
        baseline=f"per-image loop: model.log_weights(x_i, {k}) + float64 logsumexp",
        baseline_value=t_loop,
        ours_value=t_ours,
        unit="ms/image",
        higher_is_better=False,
        limit_value=limit,
        check=(
            f"max |ours - loop| on the same random numbers = {diff:.1e} nats (tolerance "
            f"{tol:.1e} = 1e-6 |log p|)"
        ),
        check_passed=diff <= tol,
        goal=_goal(device, limit / t_ours >= GOAL_FRACTION),
        goal_met=limit / t_ours >= GOAL_FRACTION,
    )


def _overhead_row(arch, steps_of, flops_of, device, steps, repeat):
    """The LARS step against the standard one, timed alternately, and its FLOP share."""
    t_std, t_lars = time_steps(
        steps_of["gaussian"], steps_of["lars"], steps, repeat, device, start=10_000
    )
    overhead = t_lars / t_std - 1.0
    extra = flops_of["lars"] / flops_of["gaussian"] - 1.0
    allowed = extra + LARS_SLACK
    return row(
        workload=f"LARS joint training overhead over the standard step ({ARCH_NAME[arch]})",
        setting=f"{device}, trainer steps, S=1024",
        baseline="our standard step",
        baseline_value=t_std * 1e3,
        ours_value=t_lars * 1e3,
        unit="ms/step",
        higher_is_better=False,
        limit_value=None,
        check=(
            f"overhead {100 * overhead:+.0f}%; the counted FLOPs add {100 * extra:.0f}% "
            "(a measurement, always passes)"
        ),
        check_passed=True,
        goal=f"overhead <= extra FLOPs + {100 * LARS_SLACK:.0f}% = {100 * allowed:.0f}%"
        + _why(device, overhead <= allowed),
        goal_met=overhead <= allowed,
    )


def run(device: str, quick: bool, archs: tuple[str, ...] = ARCHS) -> list[dict]:
    cuda = torch.device(device).type == "cuda"
    rate = flop_rate(device)
    cfg = TrainConfig(batch_size=BATCH, warmup_steps=1000)
    steps = (20 if quick else 50) if cuda else (3 if quick else 20)
    repeat = 1 if quick else 5
    rows: list[dict] = []
    for arch in archs:
        steps_of, flops_of = {}, {}
        for prior in PRIORS:
            r, steps_of[prior], flops_of[prior] = _train_row(
                arch, prior, device, cfg, steps, repeat, rate
            )
            rows.append(r)
        rows.append(_overhead_row(arch, steps_of, flops_of, device, steps, repeat))
        if cuda:
            n_ours, n_loop = (200, 5) if quick else (1000, 20)
        else:
            n_ours = n_loop = 2 if quick else (8 if arch == "convhvae" else 16)
        for prior in PRIORS:
            rows.append(_iwae_row(arch, prior, device, n_ours, n_loop, repeat, rate))
    return rows
