"""Train stage: M_t = F_t(M(t-1) | D_t), Algorithm 1 line 9, with LoRA.

Reads iter_<t-1>/model and iter_<t-1>/train_data.parquet (the data M(t-1)'s samples made); writes
iter_<t>/model (the LoRA adapter merged into M(t-1), so the next stage loads a plain checkpoint) and
iter_<t>/train_log.json (every logged step: loss, DPO rewards and margins, chosen/rejected log-probs).
Notebook: notebooks/10_train.ipynb. TRL and PEFT are imported here only (STYLE.md H10).

DPO starts from M(t-1) and uses M(t-1) as the reference model: with a PEFT model TRL computes reference
log-probs with the adapter disabled (DIVE does the same, paper.md §2.5; the paper does not say).
The default loss adds an NLL term on the chosen response (`loss_type: [sigmoid, sft]`): DPO alone can
lower the likelihood of both responses and collapse a weak model (organism.md, 'DPO collapsed a weak M1').
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pandas as pd

from . import artifacts
from .config import TrainConfig

LOGGED = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
          "logps/chosen", "logps/rejected")


def summarize_log(history: list[dict]) -> dict:
    """Mean of each DPO statistic over the first and the last quarter of logged steps."""
    steps = [h for h in history if "rewards/margins" in h]
    if not steps:
        return {}
    q = max(1, len(steps) // 4)
    out = {}
    for key in LOGGED:
        vals = [h[key] for h in steps if key in h]
        if vals:
            out[key] = {"first": sum(vals[:q]) / len(vals[:q]), "last": sum(vals[-q:]) / len(vals[-q:])}
    return out


def train_dpo(cfg: TrainConfig, base: Path, pairs: pd.DataFrame, out_dir: Path) -> dict:
    """LoRA DPO on `pairs` starting from `base`; saves the merged model into `out_dir`."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cuda = torch.cuda.is_available()
    args = DPOConfig(
        output_dir=str(out_dir.with_name(out_dir.name + ".trainer")),
        learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, beta=cfg.beta, loss_type=list(cfg.loss_type),
        loss_weights=list(cfg.loss_weights), max_length=cfg.max_length, seed=cfg.seed + cfg.iteration,
        lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_steps, logging_steps=1, save_strategy="no",
        report_to=[],
        # CPU: fp32 and no checkpointing (TRL on CPU needs use_cpu=True, bf16=False).
        use_cpu=not cuda, bf16=cuda, gradient_checkpointing=False, dataloader_num_workers=0,
        disable_tqdm=False,
    )
    # lora_r = 0 trains every parameter (the paper's setting per paper.md §2.6); TRL then keeps a frozen copy
    # of M(t-1) as the reference model.
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.target_modules), task_type="CAUSAL_LM") if cfg.lora_r else None
    dataset = Dataset.from_pandas(pairs[["prompt", "chosen", "rejected"]], preserve_index=False)
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora)
    trainer.train()
    merged = trainer.model.merge_and_unload() if lora else trainer.model
    merged.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    shutil.rmtree(args.output_dir, ignore_errors=True)
    history = [h for h in trainer.state.log_history if "loss" in h or "train_runtime" in h]
    return {"history": history, "summary": summarize_log(history)}


TRAINERS = {"dpo": train_dpo}


def run(cfg: TrainConfig) -> list[Path]:
    paths = artifacts.RunPaths(cfg.run_dir)
    base, src = paths.model(cfg.iteration - 1), paths.train_data(cfg.iteration - 1)
    if cfg.iteration < 2:
        raise ValueError("the train stage makes M_t for t >= 2; M1 is the gold-SFT model")
    for p in (base, src):
        if not p.exists():
            raise FileNotFoundError(f"train stage of iteration {cfg.iteration} needs {p}; run the earlier stages")
    table = pd.read_parquet(src)
    if table.empty:
        raise ValueError(f"{src} holds no training data: M{cfg.iteration - 1}'s samples were all correct or all "
                         "incorrect. Sample more per problem (sample.n_samples) or more problems.")
    tmp = paths.model(cfg.iteration).with_name("model.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.time()
    log = TRAINERS[cfg.paradigm](cfg, base, table, tmp)
    log.update(paradigm=cfg.paradigm, rows=len(table), seconds=round(time.time() - t0, 2))
    for key, v in log["summary"].items():
        print(f"{key:>20}: {v['first']:9.4f} -> {v['last']:9.4f}")
    model_dir = artifacts.replace_dir(tmp, paths.model(cfg.iteration))
    return [model_dir, artifacts.write_json(log, paths.train_log(cfg.iteration))]
