"""Beyond the paper, in every run: beyond.py's estimators as rows of the tidy metrics table (the columns of
metrics.TABLE_COLUMNS, new `metric` names, 95% bootstrap intervals over problems) and as a readable summary in
metrics.json. The evaluate stage (metrics.evaluate) calls `split_rows` for each split and `model_rows` once;
the deep evaluation's comparisons (`deep_summary`, `write_deep`: deep_metrics.json from the tables deep.py
samples) use the same row builders with the prefix `deep_`. docs/beyond.md lists every name with its source
and every choice with the parameter that sets it.

Per split (test, OOD) of every M_t, from its graded sampled responses (n per problem):

    pass@k_curve            k = 1, 2, 4, ... up to n and the evaluate stage's ks (Yue et al. 2025)
    cover@<tau>             the share of problems with at least tau of their samples correct (Dragoi et al. 2025)
    guess_pass@k            a random guesser's pass@k, where the answer space is small and known (csqa: 5)
    pass@k_uninformative    1 where pass@k is within `guess_margin` of that baseline (or below it), else 0
    distinct_answers, answer_entropy   per problem, then the mean over solved / unsolved / all problems (Song,
                            Kempe & Munos 2025)

and for t >= 2 against M1, on the same problems:

    pass@k_diff             M_t's pass@k minus M1's, paired interval (problems resampled together)
    crossover_k             Yue et al.'s k*: the smallest k at which M1's pass@k is at or above M_t's; an
                            empty value means none up to k (the row's k, the largest compared)
    support_greedy:<class>, support_sample:<class>   the Invisible Leash's ledger (Wu et al. 2025), class
                            preserved / lost / gained / never; the share of the subset's problems (all, L1..),
                            their count being value x n

On the test split, with `score_models`, M_t's sampled responses are scored under M_t and M1 (beyond.score_responses):

    token_entropy           mean next-token entropy (nats) over M_t's sampled responses
    kl_from_m1              KL(M_t || M1) per response (nats), the mean log-ratio of its samples' likelihoods
                            (Shenfeld, Pari & Agrawal 2025, "RL's Razor"); kl_from_m1_per_token the same per token

Choices (each an EvaluateConfig field): the sampled ledger compares M_t's n samples with M1's first n (by
sample_idx; M1 may draw more, for Figure 3), since empirical support grows with n; pass@k_diff and crossover_k
use all of M1's samples (the unbiased estimator allows unequal n), up to the smaller n of the two.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from . import beyond
from .estimators import bootstrap_ci, pass_at_k_per_problem

SUPPORT_DECODINGS = ("greedy", "sample")


def _row(metric: str, subset: str, k, value, ci=(None, None), n: int | None = None) -> dict:
    """One tidy row (metrics._row's fields)."""
    ok = value is not None and not (isinstance(value, float) and not np.isfinite(value))
    return dict(metric=metric, subset=subset, k=None if k is None else int(k), value=float(value) if ok else None,
                ci_low=ci[0], ci_high=ci[1], n=None if n is None else int(n))


def answer_options(task: str, override: int = 0) -> int:
    """How many answers a random guesser picks from: `override` (EvaluateConfig.guess_options) when set, else
    the task's own (tasks.Task.answer_options: csqa 5), 0 for open answers (no guessing baseline).

    >>> answer_options("csqa"), answer_options("gsm8k"), answer_options("arith", 4)
    (5, 0, 4)
    """
    from .tasks import TASKS_BY_NAME

    if override:
        return int(override)
    return TASKS_BY_NAME[task].answer_options if task in TASKS_BY_NAME else 0


def first_samples(df: pd.DataFrame, n: int) -> pd.DataFrame:
    """The table with only the first `n` sampled responses of each problem (sample_idx < n); other decodings
    kept; n = 0: the whole table.

    >>> df = pd.DataFrame({"decoding": ["greedy", "sample", "sample", "sample"], "sample_idx": [0, 0, 1, 2]})
    >>> list(first_samples(df, 2).index), len(first_samples(df, 0))
    ([0, 1, 2], 4)
    """
    return df if not n else df[(df["decoding"] != "sample") | (df["sample_idx"] < n)]


# ---------------------------------------------------------------------------------------------------------
# Row builders, shared with the deep evaluation (prefix "deep_").

def curve_rows(counts: pd.DataFrame, n_boot: int, seed: int, prefix: str = "", extra_ks=()) -> tuple[dict, list]:
    """({k: pass@k}, rows `<prefix>pass@k_curve`) over k_grid(smallest n) and `extra_ks` up to it, each with
    its interval over problems. `counts`: per-problem (n, c); problems without samples are left out."""
    sampled = counts[counts["n"] > 0]
    if not len(sampled):
        return {}, []
    n_min = int(sampled["n"].min())
    ks = sorted(set(beyond.k_grid(n_min)) | {int(k) for k in extra_ks if 1 <= k <= n_min})
    curve, rows = {}, []
    for k in ks:
        v = pass_at_k_per_problem(sampled["n"], sampled["c"], k)
        curve[k] = float(v.mean())
        rows.append(_row(f"{prefix}pass@k_curve", "all", k, v.mean(), bootstrap_ci(v, n_boot, seed), len(v)))
    return curve, rows


def guess_rows(curve: dict[int, float], n_options: int, margin: float, n_problems: int,
               prefix: str = "") -> tuple[dict, list]:
    """Dragoi et al.'s check of every pass@k against random guessing among `n_options` known answers: rows
    `<prefix>guess_pass@k` (the baseline) and `<prefix>pass@k_uninformative` (1.0 within `margin` of it or
    below, else 0.0). None and no rows without a known answer space (n_options 0)."""
    if not n_options or not curve:
        return {"options": None, "note": "open answers: no guessing baseline"}, []
    flags = beyond.guess_flags(curve, n_options, margin)
    rows = []
    for r in flags.itertuples():
        rows.append(_row(f"{prefix}guess_pass@k", "all", r.k, r.guess))
        rows.append(_row(f"{prefix}pass@k_uninformative", "all", r.k, float(r.uninformative), n=n_problems))
    return {"options": n_options, "margin": margin,
            "uninformative_ks": [int(k) for k in flags.loc[flags["uninformative"], "k"]]}, rows


def cover_rows(counts: pd.DataFrame, taus, n_boot: int, seed: int, prefix: str = "") -> tuple[dict, list]:
    """cover@tau (beyond.cover_at_tau) as rows `<prefix>cover@<tau>` and {tau: share}."""
    if not len(counts[counts["n"] > 0]):
        return {}, []
    table = beyond.cover_at_tau(counts, taus, n_boot, seed)
    rows = [_row(f"{prefix}cover@{r.tau:g}", "all", None, r.value, (r.ci_low, r.ci_high), r.n)
            for r in table.itertuples()]
    return {f"{r.tau:g}": r.value for r in table.itertuples()}, rows


def compare_rows(m1: pd.DataFrame, mt: pd.DataFrame, n_boot: int, seed: int, tol: float,
                 prefix: str = "") -> tuple[dict, list]:
    """M1 (`m1`) against M_t (`mt`), per-problem (n, c) tables of the same problems: rows `<prefix>pass@k_diff`
    (M_t - M1, paired interval) and `<prefix>crossover_k` (beyond.compare_pass_at_k), and its summary."""
    ids = m1.index.intersection(mt.index)
    r = beyond.compare_pass_at_k(m1.loc[ids], mt.loc[ids], None, n_boot, seed, tol)
    curves = r["curves"]
    if not len(curves):
        return {}, []
    rows = [_row(f"{prefix}pass@k_diff", "all", c.k, c.diff, (c.ci_low, c.ci_high), c.n) for c in curves.itertuples()]
    k_max = int(curves["k"].max())
    rows.append(_row(f"{prefix}crossover_k", "all", k_max, r["crossover_k"], n=int(curves["n"].iloc[0])))
    pn = r["pass@n"]
    return {"crossover_k": r["crossover_k"], "up_to_k": k_max,
            "m1": {int(k): float(v) for k, v in zip(curves["k"], curves["before"])},
            "pass@n": {"k": pn["k"], "m1": pn["before"], "mt": pn["after"], "diff": pn["diff"],
                       "ci": list(pn["ci"])}}, rows


def ledger_rows(m1: pd.DataFrame, mt: pd.DataFrame, decoding: str, min_correct: int, n_boot: int, seed: int,
                prefix: str = "") -> tuple[dict, list, pd.Series]:
    """The support ledger between two graded tables of the same problems (beyond.support_ledger): rows
    `<prefix>support_<decoding>:<class>` per subset (all, L1..), k the responses per problem behind it, value
    the share, n the subset's problems; the summary {subset: {class: count}}; and the class of each problem.
    For decoding "sample", M1 keeps its first n responses per problem, n being M_t's."""
    n = None
    if decoding == "sample":
        n = int(min(x[x["decoding"] == "sample"].groupby("problem_id").size().min() for x in (m1, mt)))
        m1, mt = first_samples(m1, n), first_samples(mt, n)
    ids = sorted(set(m1.loc[m1["decoding"] == decoding, "problem_id"])
                 & set(mt.loc[mt["decoding"] == decoding, "problem_id"]))
    if not ids:
        return {}, [], pd.Series(dtype=object)
    m1, mt = m1[m1["problem_id"].isin(ids)], mt[mt["problem_id"].isin(ids)]
    classes, table = beyond.support_ledger(m1, mt, decoding, min_correct, n_boot, seed)
    rows = [_row(f"{prefix}support_{decoding}:{r.support}", r.subset, n, r.value, (r.ci_low, r.ci_high), r.n)
            for r in table.itertuples()]
    summary = {subset: dict(zip(g["support"], g["count"].astype(int))) for subset, g in table.groupby("subset")}
    return summary, rows, classes


def answer_rows(df: pd.DataFrame, missing: str, solved: str, n_boot: int, seed: int,
                prefix: str = "") -> tuple[dict, list]:
    """Answer-level diversity of the sampled responses (beyond.answer_diversity and its summary) as rows
    `<prefix>distinct_answers` and `<prefix>answer_entropy`, subsets solved / unsolved / all."""
    if not (df["decoding"] == "sample").any():
        return {}, []
    per_problem = beyond.answer_diversity(df, missing, solved)
    table = beyond.answer_diversity_summary(per_problem, n_boot, seed)
    rows = [_row(f"{prefix}{r.metric}", r.subset, None, r.value, (r.ci_low, r.ci_high), r.n)
            for r in table.itertuples()]
    return {f"{r.metric}:{r.subset}": r.value for r in table.itertuples()}, rows


# ---------------------------------------------------------------------------------------------------------
# The evaluate stage.

def split_rows(df: pd.DataFrame, m1: pd.DataFrame | None, cfg, n_options: int,
               set_samples: int = 0) -> tuple[dict, list]:
    """Every beyond-the-paper number of one split of M_t that its graded sample table gives (module docstring):
    (summary for metrics.json, tidy rows without the split). `m1`: M1's graded table of the split, for t >= 2
    (None: no comparison). `cfg`: the EvaluateConfig. `set_samples`: the sampled responses per problem that
    the measures of a set (cover@tau, the answers' diversity, the sampled support ledger) take, the first by
    sample_idx (0: all): they grow or shrink with the set's size, and M1 draws more samples than later
    iterates (sample.m1_eval_samples), so every iterate is measured on as many (our choice: the run's
    sample.n_eval_samples). The pass@k curves and their comparison take every sample: their estimator is
    unbiased for each k up to its own n."""
    n_boot, seed = cfg.bootstrap, cfg.seed
    out: dict = {}
    counts = beyond.problem_counts(df)
    out["pass@k_curve"], rows = curve_rows(counts, n_boot, seed, extra_ks=cfg.ks)
    out["guess"], more = guess_rows(out["pass@k_curve"], n_options, cfg.guess_margin, int((counts["n"] > 0).sum()))
    rows += more
    df_set = first_samples(df, set_samples)
    out["cover"], more = cover_rows(beyond.problem_counts(df_set), cfg.taus, n_boot, seed)
    rows += more
    out["answers"], more = answer_rows(df_set, cfg.answer_missing, cfg.answer_solved, n_boot, seed)
    rows += more
    if m1 is not None:
        m1_counts = beyond.problem_counts(m1)
        if len(m1_counts) and len(counts):
            out["vs_m1"], more = compare_rows(m1_counts, counts, n_boot, seed, cfg.crossover_tol)
            rows += more
        out["support"] = {}
        for decoding in SUPPORT_DECODINGS:
            if (df["decoding"] == decoding).any() and (m1["decoding"] == decoding).any():
                out["support"][decoding], more, _ = ledger_rows(first_samples(m1, set_samples), df_set, decoding,
                                                                cfg.support_min_correct, n_boot, seed)
                rows += more
    return out, rows


def run_sample_setting(run_dir: str | Path, name: str):
    """The run's sample.<name>: its manifest's recipe, else SampleConfig's default (no manifest)."""
    from .schema import SampleConfig

    default = SampleConfig.__dataclass_fields__[name].default
    if not (Path(run_dir) / "manifest.json").exists():
        return default
    from .runs import Run

    return (Run(run_dir).config().get("sample") or {}).get(name, default)


def score_temperature(run_dir: str | Path, cfg) -> float:
    """The temperature the responses are scored at: `score_temperature`, or when 0 the run's
    sample.temperature."""
    return float(cfg.score_temperature or run_sample_setting(run_dir, "temperature"))


def _scorer(model_dir: Path, device: str):
    """(model, tokenizer) of a run's model folder, as the transformers sampling backend loads it."""
    from .sample import TransformersSampler

    loaded = TransformersSampler(model_dir, device=device)
    return loaded.model, loaded.tokenizer


SCORE_METRICS = ("token_entropy", "kl_from_m1", "kl_from_m1_per_token")


def _scored_key(rows_in: pd.DataFrame, kl: bool, temperature: float, cfg) -> str:
    """What the scores are a function of: the scored responses, whether M1 scored them too, the temperature and
    the interval settings (a hash)."""
    cols = [c for c in ("problem_id", "sample_idx", "prompt", "response", "finish_reason") if c in rows_in.columns]
    blob = json.dumps({"responses": rows_in[cols].astype(str).values.tolist(),
                       "kl": kl, "temperature": temperature, "bootstrap": cfg.bootstrap, "seed": cfg.seed},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def recorded_scores(recorded: dict | None, key: str) -> tuple[dict, list] | None:
    """The scores and their rows (without the split) from a metrics.json (`recorded`) whose scores have `key`."""
    if not isinstance(recorded, dict):
        return None
    scores = ((recorded.get("test") or {}).get("beyond") or {}).get("scores") or {}
    if not isinstance(scores, dict) or scores.get("key") != key:
        return None
    rows = [{k: v for k, v in r.items() if k != "split"} for r in recorded.get("table", [])
            if r.get("split") == "test" and r.get("metric") in SCORE_METRICS]
    return scores, rows


def model_rows(df: pd.DataFrame, model_t: Path, model_1: Path | None, cfg, temperature: float,
               recorded: dict | None = None) -> tuple[dict, list, float]:
    """Token entropy of M_t's sampled responses in `df` (the first `score_samples` per problem) and, with
    `model_1` (M1's folder, for t >= 2), KL(M_t || M1) on them: (summary, rows without the split, seconds of
    scoring). The responses are scored with beyond.score_responses at `temperature`, their eos appended where
    the sampler stopped on it (finish_reason "stop"). Scoring needs the model folders: without them the scores
    of `recorded` (the iteration's metrics.json as it was) are kept when they were computed from the same
    responses and settings (`selfimprove metrics` on a run whose models were removed), else none."""
    rows_in = df[df["decoding"] == "sample"]
    if cfg.score_samples:
        rows_in = rows_in[rows_in["sample_idx"] < cfg.score_samples]
    rows_in = rows_in.sort_values(["problem_id", "sample_idx"])
    if not len(rows_in) or not {"prompt", "response"} <= set(rows_in.columns):
        return {"note": "no sampled responses (with prompt and response) to score"}, [], 0.0
    key = _scored_key(rows_in, model_1 is not None, temperature, cfg)
    missing = [p for p in (model_t, model_1) if p is not None and not Path(p).is_dir()]
    if missing:
        kept = recorded_scores(recorded, key)
        if kept is not None:
            return kept[0], kept[1], 0.0
        return {"note": f"no model folder at {missing[0]}: not scored"}, [], 0.0
    prompts, responses = rows_in["prompt"].tolist(), rows_in["response"].tolist()
    eos = (rows_in["finish_reason"] == "stop").tolist()
    t0 = time.perf_counter()
    scored = {}
    for name, folder in (("t", model_t), ("1", model_1)):
        if folder is None:
            continue
        model, tok = _scorer(Path(folder), cfg.score_device)
        scored[name] = beyond.score_responses(model, tok, prompts, responses, add_eos=eos, temperature=temperature,
                                              batch_size=cfg.score_batch_size)
        del model
    seconds = time.perf_counter() - t0
    st = scored["t"]
    ent = beyond.mean_token_entropy(pd.DataFrame({"problem_id": rows_in["problem_id"].to_numpy(),
                                                  "token_entropy": st["token_entropy"].to_numpy()}),
                                    n_boot=cfg.bootstrap, seed=cfg.seed)
    out = {"key": key, "temperature": temperature, "responses": len(rows_in), "token_entropy": ent}
    rows = [_row("token_entropy", "all", None, ent["value"], (ent["ci_low"], ent["ci_high"]), ent["n"])]
    if "1" in scored:
        kl = beyond.kl_estimate(rows_in["problem_id"].to_numpy(), st["logprob"], scored["1"]["logprob"],
                                st["n_tokens"], cfg.bootstrap, cfg.seed)
        out["kl_from_m1"] = kl
        for name, part in (("kl_from_m1", kl["per_response"]), ("kl_from_m1_per_token", kl["per_token"])):
            rows.append(_row(name, "all", None, part["value"], (part["ci_low"], part["ci_high"]), part["n"]))
    return out, rows, seconds


# ---------------------------------------------------------------------------------------------------------
# The deep evaluation's comparisons (deep.py samples; these rows and deep_metrics.json).

def deep_summary(tables: dict[int, pd.DataFrame], who: dict[str, int], ecfg, n_options: int) -> dict:
    """deep_metrics.json's content from the graded deep tables {t: table}: per model its pass@k curve, cover@tau
    and guessing flags; M1 against M_t* and M_T, the paired pass@k differences, k* and the support ledger.
    `ecfg`: the EvaluateConfig whose intervals, taus and rules apply."""
    n_boot, seed = ecfg.bootstrap, ecfg.seed
    counts = {t: beyond.problem_counts(df) for t, df in tables.items()}
    rows: list[dict] = []
    models: dict = {}
    for t in sorted(tables):
        curve, r1 = curve_rows(counts[t], n_boot, seed, "deep_")
        n_problems = int((counts[t]["n"] > 0).sum())
        guess, r2 = guess_rows(curve, n_options, ecfg.guess_margin, n_problems, "deep_")
        cover, r3 = cover_rows(counts[t], ecfg.taus, n_boot, seed, "deep_")
        models[t] = {"roles": [r for r, x in who.items() if x == t], "pass@k_curve": curve, "cover": cover,
                     "guess": guess}
        rows += [dict(iteration=t, split="test", **r) for r in r1 + r2 + r3]
    comparisons: dict = {}
    for t in sorted({who[r] for r in ("best", "last") if r in who} - {1}):
        comp, r1 = compare_rows(counts[1], counts[t], n_boot, seed, ecfg.crossover_tol, "deep_")
        ledger, r2, _ = ledger_rows(tables[1], tables[t], "sample", ecfg.support_min_correct, n_boot, seed,
                                    "deep_")
        comparisons[t] = comp | {"roles": [r for r, x in who.items() if x == t], "support": ledger}
        rows += [dict(iteration=t, split="test", **r) for r in r1 + r2]
    first = next(iter(tables.values()))
    return {"roles": who, "problems": int(first["problem_id"].nunique()),
            "samples": int(first.groupby("problem_id").size().min()),
            "evaluate": {k: v for k, v in asdict(ecfg).items() if k not in ("run_dir", "iteration")},
            "models": models, "comparisons": comparisons, "table": rows}


def read_deep(paths, who: dict[str, int]) -> dict[int, pd.DataFrame]:
    """The run's graded deep tables {t: table} of the models in `who` ({role: iteration}); a table that cannot
    be read is a RunError naming it and how it is made again."""
    from .runs import RunError

    tables = {}
    for t in sorted(set(who.values())):
        try:
            tables[t] = pd.read_parquet(paths.deep_samples(t))
        except (OSError, ValueError) as e:
            raise RunError(f"{paths.deep_samples(t)}: cannot be read ({e}); the deep evaluation samples it again "
                           "when `selfimprove run` resumes the run") from None
    return tables


def write_deep(paths, cfg, who: dict[str, int], tables: dict[int, pd.DataFrame] | None = None) -> Path:
    """The deep evaluation's deep_metrics.json (deep.py) from the run's deep tables (deep_summary; `tables` as
    read_deep gives them, read here when None), with the evaluate settings of iteration T of `cfg` (the
    RunConfig); `who`: {role: iteration}."""
    from . import artifacts

    tables = read_deep(paths, who) if tables is None else tables
    ecfg = cfg.stage("evaluate", cfg.iterations, paths.root)
    options = answer_options(cfg.task, ecfg.guess_options)
    return artifacts.write_json(deep_summary(tables, who, ecfg, options), paths.deep_metrics)
