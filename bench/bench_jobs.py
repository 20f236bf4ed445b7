"""The fixed cost of one pipeline job: a fresh ``larsvae estimate-z`` process.

Every Snakemake job is a new Python process that imports torch, loads and checks its
checkpoint (the memory estimate of :mod:`larsvae.memory` included) and only then works; 17
of the main job's 22 jobs do this (3 trainings, 8 Z shards, 3 IWAE evaluations, 3 sample
grids), the quick appendix programme hundreds. Here the work is tiny (2e4 proposals of a(z)
for the paper's VAE, d = 50, H = 300), so the wall time of the process is its fixed cost.

Ours: the command as the DAG runs it. Baseline, alternately and in the same way: the same
command with the memory check's layer-output pass on PyTorch's ``meta`` device, as before
(``memory.CPU_SHAPE_NUMEL = 0``; its first meta forward imports sympy and torch._dynamo).
Limit: a bare ``python -c "import torch"``, below which no job can start. Check: both
memory checks see the same model shape (the CPU pass against the meta pass, for this
checkpoint), and both commands write the same Z estimate.

    python bench/run.py --only jobs [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STEPS = {"iterations": 2, "batch_size": 16}
Z = {"z_samples": 20_000, "z_batch": 10_000}
MAIN = "from larsvae import cli; raise SystemExit(cli.main(sys.argv[1:]))"
META = (
    "from larsvae import cli, memory; memory.CPU_SHAPE_NUMEL = 0; "
    "raise SystemExit(cli.main(sys.argv[1:]))"
)


def _dataset(root: Path) -> Path:
    """A small prepared dataset (npz + manifest, as ``larsvae prepare-data`` writes them)."""
    rng = np.random.default_rng(0)
    arrays = {
        "train": rng.integers(0, 256, (256, 784), dtype=np.uint8),
        "valid": rng.integers(0, 2, (64, 784), dtype=np.uint8),
        "test": rng.integers(0, 2, (64, 784), dtype=np.uint8),
    }
    np.savez_compressed(root / "dynamic_mnist.npz", **arrays)
    kinds = {"train": "grey", "valid": "binary", "test": "binary"}
    manifest = {
        "dataset": "dynamic_mnist",
        "format_version": 1,
        "seed": 0,
        "splits": {
            s: {"n": len(a), "values": kinds[s], "dtype": "uint8", "shape": [len(a), 784]}
            for s, a in arrays.items()
        },
    }
    (root / "dynamic_mnist.json").write_text(json.dumps(manifest) + "\n")
    return root / "dynamic_mnist.npz"


def _run(code: str, args: list[str]) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-c", f"import sys; {code}", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{(args or [code])[0]} failed: {p.stderr.strip()[-500:]}")
    return seconds


def _z_args(ckpt: Path, out: Path, device: str) -> list[str]:
    return (
        ["estimate-z", "--device", device, "--threads", "1", "--checkpoint", str(ckpt)]
        + ["--shard", "0", "--num-shards", "1", "--eval-params", json.dumps(Z)]
        + ["--out", str(out), "--no-progress"]
    )


def _shapes_agree(ckpt: Path) -> bool:
    """The memory check's model shape of ``ckpt``: CPU pass == meta pass."""
    from larsvae import memory
    from larsvae.checkpoint import load_checkpoint

    meta = load_checkpoint(ckpt)["meta"]
    on_cpu = memory.shape_of_meta(meta)[0]
    cut, memory.CPU_SHAPE_NUMEL = memory.CPU_SHAPE_NUMEL, 0
    try:
        return memory.shape_of_meta(meta)[0] == on_cpu
    finally:
        memory.CPU_SHAPE_NUMEL = cut


def run(device: str, quick: bool) -> list[dict]:
    from common import row

    repeat = 3 if quick else 7
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = _dataset(root)
        ckpt = root / "model.pt"
        _run(
            MAIN,
            ["train", "--threads", "1", "--dataset-file", str(data), "--arch", "vae"]
            + ["--prior", "lars", "--seed", "0", "--train-params", json.dumps(STEPS)]
            + ["--out", str(ckpt), "--no-progress"],
        )
        outs = {"ours": root / "ours.json", "meta": root / "meta.json"}
        bare, ours, meta = [], [], []
        for _ in range(repeat):  # alternately, so that a change of load hits all three
            bare.append(_run("import torch", []))
            ours.append(_run(MAIN, _z_args(ckpt, outs["ours"], device)))
            meta.append(_run(META, _z_args(ckpt, outs["meta"], device)))
        est = {k: json.loads(p.read_text()) for k, p in outs.items()}
        same_z = est["ours"]["estimate"] == est["meta"]["estimate"]
        same_shape = _shapes_agree(ckpt)
    med = lambda v: float(np.median(v))  # noqa: E731
    return [
        row(
            workload="one pipeline job's fixed cost: fresh `larsvae estimate-z` process, "
            "VAE L=1 LARS checkpoint, 2e4 proposals",
            setting=f"{device}, 1 CPU thread, median of {repeat}",
            baseline="the same command with the memory check's layer-output pass on the "
            "meta device (imports sympy and torch._dynamo)",
            baseline_value=med(meta),
            ours_value=med(ours),
            unit="s per job",
            higher_is_better=False,
            limit_value=med(bare),
            check=f"same model shape from the CPU and the meta pass: {same_shape}; same Z "
            f"estimate from both commands: {same_z}; limit = a bare `import torch` process",
            check_passed=same_shape and same_z,
            goal="context: every job that loads a model pays this (17 of the main job's 22)",
            goal_met=True,
        )
    ]
