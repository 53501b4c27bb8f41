"""The paper's findings, one by one, for each arm of a study (and over seeds): does each appear?

The verdict gives one label per run. A reader who wants to know which of the paper's claims hold on their
own models needs each claim apart, with its interval (issue 17, point 7). Each finding is read from the
run's verdict signals (report/verdict.csv, verdict.signals) at the comparison M1 -> M_t*, the best iterate
(the paper's M_t*, its Figures 1 and 2; the verdict's first comparison):

- pass@1 gain: the test pass@1 change, and whether it is a gain (past `min_pass1_gain`, interval above 0).
- IS(t) within reach: the share of the gained problems IS(t) that M1 already solved within N samples,
  against the same share on every problem M1 got wrong greedily (paper §5.1, Fig. 3). It "appears"
  when the gained problems were more often within M1's reach than the baseline: the gain is answer
  selection more than new ability.
- diversity down, all three measures: distinct-n, embedding diversity and distinct equations (paper
  §5.2); it appears when every measure has a fired decline, on correct or on incorrect responses.
- OOD down: the OOD pass@1 decline fired (paper §5.3, Fig. 5).
- group disparity up: the test disparity between the easiest and hardest level rose (paper §5.3, Fig. 5).

"Appears" uses the run's own verdict thresholds, so a finding appears exactly when the verdict counts it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import diversity
from .runs import Run

FINDINGS = ("pass@1 gain", "IS(t) within M1's reach", "diversity down (all 3)", "OOD down", "disparity up")
COLUMNS = ["arm", "finding", "appears", "value", "ci_low", "ci_high", "text"]


def _row(arm, finding, appears, value=None, lo=None, hi=None, text="") -> dict:
    return dict(arm=arm, finding=finding, appears=appears, value=value, ci_low=lo, ci_high=hi, text=text)


def _num(x) -> float | None:
    return None if x is None or pd.isna(x) else float(x)


def _ci(r) -> str:
    lo, hi = _num(r["ci_low"]), _num(r["ci_high"])
    return "" if lo is None else f" [{lo:+.3f}, {hi:+.3f}]"


def of_signals(arm: str, table: pd.DataFrame) -> list[dict]:
    """The findings of one run from its verdict signals table (verdict.Verdict.table / report/verdict.csv),
    at its first comparison (M1 -> the best iterate). A finding the table cannot tell is `appears` None.

    >>> t = pd.DataFrame([dict(comparison="M1->M2 (best)", signal="pass@1", split="test", kind="gain", m1=0.5,
    ...     mt=0.55, change=0.05, ci_low=0.01, ci_high=0.09, relative=None, fired=True, n=100)])
    >>> [(r["finding"], r["appears"]) for r in of_signals("sft", t)][:2]
    [('pass@1 gain', True), ("IS(t) within M1's reach", None)]
    """
    if not len(table):
        return [_row(arm, f, None, text="no verdict") for f in FINDINGS]
    t = table[table["comparison"] == table["comparison"].iloc[0]]
    comp = str(t["comparison"].iloc[0])
    out = []

    def one(mask):
        rows = t[mask]
        return rows.iloc[0] if len(rows) else None

    gain = one((t["signal"] == "pass@1") & (t["split"] == "test") & (t["kind"] == "gain"))
    out.append(_row(arm, FINDINGS[0], None, text="no test pass@1") if gain is None else
               _row(arm, FINDINGS[0], bool(gain["fired"]), _num(gain["change"]), _num(gain["ci_low"]),
                    _num(gain["ci_high"]), f"{gain['change']:+.3f}{_ci(gain)} ({comp})"))
    note = one(t["signal"].str.startswith("share of IS(t)"))
    if note is None or _num(note["mt"]) is None or not note["n"]:
        out.append(_row(arm, FINDINGS[1], None, text="no gained problems" if note is not None else "not measured"))
    else:
        share, base = _num(note["mt"]), _num(note["m1"])
        out.append(_row(arm, FINDINGS[1], base is not None and share > base, share, text=(
            f"{share:.0%} of {int(note['n'])} gained within {note['signal'].split()[-1]}"
            + ("" if base is None else f" vs {base:.0%} baseline"))))
    fired = {m: [] for m in diversity.METRICS}
    seen = set()
    for m in diversity.METRICS:  # the verdict names a diversity signal "<metric> (<subset>)"
        for r in t[t["signal"].isin([f"{m} ({sub})" for sub in diversity.SUBSETS])].itertuples():
            seen.add(m)
            if r.fired:
                fired[m].append(f"{r.signal} {r.relative:+.0%}")
    down = [m for m in diversity.METRICS if fired[m]]
    out.append(_row(arm, FINDINGS[2], len(seen) == len(diversity.METRICS) and len(down) == len(seen),
                    float(len(down)), text=f"{len(down)}/{len(seen)} measures" + (
                        ": " + ", ".join(x for m in down for x in fired[m]) if down else ""))
               if seen else _row(arm, FINDINGS[2], None, text="not measured"))
    for finding, mask in ((FINDINGS[3], (t["signal"] == "pass@1") & (t["split"] == "ood")),
                          (FINDINGS[4], t["signal"].str.startswith("group disparity") & (t["split"] == "test"))):
        r = one(mask)
        out.append(_row(arm, finding, None, text="not measured") if r is None else
                   _row(arm, finding, bool(r["fired"]), _num(r["change"]), _num(r["ci_low"]), _num(r["ci_high"]),
                        f"{r['change']:+.3f}{_ci(r)}"))
    return out


def of_run(run: Run) -> list[dict]:
    """The findings of a run from its report/verdict.csv (written by its report)."""
    arm = run.config()["paradigm"]
    path = run.paths.report / "verdict.csv"
    return of_signals(arm, pd.read_csv(path) if path.exists() else pd.DataFrame())


def table(runs: list[Run]) -> pd.DataFrame:
    """One row per (arm, finding) over the runs of a study."""
    return pd.DataFrame([r for run in runs for r in of_run(run)], columns=COLUMNS)


def _mark(appears) -> str:
    return "n/a" if appears is None or pd.isna(appears) else ("yes" if appears else "no")


def markdown(df: pd.DataFrame) -> str:
    """A study's findings: arms as rows, findings as columns, each cell yes/no with its number."""
    lines = ["| arm | " + " | ".join(FINDINGS) + " |", "|---|" + "---|" * len(FINDINGS)]
    for arm, g in df.groupby("arm", sort=False):
        cells = {r.finding: f"{_mark(r.appears)}: {r.text}" for r in g.itertuples()}
        lines.append(f"| {arm} | " + " | ".join(cells.get(f, "") for f in FINDINGS) + " |")
    return "\n".join(lines)


def seeds_markdown(df: pd.DataFrame) -> str:
    """Findings over seeds (`df` has a `seed` column): per arm and finding, the seeds where it appears out of
    those that could tell, and the finding's number as mean [min, max] over seeds."""
    lines = ["| arm | " + " | ".join(FINDINGS) + " |", "|---|" + "---|" * len(FINDINGS)]
    for arm, g in df.groupby("arm", sort=False):
        cells = []
        for f in FINDINGS:
            h = g[(g["finding"] == f) & g["appears"].notna()]
            if not len(h):
                cells.append("n/a")
                continue
            v = h["value"].dropna()
            num = "" if not len(v) else (f" ({v.mean():.0f} of 3 measures, mean)" if f == FINDINGS[2] else
                                         f" ({v.mean():+.3f} [{v.min():+.3f}, {v.max():+.3f}])" if f != FINDINGS[1]
                                         else f" ({v.mean():.0%} mean share)")
            cells.append(f"{int(h['appears'].astype(bool).sum())}/{len(h)} seeds{num}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write(df: pd.DataFrame, out: Path, seeds: bool = False) -> Path:
    """findings.md and findings.csv into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "findings.csv", index=False)
    head = ("Which of the paper's findings appear, per arm (M1 -> the best iterate M_t*; "
            "selfimprove/findings.py says how each is read)")
    body = seeds_markdown(df) if seeds else markdown(df)
    (out / "findings.md").write_text(f"{head}\n\n{body}\n")
    return out / "findings.md"
