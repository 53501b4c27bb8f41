"""Beyond the paper: estimators from 2025 work on what post-training does to a model's reach, for M1 against M_t.

Six families, each a pure function of the sample table (one row per response: problem_id, level, decoding,
sample_idx, extracted, correct, ...) or of per-problem arrays, with 95% percentile-bootstrap intervals over
problems from `selfimprove.estimators` (the problem is the unit; seeded, so reruns agree):

1. pass@k curves and their crossover (Yue et al. 2025, "Does Reinforcement Learning Really Incentivize
   Reasoning Capacity in LLMs Beyond the Base Model?", code LeapLabTHU/limit-of-RLVR): `k_grid`,
   `pass_at_k_curve`, `pass_at_k_curves`, `crossover_k`, `compare_pass_at_k`.
2. The support ledger (Wu et al. 2025, "The Invisible Leash: Why RLVR May Not Escape Its Origin"):
   `in_support`, `support_classes`, `support_table`, `support_ledger`.
3. cover@tau (Dragoi et al. 2025, "Beyond Pass@k: Breadth-Depth Metrics for Reasoning Boundaries") and the
   random-guess baseline of pass@k: `cover_at_tau`, `guess_pass_at_k`, `guess_flags`.
4. Answer-level diversity (Song, Kempe & Munos 2025, "Outcome-based Exploration for LLM Reasoning"):
   `answer_entropy`, `answer_diversity`, `answer_diversity_summary`.
5. Token-level entropy of the sampled responses: `mean_token_entropy`, and `score_responses`, which computes
   per-token entropies and sequence log-likelihoods of (prompt, response) texts with a transformers causal LM.
6. The forward KL(M_t || M1) on M_t's own samples (Shenfeld, Pari & Agrawal 2025, "RL's Razor: Why Online
   Reinforcement Learning Forgets Less"): `kl_estimate`, and `kl_ood_relation` against the OOD change.

`problem_counts` turns a sample table into the per-problem (level, n, c) table every family reads.
Nothing here grades or samples: the `correct` and `extracted` columns are the verify stage's.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .estimators import _interval, bootstrap_ci, paired_change_ci, pass_at_k_per_problem, resample

SUPPORT_CLASSES = ("preserved", "lost", "gained", "never")
TAUS = (0.1, 0.25, 0.5, 0.75, 0.9)
MISSING_RULES = ("category", "drop", "distinct")
SOLVED_RULES = ("any", "greedy")


def _ci_row(values, n_boot: int, seed: int) -> dict:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    lo, hi = bootstrap_ci(v, n_boot, seed)
    return {"value": float(v.mean()) if len(v) else None, "ci_low": lo, "ci_high": hi, "n": int(len(v))}


def problem_counts(df: pd.DataFrame, decoding: str = "sample") -> pd.DataFrame:
    """Sample table -> one row per problem (index problem_id): level, n responses of `decoding`, c correct.

    >>> df = pd.DataFrame({"problem_id": ["a", "a", "b"], "level": [1, 1, 2], "decoding": "sample",
    ...                    "correct": [True, False, False]})
    >>> problem_counts(df).to_dict("index")
    {'a': {'level': 1, 'n': 2, 'c': 1}, 'b': {'level': 2, 'n': 1, 'c': 0}}
    """
    sub = df[df["decoding"] == decoding]
    g = sub.groupby("problem_id", sort=True)
    return pd.DataFrame({"level": g["level"].first(), "n": g.size(), "c": g["correct"].sum().astype(int)})


def _paired(before: pd.DataFrame, after: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    only_b, only_a = before.index.difference(after.index), after.index.difference(before.index)
    if len(only_b) or len(only_a):
        raise ValueError(f"a paired comparison needs the same problems in both models: {len(only_b)} only in the "
                         f"first (e.g. {list(only_b[:3])}), {len(only_a)} only in the second (e.g. {list(only_a[:3])})")
    return before, after.reindex(before.index)


# ---------------------------------------------------------------------------------------------------------
# 1. pass@k curves and their crossover (Yue et al. 2025)

def k_grid(n: int) -> list[int]:
    """k = 1, 2, 4, ... up to n, and n itself (Yue et al.'s grid: powers of two to the sample budget).

    >>> k_grid(8), k_grid(50), k_grid(1), k_grid(0)
    ([1, 2, 4, 8], [1, 2, 4, 8, 16, 32, 50], [1], [])
    """
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks + [n] if ks and ks[-1] != n else ks


def pass_at_k_curve(n, c, ks: Sequence[int] | None = None) -> dict[int, float]:
    """{k: unbiased pass@k averaged over problems}: per problem 1 - C(n-c, k)/C(n, k) in the product form
    (estimators.pass_at_k), then the plain mean. `ks` defaults to k_grid(min n); a k above a problem's n is
    an error (pass@k is not estimable from fewer than k samples).

    >>> pass_at_k_curve([4, 4], [1, 0])  # problem 1: pass@1 1/4, pass@2 1/2, pass@4 1; problem 2: 0
    {1: 0.125, 2: 0.25, 4: 0.5}
    """
    n, c = np.asarray(n, dtype=int), np.asarray(c, dtype=int)
    if not len(n):
        return {}
    ks = k_grid(int(n.min())) if ks is None else list(ks)
    return {int(k): float(pass_at_k_per_problem(n, c, int(k)).mean()) for k in ks}


def crossover_k(curve_a: dict[int, float], curve_b: dict[int, float], tol: float = 0.0) -> int | None:
    """Yue et al.'s crossover k*: the smallest k (of the ks both curves have) at which model A's pass@k
    (M1, the base) is at or above model B's (M_t): pass_a(k) >= pass_b(k) - tol. None: no crossover up to
    the largest k ("none up to n"). k* = 1 means A is already at or above B at pass@1 (nothing to cross).
    `tol` (default 0) lets near-ties count as crossed.

    >>> crossover_k({1: 0.3, 2: 0.5, 4: 0.8}, {1: 0.5, 2: 0.6, 4: 0.7})
    4
    >>> crossover_k({1: 0.3, 2: 0.5}, {1: 0.5, 2: 0.6}) is None
    True
    """
    for k in sorted(set(curve_a) & set(curve_b)):
        if curve_a[k] >= curve_b[k] - tol:
            return int(k)
    return None


def pass_at_k_curves(before: pd.DataFrame, after: pd.DataFrame, ks: Sequence[int] | None = None,
                     n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Both models' pass@k curves on the same problems, per k: before, after, diff = after - before with a
    paired 95% interval (problems resampled together; estimators.paired_change_ci), n problems.
    Inputs: per-problem tables (index problem_id, columns n, c; `problem_counts`); problems without samples
    in either model (n = 0) are left out. `ks` defaults to k_grid of the smallest n of either model."""
    b, a = _paired(before, after)
    sampled = (b["n"].to_numpy() > 0) & (a["n"].to_numpy() > 0)
    b, a = b[sampled], a[sampled]
    if ks is None:
        ks = k_grid(int(min(b["n"].min(), a["n"].min()))) if len(b) else []
    rows = []
    for k in ks:
        vb = pass_at_k_per_problem(b["n"], b["c"], int(k))
        va = pass_at_k_per_problem(a["n"], a["c"], int(k))
        lo, hi = paired_change_ci(vb, va, n_boot, seed)
        rows.append({"k": int(k), "before": float(vb.mean()), "after": float(va.mean()),
                     "diff": float(va.mean() - vb.mean()), "ci_low": lo, "ci_high": hi, "n": int(len(b))})
    return pd.DataFrame(rows, columns=["k", "before", "after", "diff", "ci_low", "ci_high", "n"])


def compare_pass_at_k(before: pd.DataFrame, after: pd.DataFrame, ks: Sequence[int] | None = None,
                      n_boot: int = 1000, seed: int = 0, tol: float = 0.0) -> dict:
    """Yue et al.'s comparison of a base (`before`, M1) and a post-trained model (`after`, M_t):
    {"curves": pass_at_k_curves(...), "crossover_k": k* or None, "pass@n": {k, before, after, diff, ci}}
    where pass@n is the last k of the grid (the sample budget) and its difference after - before has a
    paired per-problem bootstrap interval.

    Reproduction reference (Yue et al., MATH500, Qwen2.5-7B, 128 samples): the curves cross between k = 16
    and 32; pass@128 is 96.2 for the base and 93.0 for the RL model, diff -3.2 points, paired interval
    [-5.0, -1.4].

    >>> b = pd.DataFrame({"n": [4, 4], "c": [1, 1]}); a = pd.DataFrame({"n": [4, 4], "c": [4, 0]})
    >>> r = compare_pass_at_k(b, a, n_boot=0)
    >>> r["crossover_k"], r["pass@n"]["k"], r["pass@n"]["diff"]
    (2, 4, -0.5)
    """
    curves = pass_at_k_curves(before, after, ks, n_boot, seed)
    if not len(curves):
        return {"curves": curves, "crossover_k": None, "pass@n": None}
    k_star = crossover_k(dict(zip(curves["k"], curves["before"])), dict(zip(curves["k"], curves["after"])), tol)
    last = curves.iloc[-1]
    return {"curves": curves, "crossover_k": k_star,
            "pass@n": {"k": int(last["k"]), "before": float(last["before"]), "after": float(last["after"]),
                       "diff": float(last["diff"]), "ci": (last["ci_low"], last["ci_high"])}}


# ---------------------------------------------------------------------------------------------------------
# 2. The support ledger (Wu et al. 2025, "The Invisible Leash")

def in_support(counts: pd.DataFrame, min_correct: int = 1) -> pd.Series:
    """Empirical support: a problem is in it when at least `min_correct` (default 1) of its n responses are
    correct. With the greedy counts (n = 1) this is greedy correctness. Input: a per-problem table (n, c).

    >>> in_support(pd.DataFrame({"n": [4, 4], "c": [0, 2]}, index=["a", "b"])).to_dict()
    {'a': False, 'b': True}
    """
    return (counts["c"] >= min_correct).rename("in_support")


def support_classes(before: pd.DataFrame, after: pd.DataFrame, min_correct: int = 1) -> pd.Series:
    """Per problem, the Invisible Leash's ledger between M1 (`before`) and M_t (`after`): preserved (in both
    supports), lost (M1's only: shrinkage), gained (M_t's only: expansion), never (neither). Inputs:
    per-problem tables (n, c) of the same problems. Empirical support grows with n, so the two models must
    have the same n per problem (else a ValueError).

    >>> b = pd.DataFrame({"n": 2, "c": [1, 1, 0, 0]}, index=list("wxyz"))
    >>> a = pd.DataFrame({"n": 2, "c": [2, 0, 1, 0]}, index=list("wxyz"))
    >>> support_classes(b, a).tolist()
    ['preserved', 'lost', 'gained', 'never']
    """
    b, a = _paired(before, after)
    unequal = b.index[b["n"].to_numpy() != a["n"].to_numpy()]
    if len(unequal):
        raise ValueError(f"the support ledger needs the same number of responses per problem in both models; "
                         f"{len(unequal)} problem(s) differ (e.g. {list(unequal[:3])})")
    sb, sa = in_support(b, min_correct).to_numpy(), in_support(a, min_correct).to_numpy()
    cls = np.select([sb & sa, sb & ~sa, ~sb & sa], ["preserved", "lost", "gained"], "never")
    return pd.Series(cls, index=b.index, name="support")


def support_table(classes: pd.Series, level: pd.Series | None = None, n_boot: int = 1000,
                  seed: int = 0) -> pd.DataFrame:
    """Counts and shares of each ledger class, overall ("all") and per level ("L1", ...; problems with a
    level), with 95% intervals of the share (bootstrap over the problems of that subset). Columns: subset,
    support (class), count, value (share), ci_low, ci_high, n (problems in the subset).

    >>> t = support_table(pd.Series(["preserved", "lost", "lost", "never"]), n_boot=0)
    >>> t.set_index("support")["count"].to_dict()
    {'preserved': 1, 'lost': 2, 'gained': 0, 'never': 1}
    """
    groups = {"all": classes.index}
    if level is not None:
        lv = level.reindex(classes.index).dropna().astype(int)
        groups = {f"L{v}": lv.index[lv == v] for v in sorted(lv.unique())} | groups
    rows = []
    for subset, ids in groups.items():
        cls = classes.loc[ids].to_numpy()
        for name in SUPPORT_CLASSES:
            hit = (cls == name).astype(float)
            rows.append({"subset": subset, "support": name, "count": int(hit.sum())} | _ci_row(hit, n_boot, seed))
    return pd.DataFrame(rows, columns=["subset", "support", "count", "value", "ci_low", "ci_high", "n"])


def support_ledger(before: pd.DataFrame, after: pd.DataFrame, decoding: str = "sample", min_correct: int = 1,
                   n_boot: int = 1000, seed: int = 0) -> tuple[pd.Series, pd.DataFrame]:
    """The ledger from two sample tables (M1's and M_t's, same split): (classes per problem, support_table
    overall and per level). decoding="sample" uses the n sampled responses, "greedy" greedy correctness.

    >>> m1 = pd.DataFrame({"problem_id": ["a", "b"], "level": 1, "decoding": "greedy", "correct": [True, False]})
    >>> mt = m1.assign(correct=[False, True])
    >>> support_ledger(m1, mt, "greedy", n_boot=0)[0].tolist()
    ['lost', 'gained']
    """
    b, a = problem_counts(before, decoding), problem_counts(after, decoding)
    classes = support_classes(b, a, min_correct)
    return classes, support_table(classes, b["level"], n_boot, seed)


# ---------------------------------------------------------------------------------------------------------
# 3. cover@tau (Dragoi et al. 2025) and the random-guess baseline of pass@k

def cover_at_tau(counts: pd.DataFrame, taus: Sequence[float] = TAUS, n_boot: int = 1000,
                 seed: int = 0) -> pd.DataFrame:
    """Dragoi et al.'s cover@tau: the share of problems whose share of correct samples c/n is at least tau
    (boundary included: c/n >= tau, compared as c >= tau * n with a 1e-9 slack so that 1 of 10 counts at
    tau = 0.1), with 95% intervals over problems (those with samples, n > 0). Columns: tau, value, ci_low,
    ci_high, n.
    cover@tau for tau -> 0+ is pass@n; cover@1 the share solved by every sample.

    >>> cover_at_tau(pd.DataFrame({"n": 4, "c": [0, 1, 2, 4]}), taus=(0.25, 0.5, 0.75), n_boot=0)["value"].tolist()
    [0.75, 0.5, 0.25]
    """
    sampled = counts[counts["n"] > 0]
    n, c = sampled["n"].to_numpy(dtype=float), sampled["c"].to_numpy(dtype=float)
    rows = [{"tau": float(t)} | _ci_row((c >= t * n - 1e-9).astype(float), n_boot, seed) for t in taus]
    return pd.DataFrame(rows, columns=["tau", "value", "ci_low", "ci_high", "n"])


def guess_pass_at_k(k: int, n_options: int) -> float:
    """pass@k of a guesser that answers uniformly at random from `n_options` known answers, k independent
    guesses (with replacement, as k independent samples are): 1 - (1 - 1/n_options)^k.

    >>> round(guess_pass_at_k(16, 5), 4)  # CommonsenseQA, 5 options
    0.9719
    """
    if n_options < 1 or k < 0:
        raise ValueError(f"guess_pass_at_k needs n_options >= 1 and k >= 0, got {n_options}, {k}")
    return 1.0 - (1.0 - 1.0 / n_options) ** k


def guess_flags(curve: dict[int, float], n_options: int, margin: float = 0.05) -> pd.DataFrame:
    """For each k of a pass@k curve: the guessing baseline and `uninformative` = pass@k <= baseline + margin
    (within `margin`, default 5 points, of random guessing, or below it). Columns: k, value, guess,
    uninformative.

    >>> guess_flags({1: 0.6, 16: 0.99}, 5)["uninformative"].tolist()
    [False, True]
    """
    rows = [{"k": int(k), "value": float(v), "guess": guess_pass_at_k(int(k), n_options)} for k, v in curve.items()]
    out = pd.DataFrame(rows, columns=["k", "value", "guess"])
    out["uninformative"] = out["value"] <= out["guess"] + margin
    return out


# ---------------------------------------------------------------------------------------------------------
# 4. Answer-level diversity (Song, Kempe & Munos 2025)

def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x)) or (isinstance(x, str) and not x.strip())


def answer_entropy(answers: Sequence, missing: str = "category") -> tuple[int, float]:
    """(distinct final answers, Shannon entropy in nats of their empirical distribution) for one problem's
    responses. Answers compare as stripped strings. The entropy is the plug-in (maximum-likelihood)
    estimate, -sum p ln p; it is biased low for few samples and at most ln(#responses).
    A missing answer (None, NaN, empty) counts, by `missing`:
    "category" (default): all missing answers are one more answer, "no answer";
    "drop": left out (no answers at all -> (0, nan));
    "distinct": each missing answer is an answer of its own (an upper bound on diversity).

    >>> answer_entropy(["a", "a", "b", "b"])[1] == math.log(2)
    True
    >>> answer_entropy(["7", None, None, "7 "]), answer_entropy(["7", None, None], "distinct")[0]
    ((2, 0.6931471805599453), 3)
    """
    if missing not in MISSING_RULES:
        raise ValueError(f"missing must be one of {MISSING_RULES}, got {missing!r}")
    keys: list = []
    for i, x in enumerate(answers):
        if not _missing(x):
            keys.append(("answer", str(x).strip()))
        elif missing == "category":
            keys.append(("missing",))
        elif missing == "distinct":
            keys.append(("missing", i))
    if not keys:
        return 0, float("nan")
    p = np.array(list(Counter(keys).values()), dtype=float) / len(keys)
    return len(p), float(-(p * np.log(p)).sum() + 0.0)


def answer_diversity(df: pd.DataFrame, missing: str = "category", solved: str = "any") -> pd.DataFrame:
    """One row per problem (index problem_id) from the sampled responses of a sample table: n responses,
    distinct_answers and answer_entropy (nats) of the `extracted` column (answer_entropy, `missing` rule),
    and `solved`: with solved="any" (default) at least one sampled response is correct; with "greedy" the
    greedy response is correct (NaN without a greedy response)."""
    if solved not in SOLVED_RULES:
        raise ValueError(f"solved must be one of {SOLVED_RULES}, got {solved!r}")
    sub = df[df["decoding"] == "sample"].sort_values(["problem_id", "sample_idx"])
    rows = {}
    for pid, g in sub.groupby("problem_id", sort=True):
        d, h = answer_entropy(g["extracted"].tolist(), missing)
        rows[pid] = {"n": len(g), "distinct_answers": d, "answer_entropy": h, "solved": bool(g["correct"].any())}
    out = pd.DataFrame.from_dict(rows, orient="index", columns=["n", "distinct_answers", "answer_entropy", "solved"])
    out.index.name = "problem_id"
    if solved == "greedy":
        greedy = df[df["decoding"] == "greedy"].groupby("problem_id")["correct"].first()
        out["solved"] = greedy.reindex(out.index).map(lambda x: x if pd.isna(x) else bool(x))
    return out


def answer_diversity_summary(per_problem: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Means over problems of distinct_answers and answer_entropy, separately over solved and unsolved
    problems (and all), with 95% intervals. Problems with no value (NaN) are left out; n says how many
    count. Input: answer_diversity's table. Columns: metric, subset, value, ci_low, ci_high, n.

    >>> pp = pd.DataFrame({"distinct_answers": [1, 3], "answer_entropy": [0.0, 1.0], "solved": [True, False]})
    >>> s = answer_diversity_summary(pp, n_boot=0).set_index(["metric", "subset"])["value"]
    >>> float(s["distinct_answers", "unsolved"]), float(s["answer_entropy", "all"])
    (3.0, 0.5)
    """
    solved = per_problem["solved"]
    groups = {"solved": solved == True, "unsolved": solved == False,  # noqa: E712 (NaN is neither)
              "all": pd.Series(True, index=per_problem.index)}
    rows = [{"metric": m, "subset": s} | _ci_row(per_problem.loc[mask, m], n_boot, seed)
            for m in ("distinct_answers", "answer_entropy") for s, mask in groups.items()]
    return pd.DataFrame(rows, columns=["metric", "subset", "value", "ci_low", "ci_high", "n"])


# ---------------------------------------------------------------------------------------------------------
# 5. Token-level entropy

def mean_token_entropy(df: pd.DataFrame, column: str = "token_entropy", weighting: str = "token",
                       n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean per-token entropy (nats) of a model's sampled responses, with a 95% interval over problems.
    Input: rows with problem_id and `column`, each a sequence of per-token entropies of one response (the
    `token_entropy` list column that `score_responses` returns and that a sampler can write beside
    `response` in the sample table). Per problem, weighting="token" (default) pools its responses' tokens
    (sum of entropies / tokens), "response" averages the per-response means; then the mean over problems.
    Responses with no token (or None: not scored) are left out. -> {value, ci_low, ci_high, n (problems), tokens}.

    >>> d = pd.DataFrame({"problem_id": ["a", "a", "b"], "token_entropy": [[1.0, 1.0, 1.0], [0.0], [0.5]]})
    >>> mean_token_entropy(d, n_boot=0)["value"], mean_token_entropy(d, weighting="response", n_boot=0)["value"]
    (0.625, 0.5)
    """
    if weighting not in ("token", "response"):
        raise ValueError(f"weighting must be 'token' or 'response', got {weighting!r}")
    ent = df[column].map(lambda e: np.asarray([] if e is None else e, dtype=float).ravel())
    sums, lens = ent.map(np.sum), ent.map(len)
    keep = lens > 0
    pid = df.loc[keep, "problem_id"]
    if weighting == "token":
        g = pd.DataFrame({"s": sums[keep], "t": lens[keep], "p": pid}).groupby("p")
        per_problem = g["s"].sum() / g["t"].sum()
    else:
        per_problem = (sums[keep] / lens[keep]).groupby(pid).mean()
    return _ci_row(per_problem.to_numpy(), n_boot, seed) | {"tokens": int(lens[keep].sum())}


def score_responses(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], *,
                    add_eos: bool | Sequence[bool] = False, temperature: float = 1.0,
                    batch_size: int = 8) -> pd.DataFrame:
    """Teacher-forced scores of (prompt, response) texts under a transformers causal LM, response tokens only.

    The prompt and the response are tokenised separately (no special tokens added) and concatenated, as a
    sampler feeds the prompt's tokens and appends the generated ones; re-tokenising a decoded response can
    split it differently from how it was sampled (rare for byte-level BPE). `add_eos` (one flag, or one per
    pair, e.g. `finish_reason == "stop"`) appends the tokenizer's eos token to the response, so the stop
    the sampler drew is scored too (the sample table's text has it stripped). Logits are divided by
    `temperature` (1.0: the model's own distribution; top-p truncation is not applied). A prompt must have
    at least one token.

    -> one row per pair: logprob (sum of the response tokens' log-probabilities, nats), n_tokens,
    mean_entropy (mean over response positions of the entropy of the next-token distribution, nats; NaN
    for an empty response), token_logprob and token_entropy (per-token lists).
    """
    import torch

    if len(prompts) != len(responses):
        raise ValueError(f"score_responses needs one response per prompt, got {len(prompts)} and {len(responses)}")
    eos_flags = [bool(add_eos)] * len(prompts) if isinstance(add_eos, bool) else [bool(x) for x in add_eos]
    if len(eos_flags) != len(prompts):
        raise ValueError(f"add_eos needs one flag per pair, got {len(eos_flags)} for {len(prompts)}")
    if any(eos_flags) and tokenizer.eos_token_id is None:
        raise ValueError("add_eos needs a tokenizer with an eos token")
    p_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if len(prompts) else []
    r_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"] if len(prompts) else []
    r_ids = [list(r) + ([tokenizer.eos_token_id] if e else []) for r, e in zip(r_ids, eos_flags)]
    if any(len(p) == 0 for p in p_ids):
        raise ValueError("score_responses needs at least one prompt token to condition the first response token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(p_ids), batch_size):
        seqs = [list(p) + r for p, r in zip(p_ids[start:start + batch_size], r_ids[start:start + batch_size])]
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits
        for j, s in enumerate(seqs):
            p_len = len(p_ids[start + j])
            r_len = len(s) - p_len
            logp = torch.log_softmax(logits[j, p_len - 1:len(s) - 1].float() / temperature, dim=-1)
            tok_lp = logp.gather(-1, ids[j, p_len:len(s)].unsqueeze(-1)).squeeze(-1)
            tok_h = -(logp.exp() * logp).sum(-1)
            rows.append({"logprob": float(tok_lp.sum()), "n_tokens": r_len,
                         "mean_entropy": float(tok_h.mean()) if r_len else float("nan"),
                         "token_logprob": tok_lp.cpu().tolist(), "token_entropy": tok_h.cpu().tolist()})
    return pd.DataFrame(rows, columns=["logprob", "n_tokens", "mean_entropy", "token_logprob", "token_entropy"])


# ---------------------------------------------------------------------------------------------------------
# 6. KL(M_t || M1) on M_t's own samples (Shenfeld et al. 2025, "RL's Razor")

def kl_estimate(problem_id, logp_t, logp_1, n_tokens, n_boot: int = 1000, seed: int = 0) -> dict:
    """Monte-Carlo forward KL(M_t || M1) from responses y sampled from M_t: per response the log-ratio
    log p_t(y|x) - log p_1(y|x) (sequence log-likelihoods, e.g. score_responses' logprob under each model).
    Unbiased for the sequence-level KL when y is drawn from M_t at temperature 1 without truncation (with
    temperature T, score both models at T: the KL of the tempered policies); single log-ratios can be
    negative, their mean cannot be in expectation.

    Reported: `per_response` (the headline, RL's Razor's sequence-level KL): per problem the mean log-ratio
    of its responses, then the mean over problems, with a bootstrap interval over problems; and
    `per_token`: total log-ratio / total response tokens (nats per token; the problems are resampled, the
    ratio recomputed). -> {"per_response": {value, ci_low, ci_high, n}, "per_token": {...}, "responses"}.

    >>> r = kl_estimate(["a", "a", "b"], [-1.0, -2.0, -1.0], [-2.0, -2.0, -3.0], [2, 2, 4], n_boot=0)
    >>> r["per_response"]["value"], r["per_token"]["value"]
    (1.25, 0.375)
    """
    ratio = np.asarray(logp_t, dtype=float) - np.asarray(logp_1, dtype=float)
    d = pd.DataFrame({"p": np.asarray(problem_id), "r": ratio, "t": np.asarray(n_tokens, dtype=float)})
    d = d[np.isfinite(d["r"])]
    g = d.groupby("p", sort=True)
    per_response = _ci_row(g["r"].mean().to_numpy(), n_boot, seed)
    sums, toks = g["r"].sum().to_numpy(), g["t"].sum().to_numpy()
    per_token = {"value": float(sums.sum() / toks.sum()) if toks.sum() > 0 else None, "ci_low": None,
                 "ci_high": None, "n": int(len(sums))}
    if n_boot > 0 and len(sums) and toks.sum() > 0:
        idx = resample(len(sums), n_boot, seed)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_token["ci_low"], per_token["ci_high"] = _interval(sums[idx].sum(axis=1) / toks[idx].sum(axis=1))
    return {"per_response": per_response, "per_token": per_token, "responses": int(len(d))}


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def kl_ood_relation(kl: dict[int, float], ood: dict[int, float], reference: int = 1) -> dict:
    """How the KL from M1 relates to forgetting across iterations (RL's Razor: forgetting tracks the forward
    KL). Points: every iteration t != `reference` with both numbers, x = KL(M_t || M1) and y = OOD accuracy
    change ood[t] - ood[reference]. -> {points [(t, x, y)], pearson, spearman (Pearson of average ranks),
    n_points, note}; a correlation is None with fewer than 3 points or a constant coordinate. RL's Razor
    predicts a negative correlation (more KL, more OOD loss). With T - 1 points (T = 5 iterations: 4) it
    is anecdotal: a sign, not evidence.

    >>> r = kl_ood_relation({2: 0.1, 3: 0.4, 4: 0.9}, {1: 0.5, 2: 0.49, 3: 0.45, 4: 0.40})
    >>> round(r["pearson"], 3), r["spearman"], r["n_points"]
    (-0.997, -1.0, 3)
    """
    ts = sorted(t for t in kl if t in ood and t != reference and reference in ood)
    x = np.array([kl[t] for t in ts], dtype=float)
    y = np.array([ood[t] - ood[reference] for t in ts], dtype=float)
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    return {"points": [(t, float(a), float(b)) for t, a, b in zip(ts, x, y)], "pearson": _pearson(x, y),
            "spearman": _pearson(rx, ry), "n_points": len(ts),
            "note": f"{len(ts)} points (iterations): anecdotal, a direction rather than evidence; "
                    "RL's Razor predicts a negative correlation"}
