"""The model organism: a tokenizer and a tiny Llama trained from scratch on `arith`, M0 and M1 in minutes on a CPU.

`selfimprove organism` (or the run pipeline, on first use) trains a byte-level BPE tokenizer with a chat
template, builds a tiny Llama-architecture model, pretrains it as a plain language model on raw solved
problems (M0), then gold-SFTs it in chat format (M1, Algorithm 1 line 1). Both are saved with
save_pretrained, so AutoModelForCausalLM / AutoTokenizer load them by path.

The OOD templates and the loop. M0 and M1 also train on a pool of problems in the OOD templates
(`ood_fraction` of the training split, none of them in the OOD test split); the self-improvement loop never
samples or trains on them. So the OOD split measures what the loop does to a capability outside its own
training distribution, as GSM8K-trained models are measured on MATH (paper §5.3, Fig. 5). It cannot measure
zero-shot transfer to unseen wording: a 1M-parameter model trained from scratch has none (measured with
`ood_fraction: 0`: OOD pass@1 0.0 while test pass@1 was 0.49). An earlier prototype of the organism used the same
10% share (docs/organism.md).

Cached under data/organism/<config hash>/{M0,M1}; a finished build (marked by build.json) is reused.

Shipped builds. The build is not reproducible across machines: the same config and seed gave M1 test
pass@1 0.357 and 0.465 on two machines, and 0.228 in a later build on the first kind of machine (issue 17;
float sums in another order, amplified over a thousand steps), so two machines that build the "same"
organism compare different models. The package therefore ships the demo's organisms (seeds 0, 1 and 2 of
the three-seed study) in selfimprove/organisms/<config hash>/ (M0, M1 and the build.json that names the
config and the machine that made it); `ensure` copies a shipped build into the cache instead of training it,
and `selfimprove organism --rebuild` trains it anew from the same config (`--ship` replaces the shipped copy).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from . import arith
from .schema import OPTIMIZERS, OrganismConfig  # noqa: F401  (OrganismConfig: importable from here)

SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|user|>", "<|assistant|>"]
# Minimal chat template: "<|role|>\n" then the content; the assistant turn closed by <|end|> (the eos token).
# A prompt renders as "<|user|>\n{question}<|assistant|>\n". (transformers renders chat templates with
# trim_blocks, so no newline may follow a block tag.)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE with every digit its own token (docs/organism.md: without it the prototype learnt no
    arithmetic)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Split off each digit together with one leading space (" 4"), then words as GPT-2 does: a number costs
    # one token per digit and "12 + 3" stays short.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r" ?[0-9]"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|end|>",
                                   padding_side="left")  # left padding: batched generation appends on the right
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(cfg: OrganismConfig, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads,
        max_position_embeddings=512, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    return LlamaForCausalLM(config)


def chat_prompt(tokenizer, question: str) -> str:
    """The zero-shot prompt of data.render_prompt for a bare question."""
    from .data import render_prompt

    return render_prompt(tokenizer, {"question": question})


def _batches(examples: list[tuple[list[int], int]], batch_size: int, steps: int, rng: random.Random):
    """Length-bucketed batches (docs/organism.md): sort a shuffled pool by length, cut, shuffle the batches."""
    out = []
    while len(out) < steps:
        pool = examples[:]
        rng.shuffle(pool)
        for i in range(0, len(pool), batch_size * 50):
            chunk = sorted(pool[i:i + batch_size * 50], key=lambda e: len(e[0]))
            group = [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
            rng.shuffle(group)
            out.extend(group)
    return out[:steps]


def _muon_class():
    import torch

    class Muon(torch.optim.Optimizer):
        """Muon (Keller Jordan, 2024, github.com/KellerJordan/Muon): SGD momentum whose update is
        orthogonalised by 5 Newton-Schulz iterations, for 2-D hidden weights only. torch.optim.Muon (torch
        >= 2.9) runs those iterations in bfloat16, which measured 3x slower per step than this fp32 version
        on a CPU without bf16 matrix units; the update rule and lr scaling are the same ("original")."""

        def __init__(self, params, lr: float, momentum: float = 0.95, ns_steps: int = 5):
            super().__init__(params, dict(lr=lr, momentum=momentum, ns_steps=ns_steps))

        @staticmethod
        def orthogonalize(g, steps: int):
            a, b, c = 3.4445, -4.7750, 2.0315  # the quintic iteration's coefficients (KellerJordan/Muon)
            x = g / (g.norm() + 1e-7)
            wide = x.size(0) <= x.size(1)
            x = x if wide else x.T
            for _ in range(steps):
                gram = x @ x.T
                x = a * x + (b * gram + c * gram @ gram) @ x
            return x if wide else x.T

        @torch.no_grad()
        def step(self):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                    buf.mul_(group["momentum"]).add_(p.grad)
                    update = p.grad.add(buf, alpha=group["momentum"])  # Nesterov
                    scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                    p.add_(self.orthogonalize(update, group["ns_steps"]), alpha=-group["lr"] * scale)

    return Muon


def make_optimizers(model, name: str, lr: float, muon_lr: float) -> list:
    """AdamW for every weight, or Muon for the hidden matrices and AdamW for the rest (embeddings, tied with
    the output layer, and norms), as Muon's authors prescribe."""
    import torch

    adamw = dict(weight_decay=0.0, betas=(0.9, 0.98))
    if name == "adamw":
        return [torch.optim.AdamW(model.parameters(), lr=lr, **adamw)]
    hidden, rest = [], []
    for n, p in model.named_parameters():
        (hidden if p.ndim == 2 and "embed" not in n and "lm_head" not in n else rest).append(p)
    return [_muon_class()(hidden, lr=muon_lr), torch.optim.AdamW(rest, lr=lr, **adamw)]



def collate(batch: list[tuple[list[int], int]], pad_id: int) -> dict:
    """Right-padded input_ids, attention_mask and labels (-100 before each example's loss start) of a batch."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id)
    labels = torch.full((len(batch), width), -100)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (seq, start) in enumerate(batch):
        ids[i, :len(seq)] = torch.tensor(seq)
        labels[i, start:len(seq)] = torch.tensor(seq[start:])
        attn[i, :len(seq)] = 1
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def train_lm(model, examples, *, steps: int, batch_size: int, lr: float, warmup: int, seed: int,
             pad_id: int, optimizer: str = "adamw", muon_lr: float = 0.02, log=print) -> list[float]:
    """Training loop with warmup + cosine decay. `examples` are (token ids, index where the loss starts)."""
    import torch

    if steps <= 0:
        return []
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opts = make_optimizers(model, optimizer, lr, muon_lr)
    scheds = [torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup))
                                                * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
              for opt in opts]
    model.train()
    losses = []
    for step, batch in enumerate(_batches(examples, batch_size, steps, rng)):
        loss = model(**collate(batch, pad_id)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for opt, sched in zip(opts, scheds):
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(f"  step {step + 1}/{steps}  loss {sum(losses[-100:]) / len(losses[-100:]):.3f}")
    model.eval()
    return losses


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    # One batched call: the Rust tokenizer encodes in parallel (per-text calls cost ~12 s of a build).
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _sft_examples(tokenizer, rows: list[dict]) -> list[tuple[list[int], int]]:
    """(prompt + solution + eos token ids, index of the first solution token) per gold solution."""
    prompts = _encode(tokenizer, [chat_prompt(tokenizer, r["question"]) for r in rows])
    sols = iter(_encode(tokenizer, [sol for r in rows for sol in r["solutions"]]))
    out = []
    for r, prompt_ids in zip(rows, prompts):
        for _ in r["solutions"]:
            out.append((prompt_ids + next(sols) + [tokenizer.eos_token_id], len(prompt_ids)))
    return out


def build(cfg: OrganismConfig, out_dir: Path, log=print) -> dict:
    """Train tokenizer, M0 and M1 into `out_dir`; returns the build record (also written to build.json)."""
    import torch

    torch.manual_seed(cfg.seed)
    t0 = time.time()
    splits = arith.generate(cfg.arith)
    train = splits["train"]
    ood_pool = ood_training_pool(cfg, splits)
    raw = [f"{r['question']}\n{s}" for r in train + ood_pool for s in r["solutions"]]
    tokenizer = train_tokenizer(raw + [_role_marked(r["question"]) for r in train[:100]], cfg.vocab_size)
    model = build_model(cfg, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"organism: {n_params / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}")

    eos = tokenizer.eos_token_id
    pre = [(ids + [eos], 0) for ids in _encode(tokenizer, raw)]
    log(f"M0: pretraining {cfg.pretrain_steps} steps on {len(pre)} raw solved problems")
    t_train = time.time()
    pre_losses = train_lm(model, pre, steps=cfg.pretrain_steps, batch_size=cfg.batch_size, lr=cfg.learning_rate,
                          warmup=cfg.warmup_steps, seed=cfg.seed, pad_id=tokenizer.pad_token_id,
                          optimizer=cfg.optimizer, muon_lr=cfg.muon_lr, log=log)
    train_s = time.time() - t_train
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name in ("M0", "M1"):
        if name == "M1":
            sft = _sft_examples(tokenizer, train + ood_pool)
            log(f"M1: gold SFT {cfg.sft_steps} steps on {len(sft)} gold solutions")
            t_train = time.time()
            sft_losses = train_lm(model, sft, steps=cfg.sft_steps, batch_size=cfg.batch_size,
                                  lr=cfg.learning_rate, warmup=cfg.warmup_steps, seed=cfg.seed + 1,
                                  pad_id=tokenizer.pad_token_id, optimizer=cfg.optimizer,
                                  muon_lr=cfg.muon_lr, log=log)
            train_s += time.time() - t_train
        model.save_pretrained(tmp / name)
        tokenizer.save_pretrained(tmp / name)
    record = {"config": asdict(cfg), "digest": cfg.digest(), "n_params": n_params, "vocab": len(tokenizer),
              "built": {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                        "threads": torch.get_num_threads(), "machine": platform.machine(),
                        "cpu": platform.processor() or "", "cores": os.cpu_count()},
              "pretrain_final_loss": _tail_mean(pre_losses), "sft_final_loss": _tail_mean(sft_losses),
              "seconds": round(time.time() - t0, 1), "train_s": round(train_s, 1)}  # train_s: the training loops
    (tmp / "build.json").write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.replace(out_dir)  # build.json inside a renamed folder marks a complete build
    return record


def _ood_template_problems(cfg: OrganismConfig, splits: dict):
    """Problems in the OOD templates, endless, each with a question no split and no earlier one has; the first
    `ood_fraction` x n_train are M0/M1's pool, the next ones the gold arm's fresh OOD problems."""
    rng = random.Random(cfg.seed + 1)
    taken = {r["question"] for rows in splits.values() for r in rows}
    n = 0
    while True:
        level = cfg.arith.levels[n % len(cfg.arith.levels)]
        r = arith.make_problem(rng, f"arith-oodpool-{n:05d}", "ood_pool", level, arith.OOD_TEMPLATES,
                               cfg.arith.solutions_per_problem, cfg.arith)
        if r["question"] not in taken:
            taken.add(r["question"])
            n += 1
            yield r


def _pool_size(cfg: OrganismConfig, splits: dict) -> int:
    return int(cfg.ood_fraction * len(splits["train"]))


def ood_training_pool(cfg: OrganismConfig, splits: dict) -> list[dict]:
    """Fresh problems in the OOD templates for M0/M1 training; none shares a question with any split."""
    return list(itertools.islice(_ood_template_problems(cfg, splits), _pool_size(cfg, splits)))


def fresh_ood_problems(cfg: OrganismConfig, splits: dict) -> list[dict]:
    """`data.n_fresh_ood` problems in the OOD templates that neither M0/M1 (their pool comes first from the same
    draw) nor any split holds: the gold arm's share of M1's OOD-template mix (train.gold_ood_share).

    >>> cfg = OrganismConfig(data={"n_train": 40, "n_test": 10, "n_ood": 10, "n_fresh_ood": 5})
    >>> splits = arith.generate(cfg.arith)
    >>> pool, fresh = ood_training_pool(cfg, splits), fresh_ood_problems(cfg, splits)
    >>> len(pool), len(fresh), fresh[0]["id"], fresh[0]["split"]
    (4, 5, 'arith-fresh_ood-00000', 'fresh_ood')
    >>> {r["question"] for r in fresh} & {r["question"] for r in pool + splits["ood"] + splits["test"]}
    set()
    """
    skip, n = _pool_size(cfg, splits), cfg.arith.n_fresh_ood
    rows = itertools.islice(_ood_template_problems(cfg, splits), skip, skip + n)
    return [{**r, "id": f"arith-fresh_ood-{i:05d}", "split": "fresh_ood"} for i, r in enumerate(rows)]


def _role_marked(question: str) -> str:
    """Role markers around a question, for the tokenizer's training text only (the special tokens are
    matched whole, so this affects the merges around them; the exact layout of the template need not match)."""
    return f"<|user|>\n{question}\n<|assistant|>\n"


def _tail_mean(xs: list[float]) -> float | None:
    return round(sum(xs[-50:]) / len(xs[-50:]), 4) if xs else None


SHIPPED = Path(__file__).resolve().parent / "organisms"  # shipped builds, by config hash (module docstring)


def shipped(cfg: OrganismConfig) -> Path | None:
    """The shipped build of `cfg`, if the package carries one."""
    path = SHIPPED / cfg.digest()
    return path if (path / "build.json").is_file() else None


def check_root(cfg: OrganismConfig, root: Path, rebuild: bool = False) -> None:
    """Refuse, before any work, an organism root that `ensure` would write in but cannot (read-only, or under a
    file): artifacts.NotWritableError naming it. A root that holds the build already is only read, and may be
    read-only (a shared cache)."""
    from . import artifacts

    if rebuild or not (Path(root) / cfg.digest() / "build.json").exists():
        artifacts.check_writable(Path(root), "organism root",
                                 f"organism {cfg.digest()} is not built there, and a run builds it there: give "
                                 "--organism-root a folder you can write, or one that holds its build")


def ensure(cfg: OrganismConfig, root: Path = Path("data/organism"), log=print, rebuild: bool = False) -> Path:
    """Path of the cached organism for `cfg`: the cache's, else a copy of the shipped build, else a new build.
    `rebuild` trains it anew even when the cache or the package holds one. An organism root that cannot be
    written is refused first (check_root)."""
    out = root / cfg.digest()
    if (out / "build.json").exists() and not rebuild:
        return out
    check_root(cfg, root, rebuild)
    root.mkdir(parents=True, exist_ok=True)
    src = None if rebuild else shipped(cfg)
    if src is None:
        log(f"organism: building into {out}")
        build(cfg, out, log=log)
        return out
    log(f"organism: the shipped build {cfg.digest()} (selfimprove/organisms/) into {out}; "
        "`selfimprove organism --rebuild` trains it anew")
    _replace_dir(src, out)
    return out


def ship(cfg: OrganismConfig, root: Path = Path("data/organism")) -> Path:
    """Copy the cached build of `cfg` into the package's shipped builds (for maintainers: commit the result)."""
    src = root / cfg.digest()
    if not (src / "build.json").is_file():
        raise FileNotFoundError(f"no finished build of organism {cfg.digest()} in {root}: build it first")
    _replace_dir(src, SHIPPED / cfg.digest())
    return SHIPPED / cfg.digest()


def _replace_dir(src: Path, dst: Path) -> None:
    """Copy the build folder `src` to `dst` through a temporary sibling, so that `dst` is whole or absent."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("*.tmp"))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.replace(dst)
