"""The data that trains M_t from M(t-1)'s graded samples, the paper's Algorithm 1 line 7: DPO pairs
(prompt, chosen = a correct response, rejected = an incorrect one) of one problem, or SFT rows (prompt,
completion = a correct response). The paper gives neither its pairing rule nor an SFT cap.

Pure functions of a graded sample table; only the train stage calls them (train.build_data: M(t-1)'s
samples joined with their grades by runs.Run.graded, in, and iter_<t>/train_data.parquet, the data that made
M_t, out). Each row keeps its provenance: problem_id and sample_idx (SFT) or chosen_idx / rejected_idx (DPO).

Rules (`PAIRINGS`):
- `disjoint` (default): shuffle the problem's correct and incorrect responses and zip them, so each response
  is used at most once: min(#correct, #incorrect) pairs, capped at P. This is the released code of DIVE, the
  same lab's re-implementation (`get_preference_data.py`).
- `cross`: draw up to P distinct (correct, incorrect) combinations; responses may repeat across pairs.

SFT rows (`make_sft_rows`): the problem's correct responses, identical texts once (`dedup`), at most
`max_per_problem` drawn at random (0 = all): the paper's "all correct self-samples" with a cap, so one easy
problem cannot fill an iteration (our choice, TrainConfig).

Responses graded `no_answer` count as incorrect (they fail R(x, y) = 1); `timeout` and `error` rows are left
out, since their correctness is unknown. Problems with no correct or no incorrect response give no pair.
"""

from __future__ import annotations

import random

import pandas as pd

PAIR_COLUMNS = ["problem_id", "level", "prompt", "chosen", "rejected", "chosen_idx", "rejected_idx"]
SFT_COLUMNS = ["problem_id", "level", "prompt", "completion", "sample_idx"]
REJECTABLE = ("incorrect", "no_answer")


def _disjoint(good: list, bad: list, max_pairs: int, rng: random.Random) -> list[tuple]:
    rng.shuffle(good)
    rng.shuffle(bad)
    return list(zip(good, bad))[:max_pairs]


def _cross(good: list, bad: list, max_pairs: int, rng: random.Random) -> list[tuple]:
    combos = [(g, b) for g in good for b in bad]
    return rng.sample(combos, min(max_pairs, len(combos)))


PAIRINGS = {"disjoint": _disjoint, "cross": _cross}  # the names are schema.PAIRINGS


def make_pairs(df: pd.DataFrame, *, rule: str = "disjoint", max_pairs: int = 4, seed: int = 0) -> pd.DataFrame:
    """DPO pairs from a graded sample table (only `decoding == "sample"` rows), ordered by problem id.

    >>> df = pd.DataFrame({"problem_id": ["p"] * 3, "level": [1] * 3, "prompt": ["q"] * 3,
    ...                    "decoding": ["sample"] * 3, "sample_idx": [0, 1, 2], "response": ["a", "b", "c"],
    ...                    "status": ["correct", "incorrect", "timeout"]})
    >>> make_pairs(df, max_pairs=4)[["chosen", "rejected"]].values.tolist()
    [['a', 'b']]
    """
    rng = random.Random(seed)
    pair_fn = PAIRINGS[rule]
    rows = []
    sampled = df[df["decoding"] == "sample"].sort_values(["problem_id", "sample_idx"])
    for pid, group in sampled.groupby("problem_id", sort=True):
        good = [(i, r) for i, r, s in zip(group["sample_idx"], group["response"], group["status"]) if s == "correct"]
        bad = [(i, r) for i, r, s in zip(group["sample_idx"], group["response"], group["status"]) if s in REJECTABLE]
        if not good or not bad:
            continue
        first = group.iloc[0]
        for (gi, g), (bi, b) in pair_fn(good, bad, max_pairs, rng):
            rows.append({"problem_id": pid, "level": first["level"], "prompt": first["prompt"], "chosen": g,
                         "rejected": b, "chosen_idx": int(gi), "rejected_idx": int(bi)})
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def make_sft_rows(df: pd.DataFrame, *, max_per_problem: int = 4, dedup: bool = True, seed: int = 0) -> pd.DataFrame:
    """SFT rows from a graded sample table (only `decoding == "sample"` rows), ordered by problem id.

    >>> df = pd.DataFrame({"problem_id": ["p"] * 4, "level": [1] * 4, "prompt": ["q"] * 4,
    ...                    "decoding": ["sample"] * 4, "sample_idx": [0, 1, 2, 3], "response": ["a", "a", "b", "c"],
    ...                    "status": ["correct", "correct", "incorrect", "correct"]})
    >>> make_sft_rows(df, max_per_problem=0)[["completion", "sample_idx"]].values.tolist()
    [['a', 0], ['c', 3]]
    """
    rng = random.Random(seed)
    rows = []
    sampled = df[(df["decoding"] == "sample") & (df["status"] == "correct")].sort_values(["problem_id", "sample_idx"])
    for pid, group in sampled.groupby("problem_id", sort=True):
        keep, seen = [], set()
        for i, r in zip(group["sample_idx"], group["response"]):
            if dedup and r in seen:
                continue
            seen.add(r)
            keep.append((int(i), r))
        if max_per_problem and len(keep) > max_per_problem:
            keep = sorted(rng.sample(keep, max_per_problem))
        first = group.iloc[0]
        rows += [{"problem_id": pid, "level": first["level"], "prompt": first["prompt"], "completion": r,
                  "sample_idx": i} for i, r in keep]
    return pd.DataFrame(rows, columns=SFT_COLUMNS)


def shuffle_labels(df: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """The placebo arms' grades: within each problem, the statuses of its sampled responses permuted at random
    among them (only `correct`, `incorrect` and `no_answer`; `timeout` and `error` rows keep theirs), so each
    problem keeps its number of correct labels but they land on random responses. Pairs or SFT rows built from
    the result have the loop's shape and size with no information about correctness (our design of the
    placebo control). Returns a copy, `correct` recomputed.

    >>> df = pd.DataFrame({"problem_id": ["p"] * 4, "decoding": ["sample"] * 4, "sample_idx": [0, 1, 2, 3],
    ...                    "status": ["correct", "incorrect", "incorrect", "timeout"]})
    >>> out = shuffle_labels(df, seed=1)
    >>> sorted(out["status"][:3]), out["status"].iloc[3], int(out["correct"].sum())
    (['correct', 'incorrect', 'incorrect'], 'timeout', 1)
    """
    rng = random.Random(seed)
    out = df.copy()
    status = out["status"].tolist()
    known = (out["decoding"] == "sample") & out["status"].isin(("correct", *REJECTABLE))
    for _, idx in out.index[known.to_numpy()].to_series().groupby(out.loc[known, "problem_id"], sort=True):
        pos = [out.index.get_loc(i) for i in idx]
        values = [status[i] for i in pos]
        rng.shuffle(values)
        for i, v in zip(pos, values):
            status[i] = v
    out["status"] = status
    out["correct"] = out["status"] == "correct"
    return out


def gold_rows(problems: list[dict], prompts: list[str], *, max_per_problem: int = 4, max_rows: int = 0,
              seed: int = 0) -> pd.DataFrame:
    """The gold arm's SFT rows: up to `max_per_problem` (0 = all) gold solutions of each problem, in the order
    the problem lists them, with the solution's index as `sample_idx` (its provenance). `max_rows` (0 = no
    budget) keeps every problem's first solution, then every second one, and so on, the problems of a round
    taken in an order drawn with `seed`, until the budget is spent; rows stay in problem order.

    >>> rows = gold_rows([{"id": "f1", "level": 2, "solutions": ["a", "b", "c"]}], ["q"], max_per_problem=2)
    >>> rows["completion"].tolist(), rows["sample_idx"].tolist()
    (['a', 'b'], [0, 1])
    >>> two = [{"id": "f1", "level": 1, "solutions": ["a", "b"]}, {"id": "f2", "level": 1, "solutions": ["c", "d"]}]
    >>> sorted(gold_rows(two, ["q1", "q2"], max_rows=3)["sample_idx"].tolist())
    [0, 0, 1]
    """
    rows = []
    for p, prompt in zip(problems, prompts):
        sols = p.get("solutions") or []
        sols = sols[:max_per_problem] if max_per_problem else sols
        rows += [{"problem_id": p["id"], "level": p.get("level"), "prompt": prompt, "completion": s, "sample_idx": i}
                 for i, s in enumerate(sols)]
    if max_rows and len(rows) > max_rows:
        order = list(range(len(problems)))
        random.Random(seed).shuffle(order)
        rank = {p["id"]: r for r, p in zip(order, problems)}
        kept = sorted(range(len(rows)), key=lambda i: (rows[i]["sample_idx"], rank[rows[i]["problem_id"]]))
        rows = [rows[i] for i in sorted(kept[:max_rows])]
    return pd.DataFrame(rows, columns=SFT_COLUMNS)
