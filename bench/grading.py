"""Benchmark: responses graded per second on a pool shaped like a sample stage's, three ways: math_verify called
directly one by one, `grade_batch` grading every item by itself (`share=False`), and `grade_batch` grading each
distinct (answer, gold) once (the default), on a clean pool and on the same pool with 5% pathological answers.

    .venv/bin/python bench/grading.py [--problems 100] [--samples 50] [--pathological 0.05] [--workers 2]
        [--timeout-s 10] [--direct-n 500] [--budget-s 30] [--out bench/results/grading.json]

The pool: `--problems` problems, half GSM8K-style (a number, `####` or "The answer is" at the end of a worded
solution) and half MATH-style (`\\boxed{}` or Minerva's "Final Answer: The final answer is $x$"; fractions,
roots, pi, intervals, tuples, matrices, percentages, units, degrees, polynomials), `--samples` responses each,
every one worded differently. A problem's final answers are drawn from a Zipf-like distribution (weight 1/r^1.2
for rank r) over 4-12 candidates: the gold in 1-3 spellings (`1,000` and `1000.00`; `\\dfrac{1}{2}` and `1/2`)
and wrong values, the gold first on 3 problems in 4, as sampled answers are skewed (most correct samples end
in the same answer). The pathological pool replaces `--pathological` of the responses, at random, by
MATH-style responses from PATHOLOGICAL, drawn with the same skew: answers that make sympy or Math-Verify slow
(a power tower, `99999!`, 5,000 nested braces, 30 nested fractions, which never finish, a 1 MB response).

Rows: `math_verify direct` is `math_verify.parse` on the whole response and `math_verify.verify(gold, pred)`
with Math-Verify's defaults (its signal.alarm timeouts, 5 s each), in one process, as its README shows, on a
random `--direct-n` of the pool's responses, stopped after `--budget-s` (its rate is of those it finished; its
verdict is a bool, so the last column compares only correct against not). `one by one` is grade_batch with
share=False: each response graded alone in a worker with the kill limit (the package before sharing). `shared`
is grade_batch as the verify stage calls it, once per task. Every verdict of `shared` (status, extracted
answer, detail) must equal that of `one by one` on the same response, or the benchmark fails. Each row gives
wall-clock seconds and CPU seconds (this process and its children, user and system), whose ratios hold on a
machine shared with other jobs. Writes JSON and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ZIPF_S = 1.2
WORDS = ("First", "Then", "Next", "So", "Now", "After that", "In total", "That means", "Hence", "Also")


def zipf_pick(rng: random.Random, options: list):
    return rng.choices(options, weights=[1 / r**ZIPF_S for r in range(1, len(options) + 1)])[0]


def reasoning(rng: random.Random) -> str:
    """A few worded steps with numbers in them, different for every response."""
    steps = []
    for _ in range(rng.randint(2, 6)):
        a, b = rng.randint(2, 99), rng.randint(2, 30)
        steps.append(f"{rng.choice(WORDS)}, {a} times {b} is {a * b}, so we have {a * b} of them.")
    return " ".join(steps)


def _rank(rng: random.Random, right: list[str], wrong: list[str]) -> list[str]:
    """The gold's main spelling first on 3 problems in 4, else after one wrong answer; the rest shuffled."""
    rest = right[1:] + wrong
    rng.shuffle(rest)
    if rng.random() < 0.75 or not wrong:
        return [right[0]] + rest
    w = next(x for x in rest if x in wrong)
    rest.remove(w)
    return [w, right[0]] + rest


def gsm8k_problem(rng: random.Random) -> tuple[str, list[str]]:
    """(gold, candidate answers in rank order) for a GSM8K-style problem."""
    v = rng.randint(2, 5000)
    right = [str(v)] + rng.sample([f"{v:,}", f"{v}.00", f"${v}"], rng.randint(0, 2))
    wrong = sorted(str(x) for x in {v + 1, v - 1, 2 * v, v // 2, v + 10, 10 * v, v - 7, 3 * v} if x != v)
    return str(v), _rank(rng, right, rng.sample(wrong, rng.randint(2, min(8, len(wrong)))))


MATH_FAMILIES = {  # name -> spellings(a, b): one value written 1-3 ways, the first as the gold writes it
    "frac": lambda a, b: [rf"\frac{{{a}}}{{{b}}}", rf"\dfrac{{{a}}}{{{b}}}", f"{a}/{b}"],
    "sqrt": lambda a, b: [rf"{a}\sqrt{{{b}}}", rf"\sqrt{{{a * a * b}}}"],
    "pi": lambda a, b: [rf"\frac{{{a}\pi}}{{{b}}}", rf"\frac{{{a}}}{{{b}}}\pi"],
    "interval": lambda a, b: [rf"[{a}, {a + b})", rf"\left[ {a}, {a + b} \right)"],
    "tuple": lambda a, b: [rf"\left( {a}, {b} \right)", f"({a},{b})"],
    "matrix": lambda a, b: [rf"\begin{{pmatrix}} {a} \\ {b} \end{{pmatrix}}",
                            rf"\begin{{pmatrix}}{a}\\{b}\end{{pmatrix}}"],
    "percent": lambda a, b: [rf"{a * 5}\%", f"{a * 5}"],
    "units": lambda a, b: [rf"{a * b}\text{{ cm}}^2", f"{a * b}"],
    "degrees": lambda a, b: [rf"{a * 10}^\circ", f"{a * 10}"],
    "poly": lambda a, b: [f"(x+{a})^2", f"x^2 + {2 * a}x + {a * a}"],
}


def math_problem(rng: random.Random) -> tuple[str, list[str]]:
    """(gold, candidate answers in rank order) for a MATH-style problem."""
    spell = MATH_FAMILIES[rng.choice(sorted(MATH_FAMILIES))]
    a, b = rng.randint(1, 9), rng.randint(2, 12)
    right = spell(a, b)
    right = right[:1] + rng.sample(right[1:], rng.randint(0, len(right) - 1))
    wrong = [rng.choice(spell(a + d, b)) for d in rng.sample([1, 2, 3, 4, 5, 6, 7, 8], rng.randint(2, 6))]
    return right[0], _rank(rng, right, wrong)


def gsm8k_response(rng: random.Random, answer: str) -> str:
    return reasoning(rng) + (f"\n#### {answer}" if rng.random() < 0.8 else f"\nThe answer is {answer}.")


def math_response(rng: random.Random, answer: str) -> str:
    if rng.random() < 0.8:
        return reasoning(rng) + rf" Therefore the final answer is $\boxed{{{answer}}}$."
    return reasoning(rng) + f"\nFinal Answer: The final answer is ${answer}$. I hope it is correct."


NESTED_FRACTIONS = "\\frac{1}{" * 30 + "2" + "}" * 30  # sympy does not finish comparing this with 2 in minutes
PATHOLOGICAL = [  # (boxed answer, gold), the most frequent first; "1 MB" is a 1 MB response built in make_pool
    ("{" * 5000 + "5" + "}" * 5000, "5"),  # 5,000 nested braces: correct once collapsed
    (r"10^{10^{10^{10}}}", "5"),  # Math-Verify issue 65: a power tower; refused by the size check
    (r"99999!", "5"),  # a 456,570-digit number, computed and compared
    (r"2^{3^{20}}", "2"),
    ("1 MB", "7"),
    (r"9^{9^{5}}", "7"),
    (NESTED_FRACTIONS, "2"),  # killed at the limit
]


def make_pool(problems: int, samples: int, patho_share: float, seed: int = 0) -> list[tuple[str, str, str]]:
    """(task, response, gold) rows, problem by problem as a sample table is; pathological rows replace
    `patho_share` of them at random (the clean pool's other rows are the same for the same seed)."""
    rng = random.Random(seed)
    rows = []
    for p in range(problems):
        task = "gsm8k" if p % 2 == 0 else "math"
        gold, candidates = (gsm8k_problem if task == "gsm8k" else math_problem)(rng)
        respond = gsm8k_response if task == "gsm8k" else math_response
        rows += [(task, respond(rng, zipf_pick(rng, candidates)), gold) for _ in range(samples)]
    prng = random.Random(seed + 1)
    for i in prng.sample(range(len(rows)), round(len(rows) * patho_share)):
        answer, gold = zipf_pick(prng, PATHOLOGICAL)
        body = (f"{prng.random()} " + "x" * 1_000_000 + r" so \boxed{7}") if answer == "1 MB" else \
            reasoning(prng) + rf" So the answer is $\boxed{{{answer}}}$."
        rows[i] = ("math", body, gold)
    return rows


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (workers, the direct child), user and system."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def grade_pool(rows, workers: int, timeout_s: float, share: bool) -> tuple[list, float, float]:
    """grade_batch once per task, as verify.grade_table calls it: the Grades in row order, the seconds and the
    CPU seconds."""
    from selfimprove.grading import grade_batch

    grades = [None] * len(rows)
    t0, c0 = time.monotonic(), cpu_seconds()
    for task in sorted({r[0] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r[0] == task]
        got = grade_batch(task, [rows[i][1:] for i in idx], timeout_s=timeout_s, workers=workers, share=share)
        for i, g in zip(idx, got):
            grades[i] = g
    return grades, time.monotonic() - t0, cpu_seconds() - c0


def _direct_child(path: str) -> None:
    """Child mode: math_verify on every row in this process, one line per row."""
    import logging

    logging.disable(logging.CRITICAL)
    from math_verify import parse, verify

    for _, response, gold in json.loads(Path(path).read_text()):
        print(int(bool(verify(parse("$" + gold + "$"), parse(response)))), flush=True)


def run_direct(rows, budget_s: float, tmp: Path) -> tuple[list[int], float, float, bool]:
    """math_verify's verdicts (1 correct, 0 not) on the rows it finished within the budget, its seconds and CPU
    seconds, and whether the budget stopped it."""
    path = tmp / "bench_grading_items.json"
    path.write_text(json.dumps(rows))
    t0, c0 = time.monotonic(), cpu_seconds()
    proc = subprocess.Popen([sys.executable, __file__, "--direct-child", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        out, _ = proc.communicate(timeout=budget_s)
        killed = False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        killed = True
    seconds, cpu = time.monotonic() - t0, cpu_seconds() - c0
    path.unlink()
    return [int(x) for x in out.split() if x in ("0", "1")], seconds, cpu, killed


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} cores, {model}"


def bench_pool(name: str, rows, args, tmp: Path) -> list[dict]:
    """The table's three rows for one pool; exits with an error if a shared verdict differs from one by one."""
    from selfimprove.grading.pool import share_plan

    distinct = sum(len(share_plan(t, [r[1:] for r in rows if r[0] == t])[0]) for t in {r[0] for r in rows})
    load = os.getloadavg()[0]
    sub = random.Random(2).sample(range(len(rows)), min(args.direct_n, len(rows)))
    bits, d_s, d_cpu, killed = run_direct([rows[i] for i in sub], args.budget_s, tmp)
    each, e_s, e_cpu = grade_pool(rows, args.workers, args.timeout_s, share=False)
    shared, s_s, s_cpu = grade_pool(rows, args.workers, args.timeout_s, share=True)
    unlike = [i for i, (a, b) in enumerate(zip(shared, each)) if a != b]
    direct_per_s, direct_per_cpu_s = len(bits) / d_s, len(bits) / d_cpu

    def row(grader, n, graded, seconds, cpu, statuses, differs, **extra):
        return {"pool": name, "grader": grader, "responses": n, "graded": graded, "seconds": round(seconds, 2),
                "per_s": round(n / seconds, 1), "vs_direct": round(n / seconds / direct_per_s, 1),
                "cpu_s": round(cpu, 2), "per_cpu_s": round(n / cpu, 1),
                "vs_direct_cpu": round(n / cpu / direct_per_cpu_s, 1),
                "statuses": dict(sorted(statuses.items())), "verdicts_unlike_one_by_one": differs,
                "load_average_at_start": round(load, 1), **extra}

    one_bits = [int(each[i].status == "correct") for i in sub]
    out = [row("math_verify direct", len(bits), len(bits), d_s, d_cpu,
               Counter("correct" if b else "not correct" for b in bits), sum(a != b for a, b in zip(bits, one_bits)),
               of=len(sub), stopped_at_budget=killed),
           row("grade_batch one by one", len(rows), len(rows), e_s, e_cpu, Counter(g.status for g in each), 0),
           row("grade_batch shared", len(rows), distinct, s_s, s_cpu, Counter(g.status for g in shared),
               len(unlike))]
    for r in out:
        print(json.dumps(r), flush=True)
    if unlike:
        i = unlike[0]
        raise SystemExit(f"{len(unlike)} shared verdicts differ from one-by-one grading, e.g. row {i}: "
                         f"{shared[i]} against {each[i]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=100)
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--pathological", type=float, default=0.05, help="share of the second pool's responses")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout-s", type=float, default=10.0)
    ap.add_argument("--direct-n", type=int, default=500, help="responses math_verify is timed on, per pool")
    ap.add_argument("--budget-s", type=float, default=30.0, help="wall-clock budget of math_verify, per pool")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "grading.json"))
    ap.add_argument("--direct-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.direct_child:
        return _direct_child(args.direct_child)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "problems": args.problems,
              "samples": args.samples, "workers": args.workers, "timeout_s": args.timeout_s,
              "direct_n": args.direct_n, "budget_s": args.budget_s, "runs": []}
    t0 = time.monotonic()
    for name, share in (("clean", 0.0), (f"{args.pathological:.0%} pathological", args.pathological)):
        result["runs"] += bench_pool(name, make_pool(args.problems, args.samples, share), args, out.parent)
    result["seconds"] = round(time.monotonic() - t0, 1)
    by = {(r["pool"], r["grader"]): r for r in result["runs"]}
    clean, patho = by["clean", "grade_batch shared"], by[result["runs"][-1]["pool"], "grade_batch shared"]
    result["summary"] = {  # issue 18's goals: >= 10x math_verify direct; pathological >= half the clean rate
        "shared_clean_vs_direct": clean["vs_direct"],
        "shared_clean_vs_direct_cpu": clean["vs_direct_cpu"],
        "shared_pathological_vs_clean": round(patho["per_s"] / clean["per_s"], 2),
        "shared_clean_vs_one_by_one": round(clean["per_s"] / by["clean", "grade_batch one by one"]["per_s"], 1)}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{result['date']}, {result['machine']}; {args.problems} problems x {args.samples} samples, "
          f"{args.workers} workers, {args.timeout_s:g} s limit; {result['seconds']} s in all\n")
    print("| pool | grader | responses | graded | seconds | responses/s | x direct | CPU s | responses/CPU s "
          "| x direct (CPU) | statuses | verdicts unlike one by one | load at start |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in result["runs"]:
        n = str(r["responses"]) + (f" of {r['of']}" + (" (budget)" if r["stopped_at_budget"] else "")
                                   if "of" in r else "")
        st = ", ".join(f"{k} {v}" for k, v in r["statuses"].items())
        print(f"| {r['pool']} | {r['grader']} | {n} | {r['graded']} | {r['seconds']} | {r['per_s']} | "
              f"{r['vs_direct']} | {r['cpu_s']} | {r['per_cpu_s']} | {r['vs_direct_cpu']} | {st} | "
              f"{r['verdicts_unlike_one_by_one']} | {r['load_average_at_start']} |")
    sm = result["summary"]
    print(f"\nshared, clean pool: {sm['shared_clean_vs_direct']}x math_verify direct "
          f"({sm['shared_clean_vs_direct_cpu']}x by CPU time), "
          f"{sm['shared_clean_vs_one_by_one']}x one by one; with pathological answers: "
          f"{sm['shared_pathological_vs_clean']} of the clean rate")


if __name__ == "__main__":
    main()
