"""Improvement sets (paper §5.1, Fig. 3): which problems M_t gains and loses against M1, by
level, and whether M1 could already solve the gained ones by sampling.

IS(t) = problems M_t solves greedily and M1 does not ("solves" = greedy correctness: inferred from paper §5.1;
the paper does not state it). Beside it: the lost set (M1 solves, M_t does not; docs/organism.md, 'Churn':
report it beside the gain) and the two stable sets. M1's accuracy@N (unbiased pass@N from M1's own samples)
on IS(t) is shown next to M1's accuracy@N on all problems, on the problems M1 gets wrong greedily, and on the
problems still unsolved at t (wrong for M1 and M_t): the baseline that answers the third of the ICLR 2025
OpenReview reviews, so that "accuracy@N rises with N" is not mistaken for a finding. N runs over 1, 2, 4, ...
up to 64 (the paper's grid) or the number of samples M1 has per problem, whichever is smaller; the rows say
which N.

Inputs are per-problem tables (metrics.per_problem_table: index problem_id, columns level, greedy_correct,
n, c). Called by the evaluate stage for every t >= 2 (metrics.py) and by verdict.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .estimators import bootstrap_ci, pass_at_k_per_problem, powers_of_two

SETS = ("improved", "lost", "stable_correct", "stable_wrong")
BASELINES = ("improved", "still_unsolved", "m1_wrong", "all")  # the subsets of M1's accuracy@N


def _aligned(before: pd.Series, after: pd.Series) -> tuple[pd.Series, pd.Series]:
    for name, s in (("before", before), ("after", after)):
        if s.isna().any():
            raise ValueError(f"transition sets need greedy correctness of every problem; {name} has none for "
                             f"{int(s.isna().sum())} (e.g. {list(s.index[s.isna()][:3])})")
    missing_after = before.index.difference(after.index)
    missing_before = after.index.difference(before.index)
    if len(missing_after) or len(missing_before):
        raise ValueError(f"transition sets need the same problems in both iterations: "
                         f"{len(missing_after)} only before (e.g. {list(missing_after[:3])}), "
                         f"{len(missing_before)} only after (e.g. {list(missing_before[:3])})")
    return before.astype(bool), after.reindex(before.index).astype(bool)


def transition_sets(before: pd.Series, after: pd.Series) -> dict[str, list]:
    """The four transition sets between two iterations, from greedy correctness per problem_id.

    >>> b = pd.Series({"p1": True, "p2": False, "p3": False, "p4": True})
    >>> a = pd.Series({"p1": True, "p2": True, "p3": False, "p4": False})
    >>> transition_sets(b, a)
    {'improved': ['p2'], 'lost': ['p4'], 'stable_correct': ['p1'], 'stable_wrong': ['p3']}
    """
    b, a = _aligned(before, after)
    masks = {"improved": a & ~b, "lost": b & ~a, "stable_correct": a & b, "stable_wrong": ~a & ~b}
    return {name: sorted(b.index[m]) for name, m in masks.items()}


def transition_table(before: pd.Series, after: pd.Series, level: pd.Series | None = None) -> pd.DataFrame:
    """Problems per transition set, by level ("L1".. rows) and overall ("all"), between any two iterations.

    >>> b = pd.Series({"p1": True, "p2": False, "p3": False})
    >>> a = pd.Series({"p1": False, "p2": True, "p3": True})
    >>> transition_table(b, a, pd.Series({"p1": 1, "p2": 1, "p3": 2})).to_dict("index")["L1"]
    {'improved': 1, 'lost': 1, 'stable_correct': 0, 'stable_wrong': 0, 'problems': 2}
    """
    b, a = _aligned(before, after)
    groups = {"all": b.index}
    if level is not None:  # level rows from the problems that have one (MATH's "Level ?" loads as None)
        lv = level.reindex(b.index).dropna().astype(int)
        groups = {f"L{v}": lv.index[lv == v] for v in sorted(lv.unique())} | groups
    rows = {}
    for name, ids in groups.items():
        sets = transition_sets(b[ids], a[ids])
        rows[name] = {s: len(sets[s]) for s in SETS} | {"problems": len(ids)}
    return pd.DataFrame.from_dict(rows, orient="index")


def baseline_subsets(m1: pd.DataFrame, mt: pd.DataFrame) -> dict[str, list]:
    """Problem ids of IS(t) and its baselines: still unsolved at t, all M1 gets wrong greedily, all."""
    sets = transition_sets(m1["greedy_correct"], mt["greedy_correct"])
    return {"improved": sets["improved"], "still_unsolved": sets["stable_wrong"],
            "m1_wrong": sorted(sets["improved"] + sets["stable_wrong"]), "all": sorted(m1.index)}


def accuracy_at_n(m1: pd.DataFrame, subsets: dict[str, list], n_boot: int = 1000, seed: int = 0,
                  cap: int = 64) -> list[dict]:
    """Tidy rows `m1_accuracy@N` (subset, k = N, value, 95% interval, n problems): M1's unbiased pass@N,
    from its sampled responses (columns n, c), averaged over each subset's problems."""
    if not len(m1) or m1["n"].min() < 1:
        return []
    rows = []
    for n_draws in powers_of_two(int(m1["n"].min()), cap):
        per_problem = pd.Series(pass_at_k_per_problem(m1["n"], m1["c"], n_draws), index=m1.index)
        for name, ids in subsets.items():
            v = per_problem.reindex(ids).to_numpy()
            lo, hi = bootstrap_ci(v, n_boot, seed)
            rows.append(dict(metric="m1_accuracy@N", subset=name, k=n_draws,
                             value=float(v.mean()) if len(v) else None, ci_low=lo, ci_high=hi, n=len(v)))
    return rows


def improvement(m1: pd.DataFrame, mt: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict:
    """Everything about IS(t) for one split: the sets (ids), the by-level transition table, and tidy rows
    (`set:<name>` problem counts per level, `m1_accuracy@N` per baseline subset)."""
    sets = transition_sets(m1["greedy_correct"], mt["greedy_correct"])
    table = transition_table(m1["greedy_correct"], mt["greedy_correct"], m1.get("level"))
    rows = [dict(metric=f"set:{s}", subset=lv, k=None, value=int(r[s]), ci_low=None, ci_high=None,
                 n=int(r["problems"]))
            for lv, r in table.iterrows() for s in SETS]
    rows += accuracy_at_n(m1, baseline_subsets(m1, mt), n_boot, seed)
    n_max = max((r["k"] for r in rows if r["metric"] == "m1_accuracy@N"), default=None)
    return {"sets": sets, "by_level": table.to_dict("index"), "rows": rows, "accuracy_at_n_max": n_max}


def share_within_reach(m1: pd.DataFrame, improved: list, n_draws: int) -> float | None:
    """M1's pass@N averaged over IS(t): the expected share of the gained problems that M1 already solved
    within N samples (the verdict's 'share of the gain inside M1's pass@N').

    >>> m1 = pd.DataFrame({"n": [4, 4], "c": [1, 0]}, index=["p1", "p2"])
    >>> share_within_reach(m1, ["p1", "p2"], 4)
    0.5
    """
    if not improved:
        return None
    sub = m1.reindex(improved)
    return float(np.mean(pass_at_k_per_problem(sub["n"], sub["c"], n_draws)))
