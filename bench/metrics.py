"""Benchmark: every diversity metric at the paper's size, 1,319 problems (GSM8K's test split) x 50 sampled
responses, with an empty embedding cache and then a warm one.

    .venv/bin/python bench/metrics.py [--problems 1319] [--responses 50] [--per-problem 4 0]
        [--embedding-problems 100 0] [--out bench/results/metrics.json] [--note ...] [--demo-stage]
    .venv/bin/python bench/metrics.py --only-demo-stage --out bench/results/metrics_demo_stage.json

The responses are synthetic GSM8K-style solutions (100-300 characters, two to four equation steps with
`<<a*b=c>>` annotations, `#### answer`), about half correct, all distinct: the worst case for the cache,
which only saves work on repeated texts. For each `--per-problem` m (the evaluate stage's
diversity_per_problem; 0 = all responses) and `--embedding-problems` K (its embedding_problems; 0 = every
problem) it runs diversity.problem_diversity, i.e. distinct-n (n = 1..5), distinct equations and embedding
diversity (the packaged all-MiniLM-L6-v2) on the correct and the incorrect sets, twice: with a new, empty
cache folder, and again from a new Embedder that reads that cache from disk (as a second process would).
`--demo-stage` also times the evaluate stage on a demo-shaped iteration, each run in a fresh process (see
demo_stage); `--only-demo-stage` times only that. Writes JSON and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NAMES = ["Natalia", "Weng", "Betty", "Julie", "James", "Mark", "Albert", "Ken", "Alexis", "Tina"]
ITEMS = ["clips", "apples", "pages", "cupcakes", "dollars", "marbles", "stickers", "eggs", "books", "shells"]
OPENERS = ["First, {n} has {a} {item}.", "{n} starts with {a} {item}.", "We know {n} had {a} {item} at first.",
           "Let's figure out how many {item} {n} has.", "{n} begins the week with {a} {item}."]
STEPS = ["{n} gets {b} groups of {c}, so that is {b}*{c} = <<{b}*{c}={bc}>>{bc} {item}.",
         "Then {n} adds {b}*{c} = {bc} more {item}.",
         "Adding them up: {a}+{bc} = <<{a}+{bc}={s}>>{s} {item} in total.",
         "So in total {n} has {a} + {bc} = {s} {item}.",
         "After giving away {d}, {n} has {s}-{d} = <<{s}-{d}={r}>>{r} {item} left.",
         "{n} loses {d} of them, leaving {s} - {d} = {r}.",
         "Half of {s} is {s}/2 = <<{s}/2={h}>>{h}."]


def response(rng: random.Random, correct: bool) -> str:
    """One GSM8K-style solution, 100-300 characters."""
    n, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c, d = rng.randint(2, 90), rng.randint(2, 9), rng.randint(2, 12), rng.randint(1, 20)
    bc, s = b * c, a + b * c
    v = dict(n=n, item=item, a=a, b=b, c=c, d=d, bc=bc, s=s, r=s - d, h=f"{s / 2:g}")
    lines = [rng.choice(OPENERS).format(**v)] + [rng.choice(STEPS).format(**v) for _ in range(rng.randint(2, 4))]
    answer = v["r"] if correct else v["r"] + rng.randint(1, 9)
    text = " ".join(lines) + f"\n#### {answer}"
    return text[:300]


def sample_table(problems: int, responses: int, seed: int = 0):
    import pandas as pd

    rng = random.Random(seed)
    rows, seen = [], set()
    for p in range(problems):
        p_correct = rng.random()  # problems from hard to easy; about 50-60% of responses correct overall
        for i in range(responses):
            ok = rng.random() < p_correct
            text = response(rng, ok)
            while text in seen:  # all distinct: no help from the cache within a run
                text = response(rng, ok)
            seen.add(text)
            rows.append(dict(problem_id=f"p{p:04d}", level=None, decoding="sample", sample_idx=i, response=text,
                             correct=ok))
    return pd.DataFrame(rows)


def run_once(samples, per_problem: int, embedding_problems: int, cache: Path) -> dict:
    from selfimprove import diversity

    embedder = diversity.Embedder(diversity.DEFAULT_MODEL, cache)
    t0 = time.perf_counter()
    div = diversity.problem_diversity(samples, per_problem, "gsm8k", embedder, embedding_problems)
    wall = time.perf_counter() - t0
    st = embedder.stats
    return {"wall_s": round(wall, 1), "texts": st["texts"], "embedded": st["computed"],
            "encode_s": round(st["encode_s"], 1), "model_load_s": round(st["load_s"], 1),
            "other_s": round(wall - st["encode_s"] - st["load_s"], 1),
            "problems_with_value": {c: int(div[c].notna().sum()) for c in div.columns}}


STAGE_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
from selfimprove import metrics
from selfimprove.config import EvaluateConfig
metrics.run(EvaluateConfig(**json.loads(sys.argv[1])))
print(json.dumps({"in_process_s": time.perf_counter() - t0}))
"""


def demo_stage(seed: int = 0) -> dict:
    """Seconds of the evaluate stage on a demo-shaped iteration (750 test + 500 OOD arith problems, 4 samples
    each, M1 and M2), each run in a fresh Python process as the first evaluate stage of a run would (imports
    and model loading included): every metric with an empty and a warm cache, against the work the stage did
    before diversity and intervals (no embeddings, no intervals). Responses are gold solutions of arith
    training problems (the demo's lengths and step orders; wrong ones with a changed result), correct at a
    per-level rate near the demo M1's."""
    import pandas as pd

    from selfimprove import arith, artifacts

    rng = random.Random(seed)
    problems = arith.generate(arith.ArithConfig(n_train=1250, n_test=5, n_ood=5))["train"]
    rate = {1: 0.7, 2: 0.55, 3: 0.25, 4: 0.12, 5: 0.04}  # near the demo M1's per-level pass@1
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = artifacts.RunPaths(Path(tmp) / "run")
        for t in (1, 2):
            for split, chunk in (("test", problems[:750]), ("ood", problems[750:])):
                rows = []
                for p in chunk:
                    for dec, k in (("greedy", 1), ("sample", 4)):
                        for i in range(k):
                            ok = rng.random() < rate[p["level"]]
                            text = rng.choice(p["solutions"])
                            if not ok:
                                wrong = int(p["answer"]) + rng.choice([-3, -2, -1, 1, 2, 5, 10])
                                text = text.rsplit("=", 1)[0] + f"= {wrong}\n#### {wrong}"
                            rows.append(dict(iteration=t, split=split, task="arith", problem_id=p["id"],
                                             level=p["level"], decoding=dec, sample_idx=i, response=text,
                                             finish_reason="stop", status="correct" if ok else "incorrect",
                                             correct=ok))
                artifacts.write_parquet(pd.DataFrame(rows), paths.samples(t, split))
        cache, cache_all = str(Path(tmp) / "cache"), str(Path(tmp) / "cache_all")
        for name, kw in (("without embeddings and intervals", dict(embedding_model="", bootstrap=0)),
                         ("every metric (defaults), empty cache", dict(cache_dir=cache)),
                         ("every metric (defaults), warm cache", dict(cache_dir=cache)),
                         ("every metric, every test problem embedded, empty cache",
                          dict(cache_dir=cache_all, embedding_problems=0))):
            for t in (1, 2):
                cfg = dict(run_dir=str(paths.root), iteration=t, ks=[1, 2, 4], **kw)
                t0 = time.perf_counter()
                proc = subprocess.run([sys.executable, "-c", STAGE_SCRIPT, json.dumps(cfg)], cwd=ROOT,
                                      capture_output=True, text=True, check=True)
                wall = time.perf_counter() - t0
                lines = proc.stdout.strip().splitlines()
                emb = next((line for line in lines if line.startswith("embeddings:")), "")
                out[f"M{t}: {name}"] = {"process_s": round(wall, 1),
                                        "in_process_s": round(json.loads(lines[-1])["in_process_s"], 1),
                                        "embeddings": emb}
                print(f"demo stage M{t}, {name}: {out[f'M{t}: {name}']}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=1319)
    ap.add_argument("--responses", type=int, default=50)
    ap.add_argument("--per-problem", type=int, nargs="+", default=[4], help="diversity_per_problem values")
    ap.add_argument("--embedding-problems", type=int, nargs="+", default=[100], help="embedding_problems values")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "metrics.json"))
    ap.add_argument("--note", default="", help="e.g. whether the machine was shared while it ran")
    ap.add_argument("--demo-stage", action="store_true", help="also time a demo-shaped evaluate stage")
    ap.add_argument("--only-demo-stage", action="store_true", help="time only the demo-shaped evaluate stage")
    args = ap.parse_args()

    import torch

    load_before = os.getloadavg()
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "cuda": torch.cuda.is_available(), "loadavg_before": [round(x, 2) for x in load_before],
              "note": args.note}
    results = []
    if not args.only_demo_stage:
        t0 = time.perf_counter()
        samples = sample_table(args.problems, args.responses)
        lengths = samples["response"].str.len()
        report.update(problems=args.problems, responses_per_problem=args.responses, rows=len(samples),
                      correct_share=round(float(samples["correct"].mean()), 3),
                      chars={"min": int(lengths.min()), "mean": round(float(lengths.mean()), 1),
                             "max": int(lengths.max())},
                      generate_s=round(time.perf_counter() - t0, 1))
        for m in args.per_problem:
            for k in args.embedding_problems:
                with tempfile.TemporaryDirectory() as tmp:
                    cold = run_once(samples, m, k, Path(tmp))
                    warm = run_once(samples, m, k, Path(tmp))
                results.append({"per_problem": m, "embedding_problems": k, "empty_cache": cold,
                                "warm_cache": warm})
                print(f"per_problem={m} embedding_problems={k}: empty cache {cold['wall_s']} s, warm cache "
                      f"{warm['wall_s']} s", flush=True)
    stage = demo_stage() if args.demo_stage or args.only_demo_stage else None
    report.update(results=results, demo_evaluate_stage=stage,
                  loadavg_after=[round(x, 2) for x in os.getloadavg()])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{report['cpu_count']} CPU cores, torch threads {report['torch_threads']}, load average before "
          f"{report['loadavg_before'][0]}, {report['date']}" + (f"; {args.note}" if args.note else ""))
    if results:
        print(f"{args.problems} problems x {args.responses} responses ({report['rows']} rows, "
              f"{report['chars']['mean']:.0f} characters on average)")
        print("\n| responses per set | problems embedded per group | cache | wall (s) | texts embedded | "
              "encoding (s) | model load (s) | distinct-n, equations, pairwise (s) |")
        print("|---|---|---|---|---|---|---|---|")
    for r in results:
        for name, x in (("empty", r["empty_cache"]), ("warm", r["warm_cache"])):
            print(f"| {r['per_problem'] or 'all'} | {r['embedding_problems'] or 'all'} | {name} | {x['wall_s']} | "
                  f"{x['embedded']} | {x['encode_s']} | {x['model_load_s']} | {x['other_s']} |")
    if stage:
        print("\n| demo-shaped evaluate stage (750 test + 500 OOD problems x 4 samples), fresh process | "
              "seconds | embeddings |\n|---|---|---|")
        for k, v in stage.items():
            print(f"| {k} | {v['process_s']} | {v['embeddings'][len('embeddings: '):]} |")
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
