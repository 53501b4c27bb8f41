"""Benchmark: MATH-style responses graded per second, `selfimprove.grading.grade_batch` (worker processes with
a hard per-item limit) against calling math_verify directly in one process, on clean answers and with 5%
pathological ones mixed in.

    .venv/bin/python bench/grading.py [--n 400] [--workers 2] [--budget-s 120] [--out bench/results/grading.json]

The direct baseline is `math_verify.parse` on the whole response and `math_verify.verify(gold, pred)` with
Math-Verify's defaults (its signal.alarm timeouts, 5 s each, main thread), as its README shows. It runs in a
child process with a wall-clock budget: if an item hangs it past the budget (Math-Verify issue 65), the child
is killed and the table says how many items it finished. Its verdict is a bool, so a timeout or a parse
failure reads as "incorrect"; the last column counts the items whose verdict differs from ours. Writes JSON
and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FILLER = ("Let me set up the problem carefully. First I write down what is given and what is asked. "
          "Then I simplify step by step, checking each line. ")


def _pairs(rng: random.Random) -> tuple[str, str]:
    """One (gold, answer) pair in MATH style; about half the answers are wrong, the rest respelled."""
    a, b, k = rng.randint(1, 9), rng.randint(2, 12), rng.randint(2, 7)
    wrong = rng.random() < 0.5
    a2 = a + 1 if wrong else a
    kind = rng.choice(["frac", "sqrt", "pi", "interval", "tuple", "matrix", "percent", "equation", "units",
                       "degrees", "thousands", "poly"])
    if kind == "frac":
        spellings = [rf"\dfrac{{{a2}}}{{{b}}}", f"{a2}/{b}", rf"\frac{{{a2 * 2}}}{{{b * 2}}}"]
        return rf"\frac{{{a}}}{{{b}}}", rng.choice(spellings)
    if kind == "sqrt":
        return rf"{k}\sqrt{{{b}}}", rf"\sqrt{{{k * k * b + (1 if wrong else 0)}}}"
    if kind == "pi":
        return rf"\frac{{{a}\pi}}{{{b}}}", rf"\frac{{{a2}}}{{{b}}}\pi"
    if kind == "interval":
        return rf"[{a}, {a + b})", rf"\left[ {a2}, {a + b} \right)"
    if kind == "tuple":
        return rf"\left( {a}, {b} \right)", f"({a2},{b})"
    if kind == "matrix":
        return rf"\begin{{pmatrix}} {a} \\ {b} \end{{pmatrix}}", rf"\begin{{pmatrix}}{a2}\\{b}\end{{pmatrix}}"
    if kind == "percent":
        return rf"{a * 5}\%", f"{a2 * 5}"
    if kind == "equation":
        return f"{a}", f"x = {a2}"
    if kind == "units":
        return rf"{a * b}\text{{ cm}}^2", f"{a2 * b}"
    if kind == "degrees":
        return rf"{a * 10}^\circ", f"{a2 * 10}"
    if kind == "thousands":
        return f"{a * 1000 + b}", f"{a2},{b:03d}"
    return f"(x+{a})^2", f"x^2 + {2 * a2}x + {a2 * a2}"


PATHOLOGICAL = [  # (text before the box, boxed answer, gold)
    (FILLER, r"10^{10^{10^{10}}}", "5"),  # Math-Verify issue 65: a power tower
    (FILLER, r"99999!", "5"),
    (FILLER, "{" * 5000 + "5" + "}" * 5000, "5"),  # 5,000 nested braces
    (FILLER, r"(x+1)^{1000}", r"(x+2)^{1000}"),  # a slow symbolic comparison
    (FILLER, r"2^{3^{20}}", "2"),
    ("x" * 1_000_000, "7", "7"),  # a 1 MB response
]


def make_items(n: int, patho_share: float, seed: int = 0) -> list[tuple[str, str]]:
    """`n` (response, gold) pairs, the first `patho_share` of them cycling through PATHOLOGICAL, shuffled."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        if i < round(n * patho_share):
            body, answer, gold = PATHOLOGICAL[i % len(PATHOLOGICAL)]
            items.append((body + rf"So the answer is $\boxed{{{answer}}}$.", gold))
        else:
            gold, answer = _pairs(rng)
            items.append((FILLER * rng.randint(1, 4) + rf"Therefore the final answer is $\boxed{{{answer}}}$.", gold))
    rng.shuffle(items)
    return items


def run_ours(items, workers: int, timeout_s: float) -> dict:
    from selfimprove.grading import grade_batch

    t0 = time.monotonic()
    grades = grade_batch("math", items, timeout_s=timeout_s, workers=workers)
    seconds = time.monotonic() - t0
    return {"items": len(items), "finished": len(items), "seconds": round(seconds, 2),
            "per_s": round(len(items) / seconds, 1), "statuses": dict(Counter(g.status for g in grades)),
            "correct_bits": [int(g.status == "correct") for g in grades]}


def _direct_child(path: str) -> None:
    """Child mode: math_verify on every item in this process, one progress line per item."""
    import logging

    logging.disable(logging.CRITICAL)
    from math_verify import parse, verify

    items = json.loads(Path(path).read_text())
    for response, gold in items:
        ok = verify(parse("$" + gold + "$"), parse(response))
        print(int(bool(ok)), flush=True)


def run_direct(items, budget_s: float, tmp: Path) -> dict:
    path = tmp / "bench_items.json"
    path.write_text(json.dumps(items))
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, __file__, "--direct-child", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        out, _ = proc.communicate(timeout=budget_s)
        killed = False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        killed = True
    seconds = time.monotonic() - t0
    done = [line for line in out.splitlines() if line.strip() in ("0", "1")]
    path.unlink()
    return {"items": len(items), "finished": len(done), "seconds": round(seconds, 2), "killed_at_budget": killed,
            "per_s": round(len(done) / seconds, 1), "statuses": {"correct": done.count("1"),
                                                                 "incorrect": done.count("0")},
            "correct_bits": [int(x) for x in done]}


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} cores, {model}, load average {os.getloadavg()[0]:.1f} at start"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout-s", type=float, default=10.0)
    ap.add_argument("--budget-s", type=float, default=120.0, help="wall-clock budget of the direct baseline")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "grading.json"))
    ap.add_argument("--direct-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.direct_child:
        return _direct_child(args.direct_child)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "n": args.n, "workers": args.workers,
              "timeout_s": args.timeout_s, "budget_s": args.budget_s, "runs": []}
    for share in (0.0, 0.05):
        items = make_items(args.n, share)
        for name, fn in (("selfimprove grade_batch", lambda it: run_ours(it, args.workers, args.timeout_s)),
                         ("math_verify direct", lambda it: run_direct(it, args.budget_s, out.parent))):
            r = {"grader": name, "pathological": share, **fn(items)}
            if name != "selfimprove grade_batch":  # verdicts that differ from ours, item by item
                ours = result["runs"][-1]["correct_bits"]
                r["differs_from_ours"] = sum(a != b for a, b in zip(r["correct_bits"], ours))
            result["runs"].append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "correct_bits"}), flush=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{result['date']}, {result['machine']}; {args.n} responses per run\n")
    print("| grader | pathological | finished | seconds | responses/s | statuses | verdicts unlike ours |")
    print("|---|---|---|---|---|---|---|")
    for r in result["runs"]:
        fin = f"{r['finished']}/{r['items']}" + (" (killed at budget)" if r.get("killed_at_budget") else "")
        st = ", ".join(f"{k} {v}" for k, v in sorted(r["statuses"].items()))
        print(f"| {r['grader']} | {r['pathological']:.0%} | {fin} | {r['seconds']} | {r['per_s']} | {st} | "
              f"{r.get('differs_from_ours', '')} |")


if __name__ == "__main__":
    main()
