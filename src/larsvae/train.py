"""Training loop with exact resume (paper Appendix C.3 schedule).

``fit`` maximises the ELBO (Eq. 3 of the paper with the prior replaced by the resampled prior,
Eq. A.14 / Algorithm 1 for LARS priors) with Adam, a step learning-rate schedule
(``lr`` until ``lr_decay_step``, then ``lr_final``) and a linear KL warm-up
(beta: 0 -> 1 over ``warmup_steps``).

Exact resume. Everything random at step t is a pure function of ``(seed, t)``: the global
generator (and, on CUDA, the model's device generator) is reseeded with
``derive_seed(seed, t)`` before the step, and the batch is ``stream.batch(t)``. A checkpoint
at step s holds the model (including the LARS running ``<Z>`` buffer), Adam's moments, the
schedule position, RNG states, the curve, the logging window and the early-stopping state,
so continuing from it replays steps s, s+1, ... exactly as an uninterrupted run would: on
the CPU the final weights are bitwise identical.

On CUDA a step is one CUDA graph (forward, backward and Adam captured once, then replayed),
which removes the ~200 kernel launches per step; ``CUDA_GRAPHS = False`` (or the environment
variable ``LARSVAE_CUDA_GRAPHS=0``) turns it off. A replay reseeds from ``(seed, t)`` like an
eager step, so the randomness contract and exact resume hold there too; graph and eager runs
agree up to floating-point rounding, not bitwise. The CPU path is the eager step.

The parts of :func:`fit`: :class:`_Run` (paths, the checkpointed state, resume and the
checkpoints), :class:`_EagerStep` / :class:`_GraphStep` (one optimisation step),
:meth:`_Run.log_window` (the curve and the log) and :meth:`_Run.validate` (validation and
early stopping).

Files, for ``out_path = .../model.pt``:

- ``model.pt.resume.pt``: mid-training checkpoint, written atomically every
  ``checkpoint_every`` steps; rerunning the same command resumes from it; removed at the end.
- ``curve.tsv`` (beside the model): training curve for DVC plots, written at the end from
  the curve kept in the checkpoint, so a resumed run has no duplicated or missing rows.
- ``model.pt``: written atomically once, at the very end (so Snakemake sees it appear
  only when training is complete).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from . import objectives as _objectives
from .checkpoint import (
    CheckpointError,
    CheckpointMeta,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig
from .distributions.base import warmup_parameters
from .evaluation import iwae_log_likelihood
from .models import z_holder
from .utils import (
    TrainingDiverged,
    UserError,
    atomic_write_text,
    derive_seed,
    library_version,
    module_device,
    progress_bar,
    remove_stale_temporaries,
)

CURVE_COLUMNS = ("step", "loss", "rec", "kl", "neg_elbo", "beta", "lr", "log_z")
_WINDOW_KEYS = ("loss", "rec", "kl", "neg_elbo")

#: Train on CUDA through a captured CUDA graph (see the module docstring).
CUDA_GRAPHS = os.environ.get("LARSVAE_CUDA_GRAPHS", "1") != "0"


def resume_path_for(out_path: str | os.PathLike) -> Path:
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".resume.pt")


def curve_path_for(out_path: str | os.PathLike) -> Path:
    return Path(out_path).with_name("curve.tsv")


# The KL warm-up and the learning-rate schedule (App. C.3) live in larsvae.objectives; these
# names are kept for callers of larsvae.train.
kl_beta = _objectives.kl_beta
learning_rate = _objectives.lr_at


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    if hasattr(model, "trainable_parameters"):
        params = list(model.trainable_parameters())
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("the model has no trainable parameters")
    return params


def make_optimizer(
    params: list[torch.nn.Parameter], lr: float, warmup: Sequence[torch.nn.Parameter] = ()
) -> torch.optim.Adam:
    """Adam with default betas and eps, fused into one kernel over all parameters: on the
    CPU ~3x faster than the per-tensor loop for the paper's VAE; equal up to rounding.

    The ``params`` also in ``warmup`` (a flow prior's, ``warmup_parameters``)
    form a second group whose learning rate follows the KL warm-up (:func:`group_lr`).
    Without them (every other prior) this is the one group of all ``params``, as it always
    was."""
    warm = {id(p) for p in warmup}
    if not any(id(p) in warm for p in params):
        return torch.optim.Adam(params, lr=lr, fused=True)
    rest = [p for p in params if id(p) not in warm]
    groups = [{"params": rest}] if rest else []
    groups.append({"params": [p for p in params if id(p) in warm], "kl_warmup": True})
    return torch.optim.Adam(groups, lr=lr, fused=True)


def group_lr(group: dict[str, Any], step: int, cfg: TrainConfig) -> float:
    """Learning rate of an Adam group at ``step``: the schedule's, times the KL weight beta
    for a ``kl_warmup`` group. Adam is invariant to the scale of a gradient, so the beta in
    front of the KL does not slow parameters that only the KL reaches; this does, as plain
    SGD would (``larsvae.distributions.base.warmup_parameters``)."""
    lr = learning_rate(step, cfg)
    return lr * kl_beta(step, cfg.warmup_steps) if group.get("kl_warmup") else lr


def seed_step(seed: int, t: int, device: torch.device) -> None:
    """Reseed for step ``t``: the global CPU generator with ``derive_seed(seed, t)``, as
    ``torch.manual_seed`` does (which would also visit every other backend, ~0.1 ms),
    and on CUDA the generator of ``device``."""
    s = derive_seed(seed, t)
    torch.default_generator.manual_seed(s)
    if device.type == "cuda":
        torch.cuda.default_generators[_cuda_index(device)].manual_seed(s)


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def current_log_z(model: torch.nn.Module) -> float:
    """The LARS running log <Z> (Algorithm 1), or NaN for models without one."""
    log_z = getattr(z_holder(model), "log_z", None)
    if isinstance(log_z, torch.Tensor):
        return float(log_z.detach().double().cpu())
    return math.nan


def default_validation_metric(model: torch.nn.Module, x: torch.Tensor, k: int) -> float:
    """Validation NLL in nats: IWAE bound with ``k`` samples (Burda et al.)."""
    with torch.no_grad():
        return float(-iwae_log_likelihood(model, x, k=k).mean())


def _curve_tensor(rows: list[list[float]], ncols: int) -> torch.Tensor:
    if not rows:
        return torch.zeros((0, ncols), dtype=torch.float64)
    return torch.tensor(rows, dtype=torch.float64)


def _format_value(v: float) -> str:
    if math.isnan(v):
        return "nan"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def write_curve_tsv(path: str | os.PathLike, columns: list[str], rows: list[list[float]]) -> None:
    lines = ["\t".join(columns)]
    lines += ["\t".join(_format_value(v) for v in row) for row in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------
# One step


def _step_stats(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """(loss, mean rec, mean kl, mean -elbo) of one step, float64 (4,), without a host sync.
    -elbo = rec + kl per example, so its mean is the sum of the two means."""
    rec_kl = torch.stack([out["rec"], out["kl"]]).detach().double().mean(1)  # (2,)
    loss = out["loss"].detach().double().reshape(1)
    return torch.cat([loss, rec_kl, rec_kl.sum(0, keepdim=True)])


class _EagerStep:
    """One optimisation step as plain PyTorch calls: the CPU path (and CUDA without graphs)."""

    def __init__(self, model, optimizer, stream, cfg: TrainConfig, seed: int):
        self.model, self.optimizer, self.stream = model, optimizer, stream
        self.cfg, self.seed = cfg, seed
        self.device = module_device(model)

    def __call__(self, t: int) -> torch.Tensor:
        """Step t (0-based); returns its stats (see :func:`_step_stats`). Stops before the
        update if the loss is not finite."""
        seed_step(self.seed, t, self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = group_lr(group, t, self.cfg)
        out = self.model.loss(self.stream.batch(t), kl_beta(t, self.cfg.warmup_steps))
        stats = _step_stats(out)
        if not math.isfinite(float(stats[0])):
            return stats
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        self.optimizer.step()
        return stats


class _GraphStep:
    """One optimisation step as a CUDA graph (forward, backward and Adam), captured once.

    Per step only the batch, beta and the learning rate are written into the graph's
    input tensors and the generator is reseeded with ``derive_seed(seed, t)``; the replay
    then draws the same random numbers as an eager step would. Capturing needs a few eager
    warm-up steps (lazy initialisation); the model, Adam and RNG state from before them are
    put back, so the run continues exactly where it was. The step's numbers stay on the GPU
    until fit needs them (log, validation, checkpoint), so a non-finite loss is noticed
    there, after the updates, unlike on the eager path; the resume file on disk is then
    still the last good one, and the error names the first bad step all the same.
    """

    _WARMUP = 3

    def __init__(self, model, optimizer, stream, cfg: TrainConfig, seed: int):
        self.model, self.optimizer, self.stream = model, optimizer, stream
        self.cfg, self.seed = cfg, seed
        self.device = module_device(model)
        self.x = stream.batch(0).clone()
        self.beta = torch.zeros((), device=self.device)
        for group in optimizer.param_groups:  # graph inputs, refilled each step
            group["lr"] = torch.tensor(float(group["lr"]), device=self.device)
            group["capturable"] = True
        saved = self._save_state()
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(self._WARMUP):
                    self._step()
            torch.cuda.current_stream(self.device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(self.graph):
                self.stats = self._step()
        finally:
            self._restore_state(saved)

    def _step(self) -> torch.Tensor:
        out = self.model.loss(self.x, self.beta)
        self.optimizer.zero_grad(set_to_none=False)
        out["loss"].backward()
        self.optimizer.step()
        return _step_stats(out)

    def _save_state(self) -> dict[str, Any]:
        with torch.no_grad():
            return {
                "model": [t.clone() for t in self.model.state_dict().values()],
                "optimizer": {
                    p: {k: v.clone() for k, v in s.items()} for p, s in self.optimizer.state.items()
                },
                "rng": torch.cuda.get_rng_state(self.device),
            }

    def _restore_state(self, saved: dict[str, Any]) -> None:
        """In place: the graph holds these very tensors."""
        with torch.no_grad():
            for t, v in zip(self.model.state_dict().values(), saved["model"], strict=True):
                t.copy_(v)
            for p, s in self.optimizer.state.items():
                old = saved["optimizer"].get(p)
                for k, v in s.items():
                    if old is None:  # no state before the warm-up: a fresh Adam is zeros
                        v.zero_()
                    else:
                        v.copy_(old[k])
            torch.cuda.set_rng_state(saved["rng"], self.device)

    def __call__(self, t: int) -> torch.Tensor:
        """Step t; returns its stats, still on the GPU (read back by :meth:`_Run.flush`)."""
        seed_step(self.seed, t, self.device)
        self.x.copy_(self.stream.batch(t))
        self.beta.fill_(kl_beta(t, self.cfg.warmup_steps))
        for group in self.optimizer.param_groups:
            group["lr"].fill_(group_lr(group, t, self.cfg))
        self.graph.replay()
        return self.stats.clone()


def _make_step(model, optimizer, stream, cfg: TrainConfig, seed: int, log) -> Callable:
    if not (CUDA_GRAPHS and module_device(model).type == "cuda"):
        return _EagerStep(model, optimizer, stream, cfg, seed)
    try:
        return _GraphStep(model, optimizer, stream, cfg, seed)
    except Exception as e:  # an op that cannot be captured: train eagerly, same maths
        log(f"CUDA graph capture failed ({type(e).__name__}: {e}); training without graphs")
        optimizer.zero_grad(set_to_none=True)
        return _EagerStep(model, optimizer, stream, cfg, seed)


# ---------------------------------------------------------------------------------------
# State, resume, checkpoints, logging, validation


def _empty_window() -> dict[str, float]:
    return dict.fromkeys(_WINDOW_KEYS, 0.0) | {"count": 0}


@dataclass
class _State:
    """What the resume checkpoint carries besides model, optimizer and RNG."""

    step: int = 0  # completed steps == data position
    curve: list[list[float]] = field(default_factory=list)
    window: dict[str, float] = field(default_factory=_empty_window)
    best: dict[str, Any] = field(
        default_factory=lambda: {"metric": math.inf, "step": -1, "bad_evals": 0, "model": None}
    )
    evals: list[list[float]] = field(default_factory=list)  # (step, valid metric)

    @property
    def last_valid(self) -> float:
        return self.evals[-1][1] if self.evals else math.nan


class _Run:
    """One call of :func:`fit`: its files, settings, log and checkpointed state."""

    def __init__(
        self,
        model,
        optimizer,
        cfg: TrainConfig,
        out_path,
        seed: int,
        meta: CheckpointMeta,
        valid,
        valid_metric,
        progress: bool,
        log_path,
        curve_path,
    ):
        self.model, self.optimizer, self.cfg, self.seed = model, optimizer, cfg, seed
        self.out_path = Path(out_path)
        self.resume_path = resume_path_for(self.out_path)
        self.curve_path = (
            Path(curve_path) if curve_path is not None else curve_path_for(self.out_path)
        )
        self.meta = replace(meta, train_config=cfg, seed=int(seed))
        self.valid = valid
        self.do_eval = valid is not None and cfg.eval_every > 0
        self.early_stop = self.do_eval and cfg.early_stopping_patience > 0
        self.valid_metric = valid_metric or default_validation_metric
        self.columns = list(CURVE_COLUMNS) + (["valid_nll"] if self.do_eval else [])
        self.progress = progress
        self.log_file = open(log_path, "a") if log_path is not None else None  # noqa: SIM115
        self.state = _State()
        self.last_ckpt_step: int | None = None  # the resume file on disk, if ours
        self.pending: list[tuple[int, torch.Tensor]] = []  # steps not yet read back

    def log(self, msg: str, to_stderr: bool = True) -> None:
        line = f"[larsvae train] {msg}"
        if to_stderr:
            print(line, file=sys.stderr, flush=True)
        if self.log_file is not None:
            self.log_file.write(line + "\n")
            self.log_file.flush()

    def close(self) -> None:
        if self.log_file is not None:
            self.log_file.close()

    # -- resume and checkpoints ----------------------------------------------------------
    def start(self) -> None:
        """Remove a stale output, then resume from the checkpoint if it matches ``meta``."""
        if self.out_path.exists():  # regenerating the output: never leave a stale one
            self.out_path.unlink()
        # temporaries of a write that was killed half-way (the renamed files are never torn)
        remove_stale_temporaries(self.out_path, self.resume_path, self.curve_path)
        if not self.resume_path.exists():
            return
        ckpt = load_checkpoint(self.resume_path)
        if ckpt.get("kind") != "resume":
            raise CheckpointError(f"checkpoint {self.resume_path}: not a resume checkpoint")
        if ckpt["meta"] != self.meta:
            self.log(
                f"{self.resume_path} was written with other settings "
                f"({_first_difference(ckpt['meta'], self.meta)}); starting afresh"
            )
            self.resume_path.unlink()
            return
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        self.state = _State(
            step=int(ckpt["step"]),
            curve=ckpt["curve"]["values"].tolist(),
            window=dict(ckpt["window"]),
            best=dict(ckpt["best"]),
            evals=ckpt["evals"].tolist(),
        )
        self.last_ckpt_step = self.state.step or None
        self.log(f"resuming from {self.resume_path} at step {self.state.step}")

    def save_resume(self) -> None:
        st = self.state
        _check_finite_params(self.model, st.step)
        save_checkpoint(
            {
                "kind": "resume",
                "version": library_version(),
                "meta": self.meta,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": {"lr": learning_rate(st.step, self.cfg), "step": st.step},
                "rng": get_rng_state(),
                "step": st.step,
                "data_position": st.step,
                "curve": {
                    "columns": self.columns,
                    "values": _curve_tensor(st.curve, len(self.columns)),
                },
                "window": st.window,
                "best": st.best,
                "evals": _curve_tensor(st.evals, 2),
            },
            self.resume_path,
        )
        self.last_ckpt_step = st.step

    def diverged(self, t: int, loss: float) -> TrainingDiverged:
        where = (
            f"the last good checkpoint {self.resume_path} (step {self.last_ckpt_step}) is kept"
            if self.last_ckpt_step is not None
            else "no checkpoint had been written yet"
        )
        return TrainingDiverged(
            f"training diverged: loss is {loss} at step {t + 1}; {where}; "
            f"no model written to {self.out_path}"
        )

    def finish(self, summary: dict[str, Any]) -> None:
        """Best weights (early stopping), curve.tsv, the final model; drop the resume file."""
        st = self.state
        if self.early_stop and st.best["model"] is not None:
            self.model.load_state_dict(st.best["model"])
        write_curve_tsv(self.curve_path, self.columns, st.curve)
        save_checkpoint(
            {
                "kind": "final",
                "version": library_version(),
                "meta": self.meta,
                "model": self.model.state_dict(),
                "step": st.step,
                "curve": {
                    "columns": self.columns,
                    "values": _curve_tensor(st.curve, len(self.columns)),
                },
                # timings and resume history stay out: identical training, identical bytes
                "summary": {
                    k: v for k, v in summary.items() if v is not None and k not in _RUN_ONLY
                },
            },
            self.out_path,
        )
        self.resume_path.unlink(missing_ok=True)

    # -- logging -------------------------------------------------------------------------
    def record(self, t: int, stats: torch.Tensor) -> None:
        """Keep step t's (loss, rec, kl, neg_elbo) until :meth:`flush`."""
        self.pending.append((t, stats))

    def flush(self) -> None:
        """Read the pending steps' numbers back (one host sync) into the logging window;
        raise :class:`TrainingDiverged` naming the first step with a non-finite loss."""
        if not self.pending:
            return
        values = torch.stack([s for _, s in self.pending]).tolist()
        steps = [t for t, _ in self.pending]
        self.pending = []
        for t, stats in zip(steps, values, strict=True):
            if not math.isfinite(stats[0]):
                raise self.diverged(t, stats[0])
            for key, v in zip(_WINDOW_KEYS, stats, strict=True):
                self.state.window[key] += v
            self.state.window["count"] += 1

    def log_window(self, t: int, bar) -> None:
        """Close the window with a curve row (and a log line) after step t."""
        st = self.state
        n = st.window["count"]
        beta = kl_beta(t, self.cfg.warmup_steps)
        row = [st.step] + [st.window[k] / n for k in _WINDOW_KEYS]
        row += [beta, learning_rate(t, self.cfg), current_log_z(self.model)]
        if self.do_eval:
            row.append(st.last_valid)
        st.curve.append(row)
        if self.log_file is not None or not self.progress:
            text = " ".join(
                f"{c}={_format_value(v)}" for c, v in zip(self.columns, row, strict=True)
            )
            self.log(text, to_stderr=not self.progress)
        st.window = _empty_window()
        bar.set_postfix(loss=f"{row[1]:.2f}", beta=f"{beta:.2f}", refresh=False)

    # -- validation and early stopping ---------------------------------------------------
    def validate(self) -> bool:
        """Validation NLL after the current step; True if early stopping says stop."""
        st = self.state
        torch.manual_seed(derive_seed(self.seed, st.step, 1))
        self.model.eval()
        value = float(self.valid_metric(self.model, self.valid, self.cfg.eval_k))
        self.model.train()
        st.evals.append([st.step, value])
        if st.curve and st.curve[-1][0] == st.step:
            st.curve[-1][-1] = value
        if value < st.best["metric"]:
            st.best.update(metric=value, step=st.step, bad_evals=0)
            if self.early_stop:
                st.best["model"] = {
                    k: v.detach().clone().cpu() for k, v in self.model.state_dict().items()
                }
        else:
            st.best["bad_evals"] += 1
        self.log(
            f"step {st.step}: validation NLL {value:.4f} (best {st.best['metric']:.4f} "
            f"at step {st.best['step']})"
        )
        return self.early_stop and st.best["bad_evals"] >= self.cfg.early_stopping_patience


def fit(
    model: torch.nn.Module,
    stream: Any,
    cfg: TrainConfig,
    out_path: str | os.PathLike,
    *,
    seed: int,
    meta: CheckpointMeta,
    valid: torch.Tensor | None = None,
    valid_metric: Callable[[torch.nn.Module, torch.Tensor, int], float] | None = None,
    progress: bool = True,
    log_path: str | os.PathLike | None = None,
    curve_path: str | os.PathLike | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train ``model`` on batches ``stream.batch(t)`` for ``cfg.iterations`` steps.

    ``model.loss(x, beta)`` must return a dict with ``loss`` (scalar: mean of rec + beta*kl)
    and per-example ``rec``, ``kl``, ``elbo``. ``meta`` (what the model is: arch, prior,
    mode, model_config, provenance) is stored in every checkpoint, with ``cfg`` as its
    ``train_config`` and ``seed``, so that ``load_model`` can rebuild the model. ``valid`` (binary validation images on the model's device) enables validation
    every ``cfg.eval_every`` steps and, with ``cfg.early_stopping_patience > 0``, early
    stopping that keeps the best weights. ``stop_after`` ends this call after that many
    completed steps, leaving the resume checkpoint (used by tests).

    Returns a summary dict (steps, final/best metrics, wall time, seconds per step).
    Raises :class:`TrainingDiverged` on a non-finite loss, naming the step.
    """
    model.train()
    optimizer = make_optimizer(trainable_parameters(model), cfg.lr, warmup_parameters(model))
    if any(g.get("kl_warmup") for g in optimizer.param_groups):  # resumes from before restart
        meta = replace(meta, flow_lr_warmup=True)
    run = _Run(
        model,
        optimizer,
        cfg,
        out_path,
        seed,
        meta,
        valid,
        valid_metric,
        progress,
        log_path,
        curve_path,
    )
    st = run.state
    target = cfg.iterations if stop_after is None else min(cfg.iterations, stop_after)
    bar = None
    try:
        run.start()
        st = run.state
        start_step = st.step
        step = _make_step(model, optimizer, stream, cfg, seed, run.log)
        bar = progress_bar(cfg.iterations, initial=st.step, desc="train", enabled=progress)
        t0 = time.perf_counter()
        stopped_early = _train_steps(run, step, bar, cfg, target)
        wall = time.perf_counter() - t0
    finally:
        if bar is not None:
            bar.close()
        run.close()
    summary = _summary(run, model, cfg, start_step, wall, stopped_early)
    if summary["finished"]:
        run.finish(summary)
    return summary


def _train_steps(run: _Run, step: Any, bar: Any, cfg: TrainConfig, target: int) -> bool:
    """Optimisation steps until ``target`` or early stopping (then True), with the logging,
    validation and resume checkpoints ``cfg`` asks for."""
    st = run.state
    stopped_early = False
    # A graph step is read back only when its numbers are needed (no host sync per
    # step); the eager step checks the loss before its update, so the CPU reads each.
    defer = isinstance(step, _GraphStep)
    while st.step < target and not stopped_early:
        t = st.step
        run.record(t, step(t))
        st.step = t + 1
        bar.update(1)
        log_now = st.step % cfg.log_every == 0 or st.step == cfg.iterations
        eval_now = run.do_eval and (st.step % cfg.eval_every == 0 or st.step == cfg.iterations)
        save_now = st.step % cfg.checkpoint_every == 0 or st.step == target
        if log_now or eval_now or save_now or not defer:
            run.flush()  # before any checkpoint: a diverged step is never saved
        if log_now:
            run.log_window(t, bar)
        if eval_now:
            stopped_early = run.validate()
        if save_now or stopped_early:
            run.save_resume()
    if stopped_early:
        run.log(
            f"early stopping at step {st.step}: no improvement in "
            f"{cfg.early_stopping_patience} evaluations; keeping step "
            f"{st.best['step']}"
        )
    return stopped_early


def _summary(
    run: _Run,
    model: torch.nn.Module,
    cfg: TrainConfig,
    start_step: int,
    wall: float,
    stopped_early: bool,
) -> dict[str, Any]:
    """What :func:`fit` returns: steps, final/best metrics, wall time, seconds per step."""
    st = run.state
    steps_run = st.step - start_step
    return {
        "step": st.step,
        "steps_this_run": steps_run,
        "resumed_from": start_step,
        "wall_time_s": wall,
        "sec_per_step": wall / steps_run if steps_run else math.nan,
        "final_loss": st.curve[-1][1] if st.curve else math.nan,
        "log_z": current_log_z(model),
        "stopped_early": stopped_early,
        "best_valid_nll": st.best["metric"] if run.do_eval else None,
        "best_step": st.best["step"] if run.do_eval else None,
        "finished": st.step >= cfg.iterations or stopped_early,
    }


#: summary keys that describe one process's run, not the model (kept out of model.pt)
_RUN_ONLY = ("wall_time_s", "sec_per_step", "steps_this_run", "resumed_from")


def _check_finite_params(model: torch.nn.Module, step: int) -> None:
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise TrainingDiverged(
                f"training diverged: parameter {name} is not finite after step {step}; "
                "the last good checkpoint is kept"
            )


def _first_difference(a: CheckpointMeta, b: CheckpointMeta) -> str:
    fa, fb = a.to_dict(), b.to_dict()
    for k in sorted(set(fa) | set(fb)):
        if fa.get(k) != fb.get(k):
            return f"{k}: {fa.get(k)!r} != {fb.get(k)!r}"
    return "?"
