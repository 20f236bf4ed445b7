"""Memory estimated before allocating, one line instead of a traceback,
sizes checked before decompressing or building. Each test plants the failure and expects
``larsvae: error: ...`` naming the file or key, a non-zero status and nothing written."""

from __future__ import annotations

import errno
import json
import os
import shutil
import zlib
from pathlib import Path

import pytest
import torch
from conftest import (
    cli_in_process,
    files_under,
    make_tiny_dataset,
    run_cli,
    train_args,
    z_args,
)

from larsvae import memory, utils
from larsvae.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from larsvae.config import EvalConfig, ModelConfig, TrainConfig
from larsvae.data.checksums import SIZE, max_raw_bytes

pytestmark = pytest.mark.usefixtures("single_thread")

TINY_TRAIN = {"iterations": 3, "batch_size": 16}


def one_line(rc: int, err: str, *needles: str) -> str:
    lines = err.strip("\n").splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("larsvae: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    data = make_tiny_dataset(root / "data")
    ckpt = root / "m" / "model.pt"
    rc, err = cli_in_process(train_args(data, ckpt, train=TINY_TRAIN))
    assert rc == 0, err
    shard = root / "z" / "shard0of1.json"
    rc, err = cli_in_process(z_args(ckpt, shard))
    assert rc == 0, err
    return {"root": root, "data": data, "ckpt": ckpt, "shard": shard}


def _with_meta(src: Path, dst: Path, **changes) -> Path:
    ck = load_checkpoint(src)
    meta = ck["meta"].to_dict()
    mc = changes.pop("model_config", None)
    meta.update(changes)
    if mc:
        meta["model_config"] = {**meta["model_config"], **mc}
    payload = {k: v for k, v in ck.items() if k not in ("format", "format_version")}
    save_checkpoint({**payload, "meta": meta}, dst)
    return dst


# ---------------------------------------------------------------------------------------
# #7: the memory estimate


def _peak_script(body: str) -> str:
    """A subprocess that reports its peak RSS growth (bytes) over ``body`` and the estimate."""
    return (
        "import sys, json, torch\n"
        "torch.set_num_threads(1)\n"
        "sys.path.insert(0, 'tests')\n"
        "from larsvae import memory, steps\n"
        "from larsvae.config import ModelConfig, TrainConfig, EvalConfig\n"
        "from conftest import make_tiny_dataset\n"
        "from pathlib import Path\n"
        "root = Path(sys.argv[1])\n"
        "data = make_tiny_dataset(root / 'data', n_train=512, n_eval=64)\n"
        "import torchvision, larsvae.train, larsvae.ranking, larsvae.models  # noqa\n"
        # the peak RSS from here on: reset the kernel's high-water mark (clear_refs 5), so an
        # earlier transient peak (e.g. compiling a fresh clone's .py files) cannot hide it
        "def status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key + ':'):\n"
        "            return int(line.split()[1]) * 1024\n"
        "import resource\n"
        "def rss():\n"
        "    try:\n"
        "        with open('/proc/self/clear_refs', 'w') as f:\n"
        "            f.write('5')\n"
        "        return status('VmRSS')\n"
        "    except OSError:  # no resettable high-water mark: the process's peak so far\n"
        "        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "before = rss()\n" + body + "\n"
        "print(json.dumps({'grew': status('VmHWM') - before, 'est': est, 'before': before}))\n"
    )


@pytest.mark.parametrize(
    "body",
    [
        # training: a wide VAE, so the weights with their Adam state dominate
        "mc = ModelConfig(latent_dim=50, hidden=1500, acceptance_hidden=(100, 100))\n"
        "tc = TrainConfig(iterations=2, batch_size=256, checkpoint_every=100)\n"
        "est = memory.train_job('vae', 'lars', mc, tc).total\n"
        "steps.train(data, 'vae', 'lars', 0, mc, tc, root / 'm.pt', progress=False)\n",
        # rank: n decoded images dominate
        "mc = ModelConfig(latent_dim=8, hidden=64, acceptance_hidden=(16,))\n"
        "steps.train(data, 'vae', 'lars', 0, mc, TrainConfig(iterations=1, batch_size=16),"
        " root / 'm.pt', progress=False)\n"
        "from larsvae.checkpoint import load_checkpoint\n"
        "est = memory.rank_job(load_checkpoint(root / 'm.pt')['meta'], 100000, 'cpu').total\n"
        "before = rss()\n"
        "steps.rank(root / 'm.pt', root / 'r', n=100000)\n",
    ],
    ids=["train", "rank"],
)
def test_estimate_matches_measured_peak_within_a_factor_of_two(tmp_path, body):
    p = run_cli([str(tmp_path)], script=_peak_script(body))
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["est"] > 50e6, r  # big enough for the allocation to dominate the noise
    assert r["est"] / 2 <= r["grew"] <= r["est"] * 2, r


def test_estimate_follows_the_keys():
    mc = ModelConfig(latent_dim=50, hidden=300)
    base = memory.train_job("vae", "lars", mc, TrainConfig()).total
    wide = memory.train_job("vae", "lars", ModelConfig(hidden=3000), TrainConfig()).total
    assert wide > 15 * base  # the hidden x hidden layers grow 100-fold
    meta = CheckpointMeta("vae", "lars", ModelConfig())
    z1 = memory.z_job(meta, EvalConfig(z_batch=1000), "cpu").total
    z2 = memory.z_job(meta, EvalConfig(z_batch=10**9), "cpu").total
    assert z2 - z1 == pytest.approx(8 * (10**9 - 1000), rel=0.01)  # float64 units
    e1 = memory.evaluate_job(meta, EvalConfig(iwae_k=1000), 10000, "cpu").total
    e2 = memory.evaluate_job(meta, EvalConfig(iwae_k=100_000), 10000, "cpu").total
    assert e2 > 50 * e1 / 2  # noise (B, K, d) grows with K


@pytest.mark.parametrize(
    "arch,prior,posthoc",
    [("vae", "gaussian", False), ("vae", "lars", True), ("hvae", "realnvp", False)]
    + [("convhvae", "lars", False), ("vae_rx", "gaussian", False)],
)
def test_model_shape_on_the_cpu_equals_the_meta_pass(monkeypatch, arch, prior, posthoc):
    """Small networks take their layer outputs from a pass on the CPU (no sympy and
    torch._dynamo imports); the numbers are those of the meta pass, and the caller's random
    state is untouched."""
    mc = ModelConfig(latent_dim=8, hidden=32)
    devices = []
    layer_outputs = memory._layer_outputs

    def spy(module, run):
        devices.append(next(module.parameters()).device.type)
        return layer_outputs(module, run)

    monkeypatch.setattr(memory, "_layer_outputs", spy)
    memory._model_shape.cache_clear()  # the passes below must run, not be remembered
    state = torch.random.get_rng_state()
    on_cpu = memory.model_shape(arch, prior, mc, posthoc)
    assert torch.equal(torch.random.get_rng_state(), state)
    monkeypatch.setattr(memory, "CPU_SHAPE_NUMEL", 0)
    assert memory.model_shape(arch, prior, mc, posthoc) == on_cpu
    assert devices == ["cpu", "cpu", "meta", "meta"]


def test_huge_but_in_bounds_config_is_refused_before_allocating(tmp_path):
    """hidden = 100000 is within its bound but 2e10 weights: one line naming the key and the
    estimate against the available memory, and the process never grew (RSS of the refused
    command equals a bare import's)."""
    data = make_tiny_dataset(tmp_path / "data")
    out = tmp_path / "out" / "model.pt"
    script = (
        "import resource, sys\nfrom larsvae import cli\nrc = cli.main(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)\n"
    )
    p = run_cli(train_args(data, out, model={"hidden": 100_000}), script=script)
    line = one_line(p.returncode, p.stderr, "model.hidden = 100000", "GB", "available")
    assert "needs about 3" in line  # ~323 GB: 2e10 weights x 16 bytes
    bare = run_cli(["--help"], script=script.replace("rc = cli.main(sys.argv[1:])", "rc = 0"))
    grew_kb = int(p.stdout.split()[-1]) - int(bare.stdout.split()[-1])
    assert grew_kb < 300_000, grew_kb  # torchvision and the model code, never the weights
    assert files_under(out.parent) == []


def test_memory_budget_env_and_key_names(made, tmp_path, monkeypatch):
    monkeypatch.setenv(memory.MEMORY_ENV, "1e6")
    out = tmp_path / "z.json"
    rc, err = cli_in_process(
        z_args(made["ckpt"], out, json.dumps({"z_batch": 10**7, "z_samples": 10**7}))
    )
    one_line(rc, err, "evaluate.z_batch = 10000000", f"${memory.MEMORY_ENV}", str(made["ckpt"]))
    assert not out.exists()


# ---------------------------------------------------------------------------------------
# #8: tracebacks where a line is due


@pytest.fixture
def disk_full(monkeypatch):
    """atomic_write's temporaries fail with ENOSPC once ``state['after']`` writes of files
    whose name contains ``state['match']`` have succeeded."""
    state = {"match": "", "after": 0, "seen": 0}
    real = utils._open_fd

    def open_fd(fd, mode):
        f = real(fd, mode)
        name = os.readlink(f"/proc/self/fd/{fd}")
        if state["match"] in name:
            state["seen"] += 1
            if state["seen"] > state["after"]:

                def write(*_a, **_k):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

                f.write = write
        return f

    monkeypatch.setattr(utils, "_open_fd", open_fd)
    return state


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_disk_full_during_training_keeps_the_resume_checkpoint_and_rerun_is_identical(
    tmp_path, disk_full
):
    data = make_tiny_dataset(tmp_path / "data")
    train = {"iterations": 12, "batch_size": 16, "checkpoint_every": 5}
    out = tmp_path / "full" / "model.pt"
    disk_full.update(match=".resume.pt", after=1)  # step 5 written, step 10 fails
    rc, err = cli_in_process(train_args(data, out, train=train))
    one_line(rc, err, "no space left on device", "model.pt.resume.pt (step 5) is kept")
    assert files_under(out.parent) == ["curve.tsv", "model.pt.resume.pt"] or files_under(
        out.parent
    ) == ["model.pt.resume.pt"]
    disk_full.update(match="\0")  # space freed
    assert cli_in_process(train_args(data, out, train=train))[0] == 0
    ref = tmp_path / "ref" / "model.pt"
    assert cli_in_process(train_args(data, ref, train=train))[0] == 0
    a, b = load_checkpoint(out)["model"], load_checkpoint(ref)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_disk_full_during_z_estimation_is_one_line(made, tmp_path, disk_full):
    out = tmp_path / "z" / "shard0of1.json"
    disk_full.update(match="shard0of1.json")
    rc, err = cli_in_process(z_args(made["ckpt"], out))
    one_line(rc, err, str(out), "no space left on device")
    assert files_under(out.parent) == []


@pytest.mark.parametrize("damage", ["truncated", "no_splits"])
def test_bad_manifest_is_one_line(made, tmp_path, damage):
    d = tmp_path / "d"
    d.mkdir()
    shutil.copy(made["data"], d)
    text = made["data"].with_suffix(".json").read_text()
    if damage == "truncated":
        text = text[: len(text) // 2]
    else:
        m = json.loads(text)
        del m["splits"]
        text = json.dumps(m)
    (d / "dynamic_mnist.json").write_text(text)
    want = "not valid JSON" if damage == "truncated" else "no 'splits'"
    out = tmp_path / "out"
    rc, err = cli_in_process(train_args(d / "dynamic_mnist.npz", out / "model.pt"))
    one_line(rc, err, str(d / "dynamic_mnist.json"), want)
    rc, err = cli_in_process(
        ["check-data", "--dataset-file", str(d / "dynamic_mnist.npz"), "--out", str(out / "s")]
    )
    one_line(rc, err, str(d / "dynamic_mnist.json"), want)
    assert files_under(out) == []


def test_report_refuses_nll_json_without_nll(tmp_path):
    (tmp_path / "nll.json").write_text(json.dumps({"dataset": "dynamic_mnist", "prior": "x"}))
    spec = {"cells": [{"dataset": "dynamic_mnist", "arch": "vae", "prior": "gaussian"}]}
    spec["cells"][0].update(mode="standard", seed=1, nll="nll.json")
    out = tmp_path / "out"
    rc, err = cli_in_process(
        ["report", "--spec", json.dumps(spec), "--root", str(tmp_path)]
        + [f"--{k}={out / k}" for k in ("table", "main", "metrics", "curves")]
    )
    one_line(rc, err, str(tmp_path / "nll.json"), "'nll'")
    assert files_under(out) == []


def test_z_shard_batch_with_zero_units_is_one_line(made, tmp_path):
    s = json.loads(made["shard"].read_text())
    s["estimate"]["batches"][0][1] = 0
    bad = tmp_path / "shard0of1.json"
    bad.write_text(json.dumps(s))
    rc, err = cli_in_process(["reduce-z", "--out", str(tmp_path / "out" / "z.json"), str(bad)])
    one_line(rc, err, str(bad), "0 units")
    assert files_under(tmp_path / "out") == []


def test_fractional_num_shards_is_one_line(made, tmp_path):
    p = run_cli(z_args(made["ckpt"], tmp_path / "s.json", num_shards="2.5"))
    one_line(p.returncode, p.stderr, "--num-shards", "2.5")
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("seed", ["abc", -5, 2**40, 1.5])
def test_checkpoint_meta_with_bad_seed_is_one_line(made, tmp_path, seed):
    bad = _with_meta(made["ckpt"], tmp_path / "bad" / "model.pt", seed=seed)
    out = tmp_path / "out" / "s.json"
    for cmd in (
        z_args(bad, out),
        ["sample", "--checkpoint", str(bad), "--out", str(out.with_suffix(".png"))],
    ):
        rc, err = cli_in_process(cmd)
        one_line(rc, err, str(bad), "meta seed", repr(seed))
    assert files_under(out.parent) == []


# ---------------------------------------------------------------------------------------
# #9: sizes checked before decompressing, reading or allocating


def test_meta_hidden_out_of_bounds_is_refused_before_building(made, tmp_path):
    bad = _with_meta(made["ckpt"], tmp_path / "big" / "model.pt", model_config={"hidden": 300000})
    rc, err = cli_in_process(["sample", "--checkpoint", str(bad), "--out", str(tmp_path / "x.png")])
    one_line(rc, err, str(bad), "model_config.hidden", "300000")
    assert not (tmp_path / "x.png").exists()


def test_meta_describing_a_bigger_model_than_the_weights_is_refused(made, tmp_path):
    """hidden = 90000 is in bounds; the file holds 1e5 numbers, the meta describes 1.6e10:
    refused from the meta-device count, before a weight is allocated."""
    bad = _with_meta(made["ckpt"], tmp_path / "big" / "model.pt", model_config={"hidden": 90000})
    for cmd in (
        ["sample", "--checkpoint", str(bad), "--out", str(tmp_path / "x.png")],
        ["rank", "--checkpoint", str(bad), "--out-dir", str(tmp_path / "r")],
    ):
        rc, err = cli_in_process(cmd)
        one_line(rc, err, str(bad), "meta and weights do not match")
    assert files_under(tmp_path / "r") == [] and not (tmp_path / "x.png").exists()


REAL_MIRROR = Path(os.environ.get("LARSVAE_DATA_MIRRORS", "/nonexistent").split(":")[0])
needs_mirror = pytest.mark.skipif(
    not (REAL_MIRROR / "fashion_mnist").is_dir(), reason="needs the Fashion-MNIST mirror"
)


def _prepare_fashion(mirror: Path, out: Path) -> tuple[int, str]:
    """prepare-data from ``mirror`` only: the three other real files, plus the planted one."""
    for f in (REAL_MIRROR / "fashion_mnist").glob("*.gz"):
        if not f.name.startswith("t10k-labels"):
            shutil.copy(f, mirror / "fashion_mnist" / f.name)
    return cli_in_process(
        ["prepare-data", "--dataset", "fashion_mnist", "--out-dir", str(out)]
        + ["--mirror", str(mirror), "--no-download", "--no-registry"]
    )


@needs_mirror
def test_gzip_bomb_in_a_mirror_is_not_inflated(tmp_path, monkeypatch):
    """64 MB of zeros as a 64 KB .gz (small enough to pass the raw-size check) with a real
    file's name: inflated only up to the real file's 10,008 bytes, then rejected
    (tracemalloc: Python's allocations stay far below the inflated size)."""
    import tracemalloc

    monkeypatch.delenv("LARSVAE_DATA_MIRRORS", raising=False)  # only the planted mirror
    bomb = tmp_path / "mirror" / "fashion_mnist" / "t10k-labels-idx1-ubyte.gz"
    bomb.parent.mkdir(parents=True)
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    with open(bomb, "wb") as f:
        for _ in range(64):
            f.write(c.compress(zeros))
        f.write(c.flush())
    assert bomb.stat().st_size < max_raw_bytes("fashion/t10k-labels-idx1-ubyte")
    from larsvae.data import sources

    spec = next(x for x in sources.FASHION_IDX if x.key == "fashion/t10k-labels-idx1-ubyte")
    resolver = sources.Resolver([tmp_path / "mirror"], download=False, registry=False)
    tracemalloc.start()
    try:
        assert resolver._from_mirror(spec) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak  # the 64 KB file and a 10 KB cap, not 64 MB
    assert "gzip bomb" in resolver.rejected[0]
    rc, err = _prepare_fashion(tmp_path / "mirror", tmp_path / "out")
    one_line(rc, err, str(bomb), "gzip bomb", f"{SIZE['fashion/t10k-labels-idx1-ubyte']:,}")
    assert files_under(tmp_path / "out") == []


@needs_mirror
def test_oversized_file_with_the_right_name_is_not_read(tmp_path, monkeypatch):
    """A 6 GB (sparse) file named like the real 10,008-byte one: refused from its size."""
    monkeypatch.delenv("LARSVAE_DATA_MIRRORS", raising=False)  # only the planted mirror
    big = tmp_path / "mirror" / "fashion_mnist" / "t10k-labels-idx1-ubyte"
    big.parent.mkdir(parents=True)
    with open(big, "wb") as f:
        f.truncate(6 << 30)
    rc, err = _prepare_fashion(tmp_path / "mirror", tmp_path / "out")
    one_line(rc, err, str(big), "6,442,450,944 bytes, more than the real file's")
    assert files_under(tmp_path / "out") == []
