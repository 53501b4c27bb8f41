"""Sampling stage: M_t answers the problems of each split, greedily and N times at temperature.

Reads iter_<t>/model and the task's problems; writes iter_<t>/samples_<split>.parquet, the sample table of
DESIGN.md (no grading columns yet; the verify stage adds them). Train samples (only while t < T) feed the
data that trains M(t+1); test and OOD samples feed the metrics. Notebook: notebooks/20_sample.ipynb.

Backends are a dict (`SAMPLERS`); the transformers backend is the CPU default. Every batch is seeded from
(seed, iteration, split, batch), so a stage that is killed and rerun draws exactly the same samples.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import artifacts, data
from .config import SampleConfig

SAMPLE_COLUMNS = ["iteration", "split", "task", "problem_id", "level", "decoding", "sample_idx", "prompt",
                  "response", "n_tokens", "finish_reason"]


@dataclass
class Completion:
    text: str
    n_tokens: int
    finish_reason: str  # "stop" (eos generated) or "length" (max_new_tokens reached)


class TransformersSampler:
    """`model.generate` on CPU or GPU; prompts are length-sorted so a batch wastes little padding."""

    def __init__(self, model_path: str | Path, threads: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()

    def generate(self, prompts: list[str], *, n: int, temperature: float, top_p: float, max_new_tokens: int,
                 batch_size: int, seed: int) -> list[list[Completion]]:
        """`n` completions per prompt; temperature 0 means greedy (then n must be 1)."""
        import torch

        tok = self.tokenizer
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        per_batch = max(1, batch_size // n)  # batch_size counts sequences, not prompts
        out: list[list[Completion] | None] = [None] * len(prompts)
        for b, start in enumerate(range(0, len(order), per_batch)):
            idx = order[start:start + per_batch]
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            torch.manual_seed(seed * 1_000_003 + b)
            kwargs = dict(do_sample=True, temperature=temperature, top_p=top_p, num_return_sequences=n,
                          top_k=0) if temperature > 0 else dict(do_sample=False)
            with torch.inference_mode():
                gen = self.model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                          eos_token_id=tok.eos_token_id, **kwargs)
            new = gen[:, enc["input_ids"].shape[1]:]
            for j, i in enumerate(idx):
                out[i] = [self._completion(new[j * n + s]) for s in range(n)]
        return out  # type: ignore[return-value]

    def _completion(self, ids) -> Completion:
        ids = ids.tolist()
        eos = self.tokenizer.eos_token_id
        if eos in ids:
            ids = ids[:ids.index(eos) + 1]
            reason = "stop"
        else:
            ids = [i for i in ids if i != self.tokenizer.pad_token_id]
            reason = "length"
        return Completion(self.tokenizer.decode(ids, skip_special_tokens=True), len(ids), reason)


SAMPLERS = {"transformers": TransformersSampler}


def sample_split(sampler, problems: list[dict], prompts: list[str], *, cfg: SampleConfig, split: str,
                 task: str) -> pd.DataFrame:
    """Table rows: for test/OOD one greedy response and `n_eval_samples` sampled ones per problem, for the
    training split `n_samples` sampled ones (the data for M(t+1))."""
    rows = []
    passes = [("sample", cfg.n_samples, cfg.temperature)] if split == "train" else \
        [("greedy", 1, 0.0), ("sample", cfg.n_eval_samples, cfg.temperature)]
    split_code = {"train": 1, "test": 2, "ood": 3}[split]
    for decoding, n, temp in passes:
        seed = (cfg.seed * 100 + cfg.iteration) * 10 + split_code
        comps = sampler.generate(prompts, n=n, temperature=temp, top_p=cfg.top_p,
                                 max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                 seed=seed * 2 + (decoding == "sample"))
        for p, prompt, cs in zip(problems, prompts, comps):
            for k, c in enumerate(cs):
                rows.append({"iteration": cfg.iteration, "split": split, "task": task, "problem_id": p["id"],
                             "level": p.get("level"), "decoding": decoding, "sample_idx": k, "prompt": prompt,
                             "response": c.text, "n_tokens": c.n_tokens, "finish_reason": c.finish_reason})
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


def run(cfg: SampleConfig) -> list[Path]:
    """Sample every split this iteration needs and write iter_<t>/samples_<split>.parquet."""
    paths = artifacts.RunPaths(cfg.run_dir)
    sampler = SAMPLERS[cfg.backend](paths.model(cfg.iteration), threads=cfg.threads or None)
    written = []
    for split in cfg.splits:
        problems = data.load_split(cfg.run_dir, split)
        if split == "train":
            problems = data.training_subset(problems, cfg.problems_per_iteration, cfg.seed, cfg.iteration)
        prompts = [data.render_prompt(sampler.tokenizer, p) for p in problems]
        t0 = time.time()
        df = sample_split(sampler, problems, prompts, cfg=cfg, split=split, task=cfg.task)
        secs = time.time() - t0
        print(f"{split}: {len(df)} responses for {len(problems)} problems in {secs:.1f}s "
              f"({df['n_tokens'].sum() / max(secs, 1e-9):.0f} tokens/s)")
        written.append(artifacts.write_parquet(df, paths.samples(cfg.iteration, split)))
    return written
