"""Sweep: one DPO iteration from M1 on a run's first-iteration pairs, then greedy pass@1 on test and OOD.

    .venv/bin/selfimprove run demo --stop-after 1/evaluate          # M1, its samples and its pairs
    .venv/bin/python bench/dpo_sweep.py data/runs/demo --name lr1e-4 --set learning_rate=1e-4 [--set ...]

Each `--set` is a TrainConfig field (selfimprove/config.py) as YAML; the rest come from the run's recipe
(its manifest). Trains from iter_1/model on iter_1/train_data.parquet into /tmp/dpo_sweep/<name>, prints
the greedy pass@1 per split and level with the DPO log summary, and appends it to
bench/results/dpo_sweep.jsonl. The demo recipe's learning rate comes from this sweep.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def greedy_pass1(model_dir: Path, problems: list[dict]) -> tuple[float, list[float]]:
    from selfimprove import arith
    from selfimprove.data import render_prompt
    from selfimprove.sample import TransformersSampler

    sampler = TransformersSampler(model_dir)
    prompts = [render_prompt(sampler.tokenizer, p) for p in problems]
    comps = sampler.generate(prompts, n=1, temperature=0, top_p=1.0, max_new_tokens=128, batch_size=256, seed=0)
    ok = [arith.extract_answer(c[0].text) == str(p["answer"]) for c, p in zip(comps, problems)]
    levels = sorted({p["level"] for p in problems})
    by_level = [round(sum(o for o, p in zip(ok, problems) if p["level"] == lv)
                      / sum(p["level"] == lv for p in problems), 3) for lv in levels]
    return round(sum(ok) / len(ok), 3), by_level


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

    paths = artifacts.RunPaths(args.run_dir)
    recipe = artifacts.Manifest.load(paths).data["config"]
    fields = {**recipe.get("train", {}), **{k: recipe[k] for k in ("seed", "task", "paradigm", "iterations")}}
    fields = apply_overrides(fields, args.set)
    cfg = build(TrainConfig, {**fields, "run_dir": str(args.run_dir), "iteration": 2}, "--set")
    pairs = pd.read_parquet(paths.train_data(2))  # the data that made M2, from M1's graded samples
    out_dir = Path("/tmp/dpo_sweep") / args.name
    t0 = time.time()
    record = train.TRAINERS[cfg.paradigm](cfg, paths.model(1), pairs, out_dir)
    result = {"name": args.name, "date": time.strftime("%Y-%m-%d"), "run": str(args.run_dir), "set": args.set,
              "pairs": len(pairs), "train_s": round(time.time() - t0, 1), "log": record["summary"]}
    for split in ("test", "ood"):
        result[split], result[f"{split}_levels"] = greedy_pass1(out_dir, load_split(args.run_dir, split))
    print(json.dumps(result))
    with open(args.out, "a") as fh:
        fh.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
