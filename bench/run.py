"""The benchmark runner: every workload against its plain baseline, in one process.

    python bench/run.py [--device cpu|cuda] [--only z,sampler,iwae,train,arch,jobs] [--quick]
                        [--threads N] [--out reports/benchmarks.json]

Sets the thread count (1 by default: the figures are per CPU thread), measures this
machine's float32 matmul FLOP rate (the FLOP limits), runs ``bench/bench_<name>.py``'s
``run(device, quick)`` for each workload, merges the rows into ``reports/benchmarks.json``
(one section per device, so a CUDA run adds its section next to the CPU one) and renders
``reports/benchmarks.md`` from it. A workload whose module does not exist yet is skipped
with a note. Exit status 1 when a check failed or a module raised (after the report is
written), 0 otherwise; a goal that is not met is reported, not an error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import sys
import traceback
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORKLOADS = ("z", "sampler", "iwae", "train", "arch", "jobs")
FORMAT = "larsvae.benchmarks/1"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    ap.add_argument("--quick", action="store_true", help="smaller sizes, one repeat")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    ap.add_argument("--out", type=Path, default=REPO / "reports" / "benchmarks.json")
    args = ap.parse_args(argv)
    args.only = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = sorted(set(args.only) - set(WORKLOADS))
    if unknown:
        ap.error(f"--only: unknown workloads {unknown}; choose from {', '.join(WORKLOADS)}")
    if args.threads < 1:
        ap.error("--threads: expected a positive integer")
    return args


def run_workloads(args: argparse.Namespace, device: str) -> tuple[dict, bool]:
    """Run the selected modules; returns ({name: entry}, all checks passed)."""
    from common import check_row

    entries, ok = {}, True
    for name in args.only:
        mod_name = f"bench_{name}"
        if not (BENCH / f"{mod_name}.py").exists():
            entries[name] = {"status": "skipped", "note": f"bench/{mod_name}.py does not exist"}
            print(f"[{name}] skipped: bench/{mod_name}.py does not exist", flush=True)
            continue
        print(f"[{name}] running ...", flush=True)
        try:
            rows = importlib.import_module(mod_name).run(device, args.quick)
            for r in rows:
                check_row(r)
        except Exception:  # a broken module is reported, the other workloads still run
            ok = False
            tb = traceback.format_exc()
            print(tb, file=sys.stderr)
            entries[name] = {"status": "error", "note": tb.strip().splitlines()[-1], "rows": []}
            continue
        failed = [r for r in rows if not r["check_passed"]]
        ok = ok and not failed
        entries[name] = {"status": "failed" if failed else "ok", "note": "", "rows": rows}
        for r in rows:
            flag = "ok" if r["check_passed"] else "CHECK FAILED"
            print(
                f"[{name}] {r['workload']} ({r['setting']}): ours {r['ours_value']:.4g} vs "
                f"baseline {r['baseline_value']:.4g} {r['unit']} (x{r['ratio']:.2f}) [{flag}]",
                flush=True,
            )
    return entries, ok


def header(args: argparse.Namespace, device: str, flops: float) -> dict:
    import torch
    from common import cpu_model, device_name

    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device,
        "device_name": device_name(device),
        "cpu_model": cpu_model(),
        "threads": args.threads,
        "torch": torch.__version__,
        "flop_rate": flops,
        "flop_rate_note": (
            "float32 matmul, "
            + ("8192^3 on the GPU, TF32 off" if device != "cpu" else "2048^3")
            + f", {args.threads} thread(s), best of 5"
        ),
        "quick": args.quick,
    }


def merge(path: Path, device: str, head: dict, entries: dict) -> dict:
    """Read the report, replace this device's header and the workloads just run, keep the
    rest (other devices, workloads not run this time)."""
    data = {"format": FORMAT, "devices": {}}
    if path.exists():
        try:
            old = json.loads(path.read_text())
            if old.get("format") == FORMAT:
                data = old
        except (OSError, ValueError):
            pass
    section = data["devices"].setdefault(device, {"header": {}, "workloads": {}})
    section["header"] = head
    for name, entry in entries.items():
        entry["run"] = {k: head[k] for k in ("date", "threads", "flop_rate", "quick")}
        section["workloads"][name] = entry
    return data


def _num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "—"
    return f"{x:.{digits}g}"


def render_md(data: dict) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python bench/run.py` (`make bench`) from `reports/benchmarks.json`; do not "
        "edit. Each row times our code and its plain baseline side by side in one process "
        "(alternately where both are short, medians). ratio > 1: ours is faster. "
        "`% of limit`: ours against the FLOP limit (the measured float32 matmul rate / "
        "the FLOP of one plain forward).",
        "",
    ]
    devices = data.get("devices", {})
    order = ["cpu", "cuda"] + sorted(set(devices) - {"cpu", "cuda"})
    for dev in order:
        title = "CPU" if dev == "cpu" else ("GPU (CUDA)" if dev == "cuda" else dev)
        lines += [f"## {title}", ""]
        section = devices.get(dev)
        if not section:
            lines += ["Not measured yet: run `python bench/run.py --device " + dev + "`.", ""]
            continue
        h = section["header"]
        lines += [
            f"- device: {h.get('device_name', '?')}",
            f"- CPU: {h.get('cpu_model', '?')}; threads: {h.get('threads')}",
            f"- torch {h.get('torch')}; date: {h.get('date')}"
            + ("; **quick** sizes" if h.get("quick") else ""),
            f"- FLOP rate used: {h.get('flop_rate', 0) / 1e9:.1f} GFLOP/s "
            f"({h.get('flop_rate_note', '')})",
            "",
        ]
        for name, entry in section.get("workloads", {}).items():
            lines += [f"### {name}", ""]
            run = entry.get("run", {})
            if run and run.get("date") != h.get("date"):
                lines += [
                    f"(from an earlier run: {run.get('date')}, threads {run.get('threads')})",
                    "",
                ]
            if entry.get("status") in ("skipped", "error"):
                lines += [f"{entry['status']}: {entry.get('note', '')}", ""]
                continue
            lines += [
                "| workload | setting | baseline | baseline | ours | unit | ratio | limit "
                "| % of limit | check | goal |",
                "|---|---|---|---:|---:|---|---:|---:|---:|---|---|",
            ]
            for r in entry.get("rows", []):
                frac = r["fraction_of_limit"]
                check = ("pass: " if r["check_passed"] else "**FAIL**: ") + r["check"]
                goal = ("met: " if r["goal_met"] else "**not met**: ") + r["goal"]
                lines.append(
                    f"| {r['workload']} | {r['setting']} | {r['baseline']} "
                    f"| {_num(r['baseline_value'])} | {_num(r['ours_value'])} | {r['unit']} "
                    f"| x{r['ratio']:.2f} | {_num(r['limit_value'])} "
                    f"| {'—' if frac is None else f'{100 * frac:.0f}%'} | {check} | {goal} |"
                )
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_report(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    for p, text in (
        (path, json.dumps(data, indent=2) + "\n"),
        (path.with_suffix(".md"), render_md(data)),
    ):
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, p)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # before torch is imported: the BLAS and OpenMP pools read these at start-up
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, str(BENCH))
    if (REPO / "src").is_dir():
        sys.path.insert(1, str(REPO / "src"))
    import torch
    from common import FLOPS_ENV, flop_rate

    torch.set_num_threads(args.threads)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available on this machine", file=sys.stderr)
        return 2
    kind = torch.device(device).type
    flops = flop_rate(device)
    os.environ[FLOPS_ENV.format(kind.upper())] = repr(flops)
    print(f"FLOP rate ({device}, {args.threads} thread(s)): {flops / 1e9:.1f} GFLOP/s", flush=True)
    entries, ok = run_workloads(args, device)
    data = merge(args.out, kind, header(args, device, flops), entries)
    write_report(args.out, data)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    if not ok:
        print("some checks failed (see the report)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
