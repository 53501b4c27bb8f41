"""Benchmark: where the demo's wall time goes, from a finished run or study (by default `make demo`'s).

    .venv/bin/python bench/demo_profile.py [data/runs/demo] [--out bench/results/demo_profile.json]

For every stage of every run it reads the wall seconds from the manifest and the seconds of model compute
recorded inside the stage (selfimprove/profiling.py: the model's forward calls while sampling, the trainer's
optimizer steps (forward, backward, update) while training, the embedding model while evaluating, the
organism's training loops while preparing; grading runs no model). Overhead is the rest: process and kernel
starts, imports, model loads, tokenising, grading, Parquet I/O. Stages a study took from a sibling run cost
nothing and are counted once. Writes JSON and prints Markdown tables (per stage kind, and the whole run).
The wall time of the command itself (with install) is not in the manifest; give it with --wall-s to see
what the stages leave out.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def runs_of(path: Path) -> list[Path]:
    if (path / "manifest.json").exists():
        return [path]
    runs = sorted(p.parent for p in path.glob("*/manifest.json"))
    if not runs:
        raise SystemExit(f"{path}: neither a run (manifest.json) nor a study (runs in subfolders)")
    return runs


def profile(path: Path) -> dict:
    from selfimprove import artifacts, pipeline

    rows = []
    for root in runs_of(path):
        manifest = artifacts.Manifest.load(artifacts.RunPaths(root))
        for key, st in manifest.data["stages"].items():
            if st.get("state") != "done":
                continue
            compute = pipeline.stage_compute(root, manifest, key)
            rows.append({"run": root.name, "stage": key, "kind": key.split("/")[-1], "wall_s": st.get("seconds", 0.0),
                         "compute_s": compute, "shared": bool(st.get("shared_from"))})
    kinds = {}
    for r in rows:
        k = kinds.setdefault(r["kind"], {"stages": 0, "shared": 0, "wall_s": 0.0, "compute_s": 0.0})
        k["stages"] += 1
        k["shared"] += r["shared"]
        k["wall_s"] += r["wall_s"]
        k["compute_s"] += r["compute_s"] or 0.0
    wall = sum(k["wall_s"] for k in kinds.values())
    compute = sum(k["compute_s"] for k in kinds.values())
    return {"rows": rows, "kinds": kinds, "wall_s": round(wall, 1), "compute_s": round(compute, 1),
            "overhead_share": round((wall - compute) / wall, 3) if wall else None}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", nargs="?", default="data/runs/demo")
    ap.add_argument("--out", default=str(ROOT / "bench/results/demo_profile.json"))
    ap.add_argument("--wall-s", type=float, default=None, help="wall seconds of the whole command, if measured")
    args = ap.parse_args(argv)
    from selfimprove import artifacts

    result = profile(Path(args.path))
    result.update(path=args.path, command_wall_s=args.wall_s, date=time.strftime("%Y-%m-%d"),
                  machine={"cpu": platform.processor() or platform.machine(), "cores": __import__("os").cpu_count(),
                           "platform": platform.platform()}, versions=artifacts.versions())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("| stage | stages (shared) | wall s | model compute s | other s | other share |")
    print("|---|---|---|---|---|---|")
    for kind, k in result["kinds"].items():
        other = k["wall_s"] - k["compute_s"]
        share = f"{other / k['wall_s']:.0%}" if k["wall_s"] else ""
        print(f"| {kind} | {k['stages']} ({k['shared']}) | {k['wall_s']:.1f} | {k['compute_s']:.1f} | {other:.1f} | "
              f"{share} |")
    print(f"| all stages | {len(result['rows'])} | {result['wall_s']:.1f} | {result['compute_s']:.1f} | "
          f"{result['wall_s'] - result['compute_s']:.1f} | {result['overhead_share']:.0%} |")
    if args.wall_s:
        print(f"\ncommand wall {args.wall_s:.1f}s: {args.wall_s - result['wall_s']:.1f}s outside the stages "
              f"(install, imports, reports); model compute is {result['compute_s'] / args.wall_s:.0%} of it")
    print(f"\n{args.out}")
    return result


if __name__ == "__main__":
    main()
