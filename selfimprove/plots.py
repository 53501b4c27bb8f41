"""Figures from the tidy metrics table (metrics.collect); each function takes a DataFrame, returns a Figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files, not windows: the pipeline runs headless
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402


def pass1_by_iteration(table: pd.DataFrame, title: str = "") -> plt.Figure:
    """Greedy pass@1 per iteration: test overall and per level (left), test vs OOD with 95% intervals (right).
    The best iterate is marked with its gain over M1, as in the paper's Figure 1 (paper.md §3.1)."""
    sns.set_theme(style="whitegrid", context="paper")
    p1 = table[table["metric"] == "pass@1"]
    fig, (ax_l, ax_r) = plt.subplots(1, 2, figsize=(10, 3.8))
    lv = p1[(p1["split"] == "test") & p1["subset"].str.fullmatch(r"L\d+")].copy()
    lv["level"] = lv["subset"].str[1:].astype(int).map(lambda x: f"level {x}")
    sns.lineplot(lv, x="iteration", y="value", hue="level", marker="o", palette="viridis", ax=ax_l)
    overall = p1[p1["subset"] == "all"].copy()
    overall["split"] = overall["split"].map({"test": "test (in-domain)", "ood": "OOD (unseen templates)"})
    sns.lineplot(overall, x="iteration", y="value", hue="split", style="split", marker="o", ax=ax_r)
    for i, (_, g) in enumerate(overall.groupby("split", sort=False)):
        if g["ci_low"].notna().all():  # the 95% bootstrap interval over problems
            ax_r.fill_between(g["iteration"], g["ci_low"].astype(float), g["ci_high"].astype(float), alpha=0.15,
                              color=f"C{i}", linewidth=0)
    test = overall[overall["split"] == "test (in-domain)"].set_index("iteration")["value"]
    if len(test):
        best = int(test.idxmax())
        gain = test[best] - test.iloc[0]
        ax_r.scatter([best], [test[best]], s=140, zorder=5, color="C0", edgecolor="black")
        ax_r.annotate(f"{gain * 100:+.1f}", (best, test[best]), textcoords="offset points", xytext=(0, 9),
                      ha="center")
    for ax, name in ((ax_l, "Test pass@1 by level (greedy)"), (ax_r, "Pass@1, in-domain vs OOD (greedy)")):
        ax.set_xlabel("iteration t (model M_t)")
        ax.set_ylabel("pass@1")
        ax.set_title(name)
        ax.set_xticks(sorted(table["iteration"].unique()))
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8, title=None, loc="upper right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
