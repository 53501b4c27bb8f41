"""The paper's findings read from a verdict signals table (selfimprove/findings.py)."""

import pandas as pd

from selfimprove import findings
from selfimprove.verdict import COLUMNS


def _table(**fired) -> pd.DataFrame:
    comp = "M1->M3 (best)"
    rows = [dict(signal="pass@1", split="test", kind="gain", m1=0.5, mt=0.56, change=0.06, ci_low=0.02,
                 ci_high=0.1, relative=None, fired=True, n=300)]
    for metric in ("distinct_n", "embedding_diversity", "distinct_equations"):
        for subset in ("correct", "incorrect"):
            rows.append(dict(signal=f"{metric} ({subset})", split="test", kind="decline", m1=0.2, mt=0.15,
                             change=-0.05, ci_low=-0.07, ci_high=-0.03, relative=-0.25,
                             fired=fired.get(f"{metric}_{subset}", False), n=300))
    rows.append(dict(signal="pass@1", split="ood", kind="decline", m1=0.5, mt=0.1, change=-0.4, ci_low=-0.45,
                     ci_high=-0.35, relative=None, fired=True, n=200))
    rows.append(dict(signal="share of IS(t) within M1's pass@8", split="test", kind="note", m1=0.6, mt=0.9,
                     change=None, ci_low=None, ci_high=None, relative=None, fired=True, n=40))
    # a later comparison that must not be read: findings are at the best iterate
    rows.append(dict(signal="pass@1", split="test", kind="gain", m1=0.5, mt=0.4, change=-0.1, ci_low=-0.2,
                     ci_high=-0.05, relative=None, fired=False, n=300))
    df = pd.DataFrame([dict(comparison=comp, threshold=0.0, **r) for r in rows[:-1]]
                      + [dict(comparison="M1->M4 (last)", threshold=0.0, **rows[-1])])
    return df[COLUMNS]


def test_each_finding_is_read_at_the_best_iterate():
    found = {r["finding"]: r for r in findings.of_signals("sft", _table(distinct_n_incorrect=True,
                                                                        embedding_diversity_correct=True))}
    assert found["pass@1 gain"]["appears"] is True and found["pass@1 gain"]["value"] == 0.06
    assert found["OOD down"]["appears"] is True and found["OOD down"]["value"] == -0.4
    assert found["IS(t) within M1's reach"]["appears"] is True  # 90% of IS(t) against a 60% baseline
    assert found["disparity up"]["appears"] is None  # no disparity signal in the table: cannot tell
    div = found["diversity down (all 3)"]
    assert div["appears"] is False and div["text"].startswith("2/3 measures")


def test_diversity_down_needs_every_measure_and_an_empty_table_tells_nothing():
    every = {f"{m}_correct": True for m in ("distinct_n", "embedding_diversity", "distinct_equations")}
    found = {r["finding"]: r for r in findings.of_signals("sft", _table(**every))}
    assert found["diversity down (all 3)"]["appears"] is True
    assert all(r["appears"] is None for r in findings.of_signals("gold", pd.DataFrame()))


def test_seeds_markdown_counts_the_seeds_that_show_each_finding():
    a = pd.DataFrame(findings.of_signals("sft", _table())).assign(seed=0)
    b = pd.DataFrame(findings.of_signals("sft", _table(**{"distinct_n_correct": True}))).assign(seed=1)
    b.loc[b["finding"] == "OOD down", "appears"] = False
    text = findings.seeds_markdown(pd.concat([a, b], ignore_index=True))
    row = text.splitlines()[-1].split(" | ")
    assert row[0] == "| sft" and row[1].startswith("2/2 seeds (+0.060") and row[4].startswith("1/2 seeds")
    assert row[5].startswith("n/a")
