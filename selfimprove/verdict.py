"""The verdict of a run: is the pass@1 gain progress, or self-improvement reversal (paper, abstract)?

The paper defines reversal in words, not by a number: "as pass@1 accuracy improves, broader capabilities
like output diversity and out-of-distribution generalization decline" (verbatim from the authors' project page;
the abstract says the same). Our operational rule (inferred from that definition, which gives no numeric rule;
the thresholds are our choices, all in `Thresholds`):

- From M1 to the best iterate (highest greedy test pass@1 among t >= 2, the paper's M_t*) and to the last,
  compute the reversal signals with 95% bootstrap intervals over problems: the test pass@1 change (paired:
  the same problems), every test diversity change (distinct-n, embedding, distinct equations; correct and
  incorrect responses; unpaired: each mean covers the problems with a full set), the OOD pass@1 change, the
  group-disparity change on test and OOD (paired), and the share of the gained problems (IS(t)) that M1
  already solved within N samples, N = 64 or the most samples M1 has, stated.
- A comparison is a *gain* when the pass@1 change exceeds `min_pass1_gain` and its interval lies above 0.
  A *decline* fires when a diversity mean falls by more than `diversity_drop` of M1's value, OOD pass@1
  falls by more than `ood_drop`, group disparity rises by more than `disparity_rise`, or test pass@1 itself
  falls by more than `min_pass1_gain` (a proven loss: the run moved, for the worse), each with its
  interval excluding 0. The comparison's label:

      gain and a decline        reversal
      gain, no decline          progress
      no gain, a decline        regression   (worse, and not even a proven pass@1 gain to show for it; a
                                             proven pass@1 loss is such a decline)
      no gain, no decline       no gain      (nothing moved past the thresholds)

- The answer-selection share does not decide the label: the paper's definition names declines, and a gain
  inside M1's reach is no loss. It is reported, and flagged past `selection_share`.
- The run's label: the first of reversal, progress, regression, no gain that either comparison has (a run
  whose best iterate gains cleanly is progress even if its last iterate regresses; the line names both).
- The one-line verdict lists a comparison's declines largest first and names the largest: the one that
  moved most relative to M1's value (|change| / |M1|; a decline from a zero M1 value ranks first), so the
  units of diversity, accuracy and disparity compare (our choice).

The thresholds are the run's (recipe section `verdict:`, recorded in its manifest; runs.Run.thresholds).
`selfimprove metrics <run_dir>`, `selfimprove report` and the end of `selfimprove run` write
report/verdict.{md,csv,json} with them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import artifacts, diversity
from .estimators import disparity_change, paired_change_ci, unpaired_change_ci
from .improvement import share_within_reach, transition_sets
from .runs import Run, best_iterate
from .schema import Thresholds

LABELS = ("reversal", "progress", "regression", "no gain")  # the run's label: the first any comparison has


@dataclass
class Verdict:
    label: str  # one of LABELS: "reversal", "progress", "regression" or "no gain"
    line: str  # the one-line verdict with its reasons
    table: pd.DataFrame  # one row per (comparison, signal)
    best: int
    last: int


COLUMNS = ["comparison", "signal", "split", "kind", "m1", "mt", "change", "ci_low", "ci_high", "relative",
           "threshold", "fired", "n"]


def _split(pp: pd.DataFrame, split: str) -> pd.DataFrame:
    return pp[pp["split"] == split].set_index("problem_id") if len(pp) else pp


def _fires(change, ci, threshold, th: Thresholds, direction: int) -> bool:
    """direction +1: fires on a rise beyond threshold; -1: on a fall."""
    if change is None or not np.isfinite(change) or direction * change <= threshold:
        return False
    if not th.require_ci:
        return True
    lo, hi = ci
    return lo is not None and (lo > 0 if direction > 0 else hi < 0)


def _accuracy_signal(split, a, b, kind, threshold, direction, th, n_boot, seed):
    """Greedy pass@1 change on the problems both tables have (paired)."""
    ids = a.index[a["greedy_correct"].notna()].intersection(b.index[b["greedy_correct"].notna()])
    if not len(ids):
        return None
    x, y = a.loc[ids, "greedy_correct"].to_numpy(float), b.loc[ids, "greedy_correct"].to_numpy(float)
    change = float(y.mean() - x.mean())
    ci = paired_change_ci(x, y, n_boot, seed)
    return dict(signal="pass@1", split=split, kind=kind, m1=float(x.mean()), mt=float(y.mean()), change=change,
                ci_low=ci[0], ci_high=ci[1], relative=None, threshold=direction * threshold,
                fired=_fires(change, ci, threshold, th, direction), n=len(ids))


def _diversity_signal(col, a, b, th, n_boot, seed):
    """Change of a diversity mean (unpaired: each iterate's mean covers its problems with a full set),
    judged relative to M1's value."""
    x, y = a[col].dropna().to_numpy(), b[col].dropna().to_numpy()
    if not len(x) or not len(y):
        return None
    change = float(y.mean() - x.mean())
    ci = unpaired_change_ci(x, y, n_boot, seed)
    base = float(x.mean())
    rel = change / base if base > 0 else None
    rel_ci = (None, None) if ci[0] is None or rel is None else (ci[0] / base, ci[1] / base)
    metric, subset = col.split(":")
    return dict(signal=f"{metric} ({subset})", split="test", kind="decline", m1=base, mt=float(y.mean()),
                change=change, ci_low=ci[0], ci_high=ci[1], relative=rel, threshold=-th.diversity_drop,
                fired=rel is not None and _fires(rel, rel_ci, th.diversity_drop, th, -1), n=int(min(len(x), len(y))))


def signals(m1: pd.DataFrame, mt: pd.DataFrame, th: Thresholds = Thresholds(), n_boot: int = 1000,
            seed: int = 0) -> list[dict]:
    """Every reversal signal from M1 to M_t, from their per-problem tables (metrics.per_problem_table plus
    diversity columns and a `split` column, as iter_<t>/per_problem.parquet)."""
    out = []
    t1, tt = _split(m1, "test"), _split(mt, "test")
    o1, ot = _split(m1, "ood"), _split(mt, "ood")
    if len(t1) and len(tt):
        out.append(_accuracy_signal("test", t1, tt, "gain", th.min_pass1_gain, +1, th, n_boot, seed))
        # a proven loss of the trained ability is a decline too: a run that fell is not "no gain" (issue 17)
        out.append(_accuracy_signal("test", t1, tt, "decline", th.min_pass1_gain, -1, th, n_boot, seed))
    for col in [c for c in t1.columns if c.split(":")[0] in diversity.METRICS and c in tt.columns]:
        out.append(_diversity_signal(col, t1, tt, th, n_boot, seed))
    if len(o1) and len(ot):
        out.append(_accuracy_signal("ood", o1, ot, "decline", th.ood_drop, -1, th, n_boot, seed))
    for split, a, b in (("test", t1, tt), ("ood", o1, ot)):
        if not len(a) or not len(b):
            continue
        ids = a.index[a["level"].notna()].intersection(b.index)  # MATH's "Level ?" problems have no level
        d = disparity_change(a.loc[ids, "greedy_correct"], b.loc[ids, "greedy_correct"], a.loc[ids, "level"],
                             n_boot, seed)
        if d is not None:
            out.append(dict(signal=f"group disparity (L{d['levels'][0]}-L{d['levels'][1]})", split=split,
                            kind="decline", m1=d["before"], mt=d["after"], change=d["value"], ci_low=d["ci"][0],
                            ci_high=d["ci"][1], relative=None, threshold=th.disparity_rise,
                            fired=_fires(d["value"], d["ci"], th.disparity_rise, th, +1), n=len(ids)))
    if len(t1) and len(tt) and (t1["n"] > 0).all():
        n_draws = min(64, int(t1["n"].min()))  # N = 64 (the end of the paper's Figure 3 grid) or all M1 has
        ids = t1.index.intersection(tt.index)
        sets = transition_sets(t1.loc[ids, "greedy_correct"].fillna(0), tt.loc[ids, "greedy_correct"].fillna(0))
        share = share_within_reach(t1, sets["improved"], n_draws)
        base = share_within_reach(t1, sorted(sets["improved"] + sets["stable_wrong"]), n_draws)
        # m1 column: the baseline (M1's pass@N on every problem it got wrong greedily); mt column: on IS(t).
        out.append(dict(signal=f"share of IS(t) within M1's pass@{n_draws}", split="test", kind="note",
                        m1=base, mt=share, change=None, ci_low=None, ci_high=None, relative=None,
                        threshold=th.selection_share, fired=share is not None and share >= th.selection_share,
                        n=len(sets["improved"])))
    return [r for r in out if r is not None]


def _fmt(r: dict) -> str:
    if r["relative"] is not None:
        ci = "" if r["ci_low"] is None else f" [{r['ci_low'] / r['m1']:+.1%}, {r['ci_high'] / r['m1']:+.1%}]"
        return f"{r['signal']} {r['relative']:+.1%}{ci}"
    ci = "" if r["ci_low"] is None else f" [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
    return f"{r['signal']}{'' if r['split'] == 'test' else ' ' + r['split']} {r['change']:+.3f}{ci}"


def decline_size(r: dict) -> float:
    """How large a fired decline is, to rank declines of different units: |change| / |M1's value| (inf for
    a decline from zero). In: a signals() row.

    >>> decline_size({"change": -0.05, "m1": 0.5}), decline_size({"change": 0.02, "m1": 0.0})
    (0.1, inf)
    """
    return abs(r["change"]) / abs(r["m1"]) if r["m1"] else float("inf")


def _largest(declines: list[dict]) -> str:
    """'; the largest decline: <signal> (<change relative to M1>)' for declines sorted largest first."""
    r = declines[0]
    name = r["signal"] + ("" if r["split"] == "test" else f" {r['split']}")
    rel = "" if not r["m1"] else f" ({r['change'] / abs(r['m1']):+.0%} of M1)"
    return f"; the largest decline: {name}{rel}"


def judge(per_problem: dict[int, pd.DataFrame], th: Thresholds = Thresholds(), n_boot: int = 1000,
          seed: int = 0) -> Verdict:
    """The verdict from per-problem tables {t: table} (t = 1 and at least one t >= 2)."""
    if 1 not in per_problem or len(per_problem) < 2:
        raise ValueError(f"a verdict needs M1 and at least one later iterate, got iterations {sorted(per_problem)}")
    later = sorted(t for t in per_problem if t >= 2)
    best = best_iterate({t: _split(per_problem[t], "test")["greedy_correct"].mean() for t in later})
    last = later[-1]
    best = last if best is None else best  # no test pass@1 in any later iterate: judge the last
    rows, labels, lines = [], {}, {}
    for t, role in ((best, "best"), (last, "last")) if best != last else ((best, "best and last"),):
        comp = f"M1->M{t} ({role})"
        sig = signals(per_problem[1], per_problem[t], th, n_boot, seed)
        rows += [dict(comparison=comp, **r) for r in sig]
        gain = next((r for r in sig if r["kind"] == "gain"), None)
        declines = sorted((r for r in sig if r["kind"] == "decline" and r["fired"]), key=decline_size, reverse=True)
        notes = [r for r in sig if r["kind"] == "note" and r["mt"] is not None]
        if gain is None or not gain["fired"]:
            labels[comp] = "regression" if declines else "no gain"
            lost = any(r["signal"] == "pass@1" and r["split"] == "test" for r in declines)
            lines[comp] = f"{comp}: " + (_fmt(gain) if gain else "no test pass@1") + \
                (" is a loss" if lost else " is not a gain")
            others = [r for r in declines if not (r["signal"] == "pass@1" and r["split"] == "test")]
            if others:
                lines[comp] += ", while " + ", ".join(_fmt(r) for r in others)
            if declines:
                lines[comp] += _largest(declines)
            continue
        labels[comp] = "reversal" if declines else "progress"
        text = f"{comp}: {_fmt(gain)}"
        text += (" while " + ", ".join(_fmt(r) for r in declines) + _largest(declines)) if declines else \
            ", with no decline in diversity, OOD accuracy or group disparity past the thresholds"
        for r in notes:
            text += f"; {r['mt']:.0%} of the {r['n']} gained problems were within M1's {r['signal'].split()[-1]}"
            text += f" (M1's {r['m1']:.0%} on all it got wrong greedily)" if r["m1"] is not None else ""
        lines[comp] = text
    label = next(lab for lab in LABELS if lab in labels.values())
    lead = next(c for c in lines if labels[c] == label)
    others = [f"{c}: {labels[c]}" for c in lines if c != lead]
    line = f"{label.upper()}: {lines[lead]}" + (f" ({'; '.join(others)})" if others else "")
    return Verdict(label=label, line=line, table=pd.DataFrame(rows, columns=COLUMNS), best=best, last=last)


def _val(x) -> float | None:
    """A table cell as a number, None for a missing one (pandas turns None into NaN)."""
    return None if x is None or (isinstance(x, float) and not np.isfinite(x)) else float(x)


def _threshold_cell(r: dict) -> str:
    """When a signal fires, as a comparison: a gain above its threshold; a decline below a negative threshold
    (or 0, a pass@1 loss; a diversity decline's is relative to M1's value) or, for a rise that is a decline
    (group disparity), above a positive one; a note's share at or above it.

    >>> [_threshold_cell(dict(kind=k, threshold=t, relative=None)) for k, t in (("gain", 0), ("decline", -0.0),
    ...                                                                          ("decline", 0.01), ("note", 0.9))]
    ['> 0', '< 0', '> 0.01', '>= 0.9']
    >>> _threshold_cell(dict(kind="decline", threshold=-0.05, relative=-0.06))
    '< -5% of M1'
    """
    sign = ">= " if r["kind"] == "note" else "< " if r["kind"] == "decline" and r["threshold"] <= 0 else "> "
    if _val(r.get("relative")) is not None:
        return f"{sign}{r['threshold']:.0%} of M1"
    return f"{sign}{r['threshold'] + 0.0:g}"  # + 0.0: -0.0 shows as 0


def to_markdown(v: Verdict) -> str:
    """The verdict line and its signals table, as Markdown."""
    out = [f"**Verdict: {v.line}**", "",
           "| comparison | signal | split | M1 | M_t | change [95% CI] | fires when the change is | fired |",
           "|---|---|---|---|---|---|---|---|"]
    for r in v.table.to_dict("records"):
        m1, mt, ch, lo, hi, rel = (_val(r[c]) for c in ("m1", "mt", "change", "ci_low", "ci_high", "relative"))
        cell = "" if ch is None else f"{ch:+.3f}"
        cell += "" if lo is None else f" [{lo:+.3f}, {hi:+.3f}]"
        cell += "" if rel is None else f" ({rel:+.1%} of M1)"
        out.append(f"| {r['comparison']} | {r['signal']} | {r['split']} | {'' if m1 is None else f'{m1:.3f}'} | "
                   f"{'' if mt is None else f'{mt:.3f}'} | {cell} | {_threshold_cell(r)} | "
                   f"{'yes' if r['fired'] else ''} |")
    return "\n".join(out)


def for_run(run_dir: str | Path | Run, th: Thresholds | None = None, n_boot: int | None = None,
            seed: int | None = None) -> Verdict | None:
    """The verdict of a run from its iter_<t>/per_problem.parquet files; None before two iterates exist.
    `th` defaults to the run's own thresholds (Run.thresholds: its recipe's `verdict` section, else the
    defaults). n_boot and seed default to those its evaluate stage recorded (1,000 resamples where it recorded
    0: the verdict's signals need intervals)."""
    run = run_dir if isinstance(run_dir, Run) else Run(run_dir)
    tables = run.per_problem_tables()
    if 1 not in tables or len(tables) < 2:
        return None
    recorded = run.evaluate_settings()
    n_boot = (recorded.get("bootstrap") or 1000) if n_boot is None else n_boot
    seed = recorded.get("seed", 0) if seed is None else seed
    return judge(tables, run.thresholds() if th is None else th, n_boot, seed)


def write(v: Verdict, run_dir: str | Path, th: Thresholds) -> list[Path]:
    """report/verdict.md, verdict.csv (the signals table) and verdict.json (label, line, thresholds)."""
    report = artifacts.RunPaths(run_dir).report
    report.mkdir(parents=True, exist_ok=True)
    (report / "verdict.md").write_text(to_markdown(v) + "\n")
    v.table.to_csv(report / "verdict.csv", index=False)
    info = {"label": v.label, "line": v.line, "best": v.best, "last": v.last, "thresholds": asdict(th)}
    (report / "verdict.json").write_text(json.dumps(info, indent=2) + "\n")
    return [report / "verdict.md", report / "verdict.csv", report / "verdict.json"]
