"""The pipeline steps: one function per step, each doing the whole job of one rule.

Every Snakemake rule calls exactly one of these through ``larsvae <command>`` (:mod:`larsvae.cli`
only turns arguments into typed configs); tests and notebooks call them in-process:

    prepare_data   dataset -> data/processed/{dataset}.npz + manifest
    check_data     the npz's arrays against the manifest's sha256 (a stamp the jobs need)
    train          one cell: standard prior, joint LARS (Algorithm 1) or post-hoc LARS
    estimate_z     one shard of the Monte Carlo estimate of Z = E_pi[a(z)] (Eq. A.3)
    reduce_z       exact merge of a complete set of shards
    evaluate       IWAE test NLL of one cell (LARS: with the reduced Z, Eq. A.7/A.14)
    sample_grid    a PNG grid of model samples (LARS: ranked by a(z), best first)
    report         Table 1, the main-job summary, metrics.json and the curve figure
    appendix       Tables D.1-D.5 of the appendix
    z_convergence  Figure A.2: Z_S against S from the reduced estimate's batch sums
    rank           Figures D.5-D.8: proposal samples ranked by a(z)
    toy2d          the 2-D illustration (LARS on toy densities)

Consumers verify what they are handed: a checkpoint must belong to the cell its folder names,
the dataset must be the one it was trained on, a Z must be the complete reduced estimate of
this very checkpoint (:func:`load_checked`, :func:`read_z`).

User errors raise :class:`larsvae.utils.UserError` (or ConfigError/DataError) with one line
naming the file or key; every output is written atomically, so a failed step writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import data as data_mod
from . import memory
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointMeta,
    check_cell,
    check_size,
    load_checkpoint,
    model_from_checkpoint,
)
from .config import LARS_PRIORS, OUTPUT_LARS_ARCHS, EvalConfig, ModelConfig, TrainConfig
from .data import DEFAULT_SEED, DataError, load_manifest
from .data.labels import prepare_labels as _prepare_labels
from .data.loaders import eval_tensor, train_stream
from .data.prepare import prepare
from .distributions import ResampledPrior
from .evaluation import elbo_terms, nll_summary
from .models import build_model, z_holder
from .models.resampled_outputs import ResampledOutputsVAE
from .models.resampled_outputs import nll_summary as outputs_nll_summary
from .publish import check_nll_record, check_published
from .reports import figures, table1
from .reports.acceptance import rank_checkpoint, write_output_ranking
from .reports.appendix import write_appendix
from .reports.latent2d import latent2d_report
from .reports.priors import write_report
from .reports.zconvergence import plot_z_convergence
from .toy2d import make_figure, mog_experiment
from .train import fit, resume_path_for
from .utils import (
    DiskFull,
    UserError,
    atomic_write,
    atomic_write_text,
    derive_seed,
    existing_file,
    file_sha256,
    read_json,
)
from .zestimate import ZEstimate, check_batches, check_z_value, read_z, read_z_file
from .zestimate import estimate_z as _estimate

PathLike = str | os.PathLike
#: derive_seed tags (distinct from every training step t >= 0)
INIT_TAG, SAMPLE_TAG, EVAL_TAG = -1, -2, -3


def write_json(path: PathLike, obj: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def load_dataset(path: PathLike) -> dict[str, Any]:

    p = existing_file(path, "--dataset-file")
    try:
        return data_mod.load(p)
    except data_mod.DataError:
        raise
    except Exception as exc:  # zip/npz/json decoding problems of a corrupt file
        raise UserError(
            f"--dataset-file {path}: cannot be read (corrupt dataset file?): "
            f"{' '.join(str(exc).split())[:160]}"
        ) from None


# ---------------------------------------------------------------------------------------
# data


def prepare_data(
    dataset: str,
    out_dir: PathLike = "data/processed",
    mirrors: Sequence[str] = (),
    *,
    download: bool = True,
    registry: bool = True,
    seed: int | None = None,
) -> Path:
    """Fetch, verify (sha256) and binarise ``dataset`` (:func:`larsvae.data.prepare.prepare`)."""
    return prepare(
        dataset,
        out_dir,
        mirrors,
        download=download,
        registry=registry,
        seed=DEFAULT_SEED if seed is None else seed,
    )


def check_data(dataset_file: PathLike, out: PathLike) -> dict[str, Any]:
    """Verify a prepared npz against its manifest (every split's sha256, the dataset name) and
    write a stamp. The training and evaluation rules depend on the stamp, so a corrupted or
    swapped dataset fails here, before any job that would replace a good checkpoint starts."""

    path = existing_file(dataset_file, "--dataset-file")
    manifest = load_manifest(path)
    want = manifest.get("array_sha256")
    if not isinstance(want, dict) or not want:
        raise UserError(
            f"--dataset-file {path}: its manifest records no array_sha256 (not "
            "written by larsvae prepare-data?)"
        )
    if manifest.get("dataset") != path.stem:
        raise UserError(
            f"--dataset-file {path}: the manifest describes dataset "
            f"{manifest.get('dataset')!r}, not {path.stem!r}"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            have = {
                s: hashlib.sha256(np.ascontiguousarray(z[s]).tobytes()).hexdigest() for s in want
            }
    except Exception as exc:  # truncated or corrupt zip, missing split
        raise UserError(
            f"--dataset-file {path}: cannot be read (corrupt dataset file?): "
            f"{' '.join(str(exc).split())[:160]}"
        ) from None
    for split, sha in want.items():
        if have[split] != sha:
            raise UserError(
                f"--dataset-file {path}: split {split!r} has sha256 "
                f"{have[split][:12]}..., its manifest says {sha[:12]}...: the file "
                "was modified or replaced; run larsvae prepare-data again"
            )
    stamp = {"dataset": path.stem, "npz_sha256": file_sha256(path), "array_sha256": have}
    write_json(out, stamp)
    return stamp


# ---------------------------------------------------------------------------------------
# train


def posthoc_model(init: PathLike, arch: str, mcfg: ModelConfig) -> torch.nn.Module:
    """Post-hoc LARS (Sec. 4.1): the trained 'gaussian' standard model at ``init`` with its
    N(0, I) replaced by a ResampledPrior over it; only a(z) stays trainable."""
    ckpt = load_checkpoint(existing_file(init, "--init"))
    meta = ckpt["meta"]
    if meta.arch != arch:
        raise UserError(
            f"--init {init}: checkpoint of architecture {meta.arch!r}, "
            f"but post-hoc training asked for {arch!r}"
        )
    if meta.prior != "gaussian" or meta.mode != "standard":
        raise UserError(
            f"--init {init}: post-hoc training starts from a 'gaussian' standard "
            f"checkpoint, got prior {meta.prior!r} mode {meta.mode!r}"
        )
    for key in ("latent_dim", "hidden"):
        theirs = getattr(meta.model_config, key)
        if theirs != getattr(mcfg, key):
            raise UserError(
                f"--init {init}: checkpoint has model.{key} = {theirs!r}, but the "
                f"model params give {getattr(mcfg, key)!r}"
            )
    model = build_model(arch, "gaussian", mcfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise UserError(
            f"--init {init}: weights do not fit a {arch!r} model: "
            f"{' '.join(str(exc).split())[:160]}"
        ) from None
    model.make_posthoc(mcfg)
    return model


def train(
    dataset_file: PathLike,
    arch: str,
    prior: str,
    seed: int,
    mcfg: ModelConfig,
    tcfg: TrainConfig,
    out: PathLike,
    *,
    init: PathLike | None = None,
    variant: str = "base",
    device: Any = "cpu",
    progress: bool = True,
    log_path: PathLike | None = None,
) -> dict[str, Any]:
    """Train one cell; ``init`` (a 'gaussian' standard checkpoint) makes it post-hoc LARS.

    Randomness: the initialisation uses ``derive_seed(seed, INIT_TAG)``, training step t
    ``derive_seed(seed, t)`` (larsvae.train), so a cell is a pure function of its inputs."""
    if init is not None and prior != "lars":
        raise UserError(f"--prior {prior!r}: post-hoc training learns a 'lars' prior")
    data_path = existing_file(dataset_file, "--dataset-file")
    manifest = load_manifest(data_path)
    meta = CheckpointMeta(
        arch=arch,
        prior=prior,
        model_config=mcfg,
        variant=variant,
        mode="posthoc" if init is not None else "standard",
        seed=seed,
        dataset=data_path.stem,
        dataset_sha256=file_sha256(data_path),
        base_prior="gaussian" if init is not None else None,
        init_sha256=file_sha256(init) if init is not None else None,
    )
    # what a reader will check, checked before the first step: a run whose checkpoint no
    # reader would accept (a variant name, a cell folder of another dataset) never starts
    check_cell(CheckpointMeta.from_dict(meta.to_dict(), out), out)
    images = sum(int(manifest["splits"][s].get("n") or 0) for s in ("train", "valid", "test"))
    est = memory.train_job(
        arch, prior, mcfg, tcfg, posthoc=init is not None, data_numbers=images * 784, device=device
    )
    memory.require(est, device)
    data = load_dataset(data_path)
    torch.manual_seed(derive_seed(seed, INIT_TAG))
    if init is not None:
        model = posthoc_model(init, arch, mcfg)
    else:
        model = build_model(arch, prior, mcfg)
    model.to(device)
    valid = eval_tensor(data, "valid", device) if tcfg.eval_every > 0 and "valid" in data else None
    stream = train_stream(data, manifest, tcfg.batch_size, seed, device)
    try:
        return fit(
            model,
            stream,
            tcfg,
            out,
            seed=seed,
            meta=meta,
            valid=valid,
            progress=progress,
            log_path=log_path,
        )
    except DiskFull as exc:
        raise UserError(f"{exc}{_kept_resume(out)}") from None


def _kept_resume(out: PathLike) -> str:
    """What survived a failed training run: '; the last resume checkpoint ... is kept'."""
    resume = resume_path_for(out)
    try:
        step = int(load_checkpoint(resume)["step"])
    except CheckpointError:
        return "; no resume checkpoint was written yet"
    return f"; the last resume checkpoint {resume} (step {step}) is kept and the rerun resumes"


# ---------------------------------------------------------------------------------------
# Z


def load_checked(
    checkpoint: PathLike, device: Any, job: Any = None
) -> tuple[torch.nn.Module, Checkpoint]:
    """``load_model`` for a step: the checkpoint (refused if of another cell than the folder
    it sits in, :func:`larsvae.checkpoint.load_checkpoint`), its meta against its weights,
    then ``job(meta)`` -> :class:`larsvae.memory.Estimate`, the step's memory estimate,
    checked before the model is built (:func:`larsvae.memory.require`)."""
    ckpt = load_checkpoint(existing_file(checkpoint, "--checkpoint"))
    check_size(ckpt, checkpoint)
    est = job(ckpt["meta"]) if job is not None else None
    if est is not None:
        memory.require(est, device, f"{est.step} --checkpoint {checkpoint}")
    memory.check_load(ckpt, checkpoint, device)
    return model_from_checkpoint(ckpt, checkpoint, device), ckpt


def _lars_model(
    checkpoint: PathLike, device: Any, job: Any = None
) -> tuple[torch.nn.Module, Checkpoint]:

    def lars_job(meta: CheckpointMeta) -> Any:
        if not meta.has_z:
            raise UserError(
                f"--checkpoint {checkpoint}: prior {meta.prior!r} has no normalising "
                f"constant Z to estimate (only {', '.join(LARS_PRIORS)} and resampled "
                "outputs do)"
            )
        return job(meta) if job is not None else None

    return load_checked(checkpoint, device, lars_job)


def estimate_z(
    checkpoint: PathLike,
    ecfg: EvalConfig,
    shard: int,
    num_shards: int,
    out: PathLike,
    *,
    seed: int | None = None,
    device: Any = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Shard ``shard`` of ``num_shards`` of the Z estimate from ``ecfg.z_samples`` draws.

    ``seed`` defaults to the checkpoint's; batch b's draws depend only on (seed, b), so the
    shards merge into exactly the unsharded estimate (larsvae.zestimate)."""
    if num_shards < 1:
        raise UserError(f"--num-shards: expected an integer >= 1, got {num_shards}")
    if not 0 <= shard < num_shards:
        raise UserError(f"--shard: expected an integer in [0, {num_shards - 1}], got {shard}")

    model, ckpt = _lars_model(checkpoint, device, lambda meta: memory.z_job(meta, ecfg, device))
    prior = z_holder(model)
    if (
        ecfg.z_antithetic
        and getattr(prior.proposal, "symmetric", False)
        and (ecfg.z_batch % 2 or ecfg.z_samples % 2)
    ):
        raise UserError(
            f"evaluate.z_batch, evaluate.z_samples: must be even with "
            f"evaluate.z_antithetic (pairs z, -z), got {ecfg.z_batch} and "
            f"{ecfg.z_samples}"
        )
    seed = ckpt["meta"].seed if seed is None else seed
    t0 = time.perf_counter()
    with torch.no_grad():
        est = _estimate(
            prior.acceptance,
            prior.proposal,
            ecfg.z_samples,
            ecfg.z_batch,
            antithetic=ecfg.z_antithetic,
            seed=seed,
            shard=shard,
            num_shards=num_shards,
            device=device,
            progress=progress,
        )
    result = {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "shard": shard,
        "num_shards": num_shards,
        "seed": seed,
        "z_samples": ecfg.z_samples,
        "antithetic": est.antithetic,  # plain MC when the proposal is not symmetric
        "estimate": est.to_dict(),
        "wall_time_s": time.perf_counter() - t0,
        "device": str(device),
    }
    write_json(out, result)
    return result


_SHARD_KEYS = ("checkpoint_sha256", "num_shards", "seed", "z_samples", "antithetic")


def _read_shard(path: PathLike) -> dict[str, Any]:

    obj = read_json(path, "shard")
    check_batches(obj.get("estimate"), f"shard {path}")
    try:
        obj["_est"] = ZEstimate.from_dict(obj["estimate"])
        for key in ("shard", *_SHARD_KEYS):
            obj[key]  # noqa: B018 - presence check
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"shard {path}: not a complete Z shard file ({exc!r})") from None
    return obj


def reduce_z(shards: Sequence[PathLike], out: PathLike) -> dict[str, Any]:
    """Merge a complete set of shards of one run into ``z.json`` (mean, standard error)."""
    objs = [(str(p), _read_shard(p)) for p in shards]
    for path, obj in objs:
        est = obj["_est"]
        if not (math.isfinite(est.sum) and math.isfinite(est.sum_sq)):
            raise UserError(f"shard {path}: a batch sum is NaN or infinite; rerun this shard")
        if est.n:  # the merged Z is a weighted mean of the shards' means: each a possible Z
            check_z_value(est, f"shard {path}")
    first_path, first = objs[0]
    for path, obj in objs[1:]:
        for key in _SHARD_KEYS:
            if obj[key] != first[key]:
                raise UserError(
                    f"shard {path}: {key} = {obj[key]!r} differs from {first_path} "
                    f"({first[key]!r}); shards of different runs cannot be merged"
                )
    n = first["num_shards"]
    seen: dict[int, str] = {}
    for path, obj in objs:
        if obj["shard"] in seen:
            raise UserError(
                f"shard {path}: duplicate of shard {obj['shard']} ({seen[obj['shard']]})"
            )
        seen[obj["shard"]] = path
    missing = sorted(set(range(n)) - set(seen))
    if missing or len(seen) != n:
        raise UserError(
            f"reduce-z: incomplete set of shards: got {len(seen)} of {n}, missing {missing}"
        )
    try:
        merged = ZEstimate.merge([o["_est"] for _, o in sorted(objs, key=lambda s: s[1]["shard"])])
    except ValueError as exc:  # e.g. shards written with different z_batch
        raise UserError(f"reduce-z: shards of different runs cannot be merged: {exc}") from None
    if not merged.complete:
        have = {p.index for p in merged.partials}
        lost = sorted(set(range(merged.num_batches)) - have)
        raise UserError(
            f"reduce-z: the shards hold {len(have)} of {merged.num_batches} batches "
            f"(missing e.g. {lost[:5]}); rerun the incomplete shard(s)"
        )
    result = {key: first[key] for key in ("checkpoint", *_SHARD_KEYS)}
    result.update(
        estimate=merged.to_dict(), z=merged.mean, z_stderr=merged.stderr, log_z=merged.log_mean
    )
    write_json(out, result)
    return result


def _split_size(dataset_file: PathLike, split: str) -> int:
    """Images in a split from the dataset's manifest (an upper guess when it has none)."""
    try:
        return int(load_manifest(dataset_file)["splits"][split].get("n") or 70_000)
    except DataError:
        return 70_000


# ---------------------------------------------------------------------------------------
# evaluate


def _cell_fields(meta: CheckpointMeta) -> dict[str, Any]:
    """The cell a result is of, as nll.json and the ranking's summary.json record it."""
    return {
        "dataset": meta.dataset,
        "arch": meta.arch,
        "prior": meta.prior,
        "mode": meta.mode,
        "seed": meta.seed,
    }


def _z_fields(model: torch.nn.Module, z_est: ZEstimate, meta: CheckpointMeta) -> dict[str, Any]:
    """nll.json's fields of a LARS model: its Z and what it implies for sampling."""
    prior = z_holder(model)
    # proposals per accepted sample (1 - (1-Z)^T) / Z, and accepted / proposed
    mean_prop = float(prior.expected_num_proposals())
    return dict(
        log_z=float(z_est.log_mean),
        z=float(z_est.mean),
        z_stderr=float(z_est.stderr),
        z_samples=int(z_est.samples),
        truncation=meta.model_config.truncation,
        mean_proposals=mean_prop,
        acceptance_rate=1.0 / mean_prop,
    )


def evaluate(
    checkpoint: PathLike,
    dataset_file: PathLike,
    ecfg: EvalConfig,
    out: PathLike,
    *,
    z: PathLike | None = None,
    device: Any = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """IWAE test NLL with ``ecfg.iwae_k`` samples; LARS priors use the Z of ``z``."""
    n_test = _split_size(dataset_file, "test")
    model, ckpt = load_checked(
        checkpoint, device, lambda meta: memory.evaluate_job(meta, ecfg, n_test, device)
    )
    meta = ckpt["meta"]
    data_sha = file_sha256(existing_file(dataset_file, "--dataset-file"))
    if meta.dataset_sha256 not in (None, data_sha):
        raise UserError(
            f"--dataset-file {dataset_file}: not the data {checkpoint} was trained on (sha256 "
            f"{data_sha[:12]}... vs {meta.dataset_sha256[:12]}... in its meta)"
        )
    lars = meta.has_z
    z_est = None
    if lars:
        if z is None:
            raise UserError(f"--z: required for a {meta.prior!r} checkpoint")
        z_est = read_z(z, checkpoint)
        z_holder(model).set_log_z(float(z_est.log_mean))
    elif z is not None:
        raise UserError(f"--z {z}: prior {meta.prior!r} has no Z to install")
    x = eval_tensor(load_dataset(dataset_file), "test", device)
    if ecfg.test_subset is not None:
        x = x[test_indices(x.shape[0], ecfg.test_subset)]
    t0 = time.perf_counter()
    outputs = isinstance(model, ResampledOutputsVAE)  # IWAE log pi(x) + the log-term
    summary = (outputs_nll_summary if outputs else nll_summary)(
        model,
        x,
        k=ecfg.iwae_k,
        batch_size=ecfg.iwae_batch,
        k_chunk=ecfg.iwae_k_chunk,
        z_estimate=z_est,
        seed=derive_seed(meta.seed, EVAL_TAG),
        progress=progress,
    )
    gen = torch.Generator(device=x.device).manual_seed(derive_seed(meta.seed, EVAL_TAG, 1))
    elbo = elbo_terms(model, x, ecfg.elbo_samples, ecfg.iwae_batch, generator=gen)
    result: dict[str, Any] = {
        **_cell_fields(meta),
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "dataset_sha256": data_sha,
        "z_sha256": file_sha256(z) if z is not None else None,
        **summary.to_dict(),
        **elbo.to_dict(),
        "wall_time_s": time.perf_counter() - t0,
        "device": str(device),
        "test_images": "all"
        if ecfg.test_subset is None or ecfg.test_subset >= n_test
        else f"{ecfg.test_subset} of {n_test}, evenly spaced (i * {n_test} // {ecfg.test_subset})",
        # per test image, in test-set order: the paired comparisons of two cells and the
        # check that ``nll`` is their negative mean (larsvae.reports.table1)
        "log_px": [float(v) for v in summary.log_px.tolist()],
    }
    if lars:
        result.update(_z_fields(model, z_est, meta))
    write_json(out, result)
    return result


# ---------------------------------------------------------------------------------------
# figures and reports


def sample_grid(
    checkpoint: PathLike, n: int, seed: int, out: PathLike, *, device: Any = "cpu"
) -> None:
    """A PNG grid of ``n`` samples x ~ p(x|z) p(z) (LARS: the exact truncated sampler),
    LARS samples ranked by a(z) (the paper's quality score, Sec. 5), best first."""
    from torchvision.utils import save_image  # torchvision loads only for this step

    if n < 1:
        raise UserError(f"--n: expected an integer >= 1, got {n}")
    model, _ = load_checked(checkpoint, device, lambda meta: memory.sample_job(meta, n, device))
    torch.manual_seed(derive_seed(seed, SAMPLE_TAG))
    with torch.no_grad():
        if isinstance(model, ResampledOutputsVAE):  # exact binary samples of p_T(x), by a(x)
            x = model.sample(n)
            x = x[torch.argsort(model.resampler.acceptance(x), descending=True)]
        else:
            prior = model.top_prior
            z_top = prior.sample(n)
            if isinstance(prior, ResampledPrior):
                z_top = z_top[torch.argsort(prior.acceptance(z_top), descending=True)]
            x = model.decode(z_top)
        x = x.float().cpu().view(-1, 1, 28, 28)
    with atomic_write(out, "wb") as fh:
        save_image(x, fh, nrow=max(1, math.ceil(math.sqrt(n))), format="png")


def report(
    spec: dict[str, Any],
    table: PathLike,
    main: PathLike,
    metrics: PathLike,
    curves: PathLike,
    root: PathLike = ".",
) -> None:
    """Table 1 (ours beside the paper's), the main-job summary, metrics.json, curves."""
    root = Path(root)
    _check_results(spec, root)
    cells = table1.load_results(spec, root)
    now = table1.now_utc()
    atomic_write_text(table, table1.render_table1(spec, cells, root, now))
    atomic_write_text(main, table1.render_main(spec, cells, root, now))
    atomic_write_text(
        metrics, json.dumps(table1.metrics(spec, cells), indent=2, sort_keys=True) + "\n"
    )
    figures.plot_training_curves(spec, curves, root)
    print(f"report: wrote {table}, {main}, {metrics}, {curves}", file=sys.stderr)


def test_indices(n_test: int, subset: int) -> torch.Tensor:
    """``subset`` test images evenly spaced over the split (i * n / subset, i < subset): the
    same images for every cell of a dataset, and the class mix of a split sorted by class
    (staticMNIST's test split is: its first 2,000 images are 0s and 1s)."""
    if subset >= n_test:
        return torch.arange(n_test)
    return torch.arange(subset) * n_test // subset


def _check_results(spec: dict[str, Any], root: Path) -> None:
    """Every cell's nll.json (and z.json) exists, is a JSON object and has a finite ``nll``
    (a report must never show a row built from a file larsvae evaluate did not finish)."""
    cells = spec.get("cells")
    if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
        raise UserError("--spec: 'cells' must be a list of objects")
    for c in cells:
        if not isinstance(c.get("nll"), str):
            raise UserError(f"--spec: cell {c} names no nll.json")
        path = root / c["nll"]
        check_nll_record(read_json(path, "nll.json"), path)
        if c.get("provenance"):  # a published cell (larsvae.publish): against this plan
            stamp = read_json(root / c["verified"], "verified stamp") if c.get("verified") else {}
            prov = root / c["provenance"]
            check_published(prov.parent, c, c.get("params") or {}, stamp.get("npz_sha256"))
        if c.get("z"):
            read_json(root / c["z"], "z.json")


def appendix(spec: dict[str, Any], out_dir: PathLike, root: PathLike = ".") -> list[Path]:
    """Tables D.1-D.5 of the appendix (ours beside the paper's) from the cells' results."""
    return write_appendix(spec, out_dir, root)


def z_convergence(z_files: dict[str, PathLike], out: PathLike) -> None:
    """Figure A.2: Z_S against S for each labelled z.json, from its per-batch sums (no new
    sampling: batch b's draws depend only on (seed, b), so the curve is the sequential one)."""
    curves = {}
    for label, path in z_files.items():
        curves[label] = read_z_file(path)[1]
        check_z_value(curves[label], f"--z {path}")
    plot_z_convergence(curves, out)


def _rank_outputs(
    checkpoint: PathLike, out_dir: PathLike, n: int, seed: int, device: Any
) -> dict[str, Any]:
    """Figure D.9: n decoded samples x ~ pi(x) of a model with resampled outputs, by a(x)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"--n: expected an integer >= 1, got {n!r}")
    model, ckpt = load_checked(checkpoint, device)
    extra = _cell_fields(ckpt["meta"])
    extra.update(checkpoint=str(checkpoint), checkpoint_sha256=file_sha256(checkpoint))
    return write_output_ranking(model, out_dir, n=n, seed=seed, extra=extra)


def rank(
    checkpoint: PathLike,
    out_dir: PathLike,
    *,
    n: int = 10_000,
    seed: int = 0,
    threshold: float | None = None,
    accepted_only: bool = False,
    device: Any = "cpu",
    figures_dir: PathLike | None = None,
) -> dict[str, Any]:
    """Figures D.5-D.8: n proposal samples ranked by a(z) (larsvae.ranking.rank_checkpoint):
    grid of the best / random / worst, sorted a(z), samples.npz and summary.json in
    ``out_dir``; the figures and summary also copied to ``figures_dir`` if given."""
    ckpt = load_checkpoint(existing_file(checkpoint, "--checkpoint"))  # of this cell
    if isinstance(n, int) and n >= 1:  # rank_checkpoint words the error otherwise
        check_size(ckpt, checkpoint)
        est = memory.rank_job(ckpt["meta"], n, device)
        memory.require(est, device, f"rank --checkpoint {checkpoint}")
    if ckpt["meta"].arch in OUTPUT_LARS_ARCHS:  # Figure D.9: decoded x ranked by a(x)
        summary = _rank_outputs(checkpoint, out_dir, n, seed, device)
    else:
        summary = rank_checkpoint(
            checkpoint,
            out_dir,
            n=n,
            seed=seed,
            threshold=threshold,
            accepted_only=accepted_only,
            device=device,
        )
    if figures_dir is not None:
        Path(figures_dir).mkdir(parents=True, exist_ok=True)
        for name in ("grid.png", "acceptance.png", "summary.json"):
            with atomic_write(Path(figures_dir) / name, "wb") as fh:
                fh.write((Path(out_dir) / name).read_bytes())
    return summary


def toy2d(out: PathLike, steps: int, seed: int, *, progress: bool = True) -> dict[str, Any]:
    """The 2-D illustration: LARS fitted to ring / two moons / checkerboard (Sec. 3, Eq. 5);
    writes the figure and ``<out>.json`` (per target: test NLL of the fit, N(0, I), the
    target itself; Z and its standard error)."""
    if steps < 1:
        raise UserError(f"--steps: expected an integer >= 1, got {steps}")
    summary = make_figure(Path(out), steps=steps, seed=seed, progress=progress)
    write_json(Path(out).with_suffix(".json"), {"steps": steps, "seed": seed, **summary})
    return summary


# -- Appendix D, part 2 ----------------------------------------------------------------------


def mog2d(
    out_table: PathLike,
    out_figure: PathLike,
    *,
    steps: int,
    seed: int,
    z_samples: int,
    test_samples: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Figures 2 / D.3 / D.4: LARS, RealNVP and LARS over RealNVP fitted to a 2-D mixture of
    Gaussians with KL(q || N(0, I)) = 1.8; the KL(q || p) and Z table and the figure."""
    return mog_experiment(
        Path(out_table),
        Path(out_figure),
        steps=steps,
        seed=seed,
        z_samples=z_samples,
        test_samples=test_samples,
        progress=progress,
    )


def prepare_labels(dataset: str, dataset_file: PathLike, out: PathLike) -> str:
    """The class labels of ``dataset`` beside its prepared npz (never inside it: that would
    change its hash and every checkpoint's provenance), aligned with and checked against
    ``dataset_file``'s images; returns the labels file's sha256."""
    return _prepare_labels(dataset, out, dataset_file=existing_file(dataset_file, "--dataset-file"))


def latent2d(
    models: dict[str, PathLike],
    z_files: dict[str, PathLike],
    dataset_file: PathLike,
    labels_file: PathLike,
    out_dir: PathLike,
    *,
    grid: int = 300,
    seed: int = 0,
    budget: str = "",
) -> dict[str, Any]:
    """Figures D.10-D.14 and table_latent2d.md for the 2-D latent VAEs ``models`` (label ->
    checkpoint; each checked for provenance like any other consumer of a checkpoint)."""
    for label, path in models.items():
        existing_file(path, f"--model {label}")
    return latent2d_report(
        models,
        existing_file(dataset_file, "--dataset-file"),
        existing_file(labels_file, "--labels-file"),
        out_dir,
        z_files=z_files,
        grid=grid,
        seed=seed,
        budget=budget,
    )


def priors_report(
    spec: dict[str, Any], table: PathLike, figure: PathLike, root: PathLike = "."
) -> None:
    """The prior comparison (priors.md) and its figure from the cells of ``spec`` (the Table
    1 spec, each cell with its checkpoint, train log and iterations)."""
    root = Path(root)
    _check_results(spec, root)
    write_report(spec, table, figure, root)
    print(f"priors-report: wrote {table}, {figure}", file=sys.stderr)


__all__ = [
    "check_data",
    "rank",
    "appendix",
    "z_convergence",
    "estimate_z",
    "evaluate",
    "latent2d",
    "mog2d",
    "posthoc_model",
    "prepare_labels",
    "prepare_data",
    "priors_report",
    "reduce_z",
    "report",
    "sample_grid",
    "toy2d",
    "train",
]
