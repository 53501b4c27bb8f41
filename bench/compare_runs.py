"""Compare two runs of one recipe made by two versions of the package: do they compute the same numbers?

    .venv/bin/python bench/compare_runs.py BEFORE_RUN AFTER_RUN [--out bench/results/compare_runs.json]

For a refactoring, which must change no number: make the same recipe with both versions (e.g. a git worktree
of the old commit, `PYTHONPATH=<worktree> python -m selfimprove.cli run tiny --runs-root /tmp/before`, then
the same with this checkout into /tmp/after) and compare. It reports:

- the tidy metrics tables (report/metrics_long.csv): rows in one only, and the largest absolute difference of
  value, ci_low and ci_high over the rows in both (matched on iteration, split, metric, subset, k);
- every sample table (iter_<t>/samples_<split>.parquet): equal on the columns both have, and the columns one
  has alone (a version that wrote grades into the sample table has extracted/status/correct there);
- every model's weights (iter_<t>/model/*.safetensors): equal bytes or not.

Writes JSON and prints a summary.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

KEY = ["iteration", "split", "metric", "subset", "k"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare(before: Path, after: Path) -> dict:
    import numpy as np
    import pandas as pd

    tables = []
    for run in (before, after):
        t = pd.read_csv(run / "report" / "metrics_long.csv")
        t["k"], t["subset"] = t["k"].fillna(-1), t["subset"].fillna("")
        tables.append(t)
    m = tables[0].merge(tables[1], on=KEY, how="outer", suffixes=("_b", "_a"), indicator=True)
    both = m[m["_merge"] == "both"]
    diffs = {c: float(np.nanmax(np.abs(both[f"{c}_b"].astype(float) - both[f"{c}_a"].astype(float))))
             if len(both) else 0.0 for c in ("value", "ci_low", "ci_high")}
    differing = both[np.abs(both["value_b"].astype(float) - both["value_a"].astype(float)) > 0]
    out = {"before": str(before), "after": str(after),
           "metrics": {"rows_both": len(both), "only_before": int((m["_merge"] == "left_only").sum()),
                       "only_after": int((m["_merge"] == "right_only").sum()), "max_abs_diff": diffs,
                       "metrics_differing": sorted(set(differing["metric"]))},
           "samples": {}, "models": {}}
    for f in sorted(after.glob("iter_*/samples_*.parquet")):
        rel = f.relative_to(after)
        if not (before / rel).exists():
            out["samples"][str(rel)] = "only after"
            continue
        a, b = pd.read_parquet(f), pd.read_parquet(before / rel)
        common = [c for c in a.columns if c in b.columns]
        out["samples"][str(rel)] = {
            "rows": [len(b), len(a)], "equal_on_common_columns": a[common].reset_index(drop=True).equals(
                b[common].reset_index(drop=True)),
            "only_before": [c for c in b.columns if c not in a.columns],
            "only_after": [c for c in a.columns if c not in b.columns]}
    for f in sorted(after.glob("iter_*/model/*.safetensors")):
        rel = f.relative_to(after)
        out["models"][str(rel)] = (before / rel).exists() and _sha(f) == _sha(before / rel)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--out", default="bench/results/compare_runs.json")
    args = ap.parse_args(argv)
    result = compare(args.before, args.after)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    m = result["metrics"]
    print(f"metrics: {m['rows_both']} rows in both, {m['only_before']} only before, {m['only_after']} only after; "
          f"largest difference {max(m['max_abs_diff'].values()):.3g} ({', '.join(m['metrics_differing']) or 'none'})")
    same = sum(1 for v in result["samples"].values() if isinstance(v, dict) and v["equal_on_common_columns"])
    print(f"sample tables: {same} of {len(result['samples'])} equal on their common columns")
    print(f"models: {sum(result['models'].values())} of {len(result['models'])} with equal weights")
    print(args.out)
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
