"""Shared fixtures: a tiny synthetic dataset in the prepared-data format, a CLI runner, and
two session-wide harnesses whose results several test files (and the generated
``reports/reliability.md``) share: the kill -9 / resume run and the bad-input runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
#: small but real model hyper-parameters for CLI/resume tests (the paper's are 50/300/1024)
SMALL_MODEL = {"latent_dim": 8, "hidden": 64, "acceptance_hidden": [32, 32], "train_z_samples": 128}


def make_tiny_dataset(
    out_dir: Path, name: str = "dynamic_mnist", n_train: int = 256, n_eval: int = 64, seed: int = 0
) -> Path:
    """``{out_dir}/{name}.npz`` + ``{name}.json`` as ``larsvae prepare-data`` writes them:
    uint8 (N, 784) splits, train in grey levels (dynamic binarisation), valid/test binary.
    Images are noisy copies of 8 random prototypes, so there is structure to learn."""
    rng = np.random.default_rng(seed)
    protos = rng.random((8, 784)) < 0.3

    def grey(n: int) -> np.ndarray:
        base = protos[rng.integers(0, 8, n)] * 200
        return (base + rng.integers(0, 56, (n, 784))).astype(np.uint8)

    def binary(n: int) -> np.ndarray:
        flip = rng.random((n, 784)) < 0.05
        return (protos[rng.integers(0, 8, n)] ^ flip).astype(np.uint8)

    arrays = {"train": grey(n_train), "valid": binary(n_eval), "test": binary(n_eval)}
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_dir / f"{name}.npz", **arrays)
    kinds = {"train": "grey", "valid": "binary", "test": "binary"}
    manifest = {
        "dataset": name,
        "format_version": 1,
        "seed": seed,
        "splits": {
            s: {"n": len(a), "values": kinds[s], "dtype": "uint8", "shape": [len(a), 784]}
            for s, a in arrays.items()
        },
    }
    (out_dir / f"{name}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir / f"{name}.npz"


@pytest.fixture(autouse=True)
def torch_seed_of_the_test(request):
    """Each test (and its function-scoped fixtures) starts from a torch RNG state of its own,
    seeded from its node id: the same alone, under -k and in any order, never the state an
    earlier test left behind. (pytest-randomly does the same for ``random`` and numpy.)"""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="module")
def single_thread():
    """Small models: intra-op threads only add contention on a busy CI machine.

    Use with ``pytestmark = pytest.mark.usefixtures("single_thread")``.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_dataset_npz(tmp_path: Path) -> Path:
    return make_tiny_dataset(tmp_path / "data")


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_cli(args: list[str], timeout: float = 600, script: str | None = None):
    """Run ``python -m larsvae ARGS`` (or ``python -c SCRIPT ARGS``) in a subprocess."""
    cmd = (
        [sys.executable, "-m", "larsvae", *args]
        if script is None
        else [sys.executable, "-c", script, *args]
    )
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=cli_env(), cwd=REPO
    )


def train_args(
    data: Path,
    out: Path,
    arch: str = "vae",
    prior: str = "lars",
    seed: int = 0,
    model: dict | None = None,
    train: dict | None = None,
) -> list[str]:
    return [
        "train",
        "--dataset-file",
        str(data),
        "--arch",
        arch,
        "--prior",
        prior,
        "--seed",
        str(seed),
        "--model-params",
        json.dumps(SMALL_MODEL | (model or {})),
        "--train-params",
        json.dumps(train or {}),
        "--out",
        str(out),
        "--no-progress",
    ]


def z_args(
    ckpt: Path,
    out: Path,
    eval_params: str = '{"z_samples": 2000, "z_batch": 500}',
    num_shards: str = "1",
    shard: int = 0,
) -> list[str]:
    """``larsvae estimate-z`` of shard ``shard`` of ``num_shards`` (a string, so bad values
    can be passed), small Z by default."""
    return [
        "estimate-z",
        "--checkpoint",
        str(ckpt),
        "--shard",
        str(shard),
        "--num-shards",
        num_shards,
        "--eval-params",
        eval_params,
        "--out",
        str(out),
        "--no-progress",
    ]


def files_under(d: Path) -> list[str]:
    """Every file below ``d`` (relative paths), [] if ``d`` does not exist."""
    if not d.exists():
        return []
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------
# kill -9 / resume harness (tests/test_train_resume.py, reports/reliability.md)

KILL_TRAIN = {
    "iterations": 160,
    "batch_size": 32,
    "checkpoint_every": 7,
    "log_every": 1,
    "warmup_steps": 60,
    "lr_decay_step": 100,
    "lr": 1e-3,
    "lr_final": 3e-4,
}
KILL_MODEL = {"truncation": 100, "eps": 0.1}
KILL_SEED = 3


@dataclass
class KillResult:
    kills: list[dict] = field(default_factory=list)  # killed_at (last logged step), resumed_at
    ref_seconds: float = 0.0
    sec_per_step: float = 0.0
    tensors_compared: int = 0
    tensors_equal: int = 0
    mismatched: list[str] = field(default_factory=list)
    log_z_ref: float = float("nan")
    curves_equal: bool = False
    final_rc: int = -1
    leftovers: list[str] = field(default_factory=list)
    stderr_tail: str = ""


def _last_logged_step(log: Path) -> int:
    if not log.exists():
        return -1
    steps = re.findall(r"\bstep=(\d+)", log.read_text())
    return int(steps[-1]) if steps else -1


def run_kill_resume(root: Path, num_kills: int = 4, rng_seed: int = 2024) -> KillResult:
    data = make_tiny_dataset(root / "data")
    res = KillResult()
    ref_out = root / "ref" / "model.pt"
    t0 = time.perf_counter()
    p = run_cli(
        train_args(data, ref_out, seed=KILL_SEED, model=KILL_MODEL, train=KILL_TRAIN)
        + ["--log", str(root / "ref.log")]
    )
    res.ref_seconds = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr[-2000:]
    m = re.search(r'"sec_per_step": ([0-9.e-]+)', p.stderr)
    res.sec_per_step = float(m.group(1)) if m else float("nan")

    out = root / "killed" / "model.pt"
    log = root / "killed.log"
    args = train_args(data, out, seed=KILL_SEED, model=KILL_MODEL, train=KILL_TRAIN)
    args += ["--log", str(log)]
    rng = np.random.default_rng(rng_seed)
    n = KILL_TRAIN["iterations"]
    # random kill points, increasing, spread over the run (a kill only ever moves forward)
    edges = np.linspace(5, n - 15, num_kills + 1).astype(int)
    targets = [int(rng.integers(lo, hi)) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    cmd = [sys.executable, "-m", "larsvae", *args]
    for target in targets:
        resume = out.with_name(out.name + ".resume.pt")
        resumed_at = torch.load(resume, weights_only=True)["step"] if resume.exists() else 0
        proc = subprocess.Popen(
            cmd,
            env=cli_env(),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        while proc.poll() is None and _last_logged_step(log) < target:
            time.sleep(0.002)
        alive = proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        res.kills.append(
            {
                "target": target,
                "killed_at": _last_logged_step(log),
                "resumed_at": int(resumed_at),
                "was_running": alive,
                "returncode": proc.returncode,
            }
        )
    resume = out.with_name(out.name + ".resume.pt")
    last = torch.load(resume, weights_only=True)["step"] if resume.exists() else 0
    p = subprocess.run(cmd, env=cli_env(), cwd=REPO, capture_output=True, text=True)
    res.final_rc = p.returncode
    res.stderr_tail = p.stderr[-2000:]
    res.kills.append(
        {
            "target": None,
            "killed_at": None,
            "resumed_at": int(last),
            "was_running": None,
            "returncode": p.returncode,
        }
    )
    if p.returncode != 0:
        return res
    ref = torch.load(ref_out, weights_only=True)
    got = torch.load(out, weights_only=True)
    for k, v in ref["model"].items():
        res.tensors_compared += 1
        if k in got["model"] and torch.equal(v, got["model"][k]):
            res.tensors_equal += 1
        else:
            res.mismatched.append(k)
    res.log_z_ref = float(ref["model"].get("top_prior.log_z", torch.tensor(float("nan"))))
    res.curves_equal = (
        ref_out.with_name("curve.tsv").read_bytes() == out.with_name("curve.tsv").read_bytes()
    )
    res.leftovers = [f for f in files_under(out.parent) if f not in ("model.pt", "curve.tsv")]
    return res


@pytest.fixture(scope="session")
def kill_resume_result(tmp_path_factory) -> KillResult:
    return run_kill_resume(tmp_path_factory.mktemp("kill_resume"))


# ---------------------------------------------------------------------------------------
# bad-input harness (tests/test_cli_errors.py, reports/reliability.md)

NAN_AT_STEP = 8


@contextlib.contextmanager
def nan_loss_at_step(step: int = NAN_AT_STEP):
    """Every model a step builds meanwhile returns a NaN loss from its ``step``-th call on."""
    import larsvae.steps as steps

    build = steps.build_model

    def build_nan(*a, **k):
        m = build(*a, **k)
        loss, calls = m.loss, [0]

        def nan_loss(x, beta=1.0, **kw):
            calls[0] += 1
            out = loss(x, beta, **kw)
            if calls[0] >= step:
                out["loss"] = out["loss"] * float("nan")
            return out

        m.loss = nan_loss
        return m

    steps.build_model = build_nan
    try:
        yield
    finally:
        steps.build_model = build


def cli_in_process(args: list[str]) -> tuple[int, str]:
    """``larsvae ARGS`` through :func:`larsvae.cli.main` in this process: (status, stderr)."""
    from larsvae import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = cli.main(args)
        except SystemExit as exc:  # argparse usage errors
            rc = exc.code
    return rc, err.getvalue()


@dataclass
class BadInput:
    name: str
    description: str
    args: list[str]
    expect: list[str]  # substrings the one-line message must contain
    out_dir: Path
    rc_expected: int = 2
    allowed_leftovers: tuple[str, ...] = ()
    nan_at_step: int | None = None
    env: dict[str, str] = field(default_factory=dict)  # set while the command runs
    # filled by the run
    rc: int | None = None
    stderr: str = ""
    leftovers: list[str] = field(default_factory=list)


def _setup_bad_input_files(root: Path) -> dict[str, Path]:
    """Real artefacts produced through the CLI, then damaged on purpose."""
    from larsvae.checkpoint import load_checkpoint, save_checkpoint

    f: dict[str, Path] = {}
    f["data"] = make_tiny_dataset(root / "data")
    corrupt = root / "data_corrupt" / "dynamic_mnist.npz"
    corrupt.parent.mkdir()
    raw = f["data"].read_bytes()
    corrupt.write_bytes(raw[: len(raw) // 2])
    shutil.copy(f["data"].with_suffix(".json"), corrupt.with_suffix(".json"))
    f["corrupt"] = corrupt
    tiny_train = {"iterations": 2, "batch_size": 16}
    f["hvae"] = root / "hvae_gaussian" / "model.pt"
    f["lars"] = root / "vae_lars_inf" / "model.pt"
    for args in (
        train_args(f["data"], f["hvae"], "hvae", "gaussian", train=tiny_train),
        train_args(
            f["data"], f["lars"], "vae", "lars", model={"truncation": None}, train=tiny_train
        ),
    ):
        rc, err = cli_in_process(args)
        assert rc == 0, err
    f["truncated"] = root / "truncated" / "model.pt"
    f["truncated"].parent.mkdir()
    raw = f["lars"].read_bytes()
    f["truncated"].write_bytes(raw[: len(raw) // 3])
    # an acceptance network with a(z) = sigmoid(-1e4) = 0 in floating point: Z underflows
    ck = load_checkpoint(f["lars"])
    last_bias = sorted(
        k for k in ck["model"] if k.startswith("top_prior.acceptance") and k.endswith("bias")
    )[-1]
    ck["model"][last_bias] = torch.full_like(ck["model"][last_bias], -1e4)
    f["dead"] = root / "dead_acceptance" / "model.pt"
    save_checkpoint(
        {k: v for k, v in ck.items() if k not in ("format", "format_version")}, f["dead"]
    )
    ep = json.dumps({"z_samples": 2000, "z_batch": 500})
    shard = root / "dead_acceptance" / "shard0of1.json"
    f["dead_z"] = root / "dead_acceptance" / "z.json"
    f["shard0of2"] = root / "shards" / "shard0of2.json"
    for args in (
        z_args(f["dead"], shard, ep),
        ["reduce-z", "--out", str(f["dead_z"]), str(shard)],
        z_args(f["lars"], f["shard0of2"], ep, num_shards="2"),
    ):
        rc, err = cli_in_process(args)
        assert rc == 0, err
    _setup_limit_files(root, f)
    _setup_planted_mirrors(root, f)
    return f


#: the real Fashion-MNIST mirror folder, if this machine has one (CI: ../shared/datasets)
REAL_FASHION = (
    Path((os.environ.get("LARSVAE_DATA_MIRRORS") or "/nonexistent").split(":")[0]) / "fashion_mnist"
)
PLANTED = "t10k-labels-idx1-ubyte"  # the real file is 10,008 bytes (4,422 as .gz)


def _setup_planted_mirrors(root: Path, f: dict[str, Path]) -> None:
    """Two copies of the real Fashion-MNIST mirror with the test labels file replaced: by a
    gzip bomb (64 KB inflating to 64 MB) and by a 6 GB sparse file with the right name."""
    import zlib

    if not REAL_FASHION.is_dir():
        return
    for name in ("mirror_gzip_bomb", "mirror_oversized"):
        folder = root / name / "fashion_mnist"
        folder.mkdir(parents=True)
        for g in REAL_FASHION.glob("*.gz"):
            if not g.name.startswith(PLANTED):
                shutil.copy(g, folder / g.name)
        f[name] = root / name
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    with open(root / "mirror_gzip_bomb" / "fashion_mnist" / f"{PLANTED}.gz", "wb") as fh:
        for _ in range(64):
            fh.write(c.compress(bytes(1 << 20)))
        fh.write(c.flush())
    with open(root / "mirror_oversized" / "fashion_mnist" / PLANTED, "wb") as fh:
        fh.truncate(6 << 30)


def _setup_limit_files(root: Path, f: dict[str, Path]) -> None:
    """Damaged manifests, shard, nll.json and checkpoint metas."""
    from larsvae.checkpoint import load_checkpoint, save_checkpoint

    text = f["data"].with_suffix(".json").read_text()
    for name, manifest in (
        ("manifest_truncated", text[: len(text) // 2]),
        (
            "manifest_no_splits",
            json.dumps({k: v for k, v in json.loads(text).items() if k != "splits"}),
        ),
    ):
        d = root / name
        d.mkdir()
        shutil.copy(f["data"], d)
        (d / "dynamic_mnist.json").write_text(manifest)
        f[name] = d / "dynamic_mnist.npz"
    shard = json.loads(f["shard0of2"].read_text())
    shard["estimate"]["batches"][0][1] = 0
    f["zero_units"] = root / "shards" / "zero_units.json"
    f["zero_units"].write_text(json.dumps(shard))
    f["nll_without_nll"] = root / "results" / "nll.json"
    f["nll_without_nll"].parent.mkdir()
    f["nll_without_nll"].write_text(json.dumps({"dataset": "dynamic_mnist", "arch": "vae"}))
    ck = load_checkpoint(f["lars"])
    payload = {k: v for k, v in ck.items() if k not in ("format", "format_version")}
    good = ck["meta"].to_dict()
    for name, meta in (
        ("seed_abc", {"seed": "abc"}),
        ("seed_negative", {"seed": -5}),
        ("meta_hidden_300000", {"model_config": {**good["model_config"], "hidden": 300000}}),
        ("meta_hidden_90000", {"model_config": {**good["model_config"], "hidden": 90000}}),
    ):
        f[name] = root / name / "model.pt"
        save_checkpoint({**payload, "meta": {**good, **meta}}, f[name])


def bad_input_cases(root: Path, f: dict[str, Path]) -> list[BadInput]:
    def case(name, description, args_fn, expect, **kw) -> BadInput:
        out_dir = root / "cases" / name
        return BadInput(name, description, args_fn(out_dir), expect, out_dir, **kw)

    data = f["data"]

    def train(out_dir, model=None, train_p=None, **kw):
        return train_args(
            kw.pop("data", data), out_dir / "model.pt", model=model, train=train_p, **kw
        )

    def evaluate(ckpt, z=None, dataset=data):
        def fn(out_dir):
            a = [
                "evaluate",
                "--checkpoint",
                str(ckpt),
                "--dataset-file",
                str(dataset),
                "--eval-params",
                json.dumps({"iwae_k": 5, "test_subset": 8}),
                "--out",
                str(out_dir / "nll.json"),
                "--no-progress",
            ]
            return a + (["--z", str(z)] if z else [])

        return fn

    def posthoc(init):
        return lambda o: train(o, arch="vae", prior="lars") + ["--init", str(init)]

    def estimate_z(ckpt, num_shards="1", ep='{"z_samples": 2000, "z_batch": 500}'):
        return lambda o: z_args(ckpt, o / "shard0of1.json", ep, num_shards)

    def sample(ckpt):
        return lambda o: ["sample", "--checkpoint", str(ckpt), "--out", str(o / "samples.png")]

    spec = {
        "cells": [
            {"dataset": "dynamic_mnist", "arch": "vae", "prior": "gaussian", "mode": "standard"}
            | {"seed": 0, "nll": str(f["nll_without_nll"])}
        ]
    }

    return [
        case(
            "unknown_dataset",
            "unknown dataset name",
            lambda o: ["prepare-data", "--dataset", "mnist_typo", "--out", str(o)],
            ["mnist_typo", "static_mnist"],
        ),
        case(
            "missing_mirror",
            "a mirror folder that does not exist",
            lambda o: [
                "prepare-data",
                "--dataset",
                "static_mnist",
                "--out",
                str(o),
                "--mirror",
                str(root / "no_such_mirror"),
                "--no-download",
                "--no-registry",
            ],
            ["no_such_mirror", "does not exist"],
        ),
        case(
            "unknown_arch",
            "unknown architecture",
            lambda o: train(o, arch="mlp"),
            ["--arch", "'mlp'", "vae"],
        ),
        case(
            "unknown_prior",
            "unknown prior",
            lambda o: train(o, prior="vampprior"),
            ["--prior", "'vampprior'", "lars"],
        ),
        case(
            "truncation_zero",
            "T = 0",
            lambda o: train(o, model={"truncation": 0}),
            ["model.truncation", ">= 1", "0"],
        ),
        case(
            "iterations_negative",
            "negative iteration count",
            lambda o: train(o, train_p={"iterations": -5}),
            ["train.iterations", "-5"],
        ),
        case(
            "iterations_noninteger",
            "non-integer iteration count",
            lambda o: train(o, train_p={"iterations": 2.5}),
            ["train.iterations", "2.5"],
        ),
        case(
            "eps_above_one",
            "eps outside (0, 1]",
            lambda o: train(o, model={"eps": 1.5}),
            ["model.eps", "(0.0, 1.0]", "1.5"],
        ),
        case(
            "eps_zero",
            "eps = 0 (outside (0, 1])",
            lambda o: train(o, model={"eps": 0}),
            ["model.eps", "(0.0, 1.0]"],
        ),
        case(
            "typo_key",
            "params with a typo'd key",
            lambda o: train(o, train_p={"learning_rate": 1e-3}),
            ["train.learning_rate", "unknown key", "lr"],
        ),
        case(
            "bad_json",
            "params that are not valid JSON",
            lambda o: _replace_value(train(o), "--train-params", '{"iterations": 5'),
            ["--train-params", "invalid JSON"],
        ),
        case(
            "missing_dataset",
            "a dataset file that does not exist",
            lambda o: train(o, data=root / "nowhere" / "static_mnist.npz"),
            ["nowhere/static_mnist.npz"],
        ),
        case(
            "corrupt_dataset",
            "a corrupted (truncated) dataset file",
            lambda o: train(o, data=f["corrupt"]),
            [str(f["corrupt"])],
        ),
        case(
            "truncated_checkpoint",
            "a truncated checkpoint (evaluate)",
            evaluate(f["truncated"]),
            [str(f["truncated"]), "truncated or corrupt"],
        ),
        case(
            "truncated_checkpoint_init",
            "a truncated checkpoint (post-hoc --init)",
            posthoc(f["truncated"]),
            [str(f["truncated"]), "truncated or corrupt"],
        ),
        case(
            "posthoc_wrong_arch",
            "a checkpoint of another architecture for post-hoc",
            posthoc(f["hvae"]),
            ["--init", "'hvae'", "'vae'"],
        ),
        case(
            "posthoc_not_gaussian",
            "a LARS checkpoint as post-hoc starting point",
            posthoc(f["lars"]),
            ["--init", "'gaussian'", "'lars'"],
        ),
        case(
            "lars_without_z",
            "evaluating a LARS model without its Z",
            evaluate(f["lars"]),
            ["--z", "'lars'"],
        ),
        case(
            "z_underflow",
            "Z underflowing for T = infinity (a(z) = 0 everywhere)",
            evaluate(f["dead"], z=f["dead_z"]),
            [str(f["dead_z"]), "underflow"],
        ),
        case(
            "incomplete_shards",
            "reduce-z with a missing Z shard",
            lambda o: ["reduce-z", "--out", str(o / "z.json"), str(f["shard0of2"])],
            ["1 of 2", "missing [1]"],
        ),
        case(
            "duplicate_shards",
            "reduce-z with the same shard twice",
            lambda o: [
                "reduce-z",
                "--out",
                str(o / "z.json"),
                str(f["shard0of2"]),
                str(f["shard0of2"]),
            ],
            ["duplicate", "shard 0"],
        ),
        case(
            "manifest_truncated",
            "a truncated dataset manifest",
            lambda o: train(o, data=f["manifest_truncated"]),
            ["manifest_truncated/dynamic_mnist.json", "not valid JSON"],
        ),
        case(
            "manifest_no_splits",
            "a dataset manifest without `splits`",
            lambda o: train(o, data=f["manifest_no_splits"]),
            ["manifest_no_splits/dynamic_mnist.json", "no 'splits'"],
        ),
        case(
            "nll_without_nll",
            "an nll.json without `nll` given to the report",
            lambda o: (
                ["report", "--spec", json.dumps(spec)]
                + [f"--{k}={o / k}" for k in ("table", "main", "metrics", "curves")]
            ),
            [str(f["nll_without_nll"]), "'nll'"],
        ),
        case(
            "shard_zero_units",
            "a Z shard whose batch record has 0 units",
            lambda o: ["reduce-z", "--out", str(o / "z.json"), str(f["zero_units"])],
            [str(f["zero_units"]), "0 units"],
        ),
        case(
            "num_shards_fractional",
            "--num-shards 2.5",
            estimate_z(f["lars"], num_shards="2.5"),
            ["--num-shards", "2.5"],
        ),
        case(
            "meta_seed_string",
            'checkpoint meta with seed "abc"',
            estimate_z(f["seed_abc"]),
            [str(f["seed_abc"]), "meta seed", "'abc'"],
        ),
        case(
            "meta_seed_negative",
            "checkpoint meta with seed -5",
            estimate_z(f["seed_negative"]),
            [str(f["seed_negative"]), "meta seed", "-5"],
        ),
        case(
            "meta_hidden_out_of_bounds",
            "a small checkpoint whose meta says hidden: 300000",
            sample(f["meta_hidden_300000"]),
            [str(f["meta_hidden_300000"]), "model_config.hidden", "300000"],
        ),
        case(
            "meta_larger_than_weights",
            "a small checkpoint whose meta says hidden: 90000 (in bounds)",
            sample(f["meta_hidden_90000"]),
            [str(f["meta_hidden_90000"]), "meta and weights do not match"],
        ),
        case(
            "memory_too_large",
            "hidden: 100000 (in bounds, 2e10 weights) for training",
            lambda o: train(o, model={"hidden": 100_000}),
            ["model.hidden = 100000", "available"],
            env={"LARSVAE_MEMORY_BYTES": str(64 << 30)},
        ),
        case(
            "z_batch_memory",
            "z_batch: 10^9 with a 1 GB memory budget",
            estimate_z(f["lars"], ep=json.dumps({"z_samples": 10**9, "z_batch": 10**9})),
            ["evaluate.z_batch = 1000000000", "available"],
            env={"LARSVAE_MEMORY_BYTES": str(1 << 30)},
        ),
        case(
            "nan_loss",
            "NaN appearing in the loss (injected at step 8)",
            lambda o: train(o, train_p={"iterations": 20, "checkpoint_every": 5, "batch_size": 16}),
            [f"step {NAN_AT_STEP}", "(step 5) is kept", "model.pt.resume.pt"],
            rc_expected=1,
            allowed_leftovers=("model.pt.resume.pt",),
            nan_at_step=NAN_AT_STEP,
        ),
    ] + _planted_mirror_cases(case, f)


def _planted_mirror_cases(case, f: dict[str, Path]) -> list[BadInput]:
    """prepare-data from a planted mirror only (no environment mirrors, no downloads)."""

    def prepare(mirror):
        return lambda o: ["prepare-data", "--dataset", "fashion_mnist", "--out-dir", str(o)] + [
            "--mirror", str(mirror), "--no-download", "--no-registry",
        ]  # fmt: skip

    if "mirror_gzip_bomb" not in f:
        return []
    only_planted = {"LARSVAE_DATA_MIRRORS": ""}
    return [
        case(
            "mirror_gzip_bomb",
            "a gzip bomb in a mirror (64 KB inflating to 64 MB, named like a 10 KB file)",
            prepare(f["mirror_gzip_bomb"]),
            [f"{PLANTED}.gz", "gzip bomb", "10,008"],
            env=only_planted,
        ),
        case(
            "mirror_oversized",
            "a 6 GB file with a real file's name in a mirror",
            prepare(f["mirror_oversized"]),
            [PLANTED, "6,442,450,944 bytes, more than the real file's"],
            env=only_planted,
        ),
    ]


def _replace_value(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


def run_bad_input(c: BadInput) -> BadInput:
    saved = {k: os.environ.get(k) for k in c.env}
    os.environ.update(c.env)
    try:
        if c.nan_at_step is None:
            c.rc, c.stderr = cli_in_process(c.args)
        else:
            with nan_loss_at_step(c.nan_at_step):
                c.rc, c.stderr = cli_in_process(c.args)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    c.leftovers = [x for x in files_under(c.out_dir) if x not in c.allowed_leftovers]
    return c


@pytest.fixture(scope="session")
def bad_input_results(tmp_path_factory) -> dict[str, BadInput]:
    root = tmp_path_factory.mktemp("bad_inputs")
    files = _setup_bad_input_files(root)
    torch.set_num_threads(1)
    return {c.name: run_bad_input(c) for c in bad_input_cases(root, files)}


# ---------------------------------------------------------------------------------------
# The suite leaves the working tree as it found it (tracked files only; outputs go to tmp)


def _tracked_digest() -> str:
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    h = hashlib.sha256()
    for f in sorted(filter(None, files)):
        p = REPO / f
        h.update(f.encode() + b"\0" + (p.read_bytes() if p.is_file() else b"<missing>"))
    return h.hexdigest()


def pytest_sessionstart(session):
    session.config._larsvae_tree = _tracked_digest()


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("LARSVAE_WRITE_REPORTS") == "1":  # make reliability writes its report
        return
    if _tracked_digest() != session.config._larsvae_tree:
        print(
            "\nERROR: the test suite modified tracked files of the working tree "
            "(`git status` shows which); tests must write only under tmp dirs",
            file=sys.stderr,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
