"""GPU smoke test: vLLM sampling and one Unsloth LoRA DPO step on a randomly initialised model of a real
architecture, offline (no weights are downloaded), with versions, GPU name, times and tokens/s as JSON.

    pip install -r requirements/gpu.txt && pip install --no-deps -e .
    python bench/gpu_smoke.py [--layers 2] [--n 8] [--prompts 64] [--out bench/results/gpu_smoke.json]

1. Model: a LlamaConfig of Llama-3-8B's shape (hidden 4096, 32 heads, 8 KV heads, MLP 14336, rope theta 5e5;
   Meta-Llama-3-8B's config.json) with `--layers` layers instead of 32, randomly initialised in bf16, and the
   organism's tokenizer (selfimprove.organism.train_tokenizer: byte-level BPE with a chat template, trained
   here on arith problems), saved with save_pretrained into a temporary folder.
2. vLLM: `vllm.LLM` on that folder, `SamplingParams(n=--n, temperature=0.75, top_p=0.95)` (paper §4.1) over
   `--prompts` chat prompts, `ignore_eos` so that every response has `--max-tokens` tokens; then greedy.
3. Unsloth: `FastLanguageModel.from_pretrained` on the same folder (bf16, not 4-bit), `get_peft_model` (LoRA
   r 16 on every linear layer), TRL `DPOTrainer` with the package's loss (`[sigmoid, sft]`) for `--dpo-steps`
   steps; the LoRA weights must change.

Each part runs in its own process (as the pipeline gives vLLM sampling and Unsloth training a kernel each,
selfimprove/kernel.py): vLLM's engine and Unsloth's patches of transformers/TRL never share one. Without a
CUDA GPU, or without vllm/unsloth installed, it stops at once with a message saying so (exit code 2).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Offline: no hub look-ups, no usage statistics (vLLM, Unsloth), no tokenizers fork warnings.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "UNSLOTH_DISABLE_STATISTICS": "1",
               "TOKENIZERS_PARALLELISM": "false"}
PACKAGES = ["torch", "vllm", "unsloth", "unsloth_zoo", "transformers", "trl", "peft", "accelerate", "datasets",
            "bitsandbytes", "xformers", "triton"]
LLAMA3_SHAPE = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                    rope_theta=500000.0, max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=False)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class SmokeError(RuntimeError):
    """The machine cannot run the smoke test; the message says what is missing."""


def check_machine() -> dict:
    """CUDA and the GPU packages, checked before any work. Returns the versions and the GPU."""
    missing = [p for p in ("torch", "vllm", "unsloth", "trl", "peft") if importlib.util.find_spec(p) is None]
    if "torch" in missing:
        raise SmokeError("torch is not installed; install the GPU set: pip install -r requirements/gpu.txt")
    import torch

    if not torch.cuda.is_available():
        raise SmokeError(f"no CUDA GPU is visible (torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                         "this smoke test needs one NVIDIA GPU and requirements/gpu.txt")
    if missing:
        raise SmokeError(f"missing GPU package(s): {', '.join(missing)}; pip install -r requirements/gpu.txt")
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = md.version(p)
        except md.PackageNotFoundError:
            versions[p] = None
    props = torch.cuda.get_device_properties(0)
    return {"versions": versions, "python": platform.python_version(), "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0), "gpu_count": torch.cuda.device_count(),
            "gpu_memory_gib": round(props.total_memory / 2**30, 1), "capability": f"{props.major}.{props.minor}"}


def build_model(out: Path, layers: int, seed: int = 0) -> dict:
    """A random Llama-3-shaped model with `layers` layers and the organism's tokenizer, saved in `out`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from selfimprove import arith, organism

    problems = arith.generate(arith.ArithConfig(n_train=400, n_test=20, n_ood=20))["train"]
    texts = [p["question"] + "\n" + s for p in problems for s in p["solutions"]]
    tokenizer = organism.train_tokenizer(texts, vocab_size=512)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), num_hidden_layers=layers, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None, **LLAMA3_SHAPE)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init is quicker on the GPU
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    prompts = [organism.chat_prompt(tokenizer, p["question"]) for p in problems]
    (out / "prompts.json").write_text(json.dumps(prompts))
    n_params = sum(p.numel() for p in model.parameters())
    return {"architecture": "LlamaForCausalLM (Llama-3-8B shape)", "layers": layers, "vocab": len(tokenizer),
            "parameters": n_params}


def part_vllm(model_dir: Path, args) -> dict:
    from vllm import LLM, SamplingParams

    prompts = json.loads((model_dir / "prompts.json").read_text())[: args.prompts]
    t0 = time.perf_counter()
    llm = LLM(model=str(model_dir), tokenizer=str(model_dir), dtype="bfloat16", seed=0, max_model_len=1024,
              gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=not args.compile)
    init_s = time.perf_counter() - t0
    out = {"init_s": round(init_s, 2), "prompts": len(prompts), "n": args.n, "max_tokens": args.max_tokens,
           "enforce_eager": not args.compile}
    for label, params in (
            ("sample", SamplingParams(n=args.n, temperature=0.75, top_p=0.95, max_tokens=args.max_tokens,
                                      ignore_eos=True, seed=0)),
            ("greedy", SamplingParams(n=1, temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True))):
        t0 = time.perf_counter()
        results = llm.generate(prompts, params)
        seconds = time.perf_counter() - t0
        completions = [c for r in results for c in r.outputs]
        tokens = sum(len(c.token_ids) for c in completions)
        expected = len(prompts) * params.n
        if len(completions) != expected:
            raise SmokeError(f"vLLM {label}: {len(completions)} completions, expected {expected}")
        out[label] = {"completions": len(completions), "tokens": tokens, "seconds": round(seconds, 2),
                      "tokens_per_s": round(tokens / seconds, 1), "example": completions[0].text[:80]}
    return out


def part_unsloth(model_dir: Path, args) -> dict:
    import unsloth  # noqa: I001  first: Unsloth patches transformers and TRL on import
    from unsloth import FastLanguageModel

    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    if hasattr(unsloth, "PatchDPOTrainer"):  # a no-op in current Unsloth (models/dpo.py), kept for older ones
        unsloth.PatchDPOTrainer()
    t0 = time.perf_counter()
    model, tokenizer = FastLanguageModel.from_pretrained(model_name=str(model_dir), max_seq_length=512,
                                                         dtype=torch.bfloat16, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=32, lora_dropout=0.0,
                                             target_modules=LORA_TARGETS, use_gradient_checkpointing="unsloth",
                                             random_state=0)
    load_s = time.perf_counter() - t0
    prompts = json.loads((model_dir / "prompts.json").read_text())
    n_rows = args.dpo_batch * args.dpo_steps
    rows = [{"prompt": prompts[i % len(prompts)], "chosen": " 3 + 4 = 7\n#### 7", "rejected": " 3 + 4 = 8\n#### 8"}
            for i in range(n_rows)]
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    with tempfile.TemporaryDirectory() as tmp:
        config = DPOConfig(output_dir=tmp, per_device_train_batch_size=args.dpo_batch, max_steps=args.dpo_steps,
                           learning_rate=1e-3, lr_scheduler_type="constant", warmup_steps=0, beta=0.1,
                           loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0], max_length=512, bf16=True,
                           logging_steps=1, save_strategy="no", report_to=[], seed=0)
        trainer = DPOTrainer(model=model, ref_model=None, args=config, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer)
        t0 = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t0
    changed = sum(not torch.equal(p.detach(), lora[n]) for n, p in model.named_parameters() if n in lora)
    if not lora or not changed:
        raise SmokeError(f"Unsloth DPO: {changed} of {len(lora)} LoRA B matrices changed after {args.dpo_steps} steps")
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {"load_s": round(load_s, 2), "steps": args.dpo_steps, "batch": args.dpo_batch,
            "train_s": round(train_s, 2), "s_per_step": round(train_s / args.dpo_steps, 3),
            "pairs_per_s": round(n_rows / train_s, 2), "lora_b_changed": f"{changed}/{len(lora)}",
            "loss": [round(h["loss"], 4) for h in logs],
            "rewards_margins": [round(h["rewards/margins"], 4) for h in logs if "rewards/margins" in h],
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def _child(part: str, model_dir: Path, argv: list[str]) -> dict:
    """Run one part in a fresh process; its JSON comes back on the last line of stdout."""
    cmd = [sys.executable, __file__, "--part", part, "--model-dir", str(model_dir), *argv]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **OFFLINE_ENV})
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        return {"ok": False, "wall_s": round(time.perf_counter() - t0, 1), "error": tail}
    return {"ok": True, "wall_s": round(time.perf_counter() - t0, 1), **json.loads(proc.stdout.splitlines()[-1])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2, help="decoder layers of the Llama-3-shaped model (8B: 32)")
    ap.add_argument("--prompts", type=int, default=64, help="prompts for vLLM")
    ap.add_argument("--n", type=int, default=8, help="samples per prompt (SamplingParams.n)")
    ap.add_argument("--max-tokens", type=int, default=128, help="tokens per response (ignore_eos)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.5, help="vLLM's share of GPU memory")
    ap.add_argument("--compile", action="store_true", help="let vLLM compile and capture CUDA graphs (slower start)")
    ap.add_argument("--dpo-steps", type=int, default=3)
    ap.add_argument("--dpo-batch", type=int, default=4, help="pairs per DPO step")
    ap.add_argument("--out", default="bench/results/gpu_smoke.json")
    ap.add_argument("--part", choices=["vllm", "unsloth"], help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.part:  # a child process: one part, JSON on the last line
        fn = part_vllm if args.part == "vllm" else part_unsloth
        print(json.dumps(fn(Path(args.model_dir), args)))
        return 0
    try:
        result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), **check_machine()}
    except SmokeError as e:
        print(f"gpu_smoke: {e}", file=sys.stderr)
        return 2
    forwarded = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()  # the parts' options
                 if k not in ("out", "part", "model_dir", "compile")] + (["--compile"] if args.compile else [])
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        t0 = time.perf_counter()
        result["model"] = {**build_model(model_dir, args.layers), "build_s": round(time.perf_counter() - t0, 1)}
        result["vllm"] = _child("vllm", model_dir, forwarded)
        result["unsloth_dpo"] = _child("unsloth", model_dir, forwarded)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    ok = result["vllm"]["ok"] and result["unsloth_dpo"]["ok"]
    print(f"gpu_smoke: {'OK' if ok else 'FAILED'} on {result['gpu']} -> {out}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
