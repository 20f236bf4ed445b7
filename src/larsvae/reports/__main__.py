"""``python -m larsvae.reports``: write table1.md, main.md, metrics.json and the curve figure."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..utils import atomic_write_text
from .figures import plot_training_curves
from .table1 import load_results, metrics, now_utc, render_main, render_table1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m larsvae.reports", description=__doc__)
    ap.add_argument("--spec", required=True, help="JSON: name, seeds, budget, cells (from the workflow)")
    ap.add_argument("--root", default=".", help="directory the spec's paths are relative to")
    ap.add_argument("--table", required=True)
    ap.add_argument("--main", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--curves", required=True)
    args = ap.parse_args(argv)
    spec = json.loads(args.spec)
    root = Path(args.root)
    cells = load_results(spec, root)
    now = now_utc()
    atomic_write_text(args.table, render_table1(spec, cells, root, now))
    atomic_write_text(args.main, render_main(spec, cells, root, now))
    atomic_write_text(args.metrics, json.dumps(metrics(spec, cells), indent=2, sort_keys=True) + "\n")
    plot_training_curves(spec, args.curves, root)
    print(f"reports: wrote {args.table}, {args.main}, {args.metrics}, {args.curves}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
