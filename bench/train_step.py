"""Benchmark: seconds per optimizer step of the train stage's SFT and DPO, per training backend, in one process.

    .venv/bin/python bench/train_step.py [--recipe demo | --model DIR] [--backends trl[,unsloth]] [--rows 64]
        [--batch-size 8] [--out bench/results/train_step.json]

The model is a recipe's organism M1 (built into data/organism on first use) or any model directory. The data are
gold solutions of arith training problems: SFT rows (prompt, gold solution) and DPO pairs (prompt, a gold solution,
the same solution with its answer changed). Each (backend, kind) trains `--rows` rows with the train stage's own
functions (selfimprove.train.train_sft / train_dpo, at the rank `--lora-r` gives) and reports the mean seconds of
its optimizer steps (forward, backward, update; profiling.trainer_callback) and tokens per second over them.
`unsloth` needs a CUDA GPU. It also reports tokens/s as a fraction of a limit (profiling.train_bound: 6N FLOPs a
token for SFT of every weight, 8N for DPO with its reference pass, 4N and 6N with LoRA): on a GPU of
selfimprove.profiling.GPU_PEAKS the tensor cores' dense BF16 peak; on the CPU its fp32 matrix products at the
model's own shapes with a step's tokens as rows, measured in the same process (cpu_gemm_flops). `--lora-r`
(default: the recipe's; the demo trains every weight) sets the rank. Writes JSON and prints a Markdown table with
machine, versions and date.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _model(args) -> tuple[Path, object]:
    from selfimprove import arith, config, organism, pipeline

    if args.model:
        return Path(args.model), arith.ArithConfig()
    org_cfg = config.load_recipe(pipeline.RECIPES / f"{args.recipe}.yaml").organism_config()
    return organism.ensure(org_cfg, ROOT / "data" / "organism") / "M1", org_cfg.arith


def tables(tokenizer, arith_cfg, rows: int):
    import pandas as pd

    from selfimprove import arith, data

    problems = arith.generate(arith_cfg)["train"][:rows]
    prompts = [data.render_prompt(tokenizer, p) for p in problems]
    gold = [p["solutions"][0] for p in problems]
    wrong = [g.rsplit("#### ", 1)[0] + f"#### {int(p['answer']) + 1}" for g, p in zip(gold, problems)]
    return (pd.DataFrame({"prompt": prompts, "completion": gold}),
            pd.DataFrame({"prompt": prompts, "chosen": gold, "rejected": wrong}))


def cpu_gemm_flops(model: Path, rows: int) -> float:
    """FLOPs/s of this CPU's fp32 matrix products at the model's projection shapes (q, k, v, o, gate, up, down
    and the LM head) with `rows` tokens, each product timed alone (profiling.best_seconds): the
    limit a training step's forward products could reach; the backward's products have the same sizes."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model)
    h, heads = cfg.hidden_size, cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    d = getattr(cfg, "head_dim", None) or h // heads
    shapes = [(h, heads * d), (h, kv * d), (h, kv * d), (heads * d, h), (h, cfg.intermediate_size),
              (h, cfg.intermediate_size), (cfg.intermediate_size, h)] * cfg.num_hidden_layers + [(h, cfg.vocab_size)]
    from selfimprove import profiling

    seconds = flops = 0.0
    with torch.inference_mode():
        for n_in, n_out in sorted(set(shapes)):
            x, w = torch.randn(rows, n_in), torch.randn(n_out, n_in)
            best = profiling.best_seconds(lambda x=x, w=w: F.linear(x, w))
            count = shapes.count((n_in, n_out))
            seconds += count * best
            flops += count * 2 * rows * n_in * n_out
    return flops / seconds


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="demo")
    ap.add_argument("--model", default="")
    ap.add_argument("--backends", default="trl")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lora-r", type=int, default=None,
                    help="LoRA rank, 0 for every weight (default: the recipe's train.lora_r; with --model, 16)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/train_step.json"))
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    from selfimprove import artifacts, config, profiling, train

    model, arith_cfg = _model(args)
    if args.lora_r is None:
        recipe = None if args.model else config.load_recipe(ROOT / "notebooks/params" / f"{args.recipe}.yaml")
        if recipe is not None and recipe.is_study:
            recipe = recipe.member(recipe.paradigms[0])
        args.lora_r = recipe.stage("train", 2, "-").lora_r if recipe else config.TrainConfig.lora_r
    sft, dpo = tables(AutoTokenizer.from_pretrained(model), arith_cfg, args.rows)
    results = []
    for backend in args.backends.split(","):
        for kind, table in (("sft", sft), ("dpo", dpo)):
            cfg = config.build(config.TrainConfig, {"run_dir": "-", "iteration": 2, "backend": backend,
                                                    "batch_size": args.batch_size, "warmup_steps": 0,
                                                    "lora_r": args.lora_r}, "bench")
            train.check_backend(cfg)
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                trainer, _ = train.TRAINERS[kind](cfg, model, table, Path(tmp) / "model.tmp")
                wall = time.perf_counter() - t0
            n_steps = max(1, trainer.state.global_step)
            compute = trainer.compute_seconds  # the optimizer steps (train._train)
            ds = trainer.train_dataset
            tokens = sum(map(len, ds["input_ids"])) if kind == "sft" else \
                2 * sum(map(len, ds["prompt_ids"])) + sum(map(len, ds["chosen_ids"])) + \
                sum(map(len, ds["rejected_ids"]))  # both sequences of a pair carry the prompt
            results.append({"backend": backend, "kind": kind, "steps": n_steps, "wall_s": round(wall, 2),
                            "step_s": round(compute / n_steps, 4), "tokens": int(tokens),
                            "tokens_per_s": round(tokens / compute, 1) if compute else None,
                            "tokens_per_step": round(tokens / n_steps, 1)})
    roofline = None
    peaks = profiling.gpu_peaks(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else None
    if not torch.cuda.is_available():  # the CPU's own limit: its fp32 matrix products at the model's shapes
        tokens_per_step = round(max(r["tokens_per_step"] for r in results))
        peaks = {"gpu": "CPU", "source": f"measured: fp32 F.linear at the model's shapes, {tokens_per_step} rows "
                 f"(a step's tokens), {torch.get_num_threads()} threads", "bf16_flops": cpu_gemm_flops(
                     model, tokens_per_step)}
    if peaks:  # the tensor cores' bound (profiling.train_bound) for this model, LoRA as TrainConfig
        params = profiling.count_params(model)
        roofline = {**peaks, "params": params}
        for r in results:
            bound = profiling.train_bound(peaks["bf16_flops"], params, r["kind"], lora=cfg.lora_r > 0)
            r["bound_tokens_per_s"] = round(bound, 1)
            r["matrix_unit_fraction"] = round(r["tokens_per_s"] / bound, 4) if r["tokens_per_s"] else None
    out = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
           "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "versions": artifacts.versions(), "model": str(model), "rows": args.rows,
           "batch_size": args.batch_size, "lora_r": args.lora_r, "roofline": roofline, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"{out['date']}, {out['machine']}, {out['cuda'] or 'CPU'}; torch {out['torch']}; {args.rows} rows, "
          f"batch {args.batch_size}, LoRA rank {args.lora_r} (0: every weight)\n")
    bound = " of the limit |" if roofline else ""
    print(f"| backend | kind | steps | s/step (forward, backward, update) | tokens/s | stage wall s |{bound}")
    print("|---|---|---|---|---|---|" + ("---|" if roofline else ""))
    for r in results:
        frac = f" {r['matrix_unit_fraction']:.1%} |" if roofline and r["matrix_unit_fraction"] is not None else \
            (" |" if roofline else "")
        print(f"| {r['backend']} | {r['kind'].upper()} | {r['steps']} | {r['step_s']} | {r['tokens_per_s']} | "
              f"{r['wall_s']} |{frac}")
    if roofline:
        print(f"\nlimit on {roofline['gpu']} ({roofline['source']}; on a GPU: dense BF16), "
              f"{roofline['params']:,} parameters: " + ", ".join(
                  f"{r['backend']} {r['kind'].upper()} {r['bound_tokens_per_s']:.0f} tokens/s" for r in results))
    return out


if __name__ == "__main__":
    main()
