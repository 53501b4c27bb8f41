"""Verify stage: grade every response against its gold answer, then build the data that trains M(t+1).

Reads iter_<t>/samples_<split>.parquet and the run's problems; adds `extracted`, `status` and `correct` to
each sample table (same rows, columns added), and, while t < T, writes iter_<t>/train_data.parquet (DPO
pairs or SFT rows, as the paradigm's F_(t+1) needs; see pairs.py). Notebook: notebooks/30_verify.ipynb. The
evaluate stage only reads these columns; nothing downstream grades again.

Grading is `grading.grade_batch`: worker processes with a hard wall-clock limit per item (VerifyConfig
`timeout_s`, `workers`, `memory_mb`); the statuses and each task's rules are in selfimprove/grading/.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import artifacts, data, pairs
from .config import VerifyConfig, train_kind
from .grading import GRADERS, STATUSES, GoldError, grade_batch
from .tasks import TASKS_BY_NAME, gold_of

__all__ = ["GRADERS", "STATUSES", "grade_table", "run"]


def grade_table(df: pd.DataFrame, problems: list[dict], task: str, timeout_s: float = 10.0, workers: int = 2,
                memory_mb: int = 2048) -> pd.DataFrame:
    """The sample table with `extracted`, `status` and `correct` (re)computed from `response`.

    `problems` are the run's problem rows; `tasks.gold_of` reads each one's gold (the `answer`; MBPP rows'
    `tests` and `setup`, with CommonsenseQA rows the dataset's `choices` too).
    A problem row's own `task` (GSM8K's OOD split holds MATH problems) picks its grader; else `task`.
    """
    gold = {p["id"]: p for p in problems}
    unknown = set(df["problem_id"]) - set(gold)
    if unknown:
        raise data.DataError(f"{len(unknown)} sampled problem ids are not in the problem file, e.g. {min(unknown)}")
    row_task = {pid: p.get("task") or task for pid, p in gold.items()}
    missing = sorted(set(row_task.values()) - set(TASKS_BY_NAME))
    if missing:
        raise data.DataError(f"no grader for task {missing[0]!r}; graders: {', '.join(GRADERS)}")
    golds = {}
    for pid in set(df["problem_id"]):
        try:
            golds[pid] = gold_of(row_task[pid], gold[pid])
        except GoldError as e:
            raise data.DataError(f"problem {pid!r}: {e}") from None

    responses, pids = df["response"].tolist(), df["problem_id"].tolist()  # lists: pandas' per-cell access is slow
    tasks = [row_task[pid] for pid in pids]
    results: list = [None] * len(df)
    for t in sorted(set(tasks)):
        idx = [i for i, x in enumerate(tasks) if x == t]
        items = [(responses[i], golds[pids[i]]) for i in idx]
        for i, r in zip(idx, grade_batch(t, items, timeout_s=timeout_s, workers=workers, memory_mb=memory_mb)):
            results[i] = r
    out = df.drop(columns=[c for c in ("extracted", "status", "correct") if c in df.columns])
    out["extracted"] = [r.extracted for r in results]
    out["status"] = [r.status for r in results]
    out["correct"] = out["status"] == "correct"
    return out


def build_train_data(graded: pd.DataFrame, cfg: VerifyConfig) -> pd.DataFrame:
    """The data for M(t+1): DPO pairs or SFT rows, as the paradigm's F_(t+1) needs (config.train_kind)."""
    seed = cfg.seed * 1000 + cfg.iteration
    if train_kind(cfg.paradigm, cfg.iteration + 1) == "dpo":
        return pairs.make_pairs(graded, rule=cfg.pairing, max_pairs=cfg.max_pairs_per_problem, seed=seed)
    return pairs.make_sft_rows(graded, max_per_problem=cfg.sft_max_per_problem, dedup=cfg.sft_dedup, seed=seed)


def run(cfg: VerifyConfig) -> list[Path]:
    paths = artifacts.RunPaths(cfg.run_dir)
    written = []
    for split in ("train", "test", "ood"):
        src = paths.samples(cfg.iteration, split)
        if not src.exists():
            continue
        df = grade_table(pd.read_parquet(src), data.load_split(cfg.run_dir, split), cfg.task,
                         timeout_s=cfg.timeout_s, workers=cfg.workers, memory_mb=cfg.memory_mb)
        counts = df["status"].value_counts().to_dict()
        print(f"{split}: {len(df)} responses graded: {counts}")
        written.append(artifacts.write_parquet(df, src))
        if split == "train" and cfg.iteration < cfg.iterations:
            table = build_train_data(df, cfg)
            kind = train_kind(cfg.paradigm, cfg.iteration + 1)
            print(f"train data for M{cfg.iteration + 1} ({kind.upper()}): {len(table)} "
                  f"{'DPO pairs' if kind == 'dpo' else 'SFT rows'} from "
                  f"{table['problem_id'].nunique() if len(table) else 0} problems")
            written.append(artifacts.write_parquet(table, paths.train_data(cfg.iteration)))
    return written
