"""`make mutate`: mutation testing of the maths and provenance core, and its report.

    python scripts/mutation_report.py run      # mutmut, then reports/mutation.md
    python scripts/mutation_report.py report [NOTE]   # reports/mutation.md from mutants/ as it is

The files mutated and the tests run are mutmut's config ([tool.mutmut] in pyproject.toml).
mutmut keeps its verdicts in mutants/ and re-tests only the functions that changed; since it
cannot see a test that was added or changed, `run` re-tests every survivor whenever the
tests differ from those of the last run. Survivors that no test can kill, because they do
not change what the code computes, are explained one by one in tests/mutation_equivalent.yaml,
keyed by module, function and the line before and after the mutation (so the key survives
re-runs, unlike mutmut's numbering). Every run adds its numbers to reports/mutation_runs.json.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT = ROOT / "tests" / "mutation_equivalent.yaml"
RUNS = ROOT / "reports" / "mutation_runs.json"
REPORT = ROOT / "reports" / "mutation.md"
TESTS_STAMP = ROOT / "mutants" / "tests.sha256"
# mutmut's exit codes (mutmut.stats.status_by_exit_code), in the report's words
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no test", 33: "no test", None: "not run"}
STATUS |= dict.fromkeys((36, 24, -24, 152, 255), "timeout")
SURVIVED = ("survived", "no test")


def mutated_files() -> list[str]:
    from mutmut.configuration import config  # mutmut's own reading of [tool.mutmut]

    return config().only_mutate


def tests_digest() -> str:
    h = hashlib.sha256()
    for p in sorted((ROOT / "tests").rglob("*.py")):
        h.update(p.relative_to(ROOT).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def mutmut(*args: str) -> None:
    subprocess.run([Path(sys.executable).parent / "mutmut", "run", *args], check=True)


def results() -> dict[str, dict[str, int | None]]:
    """{source file: {mutant name: exit code}} of the files mutmut mutates."""
    out = {}
    for path in mutated_files():
        meta = ROOT / "mutants" / f"{path}.meta"
        out[path] = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
    return out


def run() -> None:
    digest = tests_digest()
    if TESTS_STAMP.exists() and TESTS_STAMP.read_text() != digest:
        # New or changed tests: map functions to tests anew and re-test every survivor
        # (mutmut tests the mutants without a verdict, as mutmut's own reset does).
        (ROOT / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
        for path in mutated_files():
            meta = ROOT / "mutants" / f"{path}.meta"
            if meta.exists():
                m = json.loads(meta.read_text())
                codes = m["exit_code_by_key"]
                m["exit_code_by_key"] = {k: None if STATUS.get(c) in SURVIVED else c for k, c in codes.items()}  # fmt: skip
                meta.write_text(json.dumps(m, indent=4))
    mutmut("--max-children", "1")
    TESTS_STAMP.write_text(digest)
    report()


def function_of(key: str) -> str:
    """'larsvae.zestimate.xǁZEstimateǁmerge__mutmut_3' -> 'ZEstimate.merge'."""
    name = key.rpartition(".")[2].rpartition("__mutmut_")[0]
    return ".".join(name.split("ǁ")[1:]) if name.startswith("xǁ") else name.removeprefix("x_")


def change_of(key: str, path: str) -> tuple[str, str]:
    """The mutated line(s) before and after, stripped (a key that survives re-numbering)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    diff = get_diff_for_mutant(key, path=path).splitlines()[2:]
    before = " / ".join(x[1:].strip() for x in diff if x.startswith("-"))
    after = " / ".join(x[1:].strip() for x in diff if x.startswith("+"))
    return before, after


def decorated(path: str) -> list[str]:
    """Functions mutmut 3 leaves alone: those with a decorator (other than classmethod)."""
    names = []
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        body = getattr(node, "body", None)
        for f in body if isinstance(body, list) else ():
            if isinstance(f, ast.FunctionDef) and any(
                not (isinstance(d, ast.Name) and d.id in ("classmethod", "staticmethod"))
                for d in f.decorator_list
            ):
                names.append(f"{node.name}.{f.name}" if isinstance(node, ast.ClassDef) else f.name)
    return sorted(names)


def report(note: str = "") -> None:
    equivalent = {
        (e["module"], e["function"], e["line"], e["mutant"]): e["why"]
        for e in yaml.safe_load(EQUIVALENT.read_text()) or []
    }
    used, rows, listed = set(), [], []
    for path, res in results().items():
        module = path.removeprefix("src/").removesuffix(".py").replace("/", ".")
        count = dict.fromkeys(("killed", "timeout", "survived", "no test", "not run"), 0)
        n_equiv = 0
        for key, code in sorted(res.items(), key=lambda kv: kv[0]):
            status = STATUS.get(code, "killed")  # segfault, suspicious: the tests noticed
            count[status] += 1
            if status in SURVIVED or status == "timeout":
                before, after = change_of(key, path)
                why = equivalent.get((module, function_of(key), before, after))
                if why is not None:
                    n_equiv += 1
                    used.add((module, function_of(key), before, after))
                listed.append((module, function_of(key), status, before, after, why))
        tested = len(res) - count["not run"] - n_equiv
        score = (count["killed"] + count["timeout"]) / tested if tested else float("nan")
        rows.append({"module": module, "mutants": len(res), **count, "equivalent": n_equiv,
                     "score": round(score, 4)})  # fmt: skip
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    runs = json.loads(RUNS.read_text()) if RUNS.exists() else []
    left = sum(r["not run"] for r in rows)
    if left:
        note = "; ".join(
            filter(None, (note, f"{left} of {sum(r['mutants'] for r in rows)} not run yet"))
        )
    runs.append(
        {"date": date, "tool": f"mutmut {version('mutmut')}", "modules": rows, "note": note}
    )
    text = render(date, rows, listed, runs, set(equivalent) - used)
    RUNS.write_text(json.dumps(runs, indent=1) + "\n")
    REPORT.write_text(text)


def render(date, rows, listed, runs, stale) -> str:
    cols = ("mutants", "killed", "timeout", "survived", "no test", "equivalent", "not run")
    out = [
        "# Mutation testing of the maths and provenance core",
        "",
        f"Generated by `make mutate` (scripts/mutation_report.py) on {date} with "
        f"mutmut {version('mutmut')}; which files and tests: `[tool.mutmut]` in pyproject.toml.",
        "Score = (killed + timeout) / (mutants - equivalent - not run): of the mutants that",
        "change what the code computes, the share some test catches. A mutant 'no test' is",
        "one whose function no selected test calls.",
        "",
        "| module | " + " | ".join(cols) + " | score |",
        "|---" * (len(cols) + 2) + "|",
    ]
    for r in rows:
        out.append(f"| {r['module']} | " + " | ".join(str(r[c]) for c in cols) + f" | {r['score']:.1%} |")  # fmt: skip
    out += [
        "",
        "## Survivors and timeouts",
        "",
        "Each survivor with why no test can kill it (tests/mutation_equivalent.yaml),",
    ]
    out += ["or marked **open**: a test is missing.", ""]
    for module, func, status, before, after, why in listed:
        if why:
            what = f"equivalent: {why}"
        elif status == "timeout":  # on a loaded machine a slow test can run out of time
            what = "timeout, counted as caught (re-run it by name on a quiet machine to be sure)"
        else:
            what = f"**open** ({status})"
        out.append(f"- `{module}` `{func}`: `{before}` -> `{after}`: {what}")
    if stale:
        out += ["", "Explanations of mutants that no longer survive (remove them from the yaml):"]
        out += [f"- `{m}` `{f}`: `{b}` -> `{a}`" for m, f, b, a in sorted(stale)]
    out += ["", "## Not mutated", "", "mutmut 3 does not mutate decorated functions"]
    out += ["(`@torch.no_grad()`, `@property`); their helpers are mutated:", ""]
    for path in mutated_files():
        out.append(f"- {path}: " + ", ".join(f"`{n}`" for n in decorated(path)))
    out += [
        "",
        "## Runs",
        "",
        "Score (of the mutants run) per module, every `make mutate` so far:",
        "",
    ]
    out.append("| date | tool | " + " | ".join(r["module"] for r in rows) + " | note |")
    out.append("|---" * (len(rows) + 3) + "|")
    for run_ in runs:
        scores = {m["module"]: m for m in run_["modules"]}
        cells = [_cell(scores.get(r["module"])) for r in rows]
        out.append(f"| {run_['date']} | {run_['tool']} | " + " | ".join(cells) + f" | {run_.get('note', '')} |")  # fmt: skip
    return "\n".join(out) + "\n"


def _cell(m) -> str:
    if m is None:
        return ""
    done = m["mutants"] - m["not run"]
    return f"{m['score']:.1%} of {done}" if done else "not run"


if __name__ == "__main__":
    os.chdir(ROOT)  # mutmut reads pyproject.toml and mutants/ from here
    if sys.argv[1:2] == ["report"]:  # report [NOTE]: the run's note in mutation_runs.json
        report(" ".join(sys.argv[2:]))
    else:
        run()
