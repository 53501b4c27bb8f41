"""Verify stage: grade every response against its gold answer, then build the data that trains M(t+1).

Reads iter_<t>/samples_<split>.parquet and the run's problems; adds `extracted`, `status` and `correct` to
each sample table (same rows, columns added), and, while t < T, writes iter_<t>/train_data.parquet (DPO
pairs, see pairs.py). Notebook: notebooks/30_verify.ipynb. The evaluate stage only reads these columns;
nothing downstream grades again (STYLE.md H6).

Grading is `grading.grade_batch`: worker processes with a hard wall-clock limit per item (VerifyConfig
`timeout_s`, `workers`, `memory_mb`); the statuses and each task's rules are in selfimprove/grading/.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import artifacts, data, pairs
from .config import VerifyConfig
from .grading import GRADERS, STATUSES, grade_batch

__all__ = ["GRADERS", "STATUSES", "grade_table", "run"]


def grade_table(df: pd.DataFrame, problems: list[dict], task: str, timeout_s: float = 10.0, workers: int = 2,
                memory_mb: int = 2048) -> pd.DataFrame:
    """The sample table with `extracted`, `status` and `correct` (re)computed from `response`.

    `problems` are the run's problem rows; their `answer` is the gold (MBPP rows carry `tests` and `setup`,
    CommonsenseQA rows may carry the dataset's `choices`).
    """
    gold = {p["id"]: p for p in problems}
    unknown = set(df["problem_id"]) - set(gold)
    if unknown:
        raise data.DataError(f"{len(unknown)} sampled problem ids are not in the problem file, e.g. {min(unknown)}")
    if task not in GRADERS:
        raise data.DataError(f"no grader for task {task!r}; graders: {', '.join(GRADERS)}")
    if task == "mbpp":
        golds = {pid: {"tests": p["tests"], "setup": p.get("setup", "")} for pid, p in gold.items()}
    elif task == "csqa":  # with the options, a response giving an option's text is read too
        golds = {pid: {"answer": p["answer"], "choices": p["choices"]} if p.get("choices") else p["answer"]
                 for pid, p in gold.items()}
    else:
        golds = {pid: p["answer"] for pid, p in gold.items()}
    items = [(resp, golds[pid]) for pid, resp in zip(df["problem_id"], df["response"])]
    results = grade_batch(task, items, timeout_s=timeout_s, workers=workers, memory_mb=memory_mb)
    out = df.drop(columns=[c for c in ("extracted", "status", "correct") if c in df.columns])
    out["extracted"] = [r.extracted for r in results]
    out["status"] = [r.status for r in results]
    out["correct"] = out["status"] == "correct"
    return out


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
            table = pairs.make_pairs(df, rule=cfg.pairing, max_pairs=cfg.max_pairs_per_problem,
                                     seed=cfg.seed * 1000 + cfg.iteration)
            print(f"train data for M{cfg.iteration + 1}: {len(table)} DPO pairs from "
                  f"{table['problem_id'].nunique() if len(table) else 0} problems")
            written.append(artifacts.write_parquet(table, paths.train_data(cfg.iteration)))
    return written
