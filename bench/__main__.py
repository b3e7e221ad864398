"""Run the benchmarks: `python -m bench [--quick] [--only 1,2] [--label NAME]`.

Each item runs in a fresh process. Results go to bench/results/<label>.json
and bench/results/<label>.md (label `latest` by default, `quick` with
--quick); `--compare FILE` adds a before/after table against an earlier JSON
result. See docs/performance.md for what each item measures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, Result, Scale, log, machine
from bench.report import markdown

ITEMS = {
    "1": "bench.throughput",
    "2": "bench.rebuild",
    "3": "bench.latency",
    "4": "bench.mcp_overhead",
    "5": "bench.contention",
    "6": "bench.memory",
    "7": "bench.provisioning",
    "8": "bench.preemption",
    "9": "bench.audit",
    "10": "bench.group_commit",
}


def run_item(item: str, quick: bool) -> Result:
    import importlib

    module = importlib.import_module(ITEMS[item])
    result: Result = module.run(Scale(quick=quick))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument(
        "--only", default=",".join(ITEMS), help="items to run, e.g. 1,3 (default all)"
    )
    parser.add_argument(
        "--label",
        help="name of the result files (default: latest, or quick with --quick)",
    )
    parser.add_argument(
        "--compare", type=Path, help="an earlier result JSON for a before/after table"
    )
    parser.add_argument(
        "--render",
        type=Path,
        help="only write the markdown of an earlier result JSON (with --compare)",
    )
    parser.add_argument("--item", help=argparse.SUPPRESS)
    parser.add_argument("--item-output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.item:  # inside the child process
        result = run_item(args.item, args.quick)
        args.item_output.write_text(json.dumps(result, default=str))
        return 0

    if args.render:
        rendered = json.loads(args.render.read_text())
        before = json.loads(args.compare.read_text()) if args.compare else None
        args.render.with_suffix(".md").write_text(markdown(rendered, before))
        return 0

    if args.label is None:
        args.label = "quick" if args.quick else "latest"
    chosen = [i.strip() for i in args.only.split(",") if i.strip()]
    unknown = [i for i in chosen if i not in ITEMS]
    if unknown:
        parser.error(f"unknown items {unknown}; choose from {sorted(ITEMS)}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "label": args.label,
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "items": {},
    }
    for item in chosen:
        log(f"item {item}: {ITEMS[item]}")
        output = RESULTS_DIR / f".item-{item}.tmp"
        begin = time.perf_counter()
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench",
                "--item",
                item,
                "--item-output",
                str(output),
                *(["--quick"] if args.quick else []),
            ],
            check=False,
        )
        if completed.returncode != 0 or not output.exists():
            results["items"][item] = {
                "item": int(item),
                "error": f"exited with status {completed.returncode}",
            }
        else:
            results["items"][item] = json.loads(output.read_text())
            output.unlink()
        results["items"][item]["wall_seconds"] = time.perf_counter() - begin
    results["wall_seconds"] = time.perf_counter() - started
    before = json.loads(args.compare.read_text()) if args.compare else None
    json_path = RESULTS_DIR / f"{args.label}.json"
    md_path = RESULTS_DIR / f"{args.label}.md"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    md_path.write_text(markdown(results, before))
    log(f"wrote {json_path} and {md_path} in {results['wall_seconds']:.0f}s")
    failed = [i for i, r in results["items"].items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
