"""Verify stage: grade every response of M_t against its gold answer. It grades and does nothing else.

Reads iter_<t>/samples_<split>.parquet (left exactly as the sample stage wrote it, so its manifest hash
stays valid) and the run's problems; writes iter_<t>/graded_<split>.parquet beside each sample table: the
row keys (runs.GRADE_KEYS: iteration, split, problem_id, decoding, sample_idx) and `extracted`, `status`,
`correct` (runs.GRADE_COLUMNS). Readers join the two with runs.Run.graded. Notebook: notebooks/30_verify.ipynb.
The evaluate stage (metrics.py) and the train stage of M(t+1) (train.py, which builds its own SFT rows or
DPO pairs from the graded train samples with pairs.py) read these grades; nothing downstream grades again.

Grading is `grading.grade_batch`: worker processes with a hard wall-clock limit per item (VerifyConfig
`timeout_s`, `workers`, `memory_mb`); the statuses and each task's rules are in selfimprove/grading/.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import artifacts, data
from .config import SPLITS, VerifyConfig
from .grading import GRADERS, STATUSES, GoldError, grade_batch
from .runs import GRADE_COLUMNS, GRADE_KEYS
from .tasks import TASKS_BY_NAME, gold_of

__all__ = ["GRADERS", "STATUSES", "grade_table", "grades_of", "run"]


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


def grades_of(graded: pd.DataFrame) -> pd.DataFrame:
    """The graded table written beside the samples: runs.GRADE_KEYS and runs.GRADE_COLUMNS of each row."""
    return graded[GRADE_KEYS + GRADE_COLUMNS].reset_index(drop=True)


def run(cfg: VerifyConfig) -> list[Path]:
    """Grade every sample table of iteration t into iter_<t>/graded_<split>.parquet; returns those paths."""
    paths = artifacts.RunPaths(cfg.run_dir)
    written = []
    for split in SPLITS:
        src = paths.samples(cfg.iteration, split)
        if not src.exists():
            continue
        df = grade_table(pd.read_parquet(src), data.load_split(cfg.run_dir, split), cfg.task,
                         timeout_s=cfg.timeout_s, workers=cfg.workers, memory_mb=cfg.memory_mb)
        counts = df["status"].value_counts().to_dict()
        print(f"{split}: {len(df)} responses graded: {counts}")
        written.append(artifacts.write_parquet(grades_of(df), paths.graded(cfg.iteration, split)))
    return written
