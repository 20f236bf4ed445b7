"""What a params budget costs: CPU time per cell and in total, and the wall time on N cores.

    python bench/grid_cost.py --configfile params/grid.yaml --measure [--save FILE] [--quick]
    python bench/grid_cost.py --configfile params/grid.yaml --costs FILE [--cores N]
    python bench/grid_cost.py --configfile params/grid.yaml --costs FILE --check runs/grid

Each cell's work comes from the budget's own per-cell params (the workflow's plan,
workflow/plan.py: ``parse_params`` and ``Params.step_params``, per-architecture and per-dataset overrides included):

- training: ``iterations`` steps x the measured cost of one trainer step of that model and
  batch size, plus, when ``eval_every`` > 0, every validation (after each ``eval_every``-th
  step and the last) on the whole validation split at ``eval_k`` samples per image. Early
  stopping can end a cell sooner: its prediction is the full schedule, an upper bound;
- Z (cells with a normalising constant): ``z_samples`` x the measured seconds per proposal
  sample at the budget's ``z_batch``, split over ``z_shards`` jobs;
- evaluate: the test images (``test_subset`` or the split) x the measured seconds per image
  of the evaluate step's calls (``nll_summary`` at iwae_k / iwae_batch / iwae_k_chunk, then
  ``elbo_terms`` with elbo_samples draws);
- every job (train, each Z shard, reduce-z, evaluate) pays a process start: ``import
  torch`` and the library, measured.

A cost is measured once per distinct model and setting (one CPU thread by default, the
pipeline's ``threads: 1``) with untrained weights: the time per step or per image does not
depend on them. ``--measure`` times the costs the budget needs (``--save FILE`` keeps them,
``--costs FILE`` reads them back); the wall time on ``--cores`` cores is a greedy schedule
of the jobs with their dependencies (train -> Z shards -> reduce -> evaluate).

``--check RUNS`` reads what finished cells of the budget took (RUNS is the budget's runs
folder, e.g. runs/grid): the ``[larsvae train] done: {...}`` line of each training log
(``wall_time_s`` over ``steps_this_run`` steps; a log without it, a run still going, gives
the steps and elapsed time of its last progress line), each Z shard's ``wall_time_s`` and
nll.json's ``wall_time_s``, and prints them beside the prediction for the same work. The
wall times cover the work, not the process start, so the check leaves the job costs out.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import heapq
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
FORMAT = "larsvae.grid_costs/1"
#: what each kind of cost is per
UNITS = {
    "train": "s/step",
    "valid": "s/image",
    "evaluate": "s/image",
    "z": "s/sample",
    "job": "s/job",
}


# -- the budget's cells and the work in each ---------------------------------------------------


def load_params(path: str | os.PathLike):
    """The params file, checked against the workflow's schema, parsed."""
    import jsonschema
    import yaml

    from larsvae.config import params_schema

    sys.path.insert(0, str(REPO / "workflow"))
    from plan import parse_params  # the workflow's plan: the budget's cells

    d = yaml.safe_load(Path(path).read_text())
    jsonschema.validate(d, params_schema())
    return parse_params(d)


def split_sizes(dataset: str) -> tuple[int, int, int]:
    """(train, valid, test) images of a dataset (the sizes prepare-data checks)."""
    from larsvae.data.prepare import EXPECTED_SIZES

    return EXPECTED_SIZES[dataset]


def cost_key(kind: str, arch: str = "", prior: str = "", mode: str = "", **spec: Any) -> str:
    """``kind:arch/prior/mode:hash`` of everything the cost depends on (the model keys the
    cell's training reads, the batch size, K, ...): two cells share a cost only if both
    run the same thing."""
    if kind == "job":
        return "job"
    blob = json.dumps(spec, sort_keys=True, default=list)
    return f"{kind}:{arch}/{prior}/{mode}:{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


@dataclasses.dataclass(frozen=True)
class Work:
    """What one cell runs, from its own params, and the cost keys that price it."""

    cell: Any  # plan.Cell (workflow/plan.py)
    steps: int
    eval_every: int
    valid_images: int
    test_images: int
    z_samples: int  # 0: no Z
    z_shards: int
    early_stopping: bool
    keys: dict[str, str]  # kind -> cost key
    specs: dict[str, dict[str, Any]]  # cost key -> what to measure

    @property
    def validations(self) -> int:
        return validations_between(0, self.steps, self.eval_every, self.steps)

    @property
    def jobs(self) -> int:
        return 2 + (self.z_shards + 1 if self.z_samples else 0)


def validations_between(start: int, stop: int, eval_every: int, iterations: int) -> int:
    """Validations fit runs after steps start+1 .. stop: every eval_every-th and the last."""
    if eval_every <= 0 or stop <= start:
        return 0
    n = stop // eval_every - start // eval_every
    if stop == iterations and iterations % eval_every:
        n += 1
    return n


def cell_work(params, cell) -> Work:
    """The work of ``cell`` under ``params`` (a ``plan.Params``, workflow/plan.py)."""
    from larsvae.config import eval_config, train_config

    posthoc = cell.mode == "posthoc"
    tp = params.step_params("train_posthoc" if posthoc else "train", cell)
    model = tp["model"]
    tcfg = train_config(tp["posthoc" if posthoc else "train"])
    ecfg = eval_config(params.raw[cell.dataset, cell.arch]["evaluate"])
    _, n_valid, n_test = split_sizes(cell.dataset)
    who = dict(arch=cell.arch, prior=cell.prior, mode=cell.mode)
    specs: dict[str, dict[str, Any]] = {}
    keys: dict[str, str] = {}

    def add(kind: str, **spec: Any) -> None:
        keys[kind] = cost_key(kind, **who, **spec)
        specs[keys[kind]] = {"kind": kind, **who, **spec}

    add("train", model=model, batch_size=tcfg.batch_size)
    if tcfg.eval_every > 0:
        add("valid", model=model, eval_k=tcfg.eval_k)
    iwae = params.step_params("evaluate", cell)["evaluate"]
    iwae.pop("test_subset")  # how many images, not what one costs
    add("evaluate", model=model, **iwae)
    z_samples = 0
    if cell.needs_z:
        z = params.step_params("estimate_z", cell)["evaluate"]
        add("z", model=model, z_batch=z["z_batch"], z_antithetic=z["z_antithetic"])
        z_samples = ecfg.z_samples
    keys["job"] = "job"
    specs["job"] = {"kind": "job"}
    test = n_test if ecfg.test_subset is None else min(ecfg.test_subset, n_test)
    return Work(
        cell=cell,
        steps=tcfg.iterations,
        eval_every=tcfg.eval_every,
        valid_images=n_valid,
        test_images=test,
        z_samples=z_samples,
        z_shards=ecfg.z_shards,
        early_stopping=tcfg.eval_every > 0 and tcfg.early_stopping_patience > 0,
        keys=keys,
        specs=specs,
    )


def budget_work(params) -> list[Work]:
    return [cell_work(params, c) for c in params.cells]


def needed_specs(works: list[Work]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for w in works:
        out.update(w.specs)
    return out


# -- prediction ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CellCost:
    """Predicted CPU seconds of one cell, by part."""

    work: Work
    train_s: float  # the steps
    valid_s: float  # the validations inside training
    z_s: float  # all shards together
    evaluate_s: float
    jobs_s: float

    @property
    def total_s(self) -> float:
        return self.train_s + self.valid_s + self.z_s + self.evaluate_s + self.jobs_s


def _cost(costs: dict[str, dict[str, Any]], key: str) -> float:
    if key not in costs:
        raise KeyError(key)
    return float(costs[key]["seconds"])


def missing_costs(works: list[Work], costs: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(k for k in needed_specs(works) if k not in costs)


def predict_cell(work: Work, costs: dict[str, dict[str, Any]]) -> CellCost:
    k = work.keys
    valid_s = 0.0
    if work.validations:
        valid_s = work.validations * work.valid_images * _cost(costs, k["valid"])
    return CellCost(
        work=work,
        train_s=work.steps * _cost(costs, k["train"]),
        valid_s=valid_s,
        z_s=work.z_samples * _cost(costs, k["z"]) if work.z_samples else 0.0,
        evaluate_s=work.test_images * _cost(costs, k["evaluate"]),
        jobs_s=work.jobs * _cost(costs, "job"),
    )


def cell_jobs(c: CellCost, job_s: float) -> list[tuple[str, float, list[int]]]:
    """The cell's jobs as (name, seconds, indices of the jobs it waits for), local indices."""
    jobs = [("train", c.train_s + c.valid_s + job_s, [])]
    if c.work.z_samples:
        n = c.work.z_shards
        jobs += [(f"z{i}", c.z_s / n + job_s, [0]) for i in range(n)]
        jobs.append(("reduce_z", job_s, list(range(1, n + 1))))
    jobs.append(("evaluate", c.evaluate_s + job_s, [len(jobs) - 1]))
    return jobs


def schedule(jobs: list[tuple[str, float, list[int]]], cores: int) -> float:
    """Makespan of ``jobs`` (name, seconds, dependencies; in a topological order) on
    ``cores`` cores, one job per core: whenever a core is free it takes the first job
    in the list whose dependencies have finished (a greedy list schedule)."""
    finish: dict[int, float] = {}
    free = [0.0] * cores  # heap of the times cores become free
    heapq.heapify(free)
    todo = list(range(len(jobs)))
    while todo:
        t = heapq.heappop(free)
        ready = [j for j in todo if all(finish.get(d, math.inf) <= t for d in jobs[j][2])]
        if not ready:  # wait for the next running job to finish
            later = [f for f in finish.values() if f > t]
            heapq.heappush(free, min(later))
            continue
        j = ready[0]
        todo.remove(j)
        finish[j] = t + jobs[j][1]
        heapq.heappush(free, finish[j])
    return max(finish.values(), default=0.0)


def budget_jobs(cells: list[CellCost], job_s: float) -> list[tuple[str, float, list[int]]]:
    """Every cell's jobs in one list, trainings first in cell order (the dependencies
    decide the rest), with global indices."""
    per_cell = [cell_jobs(c, job_s) for c in cells]
    order: list[tuple[int, int]] = [(i, 0) for i in range(len(cells))]
    order += [(i, j) for i, jobs in enumerate(per_cell) for j in range(1, len(jobs))]
    index = {pos: n for n, pos in enumerate(order)}
    return [
        (per_cell[i][j][0], per_cell[i][j][1], [index[i, d] for d in per_cell[i][j][2]])
        for i, j in order
    ]


def wall_time(cells: list[CellCost], costs: dict[str, dict[str, Any]], cores: int) -> float:
    return schedule(budget_jobs(cells, _cost(costs, "job")), cores)


# -- measuring -------------------------------------------------------------------------------


def _model_for(spec: dict[str, Any]):
    """The spec's model, untrained (bench_arch.make_model; post hoc: a(z) over an N(0, I)
    model, the rest frozen, as ``larsvae.steps.posthoc_model``)."""
    import bench_arch

    from larsvae.config import model_config

    mcfg = model_config(spec["model"])
    if spec["mode"] == "posthoc":
        model = bench_arch.make_model(spec["arch"], "gaussian", mcfg)
        model.make_posthoc(mcfg)
        return model
    return bench_arch.make_model(spec["arch"], spec["prior"], mcfg)


def _install_z(model) -> None:
    """A Z for the IWAE of a model whose Z is not yet set (post hoc: a fresh a(z))."""
    from larsvae.models import z_holder
    from larsvae.zestimate import estimate_z

    holder = z_holder(model)
    if hasattr(holder, "set_log_z") and not bool(holder.log_z_initialised):
        est = estimate_z(holder.acceptance, holder.proposal, 20_000, 20_000, seed=0)
        holder.set_log_z(min(est.log_mean, 0.0))


def measure(spec: dict[str, Any], quick: bool) -> float:
    """Seconds per unit (:data:`UNITS`) of one cost spec, on this machine (the calls of
    larsvae.steps.evaluate for ``evaluate``, of the validation in fit for ``valid``)."""
    import bench_arch
    import torch
    from common import timeit

    repeat = 1 if quick else 3
    kind = spec["kind"]
    if kind == "job":
        code = "import torch, larsvae.steps, larsvae.models, larsvae.evaluation"
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))

        def start():
            subprocess.run([sys.executable, "-c", code], check=True, env=env)

        return timeit(start, repeat, warmup=1)
    model = _model_for(spec)
    if kind == "train":
        from larsvae.config import TrainConfig

        cfg = TrainConfig(batch_size=spec["batch_size"], warmup_steps=1000)
        step = bench_arch.trainer_step(model, bench_arch.grey_stream(cfg.batch_size, "cpu"), cfg)
        steps = 3 if quick else 20
        clock = [0]
        return timeit(lambda: bench_arch._run_steps(step, clock, steps), repeat, warmup=1) / steps
    _install_z(model)
    model.eval()
    if kind == "z":
        from larsvae.models import z_holder
        from larsvae.zestimate import estimate_z

        holder = z_holder(model)
        n = 200_000 if quick else 4_000_000
        batch = min(spec["z_batch"], n)

        def z():
            with torch.no_grad():
                estimate_z(
                    holder.acceptance,
                    holder.proposal,
                    n,
                    batch,
                    antithetic=spec["z_antithetic"],
                    seed=0,
                )

        return timeit(z, repeat, warmup=1) / n
    if kind == "valid":
        from larsvae.train import default_validation_metric

        n = 100 if quick else 200  # blocks of 100 images, as the validation runs them
        x = bench_arch.binary_images(n, "cpu")
        return timeit(lambda: default_validation_metric(model, x, spec["eval_k"]), repeat) / n
    assert kind == "evaluate", kind
    from larsvae.evaluation import elbo_terms, nll_summary
    from larsvae.models.resampled_outputs import ResampledOutputsVAE
    from larsvae.models.resampled_outputs import nll_summary as outputs_nll_summary

    # IWAE costs the same per image whatever the block (one image per call on the CPU): a
    # few images; the ELBO's forward passes run on blocks of iwae_batch images: one block
    n = 2 if quick else (4 if spec["arch"] == "convhvae" else 8)
    x = bench_arch.binary_images(max(n, spec["iwae_batch"]), "cpu")
    nll = outputs_nll_summary if isinstance(model, ResampledOutputsVAE) else nll_summary

    def iwae():
        nll(
            model,
            x[:n],
            k=spec["iwae_k"],
            batch_size=spec["iwae_batch"],
            k_chunk=spec["iwae_k_chunk"],
            seed=0,
        )

    def elbo():
        g = torch.Generator().manual_seed(1)
        elbo_terms(model, x, spec["elbo_samples"], spec["iwae_batch"], generator=g)

    return timeit(iwae, repeat) / n + timeit(elbo, repeat) / x.shape[0]


def measure_all(
    specs: dict[str, dict[str, Any]], costs: dict[str, dict[str, Any]], quick: bool
) -> None:
    """Measure every spec not yet in ``costs`` (in place), printing each."""
    for key, spec in specs.items():
        if key in costs:
            continue
        t0 = time.perf_counter()
        seconds = measure(spec, quick)
        costs[key] = {**spec, "seconds": seconds, "unit": UNITS[spec["kind"]]}
        print(
            f"measured {key}: {_fmt_unit(seconds, spec['kind'])} "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )


def _fmt_unit(seconds: float, kind: str) -> str:
    if kind == "z":
        return f"{1 / seconds / 1e6:.2f} M samples/s"
    if kind == "job":
        return f"{seconds:.2f} s/job"
    return f"{seconds * 1e3:.2f} ms/{UNITS[kind].split('/')[1]}"


def machine(threads: int, quick: bool) -> dict[str, Any]:
    import torch
    from common import cpu_model

    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": cpu_model(),
        "threads": threads,
        "torch": torch.__version__,
        "quick": quick,
    }


def read_costs(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    data = json.loads(Path(path).read_text())
    if data.get("format") != FORMAT:
        raise SystemExit(f"--costs {path}: not a {FORMAT} file")
    return data.get("machine", {}), data["costs"]


def write_costs(path: str | os.PathLike, head: dict[str, Any], costs: dict) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "machine": head, "costs": costs}, indent=2))
    os.replace(tmp, p)


# -- the check against finished cells ----------------------------------------------------------

_DONE = re.compile(r"\[larsvae train\] done: (\{.*\})")
_RESUMED = re.compile(r"resuming from .* at step (\d+)")
_PROGRESS = re.compile(r"(\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)<")


def train_record(log: Path) -> dict[str, Any] | None:
    """What the training log of one cell says it ran: steps (from, to), wall seconds and
    whether it finished; None without a log or progress in it."""
    if not log.is_file():
        return None
    text = log.read_text(errors="replace")
    done = _DONE.findall(text)
    if done:
        s = json.loads(done[-1])
        start = int(s["resumed_from"])
        return {
            "start": start,
            "stop": start + int(s["steps_this_run"]),
            "wall_s": float(s["wall_time_s"]),
            "finished": True,
            "stopped_early": bool(s.get("stopped_early")),
        }
    bars = _PROGRESS.findall(text.replace("\r", "\n"))
    if not bars:
        return None
    n, _total, h, m, sec = bars[-1]
    resumed = _RESUMED.findall(text)
    start = int(resumed[-1]) if resumed else 0
    return {
        "start": start,
        "stop": int(n),
        "wall_s": 3600 * int(h or 0) + 60 * int(m) + int(sec),
        "finished": False,
        "stopped_early": False,
    }


def check_rows(
    works: list[Work], costs: dict[str, dict[str, Any]], runs: str | os.PathLike
) -> list[dict[str, Any]]:
    """(cell, part, work, predicted s, measured s) for every part a run has finished (and
    trainings still going), read from the runs folder ``runs``."""
    from larsvae.paths import Layout

    layout = Layout(str(runs), "")
    rows = []
    for w in works:
        wc = w.cell.wildcards()
        rec = train_record(Path(layout.log("train", **wc)))
        if rec is not None and rec["stop"] > rec["start"]:
            steps = rec["stop"] - rec["start"]
            n_valid = validations_between(rec["start"], rec["stop"], w.eval_every, w.steps)
            pred = steps * _cost(costs, w.keys["train"])
            if n_valid:
                pred += n_valid * w.valid_images * _cost(costs, w.keys["valid"])
            what = f"steps {rec['start']}-{rec['stop']}" + (
                f", {n_valid} validations" if n_valid else ""
            )
            what += "" if rec["finished"] else " (running)"
            rows.append(_check_row(w, "train", what, pred, rec["wall_s"]))
        shard_dir = Path(layout.z_shard(**wc)).parent
        for shard in sorted(shard_dir.glob("shard*of*.json")) if w.z_samples else ():
            s = json.loads(shard.read_text())
            samples = int(s["z_samples"]) / int(s["num_shards"])
            pred = samples * _cost(costs, w.keys["z"])
            what = f"Z shard {s['shard']} of {s['num_shards']}, {samples:.3g} samples"
            rows.append(_check_row(w, "z", what, pred, float(s["wall_time_s"])))
        nll = Path(layout.nll(**wc))
        if nll.is_file():
            s = json.loads(nll.read_text())
            pred = int(s["n"]) * _cost(costs, w.keys["evaluate"])
            what = f"{s['n']} test images, K={s['k']}"
            rows.append(_check_row(w, "evaluate", what, pred, float(s["wall_time_s"])))
    return rows


def _check_row(w: Work, part: str, what: str, pred: float, meas: float) -> dict[str, Any]:
    return {
        "cell": cell_name(w.cell),
        "arch": w.cell.arch,
        "part": part,
        "work": what,
        "predicted_s": pred,
        "measured_s": meas,
        "ratio": meas / pred if pred > 0 else math.nan,
    }


# -- printing --------------------------------------------------------------------------------


def cell_name(cell) -> str:
    return f"{cell.dataset} {cell.arch} {cell.tag} {cell.mode} seed{cell.seed}"


def _minutes(s: float) -> str:
    return f"{s / 60:.1f}"


def print_prediction(cells: list[CellCost], costs, cores: int, head: dict) -> None:
    print(
        f"costs measured on {head.get('cpu_model', '?')}, {head.get('threads', '?')} "
        f"thread(s), {head.get('date', '?')}" + (" (quick)" if head.get("quick") else "")
    )
    print(
        "\n| cell | steps | train min | valid min | Z min | evaluate min | jobs min "
        "| total min |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    for c in cells:
        w = c.work
        steps = f"{'<= ' if w.early_stopping else ''}{w.steps}"
        print(
            f"| {cell_name(w.cell)} | {steps} | {_minutes(c.train_s)} | {_minutes(c.valid_s)} "
            f"| {_minutes(c.z_s)} | {_minutes(c.evaluate_s)} | {_minutes(c.jobs_s)} "
            f"| {_minutes(c.total_s)} |"
        )
    print("\n| architecture | cells | CPU hours |\n|---|---:|---:|")
    for arch in dict.fromkeys(c.work.cell.arch for c in cells):
        mine = [c for c in cells if c.work.cell.arch == arch]
        print(f"| {arch} | {len(mine)} | {sum(c.total_s for c in mine) / 3600:.2f} |")
    total = sum(c.total_s for c in cells)
    wall = wall_time(cells, costs, cores)
    print(f"\ntotal: {len(cells)} cells, {total / 3600:.2f} CPU hours")
    print(
        f"wall time on {cores} core(s), one job per core: {wall / 3600:.2f} hours "
        f"(total / cores = {total / cores / 3600:.2f})"
    )
    if any(c.work.early_stopping for c in cells):
        print("(<= : early stopping may end a cell sooner; its full schedule is counted)")


def print_check(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("\nno finished work found")
        return
    print(
        "\n| cell | part | work | predicted s | measured s | measured / predicted |\n"
        "|---|---|---|---:|---:|---:|"
    )
    for r in rows:
        print(
            f"| {r['cell']} | {r['part']} | {r['work']} | {r['predicted_s']:.0f} "
            f"| {r['measured_s']:.0f} | {r['ratio']:.2f} |"
        )
    print("\n| architecture | part | rows | predicted s | measured s | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["arch"], r["part"]), []).append(r)
    for (arch, part), rs in groups.items():
        p, m = sum(r["predicted_s"] for r in rs), sum(r["measured_s"] for r in rs)
        print(f"| {arch} | {part} | {len(rs)} | {p:.0f} | {m:.0f} | {m / p:.2f} |")


# -- command line ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configfile", required=True, type=Path, help="params/<budget>.yaml")
    ap.add_argument("--costs", type=Path, help="costs measured before (--save)")
    ap.add_argument("--measure", action="store_true", help="time the costs not in --costs")
    ap.add_argument("--save", type=Path, help="write the costs here (with --measure)")
    ap.add_argument("--quick", action="store_true", help="short timings (a smoke test)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="for the wall time")
    ap.add_argument("--check", type=Path, metavar="RUNS", help="the budget's runs folder")
    args = ap.parse_args(argv)
    if args.costs is None and not args.measure:
        ap.error("give --costs FILE, --measure, or both")
    if args.save is not None and not args.measure:
        ap.error("--save: only with --measure")
    if args.threads < 1 or args.cores < 1:
        ap.error("--threads, --cores: expected positive integers")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before torch is imported
    sys.path.insert(0, str(BENCH))
    if (REPO / "src").is_dir():
        sys.path.insert(1, str(REPO / "src"))
    import torch

    torch.set_num_threads(args.threads)
    works = budget_work(load_params(args.configfile))
    head, costs = read_costs(args.costs) if args.costs else ({}, {})
    if args.measure:
        measure_all(needed_specs(works), costs, args.quick)
        head = machine(args.threads, args.quick)
        if args.save:
            write_costs(args.save, head, costs)
            print(f"wrote {args.save}")
    missing = missing_costs(works, costs)
    if missing:
        print(
            f"--costs {args.costs}: no cost for {', '.join(missing)} (other model params "
            "or settings than were measured); add --measure",
            file=sys.stderr,
        )
        return 2
    cells = [predict_cell(w, costs) for w in works]
    print_prediction(cells, costs, args.cores, head)
    if args.check is not None:
        runs = args.check.parent if args.check.name == "logs" else args.check
        print_check(check_rows(works, costs, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
