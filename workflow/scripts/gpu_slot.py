"""Run a command on a GPU of its own: ``python gpu_slot.py [--lock-dir DIR] -- CMD ...``.

Snakemake's ``--resources gpu=N`` bounds how many GPU jobs run at once but does not say
*which* device each job gets. This wrapper gives each concurrent job a distinct device: it
takes an exclusive ``fcntl.flock`` on one lock file per visible GPU (slot k), sets
``CUDA_VISIBLE_DEVICES`` to that device and ``exec``s the command, which inherits the locked
descriptor, so the slot stays taken exactly as long as the command (and its children) live,
and is released by the kernel even after ``kill -9``.

Pass-through (the command runs unchanged):
- no GPU visible (CPU-only machine), or ``LARSVAE_GPU_SLOT=off``;
- a scheduler already pinned the job: ``CUDA_VISIBLE_DEVICES`` names exactly one device, or
  SLURM_JOB_GPUS / SLURM_STEP_GPUS is set (SLURM's gres assignment is used as it is).

Devices: those in ``CUDA_VISIBLE_DEVICES`` if set, else ``LARSVAE_FAKE_GPUS`` (a count, for
tests), else ``nvidia-smi -L``. ``LARSVAE_JOBS_PER_GPU=k`` (default 1) gives each device k slots,
so that k small jobs share one GPU (e.g. 4 VAE trainings per H100, which one alone leaves
mostly idle); every job still sees exactly one device. Lock files: ``--lock-dir``, ``$LARSVAE_GPU_LOCK_DIR`` or
``<tmp>/larsvae-gpu-slots-<uid>`` (machine-wide, so two workflows on one machine share them).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time


def visible_devices(env: dict[str, str]) -> list[str]:
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        return [d.strip() for d in cvd.split(",") if d.strip() and d.strip() != "-1"]
    fake = env.get("LARSVAE_FAKE_GPUS")
    if fake is not None:
        return [str(i) for i in range(int(fake))]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def acquire(
    devices: list[str], lock_dir: str, per_device: int = 1, poll_s: float = 0.2
) -> tuple[str, int]:
    """Block until one of the ``per_device`` slots of a device is free; return (device, fd).
    Slots are filled device by device in turn (slot 0 of every device first), so jobs spread
    over the GPUs before they share one."""
    os.makedirs(lock_dir, exist_ok=True)
    waited = False
    names = [
        (dev, f"gpu{dev}.lock" if j == 0 else f"gpu{dev}.{j}.lock")
        for j in range(per_device)
        for dev in devices
    ]
    while True:
        for dev, name in names:
            fd = os.open(os.path.join(lock_dir, name), os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return dev, fd
        if not waited:
            print(f"gpu_slot: all of {devices} busy, waiting", file=sys.stderr, flush=True)
            waited = True
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lock-dir", default=None)
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("no command given (usage: gpu_slot.py -- CMD ...)")
    env = dict(os.environ)
    devices = visible_devices(env)
    pinned = (
        env.get("LARSVAE_GPU_SLOT") == "off"
        or "SLURM_JOB_GPUS" in env
        or "SLURM_STEP_GPUS" in env
        or ("CUDA_VISIBLE_DEVICES" in env and len(devices) == 1)
    )
    if devices and not pinned:
        lock_dir = (
            args.lock_dir
            or env.get("LARSVAE_GPU_LOCK_DIR")
            or os.path.join(tempfile.gettempdir(), f"larsvae-gpu-slots-{os.getuid()}")
        )
        per_device = int(env.get("LARSVAE_JOBS_PER_GPU", "1") or 1)
        dev, fd = acquire(devices, lock_dir, max(1, per_device))
        os.set_inheritable(fd, True)  # the exec'd command keeps the slot until it exits
        env["CUDA_VISIBLE_DEVICES"] = dev
        print(
            f"gpu_slot: CUDA_VISIBLE_DEVICES={dev} (lock {lock_dir})", file=sys.stderr, flush=True
        )
    try:
        os.execvpe(cmd[0], cmd, env)
    except OSError as exc:
        print(f"gpu_slot: error: cannot run {cmd[0]!r}: {exc.strerror}", file=sys.stderr)
        raise SystemExit(127) from None


if __name__ == "__main__":
    main()
