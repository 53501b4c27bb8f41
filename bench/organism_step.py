"""Benchmark: seconds per training step of the organism with each optimizer, all in one process, so that the
ratios hold on a noisy machine.

    .venv/bin/python bench/organism_step.py [--steps 20] [--warmup 5] [--out bench/results/organism_step.json]

The default organism (selfimprove.organism.OrganismConfig) on gold-SFT batches of 32 from 2,000 training
problems, length-bucketed as in the build. Optimizers: AdamW on every weight; Muon (ours, fp32
Newton-Schulz) on the hidden matrices with AdamW for the rest; torch.optim.Muon (bfloat16 Newton-Schulz) in
the same split. Each gets a fresh model; the first `--warmup` steps are not timed. Writes JSON and prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _torch_muon(model, lr: float, muon_lr: float) -> list:
    import torch

    from selfimprove import organism

    ours, adamw = organism.make_optimizers(model, "muon", lr, muon_lr)
    hidden = [p for g in ours.param_groups for p in g["params"]]
    return [torch.optim.Muon(hidden, lr=muon_lr, weight_decay=0.0), adamw]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "organism_step.json"))
    args = ap.parse_args(argv)

    import torch

    from selfimprove import arith, organism

    cfg = organism.OrganismConfig()
    rows = arith.generate(cfg.arith)["train"][:2000]
    tok = organism.train_tokenizer([f"{r['question']}\n{s}" for r in rows for s in r["solutions"]], cfg.vocab_size)
    examples = organism._sft_examples(tok, rows)
    batches = organism._batches(examples, cfg.batch_size, args.warmup + args.steps, random.Random(0))
    makers = {
        "AdamW (all weights)": lambda m: organism.make_optimizers(m, "adamw", cfg.learning_rate, cfg.muon_lr),
        "Muon, ours (fp32) + AdamW": lambda m: organism.make_optimizers(m, "muon", cfg.learning_rate, cfg.muon_lr),
        "torch.optim.Muon (bf16) + AdamW": lambda m: _torch_muon(m, cfg.learning_rate, cfg.muon_lr),
    }
    results = []
    for name, make in makers.items():
        model = organism.build_model(cfg, tok)
        model.train()
        opts = make(model)
        for i, batch in enumerate(batches):
            if i == args.warmup:
                t0 = time.perf_counter()
            model(**organism.collate(batch, tok.pad_token_id)).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            for opt in opts:
                opt.step()
                opt.zero_grad(set_to_none=True)
        results.append({"optimizer": name, "s_per_step": round((time.perf_counter() - t0) / args.steps, 4)})
    base = results[0]["s_per_step"]
    for r in results:
        r["vs_adamw"] = round(r["s_per_step"] / base, 2)
    machine = f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}"
    out = {"date": time.strftime("%Y-%m-%d"), "machine": machine,
           "load_average_at_start": os.getloadavg()[0], "torch": torch.__version__, "threads": torch.get_num_threads(),
           "steps": args.steps, "batch_size": cfg.batch_size, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print("| optimizer | s/step | vs AdamW |\n|---|---|---|")
    for r in results:
        print(f"| {r['optimizer']} | {r['s_per_step']} | {r['vs_adamw']} |")
    return out


if __name__ == "__main__":
    main()
