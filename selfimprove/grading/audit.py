"""Audit the graders against the data, and a run's grading against itself (`selfimprove audit`).

Data audit (`audit_rows`): every gold answer must grade `correct` against itself, written the way a response
would give it (`#### n`, `\\boxed{...}`, the option letter), and every gold solution's text must grade
`correct` against its answer (GSM8K's and MATH's worked solutions, arith's solutions, CommonsenseQA's correct
option text, MBPP's reference code against its own asserts). Anything else is a grader or data bug
(lm-evaluation-harness issue 2212 found ~6% of MATH-Hard golds failing against themselves).

Rows are read in each dataset's Hugging Face format (field names as published), by the parsers the task
loaders use (selfimprove/tasks.py): gsm8k {question, answer with
`#### n`}; MATH / competition_math {problem, level, type, solution, optional answer}; commonsense_qa {id,
question, choices {label, text}, answerKey}; mbpp {task_id, text, code, test_list, test_setup_code}; arith in
the package's problem format {id, question, answer, solutions}.

Run audit (`run_audit`): the share of `timeout`, `no_answer` and `error` per iteration and split of a run; a sample
table that is missing, not graded or graded in part is left out and named (runs.Run.gaps).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..data import json_objects
from ..tasks import TASKS_BY_NAME, TaskDataError
from .pool import grade_batch

CHECKS = ("gold_vs_itself", "solution_vs_gold")

AuditDataError = TaskDataError  # a dataset row lacks a field its task needs; the message names the file and line


def checks_of(task: str, row: dict, where: str) -> list[tuple[str, str, str, object]]:
    """(row id, check, response, gold) pairs that must all grade `correct` for one dataset row: the task's audit
    hook (tasks.TASKS_BY_NAME), which reads rows by the task loaders' parsers, so the audit checks the data
    exactly as a run reads it."""
    if task not in TASKS_BY_NAME:
        raise AuditDataError(f"no audit for task {task!r}")
    return TASKS_BY_NAME[task].audit(row, where)


def read_rows(path: str | Path) -> list[tuple[str, dict]]:
    """(file:line, row) for each JSON line of a dataset file; bad JSON fails naming its line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    rows = [(f"{path.name}:{no}", row) for no, row in json_objects(path, AuditDataError)]
    if not rows:
        raise AuditDataError(f"{path}: no rows to audit (an empty file)")
    return rows


def audit_rows(task: str, rows: list[tuple[str, dict]], timeout_s: float = 10.0, workers: int = 2) -> pd.DataFrame:
    """Every check of every row with its grade; the audit passes when every `status` is `correct`."""
    checks = [c for where, row in rows for c in checks_of(task, row, where)]
    grades = grade_batch(task, [(resp, gold) for _, _, resp, gold in checks], timeout_s=timeout_s, workers=workers)
    return pd.DataFrame({"row": [c[0] for c in checks], "check": [c[1] for c in checks],
                         "status": [g.status for g in grades], "extracted": [g.extracted for g in grades],
                         "detail": [g.detail for g in grades]})


def run_audit(run_dir: str | Path) -> tuple[pd.DataFrame, list]:
    """(rates, gaps). rates: per iteration and split of a run, the responses graded and the rates of timeout,
    no_answer and error, from every graded table that grades its whole sample table. gaps: the sample tables
    left out, each named (runs.Gap: missing, not graded, or graded in part; `expected` when the run recorded
    it, so that it is lost rather than not made yet). A table that cannot be read is an AuditDataError."""
    from ..runs import Run, RunError

    rows = []
    run = Run(run_dir)
    try:
        gaps = run.gaps()
        left_out = {(g.iteration, g.split) for g in gaps}
        for t, split, _ in run.graded_files():
            if (t, split) in left_out:
                continue
            df = run.grades(t, split, columns=["status"])
            n = len(df)
            rows.append({"iteration": t, "split": split,
                         "responses": n, **{s: round(float((df["status"] == s).mean()), 4) if n else 0.0
                                            for s in ("timeout", "no_answer", "error")}})
    except RunError as e:  # a file cut short
        raise AuditDataError(str(e)) from None
    if not rows:
        raise FileNotFoundError(f"no graded sample tables (iter_*/graded_*.parquet) under {run_dir}"
                                + (f"; {gaps[0].problem}" if gaps else ""))
    return pd.DataFrame(rows).sort_values(["iteration", "split"]).reset_index(drop=True), gaps


def run_rates(run_dir: str | Path) -> pd.DataFrame:
    """Per iteration and split of a run: responses graded and the rates of timeout, no_answer and error (the
    rates of run_audit; the tables it leaves out are not there)."""
    return run_audit(run_dir)[0]
