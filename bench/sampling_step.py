"""Benchmark: the cost of choosing the next token (temperature, top-p, one draw) per decode step, outside the
model's forward, on the logits a real sampling run produces.

    .venv/bin/python bench/sampling_step.py [--recipe demo] [--problems 64] [--n 4] [--repeat 3]
        [--out bench/results/sampling_step.json]

The logits are those of every decode step of the compact sampler (sample.CompactSampler) on the recipe's
organism M1, `--problems` test prompts x `--n` samples at the sample stage's temperature and top_p. On them, in
one process, it times two rules that pick from the same distribution:

- full-sort: transformers' TopPLogitsWarper (a sort of the whole vocabulary) and torch.multinomial
  (the compact sampler's rule before sample.nucleus and sample.draw);
- nucleus-<k>: sample.nucleus with k candidates (topk, a full sort only when some row's k most likely tokens
  hold less than top_p) and sample.draw (one uniform number per row).

It reports milliseconds per step, the ratio to full-sort, and for each k the share of steps that fell back to
the full sort. Writes JSON and prints a Markdown table with machine, versions and date.
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


def capture_logits(args) -> tuple[list, dict]:
    """The last-position logits of every forward call of a compact sampling run, and its settings."""
    from selfimprove import arith, config, data, organism, pipeline, sample

    cfg = config.load_recipe(pipeline.RECIPES / f"{args.recipe}.yaml")
    scfg = cfg.stage("sample", 1, "unused")
    org_cfg = cfg.organism_config()
    sampler = sample.CompactSampler(organism.ensure(org_cfg, ROOT / "data" / "organism") / "M1")
    prompts = [data.render_prompt(sampler.tokenizer, p) for p in arith.generate(org_cfg.arith)["test"][:args.problems]]
    # decode steps run through the sampler's own decoder (continuous batching, logits (slots, vocabulary));
    # a model it does not support decodes through model.forward (logits (batch, positions, vocabulary))
    target = sampler.decoder if sampler.decoder is not None else sampler.model
    captured, forward = [], target.forward

    def spy(*a, **kw):
        out = forward(*a, **kw)
        logits = out if target is sampler.decoder else out.logits[:, -1, :]
        captured.append(logits.detach().clone())
        return out

    target.forward = spy
    try:
        sampler.generate(prompts, n=args.n, temperature=scfg.temperature, top_p=scfg.top_p,
                         max_new_tokens=scfg.max_new_tokens, batch_size=scfg.batch_size, seed=0)
    finally:
        target.forward = forward
    settings = dict(temperature=scfg.temperature, top_p=scfg.top_p, batch_size=scfg.batch_size,
                    vocab=int(captured[0].shape[-1]), steps=len(captured),
                    rows_mean=sum(x.shape[0] for x in captured) / len(captured))
    return captured, settings


def full_sort(logits, temperature, top_p, gen):
    import torch
    from transformers.generation.logits_process import TopPLogitsWarper

    probs = TopPLogitsWarper(top_p)(None, logits.float() / temperature).softmax(-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(1)


def nucleus_draw(logits, temperature, top_p, gen, k):
    from selfimprove import sample

    ids, weights = sample.nucleus((logits.float() / temperature).softmax(-1), top_p, k)
    return ids.gather(1, sample.draw(weights, gen)[:, None]).squeeze(1)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="demo")
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3, help="timed passes over all steps; the fastest is kept")
    ap.add_argument("--candidates", default="16,32,64,128")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sampling_step.json"))
    args = ap.parse_args(argv)
    import torch

    from selfimprove import artifacts

    logits, settings = capture_logits(args)
    temp, top_p = settings["temperature"], settings["top_p"]
    rules = {"full-sort": lambda x, g: full_sort(x, temp, top_p, g)}
    for k in (int(c) for c in args.candidates.split(",")):
        rules[f"nucleus-{k}"] = lambda x, g, k=k: nucleus_draw(x, temp, top_p, g, k)
    rows = []
    for name, rule in rules.items():
        best = float("inf")
        for _ in range(args.repeat):
            gen = torch.Generator().manual_seed(0)
            t0 = time.perf_counter()
            for x in logits:
                rule(x, gen)
            best = min(best, time.perf_counter() - t0)
        row = {"rule": name, "ms_per_step": 1e3 * best / len(logits)}
        if name.startswith("nucleus-"):
            k = int(name.split("-")[1])
            probs = [(x.float() / temp).softmax(-1) for x in logits]
            row["fallback_share"] = sum(bool((p.topk(min(k, p.shape[-1])).values.sum(-1) < top_p).any())
                                        for p in probs) / len(probs)
        rows.append(row)
    base = rows[0]["ms_per_step"]
    for row in rows:
        row["speedup"] = base / row["ms_per_step"]
    result = {"date": time.strftime("%Y-%m-%d"), "settings": settings, "rows": rows,
              "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "platform": platform.platform()}, "versions": artifacts.versions(), "args": vars(args)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{settings['steps']} decode steps, {settings['rows_mean']:.0f} rows on average, vocabulary "
          f"{settings['vocab']}, temperature {temp}, top_p {top_p}; {result['date']}, {result['machine']['cpu']}, "
          f"{result['machine']['threads']} threads\n")
    print("| rule | ms per step | speed-up | steps with a full sort |\n|---|---|---|---|")
    for row in rows:
        fb = f"{row['fallback_share']:.1%}" if "fallback_share" in row else "all"
        print(f"| {row['rule']} | {row['ms_per_step']:.2f} | {row['speedup']:.2f}x | {fb} |")
    print(f"\n{args.out}")
    return result


if __name__ == "__main__":
    main()
