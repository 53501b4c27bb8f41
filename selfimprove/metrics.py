"""Evaluate stage: the metrics of M_t, computed per problem and then averaged (STYLE.md H7).

Reads the graded iter_<t>/samples_<split>.parquet (and train_log.json of the training that made M_t);
writes iter_<t>/metrics.json. Notebook: notebooks/40_evaluate.ipynb. Nothing here grades: every function
reads the `correct` / `status` columns the verify stage wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import arith, artifacts
from .config import EvaluateConfig


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k), in the numerically stable
    product form of Chen et al. 2021 (human-eval's `estimate_pass_at_k`). Requires k <= n.

    >>> pass_at_k(2, 1, 1)
    0.5
    >>> round(pass_at_k(10, 3, 5), 4)
    0.9167
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def per_problem(df: pd.DataFrame, decoding: str) -> pd.DataFrame:
    """One row per problem: level, n responses, c correct."""
    sub = df[df["decoding"] == decoding]
    g = sub.groupby("problem_id", sort=True)
    return pd.DataFrame({"level": g["level"].first(), "n": g.size(), "c": g["correct"].sum().astype(int)})


def split_metrics(df: pd.DataFrame, ks: list[int]) -> dict:
    """Greedy pass@1 overall and per level, pass@k from the sampled responses, and answer/process rates."""
    out: dict = {}
    greedy = per_problem(df, "greedy")
    if len(greedy):
        acc = greedy["c"] / greedy["n"]
        out["pass@1"] = float(acc.mean())
        out["pass@1_by_level"] = {int(lv): float(a.mean()) for lv, a in acc.groupby(greedy["level"])} \
            if greedy["level"].notna().all() else {}
        out["n_problems"] = int(len(greedy))
    sampled = per_problem(df, "sample")
    if len(sampled):
        n_min = int(sampled["n"].min())
        out["pass@k"] = {int(k): float(np.mean([pass_at_k(n, c, k) for n, c in zip(sampled["n"], sampled["c"])]))
                         for k in ks if k <= n_min}
        out["sample_accuracy"] = float((sampled["c"] / sampled["n"]).mean())
    rows = df[df["decoding"] == ("sample" if len(sampled) else "greedy")]
    out["status_rates"] = {k: float(v) for k, v in rows["status"].value_counts(normalize=True).items()}
    out["finish_length_rate"] = float((rows["finish_reason"] == "length").mean())
    if df["task"].iloc[0] == "arith":
        right = rows[rows["correct"]]
        # Correct answers reached through false equations are luck (organism.md, 'Lucky answers').
        out["valid_equations_share_of_correct"] = float(right["response"].map(arith.equations_valid).mean()) \
            if len(right) else None
    return out


def coverage(df: pd.DataFrame) -> dict:
    """Two definitions, labelled apart (paper.md §3.2): `coverage_mean`, the mean per-sample correctness on
    the training prompts (the paper's likely definition), and `coverage_any`, the share of problems with at
    least one correct sample (the repeated-sampling definition of Large Language Monkeys)."""
    pp = per_problem(df, "sample")
    return {"coverage_mean": float((pp["c"] / pp["n"]).mean()), "coverage_any": float((pp["c"] > 0).mean()),
            "n_problems": int(len(pp))}


def evaluate(paths: artifacts.RunPaths, t: int, ks: list[int]) -> dict:
    """Every metric of M_t from the run directory."""
    out: dict = {"iteration": t}
    for split in ("test", "ood"):
        p = paths.samples(t, split)
        if p.exists():
            out[split] = split_metrics(pd.read_parquet(p), ks)
    if paths.samples(t, "train").exists():
        out["train"] = coverage(pd.read_parquet(paths.samples(t, "train")))
    if paths.train_data(t).exists():
        out["train_data_rows"] = int(len(pd.read_parquet(paths.train_data(t))))
    if paths.train_log(t).exists():
        log = json.loads(paths.train_log(t).read_text())
        out["training"] = {"paradigm": log.get("paradigm"), "rows": log.get("rows"), "summary": log.get("summary")}
    return out


def run(cfg: EvaluateConfig) -> list[Path]:
    paths = artifacts.RunPaths(cfg.run_dir)
    m = evaluate(paths, cfg.iteration, list(cfg.ks))
    for split in ("test", "ood"):
        if split in m:
            s = m[split]
            print(f"M{cfg.iteration} {split}: pass@1 {s['pass@1']:.3f}  by level "
                  + " ".join(f"L{k}={v:.2f}" for k, v in s["pass@1_by_level"].items())
                  + "  pass@k " + " ".join(f"@{k}={v:.3f}" for k, v in s.get("pass@k", {}).items()))
    return [artifacts.write_json(m, paths.metrics(cfg.iteration))]


def iteration_metrics(run_dir: str | Path) -> list[dict]:
    """Every iter_<t>/metrics.json of a run, in iteration order."""
    paths = sorted(Path(run_dir).glob("iter_*/metrics.json"), key=lambda p: int(p.parent.name[5:]))
    return [json.loads(p.read_text()) for p in paths]


def collect(run_dir: str | Path) -> pd.DataFrame:
    """Tidy long table (iteration, split, metric, level, k, value) of every evaluated iteration of a run.
    `metric` is `pass@1` (greedy; `level` set for the per-level rows) or `pass@k` (sampled, unbiased)."""
    rows = []
    for m in iteration_metrics(run_dir):
        t = m["iteration"]
        for split in ("test", "ood"):
            s = m.get(split)
            if not s:
                continue
            rows.append(dict(iteration=t, split=split, metric="pass@1", level=None, k=1, value=s["pass@1"]))
            for lv, v in s.get("pass@1_by_level", {}).items():
                rows.append(dict(iteration=t, split=split, metric="pass@1", level=int(lv), k=1, value=v))
            for k, v in s.get("pass@k", {}).items():
                rows.append(dict(iteration=t, split=split, metric="pass@k", level=None, k=int(k), value=v))
    return pd.DataFrame(rows, columns=["iteration", "split", "metric", "level", "k", "value"])
