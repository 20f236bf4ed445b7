"""A job's peak memory, estimated from its keys before anything big is allocated.

Every size key has an upper bound (:mod:`larsvae.config`), but keys that are each in bounds
can still ask for more memory than the machine has (``model.hidden: 100000`` is 2e10
weights; ``report.rank_samples: 10^7`` decoded images are 31 GB). Without a check the job
dies minutes later in the allocator, or is killed by the OOM killer with no message at all.
So each step estimates its peak from its keys and refuses with one line naming the keys,
the estimate and the memory available (:func:`require`).

The estimate counts the tensors the code allocates, in bytes (float32 unless noted):

- the network: parameters and buffers (training: + gradients + two Adam moments of the
  trainable ones), counted exactly by building the model on PyTorch's ``meta`` device
  (no storage is allocated);
- activations: the outputs of every Linear/Conv layer for one image and one latent sample,
  measured by one forward pass (:func:`model_shape`: of a copy built on the CPU, or on
  ``meta`` for a network too big to allocate), times the
  rows a step evaluates at once (batch_size, train_z_samples, the IWAE tile, the Z chunk),
  times :data:`GRAD_FACTOR` (training keeps pre-activations, activations and their
  gradients) or, for evaluation under ``no_grad``, the widest layer times
  :data:`NOGRAD_FACTOR` (earlier outputs are freed once the next layer has read them);
- the step's own buffers: the Z batch's float64 units, the IWAE noise and log weights,
  the decoded images of ``rank``.

It is an estimate, not a bound; ``tests/test_provenance_limits.py`` checks it against the
peak resident memory measured in a subprocess. Available memory: ``torch.cuda.mem_get_info``
on CUDA; on the CPU ``MemAvailable`` of ``/proc/meminfo`` (and the cgroup limit, if lower);
``$LARSVAE_MEMORY_BYTES`` overrides both (a budget, e.g. on a shared node).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import ranking
from .checkpoint import Checkpoint, CheckpointMeta, check_size
from .config import OUTPUT_LARS_ARCHS, ModelConfig
from .distributions.lars import chunk_rows, default_max_block
from .evaluation import iwae_tiles
from .models import build_model, z_holder
from .utils import UserError

MEMORY_ENV = "LARSVAE_MEMORY_BYTES"
DATA_DIM = 784
F32, F64 = 4, 8
#: training: pre-activation, activation and gradient of each layer output
GRAD_FACTOR = 3
#: no-grad evaluation: a layer's input, its output and an elementwise temporary, for the
#: widest layer (earlier outputs are freed as soon as the next layer has read them)
NOGRAD_FACTOR = 3
#: parameter + gradient + Adam's two moments
ADAM_FACTOR = 4


class MemoryLimit(UserError):
    """A job whose estimated peak memory exceeds what is available (one line)."""


@dataclass(frozen=True)
class ModelShape:
    """What a model's size implies for memory (numbers, not bytes)."""

    params: int  # numbers in the whole model's state dict (parameters, buffers)
    prior_params: int  # ... in its top prior's (a(z), flows): the post-hoc trainable part
    per_point: int  # layer outputs computed once per image (encoder)
    per_pair: int  # layer outputs per (image, latent sample) pair (decoder, lower layers)
    per_z: int  # layer outputs per sample of the top prior (a(z), flows), + latent_dim
    pair_peak: int  # the widest layer output per pair (no_grad keeps about one at a time)
    latent: int  # numbers of one latent sample, all layers (L * d)


@dataclass(frozen=True)
class Part:
    bytes: int
    keys: Mapping[str, Any]  # the keys this part grows with, and their values
    what: str


@dataclass
class Estimate:
    step: str
    parts: list[Part] = field(default_factory=list)

    def add(self, nbytes: float, keys: Mapping[str, Any], what: str) -> None:
        self.parts.append(Part(int(nbytes), dict(keys), what))

    @property
    def total(self) -> int:
        return sum(p.bytes for p in self.parts)


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    raise AssertionError  # unreachable


# ---------------------------------------------------------------------------------------
# the model's size: the network built on the meta device, layer outputs from one pass


def _layer_outputs(module: nn.Module, run: Any) -> list[int]:
    """Numbers in the output of each Linear/Conv layer of ``module`` during ``run()``, in
    call order."""
    sizes: list[int] = []

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
        sizes.append(out.numel())

    layers = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, layers)]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return sizes


#: Largest network (numbers in its state dict) whose layer outputs :func:`model_shape` takes
#: from a forward pass on the CPU; bigger ones run on ``meta``.
CPU_SHAPE_NUMEL = 10**7


def _sample_outputs(
    plain: nn.Module, build: Callable[[], nn.Module], cpu_cut: int
) -> tuple[list[int], list[int]]:
    """Layer outputs of ``plain.log_weights`` (``plain`` built on ``meta``) for 1 image with
    1 and with 2 latent samples. A network of at most ``cpu_cut`` numbers is
    built again on the CPU by ``build()`` and runs there, under a forked random state and
    with a private generator (the caller's random numbers are untouched): its first
    ``meta`` forward would import sympy and torch._dynamo, ~1.2 s of every job. A bigger
    one runs on ``meta``, where nothing is allocated."""
    device = "meta"
    if sum(t.numel() for t in plain.state_dict().values()) <= cpu_cut:
        device = "cpu"
        with torch.device("cpu"), torch.random.fork_rng(devices=[]):
            plain = build()
    plain.eval()
    x = torch.zeros(1, DATA_DIM, device=device)
    gen = torch.Generator() if device == "cpu" else None
    one = _layer_outputs(plain, lambda: plain.log_weights(x, 1, generator=gen))
    two = _layer_outputs(plain, lambda: plain.log_weights(x, 2, generator=gen))
    return one, two


def _linear_widths(module: nn.Module) -> list[int]:
    return [m.out_features for m in module.modules() if isinstance(m, nn.Linear)]


def model_shape(arch: str, prior: str, mcfg: Any, posthoc: bool = False) -> ModelShape:
    """:class:`ModelShape` of ``build_model(arch, prior, mcfg)``, built on ``meta`` (only a
    small plain network is allocated, see :func:`_sample_outputs`); remembered per
    arguments (and :data:`CPU_SHAPE_NUMEL`), as a job asks for it twice (the step's and the
    load's estimates).

    Activations come from ``log_weights`` of the same architecture with a standard prior
    (the LARS prior's running Z is data-dependent and cannot run on ``meta``) for 1 image
    with 1 and with 2 latent samples: a layer whose output grows with the samples runs per
    (image, sample) pair, the others once per image. The top prior's layers are counted
    per prior sample from their widths."""
    return _model_shape(arch, prior, mcfg, posthoc, CPU_SHAPE_NUMEL)


@functools.lru_cache(maxsize=64)
def _model_shape(arch: str, prior: str, mcfg: Any, posthoc: bool, cpu_cut: int) -> ModelShape:
    outputs = arch in OUTPUT_LARS_ARCHS  # activations as its VAE's; a(x) runs per sample
    with torch.device("meta"):
        if posthoc:  # exactly as training and checkpoint.build_from_meta build it
            model = build_model(arch, "gaussian", mcfg)
            model.make_posthoc(mcfg)
        else:
            model = build_model(arch, prior, mcfg)
        plain = (
            build_model("vae" if outputs else arch, "gaussian", mcfg)
            if prior != "gaussian" or outputs
            else model
        )
    one, two = _sample_outputs(
        plain, lambda: build_model("vae" if outputs else arch, "gaussian", mcfg), cpu_cut
    )
    pair = [b - a for a, b in zip(one, two, strict=True) if b != a]
    point = [a for a, b in zip(one, two, strict=True) if b == a]
    prior_mod = z_holder(model)
    widths = [mcfg.latent_dim, *_linear_widths(prior_mod)]
    if outputs:  # a proposal sample is decoded (latent -> H -> H -> pixels) before a(x)
        widths += [mcfg.hidden, mcfg.hidden, DATA_DIM]
    numel = sum(t.numel() for t in model.state_dict().values())
    prior_numel = sum(t.numel() for t in prior_mod.state_dict().values())
    return ModelShape(
        params=numel,
        prior_params=prior_numel,
        per_point=sum(point) + DATA_DIM,
        per_pair=sum(pair) + DATA_DIM,  # + the pixels' Bernoulli log-probabilities
        per_z=sum(widths),
        pair_peak=max([*pair, DATA_DIM]),
        latent=int(getattr(model, "num_layers", 1)) * mcfg.latent_dim,
    )


def shape_of_meta(meta: CheckpointMeta) -> tuple[ModelShape, ModelConfig, str]:
    """(:func:`model_shape`, ModelConfig, prior) of the model a checkpoint's ``meta``
    describes; a post-hoc model has the parameters of the joint LARS model."""
    posthoc = meta.mode == "posthoc"
    prior = "lars" if posthoc else meta.prior
    return model_shape(meta.arch, prior, meta.model_config, posthoc), meta.model_config, prior


def load_job(meta: CheckpointMeta) -> Estimate:
    """Loading a checkpoint: its state dict and the model built from its meta."""
    return _checkpoint_job("load", meta, copies=2)[0]


def check_load(ckpt: Checkpoint, path: Any, device: Any = "cpu") -> None:
    """Building the model of a loaded checkpoint fits in memory: its meta against its weights
    first (:func:`larsvae.checkpoint.check_size`: a forged meta costs nothing), then
    :func:`load_job`. Asked at a step's boundary, before the model is built."""
    check_size(ckpt, path)
    require(load_job(ckpt["meta"]), device, f"checkpoint {path}")


def _checkpoint_job(
    step: str, meta: CheckpointMeta, copies: int = 1
) -> tuple[Estimate, ModelShape]:
    """A step's estimate holding ``copies`` of the checkpoint's weights, and its shape."""
    shape, mcfg, prior = shape_of_meta(meta)
    est = Estimate(step)
    _weights(est, shape, mcfg, prior, copies, copies)
    return est, shape


# ---------------------------------------------------------------------------------------
# the steps' estimates


def _model_keys(prior: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return {"model.hidden": None, "model.latent_dim": None}, (
        {"model.acceptance_hidden": None} if "lars" in prior else {"model.flow_hidden": None}
    )


def _weights(
    est: Estimate, shape: ModelShape, mcfg: Any, prior: str, factor_net: int, factor_prior: int
) -> None:
    net_keys, prior_keys = _model_keys(prior)
    fill = {k: getattr(mcfg, k.split(".")[1]) for k in (*net_keys, *prior_keys)}
    net = shape.params - shape.prior_params
    est.add(
        net * F32 * factor_net,
        {k: fill[k] for k in net_keys},
        f"{net:.3g} network weights"
        + (" with gradients and Adam moments" if factor_net > 1 else ""),
    )
    if shape.prior_params:
        est.add(
            shape.prior_params * F32 * factor_prior,
            {k: fill[k] for k in prior_keys},
            f"{shape.prior_params:.3g} prior weights",
        )


def _iwae_parts(
    est: Estimate,
    shape: ModelShape,
    k: int,
    batch: int,
    k_chunk: int,
    n: int,
    device: Any,
    key: str,
    batch_key: str,
    chunk_key: str,
) -> None:
    nb = max(1, min(n, batch))
    b_tile, k_tile = iwae_tiles(nb, k, batch, k_chunk, torch.device(device))
    rows = b_tile * k_tile
    est.add(
        nb * k * (shape.latent * F32 + F32 + F64),
        {batch_key: batch, key: k},
        "IWAE noise and log weights",
    )
    est.add(
        rows * (shape.pair_peak * NOGRAD_FACTOR + shape.per_z) * F32,
        {chunk_key: k_chunk, batch_key: batch, key: k},
        "IWAE activations of one tile",
    )
    est.add(nb * shape.per_point * F32, {batch_key: batch}, "encoder activations")


def train_job(
    arch: str,
    prior: str,
    mcfg: Any,
    tcfg: Any,
    *,
    posthoc: bool = False,
    data_numbers: int = 0,
    device: Any = "cpu",
) -> Estimate:
    """``larsvae train``: weights with Adam state, a batch's activations with gradients,
    the train_z_samples proposal samples of Algorithm 1, the validation NLL."""
    est = Estimate("train")
    shape = model_shape(arch, "lars" if posthoc else prior, mcfg, posthoc)
    _weights(est, shape, mcfg, prior, 1 if posthoc else ADAM_FACTOR, ADAM_FACTOR)
    est.add(
        tcfg.batch_size * (shape.per_point + shape.per_pair + shape.per_z) * F32 * GRAD_FACTOR,
        {"train.batch_size": tcfg.batch_size},
        "a batch's activations",
    )
    if posthoc or "lars" in prior:
        est.add(
            mcfg.train_z_samples * shape.per_z * F32 * GRAD_FACTOR,
            {"model.train_z_samples": mcfg.train_z_samples},
            "Algorithm 1's proposal samples",
        )
    if tcfg.eval_every > 0:
        _iwae_parts(
            est,
            shape,
            tcfg.eval_k,
            100,
            1000,
            100,
            device,
            "train.eval_k",
            "train.eval_k",
            "train.eval_k",
        )
    if data_numbers:
        est.add(data_numbers * (1 + F32), {}, "the dataset")
    return est


def z_job(meta: CheckpointMeta, ecfg: Any, device: Any) -> Estimate:
    """``larsvae estimate-z``: the batch's float64 units, one chunk of a(z) evaluations."""
    est, shape = _checkpoint_job("estimate-z", meta)
    units = min(ecfg.z_batch, ecfg.z_samples)
    est.add(units * F64, {"evaluate.z_batch": ecfg.z_batch}, "the batch's float64 values")
    chunk = min(units, chunk_rows(torch.device(device)))  # a(z) rows per call, reused buffers
    est.add(
        chunk * (shape.per_z + shape.latent) * F32,
        {"evaluate.z_batch": ecfg.z_batch},
        "one chunk of a(z) evaluations",
    )
    return est


def evaluate_job(meta: CheckpointMeta, ecfg: Any, n_test: int, device: Any) -> Estimate:
    """``larsvae evaluate``: IWAE noise and log weights of iwae_batch images, one tile of
    (image, sample) pairs, the test ELBO's batch."""
    est, shape = _checkpoint_job("evaluate", meta)
    n = n_test if ecfg.test_subset is None else min(n_test, ecfg.test_subset)
    _iwae_parts(
        est,
        shape,
        ecfg.iwae_k,
        ecfg.iwae_batch,
        ecfg.iwae_k_chunk,
        n,
        device,
        "evaluate.iwae_k",
        "evaluate.iwae_batch",
        "evaluate.iwae_k_chunk",
    )
    est.add(n * DATA_DIM * (1 + F32), {"evaluate.test_subset": ecfg.test_subset}, "test images")
    return est


def sample_job(meta: CheckpointMeta, n: int, device: Any) -> Estimate:
    """``larsvae sample``: n decoded images and the sampler's blocks of proposals."""
    est, shape = _checkpoint_job("sample", meta)
    est.add(
        n * (shape.pair_peak * NOGRAD_FACTOR + shape.latent) * F32,
        {"--n (report.samples)": n},
        "n samples",
    )
    if meta.is_lars:
        t = meta.model_config.truncation or 1 << 30
        block = min(default_max_block(torch.device(device)), n * t)
        est.add(block * shape.per_z * F32, {"--n (report.samples)": n}, "a block of proposals")
    return est


def rank_job(meta: CheckpointMeta, n: int, device: Any) -> Estimate:
    """``larsvae rank``: n proposal samples, their a(z) and their decoded images (kept)."""
    est, shape = _checkpoint_job("rank", meta)
    est.add(shape.prior_params * F64, {}, "a float64 copy of a(z)")
    est.add(
        n * (2 * DATA_DIM * F32 + shape.latent * F32 * 2 + 2 * F64),
        {"--n (report.rank_samples)": n},
        "n ranked samples and their images",
    )
    rows = min(n, ranking.CHUNK_ROWS)
    est.add(
        rows * (shape.pair_peak * NOGRAD_FACTOR * F32 + shape.per_z * F64),
        {"--n (report.rank_samples)": n},
        "one chunk of decoding",
    )
    return est


# ---------------------------------------------------------------------------------------
# what is available, and the refusal


def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        return None if limit == "max" else max(0, int(limit) - int(used))
    except (OSError, ValueError):
        return None


def available(device: Any = "cpu") -> tuple[int | None, str]:
    """(bytes available to a new allocation on ``device``, where the number comes from);
    (None, ...) when it cannot be told (then nothing is refused)."""
    env = os.environ.get(MEMORY_ENV)
    if env:
        try:
            return int(float(env)), f"${MEMORY_ENV}"
        except ValueError:
            raise UserError(f"${MEMORY_ENV}: expected a number of bytes, got {env!r}") from None
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free), f"free on {dev}"
    if dev.type != "cpu":
        return None, f"unknown for {dev}"
    have = [
        (v, s)
        for v, s in (
            (_meminfo_available(), "MemAvailable"),
            (_cgroup_available(), "the cgroup's limit"),
        )
        if v is not None
    ]
    return min(have) if have else (None, "unknown")


def require(est: Estimate, device: Any = "cpu", what: str | None = None) -> int:
    """Raise :class:`MemoryLimit` (one line naming the keys) if ``est`` does not fit in the
    memory available on ``device``; return the estimate in bytes."""
    total = est.total
    avail, source = available(device)
    if avail is None or total <= avail:
        return total
    parts = sorted((p for p in est.parts if p.bytes > 0), key=lambda p: -p.bytes)
    named, covered = [], 0
    for p in parts:
        if len(named) == 2 or covered >= 0.8 * total:
            break
        keys = ", ".join(f"{k} = {v}" if v is not None else k for k, v in p.keys.items())
        named.append(f"{human(p.bytes)} for {p.what}" + (f" ({keys})" if keys else ""))
        covered += p.bytes
    raise MemoryLimit(
        f"{what or est.step}: needs about {human(total)} of memory, more than the "
        f"{human(avail)} available ({source}): "
        + "; ".join(named)
        + "; lower these keys or run on a larger machine"
    )
