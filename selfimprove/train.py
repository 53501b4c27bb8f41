"""Train stage: M_t = F_t(M(t-1) | D_t), Algorithm 1 line 9, with LoRA; and M1 = SFT(M0 | gold) for a
recipe that names its own `model` (the organism builds its M1 itself).

Reads iter_<t-1>/model and M(t-1)'s graded train samples (iter_<t-1>/samples_train.parquet joined with
iter_<t-1>/graded_train.parquet by runs.Run.graded); builds D_t from them itself (pairs.py: DPO pairs or SFT
rows, as F_t needs; TrainConfig `pairing`, `max_pairs_per_problem`, `sft_max_per_problem`, `sft_dedup`) and
writes it as iter_<t>/train_data.parquet, the data that made M_t, with provenance (problem_id and
sample_idx, or chosen_idx / rejected_idx). Writes iter_<t>/model (M_t as a plain checkpoint, so the next
stage and any sampler load it by path), iter_<t>/train_log.json (every logged step: loss, and for DPO the
rewards, margins and chosen/rejected log-probs; `data`: D_t's kind, rows and problems) and, with
`merge_adapter: false`, iter_<t>/adapter. This stage is the only one that asks which kind F_t is.
Notebook: notebooks/10_train.ipynb. TRL, PEFT and Unsloth are imported here only.

F_t is `config.train_kind(paradigm, t)`: SFT on correct samples (TRL SFTTrainer, prompt-completion rows, loss
on the completion only) or DPO on (correct, incorrect) pairs (TRL DPOTrainer). Open choices, all TrainConfig
fields: the DPO reference is M(t-1) (DIVE; with a fresh LoRA adapter TRL computes it with the
adapter disabled) or M1 (`ref_model: m1`, loaded as a frozen copy); the data are this iteration's or every
earlier one's of the same kind (`data_mode`); the adapter is merged into M(t-1) each iteration or one adapter
over M1 is trained on (`merge_adapter`). The default DPO loss adds an NLL term on the chosen response
(`loss_type: [sigmoid, sft]`): DPO alone can lower the likelihood of both responses and collapse a weak model
(docs/organism.md, 'DPO collapse').

Backends: `trl` (TRL + PEFT, CPU or GPU) and `unsloth` (Unsloth's FastLanguageModel + the same TRL trainers,
CUDA only; checked before anything loads). `num_processes > 1` runs the same function in that many processes
through `accelerate launch` (data parallel; accelerate and TRL do the distribution).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from . import artifacts, data, pairs, profiling
from .config import TrainConfig, gold_split, train_kind
from .runs import Run

LOGGED = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
          "logps/chosen", "logps/rejected", "mean_token_accuracy")
KIND_COLUMNS = {"dpo": ("prompt", "chosen", "rejected"), "sft": ("prompt", "completion")}


class TrainError(RuntimeError):
    """The train stage cannot start: a missing input, empty data or a backend this machine lacks."""


def summarize_log(history: list[dict]) -> dict:
    """Mean of each logged statistic over the first and the last quarter of logged training steps."""
    steps = [h for h in history if "loss" in h and "train_runtime" not in h]
    if not steps:
        return {}
    q = max(1, len(steps) // 4)
    out = {}
    for key in LOGGED:
        vals = [h[key] for h in steps if key in h]
        if vals:
            out[key] = {"first": sum(vals[:q]) / len(vals[:q]), "last": sum(vals[-q:]) / len(vals[-q:])}
    return out


def check_backend(cfg: TrainConfig) -> None:
    """Fail before any model loads when the backend or an option needs CUDA and this machine has none."""
    import torch

    cuda = torch.cuda.is_available()
    if cfg.backend == "unsloth" and not cuda:
        raise TrainError("train.backend 'unsloth' needs a CUDA GPU and none is visible here; use backend: trl "
                         "(TRL + PEFT, the same trainers, CPU or GPU)")
    if cfg.load_in_4bit and not cuda:
        raise TrainError("train.load_in_4bit needs a CUDA GPU (bitsandbytes 4-bit); set it to false on CPU")
    if cfg.precision == "bf16" and not cuda:
        raise TrainError("train.precision 'bf16' needs CUDA here (TRL on CPU trains in fp32); use auto or fp32")
    if cfg.num_processes > 1 and cuda and torch.cuda.device_count() < cfg.num_processes:
        raise TrainError(f"train.num_processes {cfg.num_processes} > {torch.cuda.device_count()} visible GPUs")


def _bf16(cfg: TrainConfig) -> bool:
    import torch

    return cfg.precision == "bf16" or (cfg.precision == "auto" and torch.cuda.is_available())


def lora_config(cfg: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")


def load_policy(cfg: TrainConfig, base: str | Path, adapter: Path | None):
    """(model, tokenizer, peft_config for the trainer). With `adapter`, that LoRA adapter is loaded trainable
    on `base` and trained on; otherwise a fresh adapter (or every weight, lora_r = 0) is trained."""
    import torch

    if cfg.backend == "unsloth":  # imported first: Unsloth patches transformers and TRL on import
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=str(adapter or base), max_seq_length=cfg.max_length, dtype=None,
            load_in_4bit=cfg.load_in_4bit, full_finetuning=not cfg.lora_r)
        if cfg.lora_r and adapter is None:
            model = FastLanguageModel.get_peft_model(
                model, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                target_modules=list(cfg.target_modules), use_gradient_checkpointing="unsloth",
                random_state=cfg.seed + cfg.iteration)
        return model, tokenizer, None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"dtype": torch.bfloat16 if _bf16(cfg) else torch.float32}
    if cfg.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    if adapter is not None:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, adapter, is_trainable=True), tokenizer, None
    return model, tokenizer, lora_config(cfg) if cfg.lora_r else None


def _common_args(cfg: TrainConfig, out_dir: Path, lr: float, epochs: float) -> dict:
    bf16 = _bf16(cfg)
    return dict(
        output_dir=str(out_dir.with_name(out_dir.name + ".trainer")), learning_rate=lr, num_train_epochs=epochs,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        max_length=cfg.max_length, seed=cfg.seed + cfg.iteration, lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps, logging_steps=1, save_strategy="no", report_to=[],
        # CPU: fp32 and no checkpointing (TRL on CPU needs use_cpu=True, bf16=False).
        use_cpu=not _cuda(), bf16=bf16, gradient_checkpointing=False, dataloader_num_workers=0, disable_tqdm=False)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def train_dpo(cfg: TrainConfig, base: Path, table: pd.DataFrame, out_dir: Path, adapter: Path | None = None,
              ref: Path | None = None):
    """DPO on (prompt, chosen, rejected) rows from `base` (M(t-1)); `ref` is an explicit frozen reference
    model (ref_model: m1), else M(t-1) itself. Returns the trainer after training."""
    model, tokenizer, peft_config = load_policy(cfg, base, adapter)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(**_common_args(cfg, out_dir, cfg.learning_rate, cfg.epochs), beta=cfg.beta,
                     loss_type=list(cfg.loss_type), loss_weights=list(cfg.loss_weights))
    ref_model = None
    if ref is not None:
        import torch

        ref_model = AutoModelForCausalLM.from_pretrained(ref, dtype=torch.bfloat16 if _bf16(cfg) else torch.float32)
    dataset = Dataset.from_pandas(table[list(KIND_COLUMNS["dpo"])], preserve_index=False)
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset,
                         processing_class=tokenizer, peft_config=peft_config)
    _train(trainer)
    return trainer, tokenizer


def train_sft(cfg: TrainConfig, base: Path, table: pd.DataFrame, out_dir: Path, adapter: Path | None = None,
              ref: Path | None = None, epochs: float | None = None):
    """SFT on (prompt, completion) rows, the loss on the completion tokens only (TRL's default for
    prompt-completion data). Returns the trainer after training."""
    model, tokenizer, peft_config = load_policy(cfg, base, adapter)
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(**_common_args(cfg, out_dir, cfg.sft_learning_rate, epochs or cfg.epochs),
                     completion_only_loss=True, packing=False)
    dataset = Dataset.from_pandas(table[list(KIND_COLUMNS["sft"])], preserve_index=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)
    _train(trainer)
    return trainer, tokenizer


TRAINERS = {"sft": train_sft, "dpo": train_dpo}


def _train(trainer) -> None:
    """`trainer.train()`, its optimizer steps timed (profiling: forward, backward and update)."""
    clock = profiling.Clock()
    trainer.add_callback(profiling.trainer_callback(clock))
    if os.environ.get("SELFIMPROVE_PROGRESS") == "text":  # a stage run by `selfimprove run`: a text bar, which the
        import tqdm  # runner shows on the terminal; in a kernel the Trainer would draw an HTML table instead
        import transformers.trainer_callback as callbacks
        from transformers.utils.notebook import NotebookProgressCallback

        callbacks.tqdm = tqdm.tqdm
        trainer.remove_callback(NotebookProgressCallback)
        if not any(isinstance(cb, callbacks.ProgressCallback) for cb in trainer.callback_handler.callbacks):
            trainer.add_callback(callbacks.ProgressCallback)
    trainer.train()
    trainer.compute_seconds = clock.seconds


def gold_sft_rows(problems: list[dict], tokenizer) -> pd.DataFrame:
    """Gold SFT data for M1: one row per gold solution of each training problem (Algorithm 1 line 1)."""
    rows = []
    for p in problems:
        prompt = data.render_prompt(tokenizer, p)
        rows += [{"problem_id": p["id"], "level": p.get("level"), "prompt": prompt, "completion": s}
                 for s in p.get("solutions", [])]
    return pd.DataFrame(rows, columns=["problem_id", "level", "prompt", "completion"])


def build_data(cfg: TrainConfig, paths: artifacts.RunPaths) -> pd.DataFrame:
    """D_t built from M(t-1)'s graded train samples (runs.Run.graded), as F_t needs (config.train_kind): DPO
    pairs or SFT rows (pairs.py), seeded by (seed, t - 1). Rows keep their provenance: problem_id and
    sample_idx (SFT) or chosen_idx / rejected_idx (DPO) of M(t-1)'s train sample table."""
    t = cfg.iteration
    if cfg.paradigm == "gold":
        return gold_data(cfg, paths)
    try:
        graded = Run(paths.root).graded(t - 1, "train")
    except FileNotFoundError as e:
        raise TrainError(f"train stage of iteration {t} needs M{t - 1}'s graded train samples: {e}; run the "
                         "earlier stages") from None
    seed = cfg.seed * 1000 + (t - 1)
    if cfg.paradigm.startswith("placebo-"):  # the placebo control: the same data shape, correctness shuffled
        graded = pairs.shuffle_labels(graded, seed=seed)
    if train_kind(cfg.paradigm, t) == "dpo":
        return pairs.make_pairs(graded, rule=cfg.pairing, max_pairs=cfg.max_pairs_per_problem, seed=seed)
    return pairs.make_sft_rows(graded, max_per_problem=cfg.sft_max_per_problem, dedup=cfg.sft_dedup, seed=seed)


def gold_data(cfg: TrainConfig, paths: artifacts.RunPaths) -> pd.DataFrame:
    """The gold arm's D_t (the positive control): gold solutions of `gold_problems` fresh problems (the run's
    held-out `fresh` split, and `fresh_ood` for its `gold_ood_share`; neither M1 nor the loop has seen them), a
    new slice at each iteration, up to `sft_max_per_problem` solutions each and `gold_rows` rows in all, in
    M(t-1)'s prompt format."""
    from transformers import AutoTokenizer

    problems = []
    for split, n in zip(("fresh", "fresh_ood"), gold_split(cfg.gold_problems, cfg.gold_ood_share)):
        if not n:
            continue
        field = "n_fresh" if split == "fresh" else "n_fresh_ood"
        fresh_file = paths.problems(split)
        if not fresh_file.exists():
            raise TrainError(f"the gold arm needs held-out problems ({fresh_file}): set organism.data.{field}")
        fresh = data.load_split(cfg.run_dir, split)
        start, stop = (cfg.iteration - 2) * n, (cfg.iteration - 1) * n
        if stop > len(fresh):
            raise TrainError(f"the gold arm needs {stop} {split} problems by iteration {cfg.iteration}, "
                             f"{fresh_file} has {len(fresh)}: raise organism.data.{field}")
        problems += fresh[start:stop]
    tokenizer = AutoTokenizer.from_pretrained(paths.model(cfg.iteration - 1))
    prompts = [data.render_prompt(tokenizer, p) for p in problems]
    return pairs.gold_rows(problems, prompts, max_per_problem=cfg.sft_max_per_problem, max_rows=cfg.gold_rows,
                           seed=cfg.seed * 1000 + (cfg.iteration - 1))


def data_summary(table: pd.DataFrame, kind: str, t: int) -> dict:
    """What the train log (and M_t's metrics.json, `training.data`) records of the data built for M_t."""
    return {"kind": kind, "rows": int(len(table)), "problems": int(table["problem_id"].nunique()) if len(table) else 0,
            "from_iteration": t - 1}


def iteration_data(cfg: TrainConfig, paths: artifacts.RunPaths) -> pd.DataFrame:
    """D_t as trained on: iter_<t>/train_data.parquet (this stage's data, built by `build_data`), and with
    `data_mode: accumulate` also every earlier iteration's data of the same kind (SFT rows with SFT rows,
    pairs with pairs), oldest first. `source_iteration` is the iteration whose samples made a row."""
    t, kind = cfg.iteration, train_kind(cfg.paradigm, cfg.iteration)
    sources = [s for s in range(2, t + 1) if train_kind(cfg.paradigm, s) == kind] \
        if cfg.data_mode == "accumulate" else [t]
    tables = []
    for s in sources:
        src = paths.train_data(s)
        if not src.exists():
            raise TrainError(f"train stage of iteration {t} needs {src}; run the earlier stages")
        table = pd.read_parquet(src)
        missing = set(KIND_COLUMNS[kind]) - set(table.columns)
        if missing:
            raise TrainError(f"{src} lacks {sorted(missing)} for {kind.upper()} at iteration {t}: it was built "
                             f"for another paradigm; rerun train of iteration {s} (or use a fresh run name)")
        tables.append(table.assign(source_iteration=s - 1))
    table = pd.concat(tables, ignore_index=True)
    if table.empty:
        raise TrainError(f"{paths.train_data(t)} holds no training data: M{t - 1}'s samples were all correct or "
                         "all incorrect. Sample more per problem (sample.n_samples) or more problems.")
    return table


def save_trained(cfg: TrainConfig, trainer, tokenizer, out_dir: Path) -> list[dict]:
    """Write a trained model into `out_dir` (LoRA merged into its base; the adapter itself beside it as
    adapter.tmp when `merge_adapter` is off), from the main process only, remove the trainer's checkpoint
    folder, and return the training log's entries (those with a loss, and the final summary)."""
    if trainer.accelerator.is_main_process:
        model = trainer.accelerator.unwrap_model(trainer.model)
        if not cfg.merge_adapter and cfg.lora_r:
            model.save_pretrained(out_dir.with_name("adapter.tmp"))
            tokenizer.save_pretrained(out_dir.with_name("adapter.tmp"))
        merged = model.merge_and_unload() if cfg.lora_r else model
        merged.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)
    return [h for h in trainer.state.log_history if "loss" in h or "train_runtime" in h]


def fit(cfg: TrainConfig, paths: artifacts.RunPaths, out_dir: Path) -> dict:
    """Train M_t into `out_dir` (and its adapter beside it when kept); returns the training log. Every
    process of a multi-process launch runs this; only the main one writes."""
    t = cfg.iteration
    profiling.set_torch_threads(cfg.threads)
    if t == 1:  # gold SFT of M0 into M1
        from transformers import AutoTokenizer

        kind, base, adapter, ref = "gold", cfg.base_model, None, None
        table = gold_sft_rows(data.load_split(cfg.run_dir, "train"), AutoTokenizer.from_pretrained(base))
        if table.empty:
            raise TrainError(f"{paths.problems('train')}: no gold solutions to make M1 from (field 'solutions')")
        trainer, tokenizer = train_sft(cfg, Path(base), table, out_dir, epochs=cfg.gold_epochs)
    else:
        kind = train_kind(cfg.paradigm, t)
        table = iteration_data(cfg, paths)
        keep_adapter = not cfg.merge_adapter and t >= 3
        base = paths.model(1) if keep_adapter else paths.model(t - 1)
        adapter = paths.adapter(t - 1) if keep_adapter else None
        ref = paths.model(1) if kind == "dpo" and cfg.ref_model == "m1" and t >= 3 else None
        trainer, tokenizer = TRAINERS[kind](cfg, base, table, out_dir, adapter=adapter, ref=ref)
    history = save_trained(cfg, trainer, tokenizer, out_dir)
    return {"kind": kind, "base": str(base), "compute_s": round(getattr(trainer, "compute_seconds", 0.0), 3),
            "adapter": str(adapter) if adapter else None,
            # M(t-1) unless ref_model: m1: TRL disables a fresh adapter, or copies a loaded one (merge_adapter: false)
            "reference": str(ref or paths.model(t - 1)) if kind == "dpo" else None, "rows": len(table),
            "history": history, "summary": summarize_log(history)}


def _launch(cfg: TrainConfig, paths: artifacts.RunPaths, out_dir: Path) -> dict:
    """`fit` in `num_processes` processes through `accelerate launch`; the log comes back as JSON."""
    spec = out_dir.with_name("launch.json")
    spec.write_text(json.dumps({"cfg": asdict(cfg), "out_dir": str(out_dir)}))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(cfg.num_processes),
           "--num_machines", "1", "--mixed_precision", "bf16" if _bf16(cfg) else "no"]
    if not _cuda():
        cmd.append("--cpu")
    cmd += ["-m", "selfimprove.train", str(spec)]
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log = json.loads(out_dir.with_name("launch.log.json").read_text())
    spec.unlink()
    out_dir.with_name("launch.log.json").unlink()
    return log


def run(cfg: TrainConfig) -> list[Path]:
    """The train stage of iteration t: M_t into iter_<t>/model, its log into iter_<t>/train_log.json."""
    paths = artifacts.RunPaths(cfg.run_dir)
    t = cfg.iteration
    if t == 1 and not cfg.base_model:
        raise TrainError("the train stage of iteration 1 makes M1 from the recipe's `model` (gold SFT); the arith "
                         "organism builds its own M1")
    if t >= 2:
        if not paths.model(t - 1).exists():
            raise TrainError(f"train stage of iteration {t} needs {paths.model(t - 1)}; run the earlier stages")
        if not cfg.merge_adapter and t >= 3 and not paths.adapter(t - 1).exists():
            raise TrainError(f"merge_adapter: false trains on {paths.adapter(t - 1)}, which is missing")
        kind = train_kind(cfg.paradigm, t)
        fresh = build_data(cfg, paths)
        summary = data_summary(fresh, kind, t)
        print(f"train data for M{t} ({kind.upper()}): {summary['rows']} "
              f"{'DPO pairs' if kind == 'dpo' else 'SFT rows'} from {summary['problems']} problems of M{t - 1}'s "
              "graded train samples")
        if fresh.empty:
            raise TrainError(f"no training data for M{t}: M{t - 1}'s samples were all correct or all incorrect. "
                             "Sample more per problem (sample.n_samples) or more problems.")
        check_backend(cfg)
        artifacts.write_parquet(fresh, paths.train_data(t))
        iteration_data(cfg, paths)  # fails now, before a model loads, if earlier data (accumulate) are missing
    else:
        check_backend(cfg)
    tmp = paths.model(t).with_name("model.tmp")
    for d in (tmp, tmp.with_name("adapter.tmp")):
        shutil.rmtree(d, ignore_errors=True)
    t0 = time.time()
    log = _launch(cfg, paths, tmp) if cfg.num_processes > 1 else fit(cfg, paths, tmp)
    log.update(paradigm=cfg.paradigm, seconds=round(time.time() - t0, 2))
    if t >= 2:
        log["data"] = summary
    print(f"M{t} by {log['kind'].upper()} on {log['rows']} rows in {log['seconds']:.1f}s")
    for key, v in log["summary"].items():
        print(f"{key:>20}: {v['first']:9.4f} -> {v['last']:9.4f}")
    profiling.record(cfg.run_dir, t, "train", log.get("compute_s", 0.0), "trainer optimizer steps")
    written = []
    if tmp.with_name("adapter.tmp").exists():
        written.append(artifacts.replace_dir(tmp.with_name("adapter.tmp"), paths.adapter(t)))
    model_dir = artifacts.replace_dir(tmp, paths.model(t))
    data_file = [paths.train_data(t)] if t >= 2 else []
    return [model_dir, *written, *data_file, artifacts.write_json(log, paths.train_log(t))]


def _main(spec_path: str) -> None:
    """Entry point of each process of a multi-process launch (see `_launch`)."""
    from .config import build

    spec = json.loads(Path(spec_path).read_text())
    cfg = build(TrainConfig, spec["cfg"], spec_path)
    out_dir = Path(spec["out_dir"])
    log = fit(cfg, artifacts.RunPaths(cfg.run_dir), out_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        out_dir.with_name("launch.log.json").write_text(json.dumps(log))


if __name__ == "__main__":
    _main(sys.argv[1])
