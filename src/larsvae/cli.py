"""The ``larsvae`` command line: one entry point for every pipeline step.

Paths are arguments; parameters are JSON objects (one YAML section each), validated by
:mod:`larsvae.config`. Every user error -- bad parameter, bad path, unreadable checkpoint or
dataset, inconsistent Z shards -- prints exactly one line ``larsvae: error: ...`` on stderr
and exits with status 2 (a diverged training run: status 1), never a traceback; outputs are
written atomically, so a failed command leaves no partial output behind.

    larsvae prepare-data --dataset D --out DIR [--mirror DIR ...]
    larsvae train        --dataset-file F.npz --arch A --prior P --seed S --model-params JSON
                         --train-params JSON --out model.pt [--init CKPT --posthoc]
    larsvae estimate-z   --checkpoint CKPT --shard I --num-shards N --eval-params JSON --out s.json
    larsvae reduce-z     --out z.json SHARD.json ...
    larsvae evaluate     --checkpoint CKPT [--z z.json] --dataset-file F.npz --eval-params JSON
                         --out nll.json
    larsvae sample       --checkpoint CKPT --n 64 --out samples.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .config import (
    ARCHS,
    LARS_PRIORS,
    PRIORS,
    ConfigError,
    check_choice,
    eval_config,
    model_config,
    to_dict,
    train_config,
)
from .utils import (
    TrainingDiverged,
    UserError,
    atomic_write,
    atomic_write_text,
    choose_device,
    derive_seed,
    file_sha256,
)

if TYPE_CHECKING:  # torch is imported inside the commands: usage errors stay fast
    import torch

PROG = "larsvae"
#: derive_seed tag for the model initialisation (distinct from every training step t >= 0)
_INIT_TAG = -1
_SAMPLE_TAG = -2
_EVAL_TAG = -3


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line ``larsvae: error: ...`` (status 2)."""

    def error(self, message: str) -> NoReturn:
        print(f"{PROG}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _user_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ConfigError, UserError]
    data_errors = sys.modules.get("larsvae.data.checksums")
    if data_errors is not None:  # not imported -> no DataError can have been raised
        types.append(data_errors.DataError)
    return tuple(types)


def _json_params(text: str, flag: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{flag}: invalid JSON ({exc.msg} at character {exc.pos})") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{flag}: expected a JSON object, got {type(value).__name__}")
    return value


def _existing_file(path: str, flag: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{flag} {path}: no such file")
    if not p.is_file():
        raise UserError(f"{flag} {path}: not a regular file")
    return p


def _write_json(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


# ---------------------------------------------------------------------------------------
# data helpers


def _load_dataset(path: str) -> tuple[dict[str, Any], Path]:
    from . import data as data_mod

    p = _existing_file(path, "--dataset-file")
    try:
        return data_mod.load(p), p
    except _user_error_types():
        raise
    except Exception as exc:  # zip/npz/json decoding problems of a corrupt file
        raise UserError(
            f"--dataset-file {path}: cannot be read (corrupt dataset file?): "
            f"{' '.join(str(exc).split())[:160]}"
        ) from None


def _eval_split(data: dict[str, Any], split: str, device: torch.device) -> torch.Tensor:
    """A fixed-binarised evaluation split as float {0, 1} images on ``device``."""
    from .data import eval_tensor

    return eval_tensor(data, split, device)


# ---------------------------------------------------------------------------------------
# train


def _check_posthoc_init(ckpt: dict[str, Any], init: str, arch: str, cfg: Any) -> None:
    meta = ckpt["meta"]
    if meta.get("arch") != arch:
        raise UserError(
            f"--init {init}: checkpoint of architecture {meta.get('arch')!r}, but post-hoc "
            f"training asked for {arch!r}"
        )
    if meta.get("prior") != "gaussian" or meta.get("mode", "standard") != "standard":
        raise UserError(
            f"--init {init}: post-hoc training starts from a 'gaussian' standard checkpoint, "
            f"got prior {meta.get('prior')!r} mode {meta.get('mode')!r}"
        )
    theirs = meta.get("model_config", {})
    for key in ("latent_dim", "hidden"):
        if theirs.get(key) != getattr(cfg, key):
            raise UserError(
                f"--init {init}: checkpoint has model.{key} = {theirs.get(key)!r}, "
                f"but --model-params give {getattr(cfg, key)!r}"
            )


def cmd_train(args: argparse.Namespace) -> int:
    section = "posthoc" if args.posthoc else "train"
    mcfg = model_config(_json_params(args.model_params, "--model-params"))
    tcfg = train_config(_json_params(args.train_params, "--train-params"), section=section)
    arch = check_choice("--arch", args.arch, ARCHS)
    prior = check_choice("--prior", args.prior, PRIORS)
    if args.posthoc and not args.init:
        raise UserError("--posthoc needs --init CKPT (a trained 'gaussian' checkpoint)")
    if args.init and not args.posthoc:
        raise UserError("--init is only used with --posthoc")
    if args.posthoc and prior != "lars":
        raise UserError(f"--prior {prior!r}: post-hoc training learns a 'lars' prior")
    _existing_file(args.dataset_file, "--dataset-file")
    if args.init:
        _existing_file(args.init, "--init")
    import torch

    from .checkpoint import load_checkpoint, make_posthoc
    from .data import load_manifest
    from .data.loaders import train_stream
    from .models import build_model
    from .train import fit

    device = choose_device(args.device)
    data, data_path = _load_dataset(args.dataset_file)

    manifest = load_manifest(data_path)

    init_ckpt = None
    if args.posthoc:
        init_ckpt = load_checkpoint(_existing_file(args.init, "--init"))
        _check_posthoc_init(init_ckpt, args.init, arch, mcfg)

    torch.manual_seed(derive_seed(args.seed, _INIT_TAG))
    if args.posthoc:
        model = build_model(arch, "gaussian", mcfg)
        try:
            model.load_state_dict(init_ckpt["model"])
        except RuntimeError as exc:
            raise UserError(
                f"--init {args.init}: weights do not fit a {arch!r} model: "
                f"{' '.join(str(exc).split())[:160]}"
            ) from None
        model = make_posthoc(model, mcfg) or model
    else:
        model = build_model(arch, prior, mcfg)
    model.to(device)

    meta = {
        "arch": arch,
        "prior": prior,
        "mode": "posthoc" if args.posthoc else "standard",
        "dataset": data_path.stem,
        "dataset_sha256": file_sha256(data_path),
        "model_config": to_dict(mcfg),
    }
    if args.posthoc:
        meta["base_prior"] = "gaussian"
        meta["init_sha256"] = file_sha256(args.init)
    valid = None
    if tcfg.eval_every > 0 and "valid" in data:
        valid = _eval_split(data, "valid", device)
    stream = train_stream(data, manifest, tcfg.batch_size, args.seed, device)
    summary = fit(
        model, stream, tcfg, args.out, seed=args.seed, meta=meta, valid=valid,
        progress=not args.no_progress, log_path=args.log,
    )
    print(f"[larsvae train] done: {json.dumps(summary)}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------
# Z estimation


def _lars_prior(model: torch.nn.Module, ckpt_path: str, meta: dict[str, Any]) -> Any:
    from .checkpoint import is_lars

    if not is_lars(meta):
        raise UserError(
            f"--checkpoint {ckpt_path}: prior {meta.get('prior')!r} has no normalising "
            f"constant Z to estimate (only {', '.join(LARS_PRIORS)} do)"
        )
    return model.top_prior


def cmd_estimate_z(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import load_model
    from .zestimate import estimate_z

    ecfg = eval_config(_json_params(args.eval_params, "--eval-params"))
    if args.num_shards < 1:
        raise UserError(f"--num-shards: expected an integer >= 1, got {args.num_shards}")
    if not 0 <= args.shard < args.num_shards:
        raise UserError(
            f"--shard: expected an integer in [0, {args.num_shards - 1}], got {args.shard}"
        )
    device = choose_device(args.device)
    ckpt_path = _existing_file(args.checkpoint, "--checkpoint")
    model, ckpt = load_model(ckpt_path, device)
    prior = _lars_prior(model, args.checkpoint, ckpt["meta"])
    if (ecfg.z_antithetic and getattr(prior.proposal, "symmetric", False)
            and (ecfg.z_batch % 2 or ecfg.z_samples % 2)):
        raise UserError(
            f"evaluate.z_batch, evaluate.z_samples: must be even with evaluate.z_antithetic "
            f"(pairs z, -z), got {ecfg.z_batch} and {ecfg.z_samples}"
        )
    seed = int(ckpt["meta"].get("seed", 0)) if args.seed is None else args.seed
    t0 = time.perf_counter()
    with torch.no_grad():
        est = estimate_z(
            prior.acceptance, prior.proposal, ecfg.z_samples, ecfg.z_batch,
            antithetic=ecfg.z_antithetic, seed=seed, shard=args.shard,
            num_shards=args.num_shards, device=device, progress=not args.no_progress,
        )
    _write_json(args.out, {
        "checkpoint": str(args.checkpoint),
        "checkpoint_sha256": file_sha256(ckpt_path),
        "shard": args.shard,
        "num_shards": args.num_shards,
        "seed": seed,
        "z_samples": ecfg.z_samples,
        "antithetic": est.antithetic,  # plain MC when the proposal is not symmetric
        "estimate": est.to_dict(),
        "wall_time_s": time.perf_counter() - t0,
        "device": str(device),
    })
    return 0


_SHARD_KEYS = ("checkpoint_sha256", "num_shards", "seed", "z_samples", "antithetic")


def cmd_reduce_z(args: argparse.Namespace) -> int:
    from .zestimate import ZEstimate

    shards: list[tuple[str, dict[str, Any]]] = []
    for path in args.shards:
        p = _existing_file(path, "shard")
        try:
            obj = json.loads(p.read_text())
            est = ZEstimate.from_dict(obj["estimate"])
            for key in ("shard",) + _SHARD_KEYS:
                obj[key]  # noqa: B018 - presence check
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise UserError(f"shard {path}: not a complete Z shard file ({exc!r})") from None
        obj["_est"] = est
        shards.append((path, obj))
    first_path, first = shards[0]
    for path, obj in shards[1:]:
        for key in _SHARD_KEYS:
            if obj[key] != first[key]:
                raise UserError(
                    f"shard {path}: {key} = {obj[key]!r} differs from {first_path} "
                    f"({first[key]!r}); shards of different runs cannot be merged"
                )
    n = first["num_shards"]
    seen: dict[int, str] = {}
    for path, obj in shards:
        if obj["shard"] in seen:
            raise UserError(f"shard {path}: duplicate of shard {obj['shard']} ({seen[obj['shard']]})")
        seen[obj["shard"]] = path
    missing = sorted(set(range(n)) - set(seen))
    if missing or len(seen) != n:
        raise UserError(
            f"reduce-z: incomplete set of shards: got {len(seen)} of {n}, missing {missing}"
        )
    try:
        merged = ZEstimate.merge(
            [obj["_est"] for _, obj in sorted(shards, key=lambda s: s[1]["shard"])]
        )
    except ValueError as exc:  # e.g. shards written with different z_batch
        raise UserError(f"reduce-z: shards of different runs cannot be merged: {exc}") from None
    if not merged.complete:
        have = {p.index for p in merged.partials}
        missing_batches = sorted(set(range(merged.num_batches)) - have)
        raise UserError(
            f"reduce-z: the shards hold {len(have)} of {merged.num_batches} batches "
            f"(missing e.g. {missing_batches[:5]}); rerun the incomplete shard(s)"
        )
    _write_json(args.out, {
        "checkpoint": first.get("checkpoint"),
        "checkpoint_sha256": first["checkpoint_sha256"],
        "num_shards": n,
        "seed": first["seed"],
        "z_samples": first["z_samples"],
        "antithetic": first["antithetic"],
        "estimate": merged.to_dict(),
        "z": merged.mean,
        "z_stderr": merged.stderr,
        "log_z": merged.log_mean,
    })
    return 0


# ---------------------------------------------------------------------------------------
# evaluation


def _read_z(path: str, ckpt_path: Path) -> Any:
    from .zestimate import ZEstimate

    p = _existing_file(path, "--z")
    try:
        obj = json.loads(p.read_text())
        est = ZEstimate.from_dict(obj["estimate"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"--z {path}: not a Z file written by reduce-z ({exc!r})") from None
    sha = obj.get("checkpoint_sha256")
    if sha is not None and sha != file_sha256(ckpt_path):
        raise UserError(f"--z {path}: Z was estimated for another checkpoint than {ckpt_path}")
    log_mean = float(est.log_mean)
    if not math.isfinite(log_mean):
        raise UserError(
            f"--z {path}: Z estimate underflows (log Z = {log_mean}): every sampled acceptance "
            "probability was 0; the acceptance network is degenerate"
        )
    return est


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import is_lars, load_model
    from .evaluation import nll_summary

    ecfg = eval_config(_json_params(args.eval_params, "--eval-params"))
    device = choose_device(args.device)
    ckpt_path = _existing_file(args.checkpoint, "--checkpoint")
    model, ckpt = load_model(ckpt_path, device)
    meta = ckpt["meta"]
    lars = is_lars(meta)
    z_est = None
    if lars:
        if args.z is None:
            raise UserError(f"--z: required for a {meta.get('prior')!r} checkpoint")
        z_est = _read_z(args.z, ckpt_path)
        model.top_prior.set_log_z(float(z_est.log_mean))
    elif args.z is not None:
        raise UserError(f"--z {args.z}: prior {meta.get('prior')!r} has no Z to install")
    data, _ = _load_dataset(args.dataset_file)
    x = _eval_split(data, "test", device)
    if ecfg.test_subset is not None:
        x = x[: ecfg.test_subset]
    t0 = time.perf_counter()
    summary = nll_summary(
        model, x, k=ecfg.iwae_k, batch_size=ecfg.iwae_batch, k_chunk=ecfg.iwae_k_chunk,
        z_estimate=z_est, seed=derive_seed(int(meta.get("seed", 0)), _EVAL_TAG),
        progress=not args.no_progress,
    )
    wall = time.perf_counter() - t0
    result: dict[str, Any] = {
        "dataset": meta.get("dataset"),
        "arch": meta.get("arch"),
        "prior": meta.get("prior"),
        "mode": meta.get("mode"),
        "seed": meta.get("seed"),
        "checkpoint": str(args.checkpoint),
        **summary.to_dict(),
        "wall_time_s": wall,
        "device": str(device),
    }
    if lars:
        result.update(
            log_z=float(z_est.log_mean), z=float(z_est.mean), z_stderr=float(z_est.stderr),
            z_samples=int(z_est.samples), truncation=meta["model_config"].get("truncation"),
        )
        with torch.no_grad():
            g = torch.Generator(device=device).manual_seed(derive_seed(0, _SAMPLE_TAG))
            _, n_prop = model.top_prior.sample(10_000, generator=g, return_num_proposals=True)
        mean_prop = float(n_prop.double().mean())
        # proposals per accepted sample, and accepted / proposed (the paper's rate)
        result.update(mean_proposals=mean_prop, acceptance_rate=1.0 / mean_prop)
    _write_json(args.out, result)
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch
    from torchvision.utils import save_image

    from .checkpoint import load_model
    from .distributions import ResampledPrior

    if args.n < 1:
        raise UserError(f"--n: expected an integer >= 1, got {args.n}")
    device = choose_device(args.device)
    model, ckpt = load_model(_existing_file(args.checkpoint, "--checkpoint"), device)
    torch.manual_seed(derive_seed(args.seed, _SAMPLE_TAG))
    with torch.no_grad():
        prior = model.top_prior
        z_top = prior.sample(args.n)
        if isinstance(prior, ResampledPrior):
            # The acceptance a(z) scores sample quality (paper Sec. 5): best first, row-major.
            z_top = z_top[torch.argsort(prior.acceptance(z_top), descending=True)]
        x = model.decode(z_top).float().cpu().view(-1, 1, 28, 28)
    nrow = max(1, int(math.ceil(math.sqrt(args.n))))
    with atomic_write(args.out, "wb") as fh:
        save_image(x, fh, nrow=nrow, format="png")
    return 0


def cmd_prepare_data(argv: list[str]) -> int:
    from .data import prepare

    # Validate the arguments first with a one-line usage error, like every other command.
    parser = prepare.build_parser()
    parser.error = _Parser.error.__get__(parser)  # type: ignore[method-assign]
    parser.parse_args(argv)
    rc = prepare.main(argv)
    return int(rc or 0)


# ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Resampled priors (LARS) for VAEs: pipeline steps.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("prepare-data", help="download/convert a dataset (see larsvae.data.prepare)",
                   add_help=False)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda")
        sp.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
        sp.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (e.g. the rule's threads; default: torch's)")

    t = sub.add_parser("train", help="train a model (standard, joint LARS, or post-hoc LARS)")
    t.add_argument("--dataset-file", required=True)
    t.add_argument("--arch", required=True)
    t.add_argument("--prior", required=True)
    t.add_argument("--seed", type=int, required=True)
    t.add_argument("--model-params", default="{}", help="JSON object, section 'model'")
    t.add_argument("--train-params", default="{}", help="JSON object, section 'train'/'posthoc'")
    t.add_argument("--out", required=True, help="final checkpoint (written at the end)")
    t.add_argument("--init", help="post-hoc: the trained 'gaussian' checkpoint to start from")
    t.add_argument("--posthoc", action="store_true")
    t.add_argument("--log", help="also append progress lines to this file")
    common(t)

    e = sub.add_parser("estimate-z", help="one shard of the high-precision Z estimate")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--shard", type=int, required=True)
    e.add_argument("--num-shards", type=int, required=True)
    e.add_argument("--eval-params", default="{}", help="JSON object, section 'evaluate'")
    e.add_argument("--seed", type=int, default=None, help="default: the checkpoint's seed")
    e.add_argument("--out", required=True)
    common(e)

    r = sub.add_parser("reduce-z", help="merge a complete set of Z shards exactly")
    r.add_argument("--out", required=True)
    r.add_argument("shards", nargs="+")

    v = sub.add_parser("evaluate", help="IWAE NLL on the test split")
    v.add_argument("--checkpoint", required=True)
    v.add_argument("--z", default=None, help="z.json from reduce-z (LARS priors only)")
    v.add_argument("--dataset-file", required=True)
    v.add_argument("--eval-params", default="{}", help="JSON object, section 'evaluate'")
    v.add_argument("--out", required=True)
    common(v)

    s = sub.add_parser("sample", help="a PNG grid of model samples (LARS priors: sorted by a(z), best first)")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    common(s)
    return p


_COMMANDS = {
    "train": cmd_train,
    "estimate-z": cmd_estimate_z,
    "reduce-z": cmd_reduce_z,
    "evaluate": cmd_evaluate,
    "sample": cmd_sample,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    try:
        if argv and argv[0] == "prepare-data":
            rc = cmd_prepare_data(argv[1:])
        else:
            args = build_parser().parse_args(argv)
            if getattr(args, "seed", None) is not None and args.seed < 0:
                # (numpy's SeedSequence and estimate_z reject negative seeds with a traceback)
                raise UserError(f"--seed: expected an integer >= 0, got {args.seed}")
            if getattr(args, "threads", None) is not None:
                if args.threads < 1:
                    raise UserError(f"--threads: expected an integer >= 1, got {args.threads}")
                import torch

                torch.set_num_threads(args.threads)
            rc = _COMMANDS[args.command](args)
    except TrainingDiverged as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        rc = 1
    except _user_error_types() as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        rc = 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        rc = 130
    return rc


def entry() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    entry()
