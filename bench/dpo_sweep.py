"""Sweep: one DPO iteration from M1 on a run's first-iteration pairs, then greedy pass@1 on test and OOD.

    .venv/bin/selfimprove run demo --stop-after 1/evaluate          # M1, its samples and its pairs
    .venv/bin/python bench/dpo_sweep.py data/runs/demo --name lr1e-4 --set learning_rate=1e-4 [--set ...]

Each `--set` is a TrainConfig field (selfimprove/config.py) as YAML; the rest come from the run's recipe
(its manifest). Trains from iter_1/model on pairs built from M1's graded samples with those settings (with the
recipe's own, the pairs that made the run's M2, iter_2/train_data.parquet: `pairs_as_run` says whether they
are; `--set max_pairs_per_problem=2` or `--set pairing=cross` sweeps the pairs) into /tmp/dpo_sweep/<name>,
decodes test and OOD greedily, and prints, per split, M2's pass@1 beside M1's
(the run's own grades) with the paired change and its 95% bootstrap interval, pass@1 per level, the share of
greedy answers that changed, and the DPO log summary; appends it to bench/results/dpo_sweep.jsonl. One
iteration from one M1 with one seed: it says where a single DPO step gains, not what T iterations do.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def greedy_correct(model_dir: Path, problems: list[dict]) -> tuple[dict, dict]:
    """Per problem id: whether the model's greedy answer is right, and the answer (compact sampler, whose
    greedy answers are `generate`'s: bench/sampling.py checks it), 128 new tokens as the demo."""
    from selfimprove import arith
    from selfimprove.data import render_prompt
    from selfimprove.sample import CompactSampler

    sampler = CompactSampler(model_dir)
    prompts = [render_prompt(sampler.tokenizer, p) for p in problems]
    comps = sampler.generate(prompts, n=1, temperature=0, top_p=1.0, max_new_tokens=128, batch_size=256, seed=0)
    answers = {p["id"]: arith.extract_answer(c[0].text) for c, p in zip(comps, problems)}
    return {p["id"]: answers[p["id"]] == str(p["answer"]) for p in problems}, answers


def against_m1(run, split: str, correct: dict, answers: dict, problems: list[dict]) -> dict:
    """pass@1 of the swept M2 beside M1's (the run's own greedy grades), the paired change with its 95%
    bootstrap interval over problems (estimators.paired_change_ci), per level, and the share of greedy answers
    that changed."""
    from selfimprove import estimators

    m1 = run.greedy_correct(1, split)
    m1_answers = run.greedy_answers(1, split)
    ids = [p["id"] for p in problems if p["id"] in m1.index]
    before = [float(m1[i]) for i in ids]
    after = [float(correct[i]) for i in ids]
    lo, hi = estimators.paired_change_ci(before, after)
    levels = sorted({p["level"] for p in problems})
    level_of = {p["id"]: p["level"] for p in problems}
    return {"m1": round(sum(before) / len(ids), 4), "m2": round(sum(after) / len(ids), 4),
            "change": round((sum(after) - sum(before)) / len(ids), 4),
            "ci": [None if lo is None else round(lo, 4), None if hi is None else round(hi, 4)],
            "m2_by_level": {lv: round(sum(correct[i] for i in ids if level_of[i] == lv)
                                      / sum(1 for i in ids if level_of[i] == lv), 3) for lv in levels},
            "answers_changed": round(sum(str(answers[i]) != str(m1_answers.get(i)) for i in ids) / len(ids), 4)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "dpo_sweep.jsonl"))
    args = ap.parse_args(argv)

    import pandas as pd

    from selfimprove import artifacts, train
    from selfimprove.config import TrainConfig, apply_overrides, build
    from selfimprove.data import load_split
    from selfimprove.runs import Run

    paths = artifacts.RunPaths(args.run_dir)
    recipe = artifacts.Manifest.load(paths).data["config"]
    fields = {**recipe.get("train", {}), **{k: recipe[k] for k in ("seed", "task", "paradigm", "iterations")}}
    fields = apply_overrides(fields, args.set)
    cfg = build(TrainConfig, {**fields, "run_dir": str(args.run_dir), "iteration": 2}, "--set")
    # D_2 built again from M1's graded samples with these settings (the pair rule and cap may be swept); with
    # the recipe's own settings it is the data that made the run's M2
    pairs = train.build_data(cfg, paths)
    as_run = pairs.reset_index(drop=True).equals(pd.read_parquet(paths.train_data(2)).reset_index(drop=True))
    out_dir = Path("/tmp/dpo_sweep") / args.name
    t0 = time.time()
    trainer, tokenizer = train.TRAINERS["dpo"](cfg, paths.model(1), pairs, out_dir)  # as the train stage (fit)
    history = train.save_trained(cfg, trainer, tokenizer, out_dir)
    result = {"name": args.name, "date": time.strftime("%Y-%m-%d"), "run": str(args.run_dir), "set": args.set,
              "pairs": len(pairs), "pairs_as_run": as_run, "train_s": round(time.time() - t0, 1),
              "log": train.summarize_log(history)}
    run = Run(paths.root)
    for split in ("test", "ood"):
        problems = load_split(args.run_dir, split)
        correct, answers = greedy_correct(out_dir, problems)
        result[split] = against_m1(run, split, correct, answers, problems)
    print(json.dumps(result))
    with open(args.out, "a") as fh:
        fh.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
