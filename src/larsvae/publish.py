"""Published cells: the small, committed record of one finished cell, so that a grid longer
than one sitting resumes in a fresh clone instead of restarting.

A budget with ``paths.results`` (e.g. ``results/grid``) publishes every finished cell into
``<results>/<dataset>/<arch>/<prior>/<mode>/seed<seed>/``:

- ``nll.json``: the evaluation as ``larsvae evaluate`` wrote it (per-image log p(x) included);
- ``curve.tsv``: the training curve;
- ``provenance.json``: what the numbers depend on and what they cost: the cell, the params of
  every step that made it, the checkpoint's and the data's sha256, the Z estimate (for LARS),
  the code version at publication and the measured CPU seconds of training, Z and IWAE.

Checkpoints stay out of git. The report reads only the published files, and before it uses
one it checks it against the current plan (:func:`check_published`): the same params, the
same data, an ``nll`` that is the mean of its per-image values. A cell published under other
params is refused with one line naming the key, never shown beside cells of the current plan.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .utils import UserError, atomic_write_text, file_sha256, read_json

FORMAT_VERSION = 1
#: the three files of a published cell
NLL, CURVE, PROVENANCE = "nll.json", "curve.tsv", "provenance.json"
_DONE = re.compile(r"done: (\{.*\})\s*$")


def check_nll_record(nll: dict[str, Any], path: Path | str) -> None:
    """An nll.json of a finished ``larsvae evaluate``: a finite ``nll`` that is the negative
    mean of its per-image ``log_px`` (a hand-edited or truncated result is refused)."""
    value = nll.get("nll")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(
            f"nll.json {path}: no number 'nll' (got {value!r}): not a finished "
            "larsvae evaluate output; rerun that cell's evaluation"
        )
    if not math.isfinite(value):
        raise UserError(f"nll.json {path}: nll = {value} is not finite")
    log_px = nll.get("log_px")
    if not isinstance(log_px, list) or not log_px or len(log_px) != nll.get("n"):
        raise UserError(
            f"nll.json {path}: no per-image 'log_px' of length n = {nll.get('n')!r}: not a "
            "finished output of this larsvae evaluate; rerun that cell's evaluation"
        )
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in log_px):
        raise UserError(f"nll.json {path}: per-image log_px holds a non-finite value")
    mean = -math.fsum(log_px) / len(log_px)
    if abs(mean - value) > 1e-9 * max(1.0, abs(mean)):
        raise UserError(
            f"nll.json {path}: nll = {value!r} is not the negative mean of its per-image "
            f"log_px ({mean!r}): the file was changed after evaluation; rerun it"
        )


def code_version(root: Path | str = ".") -> dict[str, Any]:
    """The git commit of ``root`` and whether src/ differs from it (None outside git)."""
    try:
        run = dict(cwd=root, capture_output=True, text=True, timeout=30, check=True)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], **run).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "src_modified": None}
    return {"commit": commit, "src_modified": bool(dirty.strip())}


def train_seconds(log: Path | str | None) -> float | None:
    """Wall seconds of a training from its log's ``done: {...}`` line (summed over resumed
    runs), or None where the log is gone or has none."""
    if log is None or not Path(log).exists():
        return None
    total, found = 0.0, False
    for line in Path(log).read_text(errors="replace").splitlines():
        m = _DONE.search(line)
        if m:
            try:
                total += float(json.loads(m.group(1))["wall_time_s"])
                found = True
            except (ValueError, KeyError, TypeError):
                continue
    return total if found else None


def publish_cell(
    *,
    nll: Path | str,
    curve: Path | str,
    checkpoint: Path | str,
    params: dict[str, Any],
    out_dir: Path | str,
    z: Path | str | None = None,
    z_shards: tuple[Path | str, ...] = (),
    train_log: Path | str | None = None,
    root: Path | str = ".",
    stamp: Path | str | None = None,
) -> dict[str, Any]:
    """Copy a finished cell's nll.json and curve.tsv into ``out_dir`` with its
    provenance.json (see the module docstring); returns the provenance."""
    nll_path, out = Path(nll), Path(out_dir)
    record = read_json(nll_path, "--nll")
    check_nll_record(record, nll_path)
    ckpt_sha = file_sha256(checkpoint)
    if record.get("checkpoint_sha256") != ckpt_sha:
        raise UserError(
            f"--nll {nll_path}: evaluated checkpoint sha256 "
            f"{str(record.get('checkpoint_sha256'))[:12]}... is not {checkpoint}'s "
            f"({ckpt_sha[:12]}...): evaluate that checkpoint again"
        )
    z_record = None
    if z is not None:
        z_record = read_json(Path(z), "--z")
        if record.get("z_sha256") != file_sha256(z):
            raise UserError(f"--nll {nll_path}: evaluated with another Z than {z}")
    z_seconds = [read_json(Path(s), "--z-shard").get("wall_time_s") for s in z_shards]
    evaluate_s = record.get("wall_time_s")
    provenance = {
        "format_version": FORMAT_VERSION,
        "cell": {k: record.get(k) for k in ("dataset", "arch", "prior", "mode", "seed")},
        "params": params,
        "checkpoint_sha256": ckpt_sha,
        "dataset_sha256": record.get("dataset_sha256"),
        "nll_sha256": file_sha256(nll_path),
        "z": z_record,
        "code": code_version(root),
        "cost_s": {
            "train": train_seconds(train_log),
            "z": sum(z_seconds) if z_seconds and None not in z_seconds else None,
            "evaluate": evaluate_s,
        },
        "device": record.get("device"),
        "published_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{CURVE}.tmp"
    shutil.copyfile(curve, tmp)
    tmp.replace(out / CURVE)
    atomic_write_text(out / NLL, nll_path.read_text())
    text = json.dumps(provenance, indent=1, sort_keys=True) + "\n"
    atomic_write_text(out / PROVENANCE, text)
    if stamp is not None:  # written last: the job is done when its files all are
        atomic_write_text(stamp, text)
    return provenance


def _diff(old: Any, new: Any, where: str = "") -> str | None:
    """The first key path where two JSON values differ, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            d = _diff(old.get(k), new.get(k), f"{where}.{k}" if where else str(k))
            if d:
                return d
        return None
    return None if old == new else f"{where}: {old!r} -> {new!r}"


def check_published(
    directory: Path | str,
    cell: dict[str, Any],
    params: dict[str, Any],
    dataset_sha256: str | None,
) -> dict[str, Any]:
    """The provenance of a published cell, checked against the current plan: it must be the
    cell it is filed as (``cell``: dataset, arch, prior, mode, seed), made with the plan's
    params (those of the steps that made it) and data, and its nll.json the one it
    published. Raises UserError with one line naming what differs."""
    d = Path(directory)
    prov = read_json(d / PROVENANCE, "published cell")
    if prov.get("format_version") != FORMAT_VERSION:
        raise UserError(f"published cell {d}: provenance format {prov.get('format_version')!r}")
    want = {k: cell.get(k) for k in ("dataset", "arch", "prior", "mode", "seed")}
    if prov.get("cell") != want:
        raise UserError(f"published cell {d}: holds the results of {prov.get('cell')}, not {want}")
    diff = _diff(prov.get("params"), params)
    if diff:
        raise UserError(
            f"published cell {d}: made with other params ({diff}); delete the folder to "
            "rerun the cell under the current plan"
        )
    if dataset_sha256 is not None and prov.get("dataset_sha256") != dataset_sha256:
        raise UserError(
            f"published cell {d}: trained and evaluated on other data (sha256 "
            f"{str(prov.get('dataset_sha256'))[:12]}... vs {dataset_sha256[:12]}...)"
        )
    if file_sha256(d / NLL) != prov.get("nll_sha256"):
        raise UserError(f"published cell {d}: nll.json changed after publication")
    return prov


def cost_hours(prov: dict[str, Any]) -> float | None:
    """CPU (or device) hours a published cell took: training + Z + IWAE, where all known."""
    parts = [(prov.get("cost_s") or {}).get(k) for k in ("train", "z", "evaluate")]
    if prov["cell"].get("prior") == "gaussian":
        parts[1] = 0.0  # no Z to estimate
    if any(p is None or not math.isfinite(p) for p in parts):
        return None
    return sum(parts) / 3600.0


__all__ = [
    "CURVE",
    "check_nll_record",
    "NLL",
    "PROVENANCE",
    "check_published",
    "code_version",
    "cost_hours",
    "publish_cell",
    "train_seconds",
]
