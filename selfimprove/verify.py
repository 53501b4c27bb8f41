"""Verify stage: grade every response against its gold answer, then build the data that trains M(t+1).

Reads iter_<t>/samples_<split>.parquet and the run's problems; adds `extracted`, `status` and `correct` to
each sample table (same rows, columns added), and, while t < T, writes iter_<t>/train_data.parquet (DPO
pairs, see pairs.py). Notebook: notebooks/30_verify.ipynb. The evaluate stage only reads these columns;
nothing downstream grades again (STYLE.md H6).

Statuses: `correct`, `incorrect`, `no_answer` (no final answer could be read), `timeout` and `error` (the
grader failed on the item; reserved for graders that run code or heavy parsing).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import arith, artifacts, data, pairs
from .config import VerifyConfig

STATUSES = ("correct", "incorrect", "no_answer", "timeout", "error")


def grade_arith(response: str, gold: str) -> tuple[str, str | None]:
    """Arith grader: the integer after the last `####`, compared numerically with the gold answer.

    >>> grade_arith("3 * 4 = 12\\n#### 12", "12")
    ('correct', '12')
    >>> grade_arith("3 * 4 = 12", "12")
    ('no_answer', None)
    """
    got = arith.extract_answer(response)
    if got is None:
        return "no_answer", None
    return ("correct" if int(got) == int(gold) else "incorrect"), got


GRADERS = {"arith": grade_arith}


def grade_table(df: pd.DataFrame, problems: list[dict], task: str) -> pd.DataFrame:
    """The sample table with `extracted`, `status` and `correct` (re)computed from `response`."""
    gold = {p["id"]: p["answer"] for p in problems}
    unknown = set(df["problem_id"]) - set(gold)
    if unknown:
        raise data.DataError(f"{len(unknown)} sampled problem ids are not in the problem file, e.g. {min(unknown)}")
    grader = GRADERS[task]
    results = []
    for pid, resp in zip(df["problem_id"], df["response"]):
        try:
            results.append(grader(resp, gold[pid]))
        except Exception as e:  # a grader bug must not lose the batch; the row says what happened
            results.append(("error", f"{type(e).__name__}: {e}"[:200]))
    out = df.drop(columns=[c for c in ("extracted", "status", "correct") if c in df.columns])
    out["extracted"] = [r[1] for r in results]
    out["status"] = [r[0] for r in results]
    out["correct"] = out["status"] == "correct"
    return out


def run(cfg: VerifyConfig) -> list[Path]:
    paths = artifacts.RunPaths(cfg.run_dir)
    written = []
    for split in ("train", "test", "ood"):
        src = paths.samples(cfg.iteration, split)
        if not src.exists():
            continue
        df = grade_table(pd.read_parquet(src), data.load_split(cfg.run_dir, split), cfg.task)
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
