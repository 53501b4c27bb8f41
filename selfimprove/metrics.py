"""Evaluate stage: every metric of M_t, computed per problem and then averaged, with 95%
bootstrap intervals over problems.

Reads M_t's graded sample tables (iter_<t>/samples_<split>.parquet joined with the verify stage's
iter_<t>/graded_<split>.parquet by runs.Run.graded; iter_1's too, for the improvement sets) and
train_log.json of the training that made M_t (with the counts of its data). Writes iter_<t>/metrics.json
(a readable summary plus the tidy rows) and iter_<t>/per_problem.parquet (one row per test/OOD problem:
level, greedy correctness, sample counts and every diversity value; the verdict reads it). Notebook:
notebooks/40_evaluate.ipynb; `selfimprove metrics <run_dir>` recomputes every iteration with the same
functions and writes the run's tidy table and verdict. Nothing here grades: every function reads the
`correct` / `status` columns the verify stage wrote. Nothing here looks ahead: what M_t's samples make for
M(t+1) is recorded by M(t+1)'s train stage.

Per split (test, ood): greedy pass@1 overall and per level, unbiased pass@k from the sampled responses,
group disparity, diversity of correct and of incorrect responses (diversity.py), and for t >= 2 the
improvement sets against M1 (improvement.py). On the train split: correct-answer coverage, both ways. Beyond
the paper (beyond_metrics.py, docs/beyond.md), after those rows: pass@k curves and their crossover against M1,
the support ledger, cover@tau, the guessing baseline, answer entropy, and on the test split token entropy and
KL(M_t || M1) from scoring M_t's samples with M_t and M1 (iter_<t>/model, iter_1/model). The deep evaluation's
rows (deep.py, deep_metrics.json) join the run's tidy table after the iterations'.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from . import artifacts, beyond_metrics, diversity, improvement, profiling, tasks
from .config import EvaluateConfig
from .estimators import bootstrap_ci, disparity, paradigm_advice, pass_at_k, pass_at_k_per_problem
from .runs import EVAL_SPLITS, RERUN, RESUME, Run, RunError, greedy_correct

__all__ = ["pass_at_k", "per_problem", "per_problem_table", "split_metrics", "coverage", "evaluate", "run",
           "collect", "iteration_metrics", "write_table", "TABLE_COLUMNS", "EVAL_SPLITS", "MetricsError"]

TABLE_COLUMNS = ["iteration", "split", "metric", "subset", "k", "value", "ci_low", "ci_high", "n"]

# A run's files cannot be evaluated; the message names the file and what is wrong (runs.RunError: reading a
# run raises it too).
MetricsError = RunError


def _row(metric: str, subset: str, k, value, ci=(None, None), n: int | None = None) -> dict:
    return dict(metric=metric, subset=subset, k=k, value=None if value is None else float(value),
                ci_low=ci[0], ci_high=ci[1], n=n)


def per_problem(df: pd.DataFrame, decoding: str) -> pd.DataFrame:
    """One row per problem: level, n responses, c correct."""
    sub = df[df["decoding"] == decoding]
    g = sub.groupby("problem_id", sort=True)
    return pd.DataFrame({"level": g["level"].first(), "n": g.size(), "c": g["correct"].sum().astype(int)})


def per_problem_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per problem of a split: level, greedy_correct (NaN without a greedy response), and n / c, the
    sampled responses and how many are correct (0 / 0 without samples)."""
    greedy, sampled = greedy_correct(df), per_problem(df, "sample")
    ids = greedy.index.union(sampled.index)
    out = pd.DataFrame(index=ids.rename("problem_id"))
    out["level"] = df.groupby("problem_id")["level"].first().reindex(ids)
    out["greedy_correct"] = greedy.reindex(ids)
    out["n"] = sampled["n"].reindex(ids).fillna(0).astype(int)
    out["c"] = sampled["c"].reindex(ids).fillna(0).astype(int)
    return out


def split_metrics(df: pd.DataFrame, ks: list[int], n_boot: int = 0, seed: int = 0) -> dict:
    """Greedy pass@1 overall and per level, pass@k from the sampled responses, group disparity, answer and
    process rates; `rows` holds the same numbers as tidy rows with 95% intervals (none when n_boot = 0)."""
    out: dict = {}
    rows: list[dict] = []
    pp = per_problem_table(df)
    greedy = pp[pp["greedy_correct"].notna()]
    # Levels and group disparity over the problems that have a level (MATH's "Level ?" loads as None).
    leveled = greedy[greedy["level"].notna()]
    if len(greedy):
        acc = greedy["greedy_correct"]
        out["pass@1"] = float(acc.mean())
        out["n_problems"] = int(len(greedy))
        rows.append(_row("pass@1", "all", 1, acc.mean(), bootstrap_ci(acc, n_boot, seed), len(acc)))
        out["pass@1_by_level"] = {}
        if len(leveled):
            acc_lv, level = leveled["greedy_correct"], leveled["level"].astype(int)
            for lv, a in acc_lv.groupby(level):
                out["pass@1_by_level"][int(lv)] = float(a.mean())
                rows.append(_row("pass@1", f"L{int(lv)}", 1, a.mean(), bootstrap_ci(a, n_boot, seed), len(a)))
            gd = disparity(acc_lv.to_numpy(), level.to_numpy(), n_boot, seed)
            if gd is not None:
                out["group_disparity"] = {"value": gd["value"], "levels": gd["levels"], "ci": list(gd["ci"])}
                rows.append(_row("group_disparity", f"L{gd['levels'][0]}-L{gd['levels'][1]}", None, gd["value"],
                                 gd["ci"], len(acc_lv)))
    sampled = pp[pp["n"] > 0]
    if len(sampled):
        n_min = int(sampled["n"].min())
        out["pass@k"] = {}
        for k in ks:
            if k <= n_min:
                v = pass_at_k_per_problem(sampled["n"], sampled["c"], k)
                out["pass@k"][int(k)] = float(v.mean())
                rows.append(_row("pass@k", "all", int(k), v.mean(), bootstrap_ci(v, n_boot, seed), len(v)))
        out["sample_accuracy"] = float((sampled["c"] / sampled["n"]).mean())
    resp = df[df["decoding"] == ("sample" if len(sampled) else "greedy")]
    out["status_rates"] = {k: float(v) for k, v in resp["status"].value_counts(normalize=True).items()}
    out["finish_length_rate"] = float((resp["finish_reason"] == "length").mean())
    task = df["task"].iloc[0]
    check = tasks.task_of(task).process_check if task in tasks.TASKS_BY_NAME else None
    if check is not None:  # arith: correct answers through false equations are luck (docs/organism.md)
        right = resp[resp["correct"]]
        out["valid_equations_share_of_correct"] = float(right["response"].map(check).mean()) if len(right) else None
        if len(right) and right["level"].notna().all():
            valid = right["response"].map(check)
            out["valid_equations_share_of_correct_by_level"] = {
                int(lv): float(v.mean()) for lv, v in valid.groupby(right["level"].astype(int))}
    out["rows"] = rows
    return out


def coverage(df: pd.DataFrame) -> dict:
    """Correct-answer coverage of the sampled responses, two definitions labelled apart (paper §4.2, Fig. 2):
    `coverage_mean`, the mean per-sample correctness on the training prompts (the paper's likely
    definition, the one its paradigm advice uses), and `coverage_any`, the share of problems with at least
    one correct sample (the repeated-sampling definition of Large Language Monkeys)."""
    pp = per_problem(df, "sample")
    if not len(pp):
        raise MetricsError("coverage needs sampled responses (decoding == 'sample'); the table has none")
    return {"coverage_mean": float((pp["c"] / pp["n"]).mean()), "coverage_any": float((pp["c"] > 0).mean()),
            "n_problems": int(len(pp))}


def diversity_rows(div: pd.DataFrame, per_problem_n: int, n_boot: int, seed: int) -> tuple[dict, list[dict]]:
    """Means over problems (with intervals and the number of problems that have a value) of every column
    `<metric>:<subset>` of a diversity.problem_diversity table."""
    summary, rows = {}, []
    for col in div.columns:
        metric, subset = col.split(":")
        v = div[col].dropna().to_numpy()
        mean = float(v.mean()) if len(v) else None
        summary[col] = {"value": mean, "n_problems": int(len(v))}
        rows.append(_row(metric, subset, per_problem_n or None, mean, bootstrap_ci(v, n_boot, seed), len(v)))
    return summary, rows


def _read(paths: artifacts.RunPaths, t: int, split: str, what: str) -> pd.DataFrame:
    """M_t's graded sample table on `split` (runs.Run.graded: the sample table joined with its grades)."""
    try:
        df = Run(paths.root).graded(t, split)
    except (FileNotFoundError, RunError) as e:
        raise MetricsError(f"{what}: {e}") from None
    need = {"problem_id", "level", "decoding", "sample_idx", "response", "correct", "status", "task",
            "finish_reason"}
    if not need <= set(df.columns):
        raise MetricsError(f"{paths.samples(t, split)}: {what} lacks column(s) {sorted(need - set(df.columns))}")
    if not len(df):
        raise MetricsError(f"{paths.samples(t, split)}: {what} has no rows")
    if df["correct"].isna().any():
        raise MetricsError(f"{paths.graded(t, split)}: {what} has {int(df['correct'].isna().sum())} row(s) with no "
                           "'correct' value")
    return df


def _split_task(paths: artifacts.RunPaths, split: str, df: pd.DataFrame) -> str:
    """The task whose answers a split's problems have: its problem rows' own `task` (GSM8K's OOD split holds MATH
    problems), else the sample table's."""
    problems = paths.problems(split)
    if problems.exists():
        with open(problems, encoding="utf-8") as fh:
            first = fh.readline()
        try:
            row = json.loads(first) if first.strip() else {}
        except json.JSONDecodeError:
            row = {}
        if isinstance(row, dict) and isinstance(row.get("task"), str) and row["task"]:
            return row["task"]
    return str(df["task"].iloc[0])


def evaluate(paths: artifacts.RunPaths, t: int, cfg: EvaluateConfig,
             embedder: diversity.Embedder | None = None, clock: dict | None = None) -> tuple[dict, pd.DataFrame]:
    """Every metric of M_t from the run directory: (metrics.json content, per-problem table). `clock`, when
    given, receives `score_s`: the seconds spent scoring responses with the models (no time goes into
    metrics.json, which a rerun must reproduce)."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("run_dir", "iteration")}
    out: dict = {"iteration": t, "evaluate": settings}
    rows: list[dict] = []
    tables = []
    if embedder is None and cfg.embedding_model:
        embedder = diversity.Embedder(cfg.embedding_model, cfg.cache_dir)
    graded_test = None
    set_samples = int(beyond_metrics.run_sample_setting(paths.root, "n_eval_samples"))  # split_rows
    for split in EVAL_SPLITS:
        p = paths.samples(t, split)
        if not p.exists():
            continue
        df = _read(paths, t, split, f"the {split} sample table of M{t}")
        s = split_metrics(df, list(cfg.ks), cfg.bootstrap, cfg.seed)
        split_rows = s.pop("rows")
        pp = per_problem_table(df)
        div = diversity.problem_diversity(df, cfg.diversity_per_problem, cfg.task,
                                          embedder if split in cfg.embedding_splits else None,
                                          cfg.embedding_problems)
        s["diversity"], div_rows = diversity_rows(div, cfg.diversity_per_problem, cfg.bootstrap, cfg.seed)
        split_rows += div_rows
        m1_path = paths.samples(1, split)
        m1_graded = None
        if t >= 2 and m1_path.exists():
            m1_graded = _read(paths, 1, split, f"the {split} sample table of M1")
            m1 = per_problem_table(m1_graded)
            imp = improvement.improvement(m1, pp, cfg.bootstrap, cfg.seed)
            split_rows += imp.pop("rows")
            s["improvement"] = imp
        # Beyond the paper (beyond_metrics.py): new metric names after the paper's rows, which stay as they were
        options = beyond_metrics.answer_options(_split_task(paths, split, df), cfg.guess_options)
        s["beyond"], beyond_rows = beyond_metrics.split_rows(df, m1_graded, cfg, options, set_samples)
        split_rows += beyond_rows
        if split == "test":
            graded_test = df
        out[split] = s
        rows += [dict(split=split, **r) for r in split_rows]
        tables.append(pp.join(div).reset_index().assign(split=split))
    if cfg.score_models and graded_test is not None:  # token entropy and KL(M_t || M1) on M_t's test samples
        recorded = None  # what this iteration recorded, kept where the model folders are gone
        if paths.metrics(t).exists():
            try:
                recorded = json.loads(paths.metrics(t).read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                recorded = None
        out["test"]["beyond"]["scores"], score_rows, seconds = beyond_metrics.model_rows(
            graded_test, paths.model(t), paths.model(1) if t >= 2 else None, cfg,
            beyond_metrics.score_temperature(paths.root, cfg), recorded)
        rows += [dict(split="test", **r) for r in score_rows]
        if clock is not None:
            clock["score_s"] = clock.get("score_s", 0.0) + seconds
    if paths.samples(t, "train").exists():
        out["train"] = coverage(_read(paths, t, "train", f"the train sample table of M{t}"))
        rows += [dict(split="train", **_row(name, "all", None, out["train"][name], n=out["train"]["n_problems"]))
                 for name in ("coverage_mean", "coverage_any")]
        if t == 1:
            cov = out["train"]["coverage_mean"]
            out["paradigm_advice"] = {
                "coverage_mean": cov, "advice": paradigm_advice(cov),
                "rule": "paper §4.2 (Fig. 2): M1 coverage > 0.5 -> iterative DPO or SFT-DPO, otherwise iterative SFT"}
    if paths.train_log(t).exists():  # how M_t was made; `data`: D_t as its train stage built it (t >= 2)
        log = json.loads(paths.train_log(t).read_text())
        out["training"] = {"paradigm": log.get("paradigm"), "kind": log.get("kind", "dpo"), "rows": log.get("rows"),
                           "summary": log.get("summary"), **({"data": log["data"]} if "data" in log else {})}
    out["table"] = rows
    per_problem_all = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return out, per_problem_all


def run(cfg: EvaluateConfig) -> list[Path]:
    """The evaluate stage: metrics.json and per_problem.parquet of M_t."""
    paths = artifacts.RunPaths(cfg.run_dir)
    embedder = diversity.Embedder(cfg.embedding_model, cfg.cache_dir) if cfg.embedding_model else None
    t0 = time.perf_counter()
    clock: dict = {}
    m, pp = evaluate(paths, cfg.iteration, cfg, embedder, clock)
    seconds = time.perf_counter() - t0
    for split in EVAL_SPLITS:
        if split in m:
            s = m[split]
            print(f"M{cfg.iteration} {split}: pass@1 {s['pass@1']:.3f}  by level "
                  + " ".join(f"L{k}={v:.2f}" for k, v in s["pass@1_by_level"].items())
                  + "  pass@k " + " ".join(f"@{k}={v:.3f}" for k, v in s.get("pass@k", {}).items()))
    if "paradigm_advice" in m:
        a = m["paradigm_advice"]
        print(f"paradigm advice: M1 coverage_mean {a['coverage_mean']:.3f} -> {a['advice']} ({a['rule']})")
    if embedder is not None:
        st = embedder.stats
        print(f"embeddings: {st['texts']} texts, {st['computed']} computed ({st['encode_s']:.1f}s encoding, "
              f"{st['load_s']:.1f}s loading the model), the rest from the cache; evaluate took {seconds:.1f}s")
    scores = m.get("test", {}).get("beyond", {}).get("scores", {})
    if "token_entropy" in scores:
        kl = scores.get("kl_from_m1", {}).get("per_response", {}).get("value")
        print(f"M{cfg.iteration} test: token entropy {scores['token_entropy']['value']:.3f} nats"
              + ("" if kl is None else f", KL(M{cfg.iteration} || M1) {kl:.3f} nats per response")
              + f" ({scores['responses']} responses scored in {clock.get('score_s', 0.0):.1f}s)")
    profiling.record(cfg.run_dir, cfg.iteration, "evaluate",
                     (embedder.stats["encode_s"] if embedder else 0.0) + clock.get("score_s", 0.0),
                     "embedding model encode calls and scoring the sampled responses with M_t and M1",
                     score_s=round(clock.get("score_s", 0.0), 3))
    return [artifacts.write_json(m, paths.metrics(cfg.iteration)),
            artifacts.write_parquet(pp, paths.per_problem(cfg.iteration))]


def evaluable(run: Run, last: int, log=print) -> list[int]:
    """The iterations t <= `last` whose sample tables are all there and graded (Run.gaps), checked before any
    is evaluated (issue 20: `selfimprove metrics` skipped an iteration without its test samples in silence,
    and its old metrics.json stayed in the tidy table). A table the run recorded but lacks (lost, cut short,
    not graded after its stage was recorded as done) is a MetricsError naming the iteration and the file; an
    iteration an unfinished run has not sampled or graded yet is left out, each table logged as a note."""
    gaps = run.gaps()
    if lost := [g for g in gaps if g.expected]:
        more = f" ({len(lost) - 1} more such table(s))" if len(lost) > 1 else ""
        raise MetricsError(f"{lost[0].problem}{more}; {RERUN}; nothing was recomputed")
    for g in gaps:
        log(f"note: M{g.iteration} left out: {g.problem}; {RESUME}")
    left_out = {g.iteration for g in gaps}
    iterations = [t for t in run.iterations("samples_test.parquet") if t <= last and t not in left_out]
    if not iterations:
        raise MetricsError(f"{run.root}: no iteration is sampled and graded yet"
                           + (f" ({gaps[0].problem}); {RESUME}" if gaps else " (no iter_<t>/samples_test.parquet)"))
    return iterations


def recompute(run_dir: str | Path, overrides: dict | None = None, log=print) -> list[Path]:
    """`selfimprove metrics`: every iteration's metrics.json and per_problem.parquet again from its sample
    tables, with the evaluate settings the run recorded (its manifest) over which `overrides` (evaluate
    fields) go, and the deep evaluation's deep_metrics.json from its tables where the run has one; then the
    run's tidy table (write_table). The same functions as the evaluate stage. Every iteration's tables are
    checked before the first is evaluated (evaluable)."""
    from .config import RunConfig, build

    paths = artifacts.RunPaths(run_dir)
    recorded = artifacts.Manifest.load(paths).data["config"]
    cfg = build(RunConfig, {**recorded, "evaluate": {**recorded.get("evaluate", {}), **(overrides or {})}},
                f"run {paths.root} (its manifest config)")
    written: list[Path] = []
    embedder = None
    # Under the run's lock (not while `selfimprove run` writes it); each evaluate stage's new outputs are recorded
    # in the manifest, so that a resumed run keeps them rather than computing them again (stagecache).
    with artifacts.run_lock(paths.root):
        iterations = evaluable(Run(paths.root), cfg.iterations, log)
        # the deep evaluation's record and tables, read before any iteration is evaluated: a damaged one is named
        # with nothing recomputed
        roles = {r: int(t) for r, t in Run(paths.root).deep_metrics().get("roles", {}).items()}
        deep_tables = beyond_metrics.read_deep(paths, roles) if roles else None
        manifest = artifacts.Manifest.load(paths)
        for t in iterations:
            stage_cfg = cfg.stage("evaluate", t, paths.root)
            if embedder is None and stage_cfg.embedding_model:
                embedder = diversity.Embedder(stage_cfg.embedding_model, stage_cfg.cache_dir)
            t0 = time.perf_counter()
            m, pp = evaluate(paths, t, stage_cfg, embedder)
            outputs = [artifacts.write_json(m, paths.metrics(t)), artifacts.write_parquet(pp, paths.per_problem(t))]
            written += outputs
            if manifest.data["stages"].get(f"{t}/evaluate", {}).get("state") == "done":
                manifest.record(f"{t}/evaluate", outputs, paths.root, recomputed_with=dict(overrides or {}))
            log(f"M{t}: metrics in {time.perf_counter() - t0:.1f}s -> {paths.metrics(t)}")
        if roles:  # the deep evaluation's comparisons again, from its tables, with these settings
            written.append(beyond_metrics.write_deep(paths, cfg, roles, deep_tables))
            log(f"deep evaluation: comparisons -> {paths.deep_metrics}")
    return written + write_table(run_dir)


def iteration_metrics(run_dir: str | Path) -> list[dict]:
    """Every iter_<t>/metrics.json of a run, in iteration order (runs.Run.all_metrics)."""
    return Run(run_dir).all_metrics()


def collect(run_dir: str | Path) -> pd.DataFrame:
    """The run's tidy long table, one row per number: (iteration, split, metric, subset, k, value, ci_low,
    ci_high, n). `subset` is "all", a level ("L1".."L5"), a response group ("correct", "incorrect"; "solved",
    "unsolved") or an improvement-set baseline; `k` is the k of pass@k, the N of accuracy@N or the responses per
    diversity set or support ledger; `n` is the number of problems behind the value. After the iterations' rows,
    the deep evaluation's (deep_metrics.json), if the run has one."""
    rows = [dict(iteration=m["iteration"], **r) for m in iteration_metrics(run_dir) for r in m.get("table", [])]
    rows += Run(run_dir).deep_metrics().get("table", [])  # the deep evaluation's rows (deep.py), `deep_` names
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    table["k"] = table["k"].astype("Int64")
    table["n"] = table["n"].astype("Int64")
    return table


def write_table(run_dir: str | Path) -> list[Path]:
    """report/metrics.parquet and report/metrics_long.csv: the tidy table of every evaluated iteration."""
    paths = artifacts.RunPaths(run_dir)
    table = collect(run_dir)
    paths.report.mkdir(parents=True, exist_ok=True)
    csv = paths.report / "metrics_long.csv"
    table.to_csv(csv, index=False)
    return [artifacts.write_parquet(table, paths.report / "metrics.parquet"), csv]


def per_problem_tables(run_dir: str | Path) -> dict[int, pd.DataFrame]:
    """{t: iter_<t>/per_problem.parquet} for every iteration that has one (runs.Run.per_problem_tables)."""
    return Run(run_dir).per_problem_tables()
