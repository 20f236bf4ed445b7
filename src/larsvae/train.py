"""Training loop with exact resume (paper Appendix C.3 schedule).

``fit`` maximises the ELBO (Eq. 3 of the paper with the prior replaced by the resampled prior,
Eq. A.14 / Algorithm 1 for LARS priors) with Adam, a step learning-rate schedule
(``lr`` until ``lr_decay_step``, then ``lr_final``) and a linear KL warm-up
(beta: 0 -> 1 over ``warmup_steps``).

Exact resume. Everything random at step t is a pure function of ``(seed, t)``: the global
torch generator is reseeded with ``derive_seed(seed, t)`` before the step, and the batch is
``stream.batch(t)``. A checkpoint at step s holds the model (including the LARS running
``<Z>`` buffer), Adam's moments, the schedule position, RNG states, the curve, the logging
window and the early-stopping state, so continuing from it replays steps s, s+1, ...
exactly as an uninterrupted run would: on the CPU the final weights are bitwise identical.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import objectives as _objectives
from .checkpoint import (
    CheckpointError,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig, to_dict
from .utils import (
    TrainingDiverged,
    UserError,
    atomic_write_text,
    derive_seed,
    library_version,
    progress_bar,
    remove_stale_temporaries,
)

CURVE_COLUMNS = ("step", "loss", "rec", "kl", "neg_elbo", "beta", "lr", "log_z")
_WINDOW_KEYS = ("loss", "rec", "kl", "neg_elbo")


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


def current_log_z(model: torch.nn.Module) -> float:
    """The LARS running log <Z> (Algorithm 1), or NaN for priors without one."""
    prior = getattr(model, "top_prior", None)
    log_z = getattr(prior, "log_z", None)
    if isinstance(log_z, torch.Tensor):
        return float(log_z.detach().double().cpu())
    return math.nan


def default_validation_metric(model: torch.nn.Module, x: torch.Tensor, k: int) -> float:
    """Validation NLL in nats: IWAE bound with ``k`` samples (Burda et al.)."""
    from .evaluation import iwae_log_likelihood

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


def fit(
    model: torch.nn.Module,
    stream: Any,
    cfg: TrainConfig,
    out_path: str | os.PathLike,
    *,
    seed: int,
    meta: dict[str, Any] | None = None,
    valid: torch.Tensor | None = None,
    valid_metric: Callable[[torch.nn.Module, torch.Tensor, int], float] | None = None,
    progress: bool = True,
    log_path: str | os.PathLike | None = None,
    curve_path: str | os.PathLike | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train ``model`` on batches ``stream.batch(t)`` for ``cfg.iterations`` steps.

    ``model.loss(x, beta)`` must return a dict with ``loss`` (scalar: mean of rec + beta*kl)
    and per-example ``rec``, ``kl``, ``elbo``. ``meta`` (arch, prior, mode, dataset,
    model_config, ...) is stored in every checkpoint so that ``load_model`` can rebuild the
    model. ``valid`` (binary validation images on the model's device) enables validation
    every ``cfg.eval_every`` steps and, with ``cfg.early_stopping_patience > 0``, early
    stopping that keeps the best weights. ``stop_after`` ends this call after that many
    completed steps, leaving the resume checkpoint (used by tests).

    Returns a summary dict (steps, final/best metrics, wall time, seconds per step).
    Raises :class:`TrainingDiverged` on a non-finite loss, naming the step.
    """
    out_path = Path(out_path)
    resume_path = resume_path_for(out_path)
    curve_path = Path(curve_path) if curve_path is not None else curve_path_for(out_path)
    meta = dict(meta or {})
    meta.update(train_config=to_dict(cfg), seed=int(seed))
    do_eval = valid is not None and cfg.eval_every > 0
    early_stop = do_eval and cfg.early_stopping_patience > 0
    valid_metric = valid_metric or default_validation_metric
    columns = list(CURVE_COLUMNS) + (["valid_nll"] if do_eval else [])

    log_file = open(log_path, "a") if log_path is not None else None  # noqa: SIM115

    def log(msg: str, to_stderr: bool = True) -> None:
        line = f"[larsvae train] {msg}"
        if to_stderr:
            print(line, file=sys.stderr, flush=True)
        if log_file is not None:
            log_file.write(line + "\n")
            log_file.flush()

    params = trainable_parameters(model)
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    model.train()

    # ---- state that the checkpoint carries -------------------------------------------
    step = 0  # completed steps == data position
    curve: list[list[float]] = []
    window = dict.fromkeys(_WINDOW_KEYS, 0.0) | {"count": 0}
    best: dict[str, Any] = {"metric": math.inf, "step": -1, "bad_evals": 0, "model": None}
    evals: list[list[float]] = []  # (step, valid metric)
    last_valid = math.nan

    if out_path.exists():  # regenerating the output: never leave a stale one in place
        out_path.unlink()
    # temporaries of a write that was killed half-way (the renamed files are never torn)
    remove_stale_temporaries(out_path, resume_path, curve_path)
    if resume_path.exists():
        ckpt = load_checkpoint(resume_path)
        if ckpt.get("kind") != "resume":
            raise CheckpointError(f"checkpoint {resume_path}: not a resume checkpoint")
        if _fingerprint(ckpt["meta"]) != _fingerprint(meta):
            log(
                f"{resume_path} was written with other settings "
                f"({_first_difference(ckpt['meta'], meta)}); starting afresh"
            )
            resume_path.unlink()
        else:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            set_rng_state(ckpt["rng"])
            step = int(ckpt["step"])
            curve = ckpt["curve"]["values"].tolist()
            window = dict(ckpt["window"])
            best = dict(ckpt["best"])
            evals = ckpt["evals"].tolist()
            last_valid = evals[-1][1] if evals else math.nan
            log(f"resuming from {resume_path} at step {step}")
    last_ckpt_step = step if step > 0 else None  # the resume file on disk, if ours

    def save_resume() -> None:
        save_checkpoint(
            {
                "kind": "resume",
                "version": library_version(),
                "meta": meta,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": {"lr": learning_rate(step, cfg), "step": step},
                "rng": get_rng_state(),
                "step": step,
                "data_position": step,
                "curve": {"columns": columns, "values": _curve_tensor(curve, len(columns))},
                "window": window,
                "best": best,
                "evals": _curve_tensor(evals, 2),
            },
            resume_path,
        )

    target = cfg.iterations if stop_after is None else min(cfg.iterations, stop_after)
    bar = progress_bar(cfg.iterations, initial=step, desc="train", enabled=progress)
    t0 = time.perf_counter()
    start_step = step
    stopped_early = False
    try:
        while step < target:
            t = step
            torch.manual_seed(derive_seed(seed, t))
            beta = kl_beta(t, cfg.warmup_steps)
            lr = learning_rate(t, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = stream.batch(t)
            out = model.loss(x, beta)
            loss = out["loss"]
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                where = (
                    f"the last good checkpoint {resume_path} (step {last_ckpt_step}) is kept"
                    if last_ckpt_step is not None
                    else "no checkpoint had been written yet"
                )
                raise TrainingDiverged(
                    f"training diverged: loss is {loss_value} at step {t + 1}; {where}; "
                    f"no model written to {out_path}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step = t + 1

            window["loss"] += loss_value
            window["rec"] += float(out["rec"].detach().double().mean())
            window["kl"] += float(out["kl"].detach().double().mean())
            window["neg_elbo"] += float(-out["elbo"].detach().double().mean())
            window["count"] += 1
            if step % cfg.log_every == 0 or step == cfg.iterations:
                n = window["count"]
                row = [step] + [window[k] / n for k in _WINDOW_KEYS]
                row += [beta, lr, current_log_z(model)]
                if do_eval:
                    row.append(last_valid)
                curve.append(row)
                if log_file is not None or not progress:
                    text = " ".join(
                        f"{c}={_format_value(v)}" for c, v in zip(columns, row, strict=True)
                    )
                    log(text, to_stderr=not progress)
                window = dict.fromkeys(_WINDOW_KEYS, 0.0) | {"count": 0}
                bar.set_postfix(loss=f"{row[1]:.2f}", beta=f"{beta:.2f}", refresh=False)
            bar.update(1)

            if do_eval and (step % cfg.eval_every == 0 or step == cfg.iterations):
                torch.manual_seed(derive_seed(seed, step, 1))
                model.eval()
                last_valid = float(valid_metric(model, valid, cfg.eval_k))
                model.train()
                evals.append([step, last_valid])
                if curve and curve[-1][0] == step:
                    curve[-1][-1] = last_valid
                if last_valid < best["metric"]:
                    best.update(metric=last_valid, step=step, bad_evals=0)
                    if early_stop:
                        best["model"] = {
                            k: v.detach().clone().cpu() for k, v in model.state_dict().items()
                        }
                else:
                    best["bad_evals"] += 1
                log(f"step {step}: validation NLL {last_valid:.4f} (best {best['metric']:.4f} "
                    f"at step {best['step']})")
                if early_stop and best["bad_evals"] >= cfg.early_stopping_patience:
                    stopped_early = True

            if step % cfg.checkpoint_every == 0 or step == target or stopped_early:
                _check_finite_params(model, step)
                save_resume()
                last_ckpt_step = step
            if stopped_early:
                log(f"early stopping at step {step}: no improvement in "
                    f"{cfg.early_stopping_patience} evaluations; keeping step {best['step']}")
                break
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
    wall = time.perf_counter() - t0
    steps_run = step - start_step
    summary = {
        "step": step,
        "steps_this_run": steps_run,
        "resumed_from": start_step,
        "wall_time_s": wall,
        "sec_per_step": wall / steps_run if steps_run else math.nan,
        "final_loss": curve[-1][1] if curve else math.nan,
        "log_z": current_log_z(model),
        "stopped_early": stopped_early,
        "best_valid_nll": best["metric"] if do_eval else None,
        "best_step": best["step"] if do_eval else None,
        "finished": step >= cfg.iterations or stopped_early,
    }
    if not summary["finished"]:
        return summary

    if early_stop and best["model"] is not None:
        model.load_state_dict(best["model"])
    write_curve_tsv(curve_path, columns, curve)
    save_checkpoint(
        {
            "kind": "final",
            "version": library_version(),
            "meta": meta,
            "model": model.state_dict(),
            "step": step,
            "curve": {"columns": columns, "values": _curve_tensor(curve, len(columns))},
            "summary": {k: v for k, v in summary.items() if v is not None},
        },
        out_path,
    )
    resume_path.unlink(missing_ok=True)
    return summary


def _check_finite_params(model: torch.nn.Module, step: int) -> None:
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise TrainingDiverged(
                f"training diverged: parameter {name} is not finite after step {step}; "
                "the last good checkpoint is kept"
            )


def _fingerprint(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k not in ("version",)}


def _first_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    fa, fb = _fingerprint(a), _fingerprint(b)
    for k in sorted(set(fa) | set(fb)):
        if fa.get(k) != fb.get(k):
            return f"{k}: {fa.get(k)!r} != {fb.get(k)!r}"
    return "?"
