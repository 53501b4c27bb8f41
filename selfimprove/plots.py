"""The paper's figures, from the tidy metrics table of one run or many (metrics.collect; runs_table).

Every function takes that table and returns a matplotlib Figure; `save` writes it as PNG and PDF. The
figures (the paper's Figures 1-5):

- figure1_pass1: greedy test pass@1 per iteration, a panel per (model, task), a line per paradigm, the best
  iterate M_t* (t >= 2, as verdict.py) marked with its gain over M1 above and its pass@1 below (Figure 1).
- figure2_coverage: M1's correct-answer coverage of its training problems beside the best iterate of each
  paradigm, the best paradigm starred (Figure 2, right).
- figure3_improvement_sets: M1's accuracy@N on each improvement set IS(t), with M1's accuracy@N on all
  problems and on the ones it gets wrong greedily as baselines (Figure 3; they answer the third ICLR 2025
  OpenReview review).
- figure4_diversity: distinct-n, embedding and distinct-equation diversity per iteration, correct and
  incorrect responses apart (Figure 4).
- figure5_ood_disparity: OOD pass@1 beside in-domain pass@1, and group disparity per iteration (Figure 5).
- reversal_dashboard: one page with pass@1 beside pass@k, diversity, OOD and disparity, and beyond the paper,
  the final answers' entropy, KL(M_t || M1) and the OOD change against it.
- beyond_reach (beyond the paper, docs/beyond.md): pass@k curves of M1, M_t* and M_T with their crossover k*
  and the support ledger as stacked bars per iteration; pass@k within the margin of random guessing crossed out.

A paradigm keeps one colour in every figure (PARADIGM_COLORS); every axis is labelled; a panel whose data
are missing says so instead of failing. `selfimprove figures <run or study dirs> --out figures` renders
them all; notebooks/50_analysis.ipynb does the same, showing each figure.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # a notebook keeps its inline backend, to show the figures
    matplotlib.use("Agg")  # files, not windows: the pipeline runs headless
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from . import metrics, runs  # noqa: E402
from .estimators import paradigm_advice  # noqa: E402

# One colour per paradigm in every figure (our choice: seaborn's colorblind palette, entries 0, 1, 2).
PARADIGM_COLORS = {"sft": "#0173b2", "dpo": "#de8f05", "sft-dpo": "#029e73"}
PARADIGM_LABELS = {"sft": "Iterative SFT", "dpo": "Iterative DPO", "sft-dpo": "Iterative SFT-DPO"}
# The ground-truth control arms (schema.CONTROLS) are drawn as reference lines: grey tones, dash-dot (our choice).
CONTROL_COLORS = {"gold": "#555555", "placebo-sft": "#a0a0a0", "placebo-dpo": "#a0a0a0"}
CONTROL_LABELS = {"gold": "control: gold SFT (fresh problems)", "placebo-sft": "control: placebo SFT (shuffled)",
                  "placebo-dpo": "control: placebo DPO (shuffled)"}
ARM_COLORS, ARM_LABELS = {**PARADIGM_COLORS, **CONTROL_COLORS}, {**PARADIGM_LABELS, **CONTROL_LABELS}
DEFAULT_PARADIGM = "dpo"  # a manifest without a paradigm key predates the field, whose default is DPO (config.py)
DIVERSITY_LABELS = {"distinct_n": "distinct-n, n = 1..5 (syntactic)",
                    "embedding_diversity": "1 - mean cosine similarity (semantic)",
                    "distinct_equations": "share of distinct equations (logical)"}
SUBSET_STYLES = {"correct": "-", "incorrect": "--"}  # correct vs incorrect responses (Figure 4)
SPLIT_STYLES = {"ood": "-", "test": "--"}  # group disparity: OOD (the paper's Figure 5) and in-domain
SOLVED_STYLES = {"solved": "-", "unsolved": "--"}  # answer entropy on solved vs unsolved problems (our choice)
# The support ledger's classes (Wu et al. 2025), from seaborn's colorblind palette (our choice).
LEDGER_COLORS = {"preserved": "#029e73", "gained": "#0173b2", "lost": "#d55e00", "never": "#cccccc"}
LEDGER_LABELS = {"preserved": "preserved (both)", "gained": "gained (M_t only: expansion)",
                 "lost": "lost (M1 only: shrinkage)", "never": "never solved"}
ITERATION_LABEL = "iteration t (model M_t)"
PANEL_W, PANEL_H = 3.7, 2.9  # inches per panel (our choice)
RUN_COLUMNS = ["run", "task", "model", "paradigm"]


class PlotsError(ValueError):
    """A run or study directory cannot be read for figures; the message names the path."""


# ---------------------------------------------------------------------------------------------------------
# Loading: run and study directories -> one tidy table.

def _run_dirs(path: Path) -> list[tuple[str, Path]]:
    """(name, run dir) for a run directory, or for each run of a study directory (runs.Study)."""
    if not path.is_dir():
        raise PlotsError(f"{path}: no such directory (expected a run or a study directory)")
    if runs.Study.is_run(path):
        return [(path.name, path)]
    subs = runs.Study(path).run_dirs()
    if not subs:
        raise PlotsError(f"{path}: neither a run (no manifest.json) nor a study (no subfolder with a manifest.json)")
    return [(f"{path.name}/{p.name}", p) for p in subs]


def _model_name(config: dict) -> str:
    model = config.get("model")
    if isinstance(model, dict):
        model = model.get("name") or model.get("path")
    return str(model) if model else "organism"  # no model key: the built-in organism of the task (our label)


def runs_table(paths) -> pd.DataFrame:
    """The tidy metrics table (metrics.collect) of every run in `paths` (run and/or study directories), with
    columns run, task, model and paradigm from each run's manifest config. A study expands into its runs."""
    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    if not paths:
        raise PlotsError("no run or study directory given")
    found: dict[Path, str] = {}
    for p in paths:
        for name, d in _run_dirs(Path(p)):
            found.setdefault(d.resolve(), name)
    tables, organisms = [], {}
    for d, name in found.items():
        manifest = runs.Run(d).manifest()
        config = manifest["config"]
        if not config.get("model"):  # the organism M1 of this run's organism config (prepare: build.json)
            organisms[name] = str((manifest.get("organism") or {}).get("digest") or "")
        paradigm = config.get("paradigm", DEFAULT_PARADIGM)
        if paradigm not in ARM_COLORS:
            raise PlotsError(f"{d / 'manifest.json'}: paradigm {paradigm!r} is not one of {list(ARM_COLORS)}")
        table = metrics.collect(d)
        if not len(table):
            raise PlotsError(f"{d}: no evaluated iteration (no iter_<t>/metrics.json with rows)")
        tables.append(table.assign(run=name, task=config.get("task", "?"), model=_model_name(config),
                                   paradigm=paradigm))
    out = pd.concat(tables, ignore_index=True)
    if len(set(organisms.values())) > 1:  # different organisms are different M1s: a panel (model, task) each
        named = out["run"].map(organisms)
        out.loc[named.notna(), "model"] = "organism " + named[named.notna()].str[:8]
    return out[RUN_COLUMNS + metrics.TABLE_COLUMNS]


def _prepare(table: pd.DataFrame) -> pd.DataFrame:
    """A copy with numeric values and the run columns (a single run's metrics.collect table lacks them)."""
    missing = set(metrics.TABLE_COLUMNS) - set(table.columns)
    if missing:
        raise PlotsError(f"the metrics table lacks column(s) {sorted(missing)}; build it with runs_table()")
    t = table.copy()
    for col, default in zip(RUN_COLUMNS, ("run", "?", "organism", DEFAULT_PARADIGM)):
        if col not in t.columns:
            t[col] = default
    for col in ("value", "ci_low", "ci_high"):
        t[col] = pd.to_numeric(t[col], errors="coerce")
    t["iteration"] = t["iteration"].astype(int)
    return t


def _select(t: pd.DataFrame, split: str, metric: str, subset: str | None = "all", k=None) -> pd.DataFrame:
    rows = t[(t["split"] == split) & (t["metric"] == metric)]
    if subset is not None:
        rows = rows[rows["subset"] == subset]
    if k is not None:
        rows = rows[rows["k"] == k]
    return rows[rows["value"].notna()].sort_values(["run", "iteration"])


def _groups(t: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows) per (model, task), in a stable order."""
    return [(f"{model} · {task}", g) for (model, task), g in t.groupby(["model", "task"], sort=True)]


def _paradigms(t: pd.DataFrame) -> list[str]:
    return [p for p in ARM_COLORS if p in set(t["paradigm"])]


# ---------------------------------------------------------------------------------------------------------
# Drawing helpers.

def _grid(nrows: int, ncols: int, title: str) -> tuple[plt.Figure, np.ndarray]:
    sns.set_theme(style="whitegrid", context="paper")  # close to the paper's light-grid line plots
    fig, axes = plt.subplots(nrows, ncols, figsize=(PANEL_W * ncols, PANEL_H * nrows + 0.6), squeeze=False,
                             layout="constrained")
    fig.suptitle(title)
    return fig, axes


def _frame(ax, xlabel: str, ylabel: str, title: str = "", iterations: bool = True) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    if iterations:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _missing(ax, what: str) -> None:
    """Say in the panel what is missing (a figure renders what exists, never fails on a gap)."""
    ax.text(0.5, 0.5, f"no data:\n{what}", transform=ax.transAxes, ha="center", va="center", fontsize=8,
            color="0.35", wrap=True, gid="missing")


def _label(t: pd.DataFrame, run: str, paradigm: str) -> str:
    """The paradigm's name, with the run's when several runs of that paradigm share the table's panels."""
    n_runs = t.loc[t["paradigm"] == paradigm, "run"].nunique()
    return ARM_LABELS[paradigm] + (f" ({run})" if n_runs > 1 else "")


def _marker(t: pd.DataFrame, run: str, paradigm: str) -> str:
    """Runs of one paradigm share its colour and differ by marker (o, s, ^, D, v, then again)."""
    runs = sorted(t.loc[t["paradigm"] == paradigm, "run"].unique())
    return "os^Dv"[runs.index(run) % 5] if run in runs else "o"


def _draw(ax, t: pd.DataFrame, rows: pd.DataFrame, scale: float = 1.0, ls: str = "-", bands: bool = True,
          labelled: bool = True) -> None:
    """One line per run, in its paradigm's colour, with its 95% interval as a band where recorded."""
    for run, g in rows.groupby("run", sort=False):
        p = g["paradigm"].iloc[0]
        color = ARM_COLORS[p]
        (line,) = ax.plot(g["iteration"], g["value"] * scale, color=color, ls="-." if p in CONTROL_COLORS else ls,
                          marker=_marker(t, run, p), ms=4,
                          label=_label(t, run, p) if labelled else "_nolegend_")
        line.set_gid(f"paradigm:{p}")
        if bands and g["ci_low"].notna().all() and g["ci_high"].notna().all():
            ax.fill_between(g["iteration"], g["ci_low"] * scale, g["ci_high"] * scale, color=color, alpha=0.12,
                            linewidth=0)


def _m1_line(ax, rows: pd.DataFrame, scale: float = 1.0) -> None:
    """A dotted reference at M1's value (the same model in every run of a (model, task))."""
    m1 = rows.loc[rows["iteration"] == 1, "value"]
    if len(m1):
        ax.axhline(float(m1.mean()) * scale, color="0.4", ls=":", lw=1, label="_nolegend_")


def _legend(fig: plt.Figure, extra: list[Line2D] | None = None) -> None:
    """One legend for the figure: each labelled line once (paradigms, runs), then style proxies."""
    seen: dict[str, object] = {}
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    order = list(ARM_LABELS.values())  # arms in one order everywhere; runs of one paradigm together
    labels = sorted(seen, key=lambda lab: next((i for i, p in enumerate(order) if lab.startswith(p + " (")
                                                or lab == p), len(order)))
    handles = [seen[lab] for lab in labels] + (extra or [])
    if handles:  # columns as the figure's width holds them (a label is up to about 2.4 inches), at least two
        ncol = min(len(handles), 5, max(2, int(fig.get_figwidth() // 2.4)))
        fig.legend(handles=handles, loc="outside lower center", ncol=ncol, frameon=False)


def _style_proxies(styles: dict[str, str], names: dict[str, str]) -> list[Line2D]:
    return [Line2D([], [], color="0.3", ls=ls, label=names[key]) for key, ls in styles.items()]


def best_iterate(rows: pd.DataFrame) -> dict | None:
    """M_t* of one run's pass@1 rows (columns iteration, value; runs.best_iterate: t >= 2, the paper's
    largest marker), with its gain over M1. None without M1 and a later iterate.

    >>> best_iterate(pd.DataFrame({"iteration": [1, 2, 3], "value": [0.40, 0.47, 0.45]}))
    {'t': 2, 'value': 0.47, 'gain': 0.06999999999999995}
    """
    by_t = rows.set_index("iteration")["value"]
    t = runs.best_iterate({int(k): float(v) for k, v in by_t.items()})
    if 1 not in by_t.index or t is None:
        return None
    return {"t": t, "value": float(by_t[t]), "gain": float(by_t[t] - by_t[1])}


def gain_text(gain: float) -> str:
    """The gain over M1 in points of pass@1, as the paper prints it above the best marker (e.g. '+1.5')."""
    return f"{gain * 100:+.1f}"


# ---------------------------------------------------------------------------------------------------------
# The figures.

def figure1_pass1(table: pd.DataFrame, split: str = "test") -> plt.Figure:
    """Figure 1: greedy pass@1 (%) per iteration, a panel per (model, task), a line per paradigm (run), its
    95% interval as a band; the best iterate M_t* (t >= 2) enlarged, its gain over M1 above and its pass@1
    below (paper, Figure 1)."""
    t = _prepare(table)
    groups = _groups(t)
    fig, axes = _grid(1, len(groups), f"Figure 1. Greedy {split} pass@1 per iteration")
    for ax, (title, g) in zip(axes[0], groups):
        _frame(ax, ITERATION_LABEL, f"greedy {split} pass@1 (%)", title)
        rows = _select(g, split, "pass@1")
        if rows.empty:
            _missing(ax, f"no pass@1 on the {split} split")
            continue
        _draw(ax, t, rows, scale=100)
        bests = [(run, ARM_COLORS[r["paradigm"].iloc[0]], best_iterate(r)) for run, r in rows.groupby("run")]
        bests = [b for b in bests if b[2] is not None]
        lo, hi = ax.get_ylim()
        for run, color, best in bests:
            y = best["value"] * 100
            # Best iterates at one t stack their labels in a column, highest value first: the gains above the
            # highest point drawn at that t (any run's, best or not), the values below the lowest, so that no two
            # labels overlap however close, and no label covers a point.
            same_t = sorted((b for b in bests if b[2]["t"] == best["t"]), key=lambda b: -b[2]["value"])
            rank = [b[0] for b in same_t].index(run)
            at_t = rows.loc[rows["iteration"] == best["t"], "value"].dropna() * 100
            top, bottom = max(at_t.max(), y), min(at_t.min(), y)
            ax.scatter([best["t"]], [y], s=110, color=color, edgecolor="black", zorder=5, gid=f"best:{run}")
            ax.annotate(gain_text(best["gain"]), (best["t"], top), textcoords="offset points",
                        xytext=(0, 8 + 11 * (len(same_t) - 1 - rank)), ha="center", fontsize=8, color=color,
                        fontweight="bold", gid=f"gain:{run}")
            ax.annotate(f"{y:.1f}", (best["t"], bottom), textcoords="offset points", xytext=(0, -16 - 9 * rank),
                        ha="center", fontsize=7, color=color, gid=f"value:{run}")
        if rows["iteration"].max() < 2:
            _missing(ax, "only M1: no best iterate")
    _legend(fig, [Line2D([], [], ls="", marker="o", ms=9, markerfacecolor="white", markeredgecolor="black",
                         label="best iterate M_t* (gain over M1 above, pass@1 below, points)")])
    return fig


def coverage_table(table: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """The data of Figure 2: per (model, task), M1's coverage (mean, any) and the advice it gives, M1's
    pass@1 (%) and each paradigm's best-iterate pass@1 (%), and the best paradigm (the paper's table)."""
    t = _prepare(table)
    out = []
    for (model, task), g in t.groupby(["model", "task"], sort=True):
        row: dict = {"model": model, "task": task}
        for name in ("coverage_mean", "coverage_any"):
            v = _select(g, "train", name)
            v = v.loc[v["iteration"] == 1, "value"]
            row[name] = float(v.mean()) if len(v) else np.nan
        row["advice"] = paradigm_advice(row["coverage_mean"]) if np.isfinite(row["coverage_mean"]) else ""
        p1 = _select(g, split, "pass@1")
        m1 = p1.loc[p1["iteration"] == 1, "value"]
        row["M1"] = float(m1.mean()) * 100 if len(m1) else np.nan
        for p in PARADIGM_COLORS:
            bests = [best_iterate(r) for _, r in p1[p1["paradigm"] == p].groupby("run")]
            bests = [b["value"] * 100 for b in bests if b]
            row[p] = float(np.mean(bests)) if bests else np.nan  # the mean over runs of that paradigm
        scores = {p: row[p] for p in PARADIGM_COLORS if np.isfinite(row[p])}
        row["best"] = max(scores, key=scores.get) if scores else ""
        out.append(row)
    return pd.DataFrame(out)


def figure2_coverage(table: pd.DataFrame, split: str = "test") -> plt.Figure:
    """Figure 2: M1's correct-answer coverage of its training problems (left; the paper's rule: above 0.5
    favours DPO or SFT-DPO, paper §4.2) beside each paradigm's best-iterate pass@1 with M1's as a black
    tick and the best paradigm starred (right)."""
    cov = coverage_table(table, split)
    fig, axes = _grid(1, 2, "Figure 2. M1's correct-answer coverage and the best paradigm")
    ax_c, ax_b = axes[0]
    x = np.arange(len(cov))
    names = [f"{m}\n{k}" for m, k in zip(cov["model"], cov["task"])]
    _frame(ax_c, "model and task", "M1 coverage of training problems", "M1 coverage (advice above the bars)",
           iterations=False)
    _frame(ax_b, "model and task", f"best-iterate greedy {split} pass@1 (%)", "M_t* per paradigm (best: ★)",
           iterations=False)
    for ax in (ax_c, ax_b):
        ax.set_xticks(x, names)
    if cov["coverage_mean"].notna().any():
        ax_c.bar(x - 0.18, cov["coverage_mean"], 0.36, color="0.55", label="coverage, mean per-sample (paper)")
        ax_c.bar(x + 0.18, cov["coverage_any"], 0.36, color="0.8", label="coverage, any correct (Monkeys)")
        ax_c.axhline(0.5, color="black", ls="--", lw=1, label="0.5: the paper's paradigm rule")
        for xi, (v, advice) in enumerate(zip(cov["coverage_mean"], cov["advice"])):
            if advice:
                ax_c.annotate(f"→ {advice}", (xi - 0.18, max(v, 0.5)), textcoords="offset points", xytext=(0, 4),
                              ha="center", fontsize=7)
        ax_c.set_ylim(0, 1.3)
        ax_c.legend(fontsize=7, loc="upper right")
    else:
        _missing(ax_c, "no M1 coverage (M1 sampled no training problems: T = 1?)")
    present = [p for p in PARADIGM_COLORS if cov[p].notna().any()] if len(cov) else []
    if not present:
        _missing(ax_b, "no best iterate (every run needs M1 and a later iterate)")
        return fig
    width = 0.8 / len(present)
    for i, p in enumerate(present):
        xs = x - 0.4 + width * (i + 0.5)
        bars = ax_b.bar(xs, cov[p], width, color=PARADIGM_COLORS[p], label=PARADIGM_LABELS[p])
        for b in bars:
            b.set_gid(f"paradigm:{p}")
        for xi, v, m1, best in zip(xs, cov[p], cov["M1"], cov["best"]):
            star = " ★" if best == p and len(present) > 1 else ""
            if np.isfinite(v):
                ax_b.annotate(gain_text((v - m1) / 100) + star, (xi, v), textcoords="offset points", xytext=(0, 2),
                              ha="center", fontsize=8, gid=f"best:{p}" if star else f"gain:{p}")
    ax_b.scatter(x, cov["M1"], marker="_", s=600, color="black", zorder=5, label="M1 (gain over it above bars)")
    top = np.nanmax(cov[present].to_numpy()) if len(cov) else 100
    ax_b.set_ylim(0, min(100, top * 1.45) if top > 0 else 1)
    ax_b.legend(fontsize=7, loc="upper right", ncol=2)
    if len(present) == 1:
        ax_b.text(0.5, 0.93, f"only {PARADIGM_LABELS[present[0]]}: no best paradigm to compare",
                  transform=ax_b.transAxes, ha="center", fontsize=7, color="0.35", gid="missing")
    return fig


def _shade(color: str, i: int, n: int) -> tuple:
    """The i-th of n shades of a paradigm's colour, light to full (later IS(t) darker)."""
    return sns.light_palette(color, n_colors=n + 1)[i + 1]


def figure3_improvement_sets(table: pd.DataFrame, split: str = "test") -> plt.Figure:
    """Figure 3: M1's accuracy@N (%; unbiased pass@N from M1's samples) on each improvement set IS(t)
    (problems M_t solves greedily and M1 does not), in shades of the paradigm's colour, against M1's
    accuracy@N on all problems (black dashed) and on all it gets wrong greedily (grey dotted); a panel per
    (model, task) and paradigm (paper §5.1; the baselines answer the third ICLR 2025 OpenReview review).
    With several runs of one paradigm, the panel shows the first by name (their IS(t) differ; our choice, to
    keep it readable)."""
    t = _prepare(table)
    keys = [(title, p, g[g["paradigm"] == p]) for title, g in _groups(t) for p in _paradigms(g)]
    fig, axes = _grid(1, max(len(keys), 1), f"Figure 3. M1's accuracy@N on the improvement sets IS(t) ({split})")
    for ax, (title, p, g) in zip(axes[0], keys):
        _frame(ax, "N, samples drawn from M1 (log scale)", "M1 accuracy@N (%)", f"{title} · {ARM_LABELS[p]}",
               iterations=False)
        rows = g[(g["split"] == split) & (g["metric"] == "m1_accuracy@N")]
        sets = rows[rows["subset"] == "improved"]
        if sets.empty:
            _missing(ax, "no improvement sets (they need M1 and a later iterate with samples)")
            continue
        ax.set_xscale("log", base=2)
        ns = sorted(rows["k"].dropna().astype(int).unique())
        ax.set_xticks(ns, [str(n) for n in ns])
        iters = sorted(sets["iteration"].unique())
        run0 = sorted(sets["run"].unique())[0]
        for i, it in enumerate(iters):
            s = sets[(sets["iteration"] == it) & (sets["run"] == run0)].sort_values("k")
            n_prob = int(s["n"].iloc[0]) if len(s) else 0
            line, = ax.plot(s["k"].astype(int), s["value"] * 100, marker="o", ms=4,
                            color=_shade(ARM_COLORS[p], i, len(iters)), label=f"IS({it}), {n_prob} problems")
            line.set_gid(f"paradigm:{p}")
            if s["value"].isna().all():
                ax.text(0.03, 0.95 - 0.08 * i, f"IS({it}) is empty", transform=ax.transAxes, fontsize=7, va="top",
                        color="0.35", gid="missing")
        for subset, style, name in (("all", "--", "all problems"), ("m1_wrong", ":", "all M1 gets wrong greedily")):
            b = rows[(rows["subset"] == subset) & (rows["iteration"] == iters[0]) & (rows["run"] == run0)]
            b = b.sort_values("k")
            if len(b):
                ax.plot(b["k"].astype(int), b["value"] * 100, color="black" if subset == "all" else "0.5", ls=style,
                        label=f"{name}, {int(b['n'].iloc[0])} problems")
        ax.axhline(100, color="tab:red", ls=":", lw=1)
        ax.set_ylim(-3, 105)
        ax.legend(fontsize=6.5, loc="lower right")
    if not keys:
        _frame(axes[0][0], "N, samples drawn from M1 (log scale)", "M1 accuracy@N (%)", iterations=False)
        _missing(axes[0][0], "no runs")
    return fig


def figure4_diversity(table: pd.DataFrame, split: str = "test") -> plt.Figure:
    """Figure 4: output diversity per iteration, correct (solid) and incorrect (dashed) responses apart, a
    column per measure (syntactic, semantic, logical; paper §5.2), a row per (model, task)."""
    t = _prepare(table)
    groups = _groups(t)
    fig, axes = _grid(len(groups), len(DIVERSITY_LABELS), f"Figure 4. Output diversity per iteration ({split})")
    for row_axes, (title, g) in zip(axes, groups):
        for ax, (metric, label) in zip(row_axes, DIVERSITY_LABELS.items()):
            _frame(ax, ITERATION_LABEL, label, title)
            drawn = False
            for subset, ls in SUBSET_STYLES.items():
                rows = _select(g, split, metric, subset)
                if len(rows):
                    _draw(ax, t, rows, ls=ls, bands=False, labelled=subset == "correct")
                    drawn = True
            if not drawn:
                _missing(ax, f"no {metric} on the {split} split" + (" (embedding off or not this split)"
                                                                    if metric == "embedding_diversity" else ""))
    _legend(fig, _style_proxies(SUBSET_STYLES, {"correct": "correct responses", "incorrect": "incorrect responses"}))
    return fig


def _disparity(ax, t: pd.DataFrame, g: pd.DataFrame) -> None:
    _frame(ax, ITERATION_LABEL, "group disparity (%): (easiest -\nhardest level) / easiest, pass@1", "")
    drawn = False
    for split, ls in SPLIT_STYLES.items():
        rows = _select(g, split, "group_disparity", None)
        if len(rows):
            _draw(ax, t, rows, scale=100, ls=ls, bands=split == "ood", labelled=False)
            drawn = True
    if not drawn:
        _missing(ax, "no group disparity (it needs two difficulty levels)")


def _pass1_panel(ax, t: pd.DataFrame, g: pd.DataFrame, split: str, ylabel: str, title: str, missing: str) -> None:
    """Greedy pass@1 (%) of `split` per iteration, one line per run, M1's value dotted."""
    _frame(ax, ITERATION_LABEL, ylabel, title)
    rows = _select(g, split, "pass@1")
    if rows.empty:
        _missing(ax, missing)
    else:
        _draw(ax, t, rows, scale=100)
        _m1_line(ax, rows, 100)


def figure5_ood_disparity(table: pd.DataFrame) -> plt.Figure:
    """Figure 5: greedy pass@1 in-domain (test) beside OOD, and group disparity per iteration (x100, as the
    paper plots it; OOD solid, in-domain dashed), a row per (model, task) (paper §5.3, Fig. 5)."""
    t = _prepare(table)
    groups = _groups(t)
    fig, axes = _grid(len(groups), 3, "Figure 5. OOD and in-domain pass@1, and group disparity")
    for (ax_in, ax_ood, ax_gd), (title, g) in zip(axes, groups):
        for ax, split, name in ((ax_in, "test", "in-domain (test)"), (ax_ood, "ood", "OOD")):
            _pass1_panel(ax, t, g, split, f"greedy {name} pass@1 (%)", f"{title} · {name}",
                         f"no {name} split in these runs")
        _disparity(ax_gd, t, g)
        ax_gd.set_title(f"{title} · group disparity", fontsize=9)
    _legend(fig, _style_proxies(SPLIT_STYLES, {"ood": "disparity on OOD", "test": "disparity in-domain"})
            + [Line2D([], [], color="0.4", ls=":", label="M1's value")])
    return fig


def _uninformative(ax, g: pd.DataFrame, split: str, k: int, scale: float = 100, prefix: str = "",
                   x: str = "iteration") -> bool:
    """Cross out (black x) the pass@k points within the guessing margin of random guessing (Dragoi et al. 2025;
    rows `<prefix>pass@k_uninformative`, beyond_metrics.py) at k (`x` "iteration": one point per iteration) or
    at every k of one iteration's curve (`x` "k", `g` that iteration's rows). Whether any was drawn."""
    flags = g[(g["split"] == split) & (g["metric"] == f"{prefix}pass@k_uninformative") & (g["value"] == 1)]
    curve = g[(g["split"] == split) & (g["metric"] == (f"{prefix}pass@k_curve" if x == "k" else "pass@k"))]
    if x == "iteration":
        flags, curve = flags[flags["k"] == k], curve[curve["k"] == k]
    marks = curve.merge(flags[["run", "iteration", "k"]], on=["run", "iteration", "k"])
    if marks.empty:
        return False
    ax.plot(marks[x], marks["value"] * scale, ls="", marker="x", ms=8, color="black", zorder=6, gid="uninformative",
            label="_nolegend_")
    return True


def _uninformative_mark() -> Line2D:
    """The legend entry of the crossed-out pass@k points."""
    return Line2D([], [], ls="", marker="x", color="black", label="pass@k within the margin of random guessing")


def _answer_entropy(ax, t: pd.DataFrame, g: pd.DataFrame, title: str, split: str) -> None:
    """Mean final-answer entropy per iteration, solved problems solid, unsolved dashed (Song, Kempe & Munos 2025)."""
    _frame(ax, ITERATION_LABEL, "final-answer entropy (nats)", f"{title} · {split} answers")
    drawn = False
    for subset, ls in SOLVED_STYLES.items():
        rows = _select(g, split, "answer_entropy", subset)
        if len(rows):
            _draw(ax, t, rows, ls=ls, bands=False, labelled=False)
            drawn = True
    if not drawn:
        _missing(ax, "no answer entropy (it needs sampled responses)")


def _kl_panels(ax_kl, ax_ood, t: pd.DataFrame, g: pd.DataFrame, title: str) -> None:
    """KL(M_t || M1) per iteration, and the OOD pass@1 change from M1 against it, a point per iterate t >= 2
    labelled with t (RL's Razor: forgetting tracks this forward KL)."""
    _frame(ax_kl, ITERATION_LABEL, "KL(M_t || M1), nats per response", f"{title} · test samples of M_t")
    kl = _select(g, "test", "kl_from_m1")
    its = sorted(g["iteration"].unique())
    ax_kl.set_xticks(its)
    ax_kl.set_xlim(min(its) - 0.2, max(its) + 0.2)
    ax_kl.axhline(0, color="0.4", ls=":", lw=1)  # M1's KL from itself
    if kl.empty:
        _missing(ax_kl, "no KL estimate (evaluate.score_models off, or no iterate after M1)")
    else:
        _draw(ax_kl, t, kl)
    _frame(ax_ood, "KL(M_t || M1), nats per response", "OOD pass@1 change from M1 (points)",
           f"{title} · forgetting against KL", iterations=False)
    ood = _select(g, "ood", "pass@1")
    m1 = ood[ood["iteration"] == 1].set_index("run")["value"]
    pts = kl.merge(ood[["run", "iteration", "value"]], on=["run", "iteration"], suffixes=("", "_ood"))
    pts = pts[pts["run"].isin(m1.index)]
    if pts.empty:
        _missing(ax_ood, "no KL estimate beside an OOD split")
        return
    for run, r in pts.groupby("run", sort=False):
        p = r["paradigm"].iloc[0]
        (line,) = ax_ood.plot(r["value"], (r["value_ood"] - m1[run]) * 100, ls="", marker=_marker(t, run, p), ms=6,
                              color=ARM_COLORS[p], label="_nolegend_")
        line.set_gid(f"paradigm:{p}")
        for x, y, it in zip(r["value"], (r["value_ood"] - m1[run]) * 100, r["iteration"]):
            ax_ood.annotate(f"M{it}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7,
                            color=ARM_COLORS[p])
    ax_ood.axhline(0, color="0.4", ls=":", lw=1)


def reversal_dashboard(table: pd.DataFrame, split: str = "test") -> plt.Figure:
    """One page to tell progress from reversal: pass@1 beside pass@k (largest k; crossed out where within the
    margin of random guessing), diversity (distinct-n and embedding; correct solid, incorrect dashed), OOD
    pass@1 and group disparity, then the final answers' entropy (solved solid, unsolved dashed), KL(M_t || M1)
    and the OOD change against it (beyond the paper: Song, Kempe & Munos 2025; RL's Razor), three rows per
    (model, task), M1's value dotted. Reversal reads as pass@1 up while the others fall (disparity: rises; our
    reading of the paper's definition)."""
    t = _prepare(table)
    groups = _groups(t)
    fig, axes = _grid(3 * len(groups), 3, "Reversal dashboard: pass@1 beside pass@k, diversity, OOD, disparity, "
                                          "answer entropy and KL from M1")
    crossed = False
    for i, (title, g) in enumerate(groups):
        (a_p1, a_pk, a_ood), (a_dn, a_emb, a_gd) = axes[3 * i], axes[3 * i + 1]
        a_ae, a_kl, a_ko = axes[3 * i + 2]
        _answer_entropy(a_ae, t, g, title, split)
        _kl_panels(a_kl, a_ko, t, g, title)
        for ax, sp, name in ((a_p1, split, "pass@1 (greedy)"), (a_ood, "ood", "OOD pass@1 (greedy)")):
            _pass1_panel(ax, t, g, sp, f"{name}, %", f"{title} · {sp}", f"no {sp} split")
        pk = _select(g, split, "pass@k", None)
        k = int(pk["k"].max()) if len(pk) else None
        _frame(a_pk, ITERATION_LABEL, f"pass@{k or 'k'} (sampled, unbiased), %", f"{title} · {split}")
        if k is None:
            _missing(a_pk, "no pass@k (no sampled responses)")
        else:
            rows = pk[pk["k"] == k]
            _draw(a_pk, t, rows, scale=100)
            _m1_line(a_pk, rows, 100)
            crossed |= _uninformative(a_pk, g, split, k)
        for ax, metric in ((a_dn, "distinct_n"), (a_emb, "embedding_diversity")):
            _frame(ax, ITERATION_LABEL, DIVERSITY_LABELS[metric], f"{title} · {split}")
            drawn = False
            for subset, ls in SUBSET_STYLES.items():
                rows = _select(g, split, metric, subset)
                if len(rows):
                    _draw(ax, t, rows, ls=ls, bands=False, labelled=False)
                    drawn = True
            if not drawn:
                _missing(ax, f"no {metric}")
        _disparity(a_gd, t, g)
        a_gd.set_title(f"{title} · group disparity", fontsize=9)
    _legend(fig, _style_proxies(SUBSET_STYLES, {"correct": "diversity: correct", "incorrect": "diversity: incorrect"})
            + _style_proxies(SPLIT_STYLES, {"ood": "disparity: OOD", "test": "disparity: in-domain"})
            + _style_proxies(SOLVED_STYLES, {"solved": "answer entropy: solved",
                                             "unsolved": "answer entropy: unsolved"})
            + [Line2D([], [], color="0.4", ls=":", label="M1's value")] + ([_uninformative_mark()] if crossed else []))
    return fig


def _ledger_bars(ax, g: pd.DataFrame, split: str, decoding: str, deep: bool = False) -> bool:
    """Stacked bars of the support ledger's shares (%), one per iteration t >= 2 (M1 against M_t), and with
    `deep` the deep evaluation's after them ("deep M_t"). Whether any was drawn."""
    bars = []
    for prefix, name in (("", "M{}"),) + ((("deep_", "deep M{}"),) if deep else ()):
        rows = g[(g["split"] == split) & (g["subset"] == "all")
                 & g["metric"].str.startswith(f"{prefix}support_{decoding}:")]
        for it, r in rows.groupby("iteration", sort=True):
            shares = {m.split(":", 1)[1]: v for m, v in zip(r["metric"], r["value"])}
            bars.append((name.format(it), shares, int(r["n"].iloc[0]) if r["n"].notna().all() else None))
    if not bars:
        return False
    x = np.arange(len(bars))
    bottom = np.zeros(len(bars))
    for cls, color in LEDGER_COLORS.items():
        h = np.array([b[1].get(cls, 0.0) * 100 for b in bars])
        drawn = ax.bar(x, h, 0.6, bottom=bottom, color=color, label="_nolegend_")
        for patch in drawn:
            patch.set_gid(f"ledger:{cls}")
        bottom += h
    ax.set_xticks(x, [b[0] for b in bars])
    ax.set_ylim(0, 100)
    return True


def beyond_reach(table: pd.DataFrame, split: str = "test") -> plt.Figure:
    """Beyond the paper, a row per run: (a) pass@k curves of M1 (black), the best iterate M_t* (solid) and the
    last M_T (dashed) in the paradigm's colour, with Yue et al.'s crossover k* (the smallest k at which M1's
    pass@k is at or above M_t's) as a dotted line, from the deep evaluation where the run has one (deep.py),
    else from the loop's samples; the random guesser's pass@k where the answer space is known, and points
    within the margin of it crossed out (Dragoi et al. 2025); (b, c) the support ledger of M1 against each M_t
    (Wu et al. 2025), greedy correctness and any sampled response correct, stacked shares per iteration (the
    deep evaluation's after them)."""
    t = _prepare(table)
    runs = [(run, g) for p in ARM_COLORS for run, g in t[t["paradigm"] == p].groupby("run", sort=True)]
    fig, axes = _grid(max(len(runs), 1), 3, f"Beyond the paper: pass@k curves and their crossover, and the support "
                                            f"ledger ({split})")
    if not runs:
        for ax in axes[0]:
            _frame(ax, "k", "share (%)", iterations=False)
            _missing(ax, "no runs")
        return fig
    for (run, g), (ax_c, ax_g, ax_s) in zip(runs, axes):
        p = g["paradigm"].iloc[0]
        title = f"{g['model'].iloc[0]} · {g['task'].iloc[0]} · {_label(t, run, p)}"
        _curve_panel(ax_c, g, split, p, title)
        for ax, decoding, deep in ((ax_g, "greedy", False), (ax_s, "sample", True)):
            what = "greedy correct" if decoding == "greedy" else "a sample correct"
            _frame(ax, "M1 against M_t", "share of problems (%)", f"{_label(t, run, p)} · ledger: {what}",
                   iterations=False)
            if not _ledger_bars(ax, g, split, decoding, deep):
                _missing(ax, "no support ledger (it needs M1 and a later iterate)")
    fig.legend(handles=[Patch(color=c, label=LEDGER_LABELS[k]) for k, c in LEDGER_COLORS.items()],
               loc="outside lower center", ncol=4, frameon=False, title="support ledger (Wu et al. 2025)")
    return fig


def _curve_panel(ax, g: pd.DataFrame, split: str, p: str, title: str) -> None:
    """Panel (a) of beyond_reach for one run."""
    deep = g[(g["split"] == split) & (g["metric"] == "deep_pass@k_curve")]
    prefix = "deep_" if len(deep) else ""
    rows = deep if len(deep) else g[(g["split"] == split) & (g["metric"] == "pass@k_curve")]
    source = "deep evaluation" if prefix else "the loop's samples"
    _frame(ax, "k, samples per problem (log scale)", "pass@k (%)", f"{title} · {source}", iterations=False)
    if rows.empty:
        _missing(ax, "no pass@k curves (no sampled responses)")
        return
    best = best_iterate(_select(g, "test", "pass@1"))
    last = int(g["iteration"].max())
    roles = {1: "M1"} | ({best["t"]: "M_t*"} if best else {})
    roles[last] = "M_t* = M_T" if roles.get(last) == "M_t*" else "M_T"
    ax.set_xscale("log", base=2)
    ks = sorted(rows["k"].dropna().astype(int).unique())
    ax.set_xticks(ks, [str(k) for k in ks])
    crossed = False
    for it, role in sorted(roles.items()):
        r = rows[rows["iteration"] == it].sort_values("k")
        if r.empty:
            continue
        color = "black" if it == 1 else ARM_COLORS[p]
        (line,) = ax.plot(r["k"].astype(int), r["value"] * 100, marker="o", ms=4, color=color,
                          ls="--" if role == "M_T" else "-", label="M1" if it == 1 else f"M{it} ({role})")
        if it != 1:
            line.set_gid(f"paradigm:{p}")
            cross = g[(g["split"] == split) & (g["metric"] == f"{prefix}crossover_k") & (g["iteration"] == it)]
            if len(cross):
                c = cross.iloc[0]
                if pd.notna(c["value"]):
                    ax.axvline(c["value"], color=color, ls=":", lw=1.2, gid=f"crossover:{it}")
                    ax.annotate(f"k* = {int(c['value'])} (M{it})", (c["value"], 0.96 - 0.07 * (it == last)),
                                xycoords=("data", "axes fraction"), fontsize=7, color=color, xytext=(3, 0),
                                textcoords="offset points", va="top", gid=f"kstar:{it}")
                else:
                    ax.text(0.02, 0.95 - 0.07 * (it == last), f"M{it}: no crossover up to k = {int(c['k'])}",
                            transform=ax.transAxes, fontsize=7, color=color, va="top", gid=f"kstar:{it}")
        crossed |= _uninformative(ax, g[g["iteration"] == it], split, 0, prefix=prefix, x="k")
    guess = g[(g["split"] == split) & (g["metric"] == f"{prefix}guess_pass@k") & (g["iteration"] == 1)]
    if len(guess):
        guess = guess.sort_values("k")
        ax.plot(guess["k"].astype(int), guess["value"] * 100, color="0.5", ls="-.", label="random guessing")
    handles = ax.get_legend_handles_labels()[0] + ([_uninformative_mark()] if crossed else [])
    ax.legend(handles=handles, fontsize=6.5, loc="lower right")


FIGURES = {"figure1_pass1": figure1_pass1, "figure2_coverage": figure2_coverage,
           "figure3_improvement_sets": figure3_improvement_sets, "figure4_diversity": figure4_diversity,
           "figure5_ood_disparity": figure5_ood_disparity, "reversal_dashboard": reversal_dashboard,
           "beyond_reach": beyond_reach}


def save(fig: plt.Figure, name: str, dirs, formats=("png", "pdf")) -> list[Path]:
    """Write `fig` as <dir>/<name>.png (150 dpi) and <dir>/<name>.pdf (or the given `formats`) into each of
    `dirs` (a path or a list); returns the written paths."""
    if not name or "/" in name or "\\" in name or Path(name).suffix:
        raise PlotsError(f"figure name {name!r}: give a bare name without a folder or suffix, e.g. 'figure1_pass1'")
    dirs = [Path(d) for d in ([dirs] if isinstance(dirs, str | Path) else dirs)]
    written = []
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    for ext in formats:  # drawn once per format (a draw takes seconds), copied to the other folders
        first = dirs[0] / f"{name}.{ext}"
        fig.savefig(first, dpi=150, bbox_inches="tight")
        written.append(first)
        for d in dirs[1:]:
            if (d / first.name).resolve() != first.resolve():
                shutil.copyfile(first, d / first.name)
            written.append(d / first.name)
    return written


def render_all(table: pd.DataFrame, dirs) -> dict[str, list[Path]]:
    """Every figure of FIGURES, saved as PNG and PDF into `dirs`: {name: written paths}."""
    out = {}
    for name, make in FIGURES.items():
        fig = make(table)
        out[name] = save(fig, name, dirs)
        plt.close(fig)
    return out


# ---------------------------------------------------------------------------------------------------------
# The single-run figure of report.report_run (kept as it was).

def pass1_by_iteration(table: pd.DataFrame, title: str = "") -> plt.Figure:
    """Greedy pass@1 per iteration: test overall and per level (left), test vs OOD with 95% intervals (right).
    The best iterate is marked with its gain over M1, as in the paper's Figure 1. A table of
    several runs (runs_table, a `paradigm` column) gets one row of the two panels per paradigm."""
    sns.set_theme(style="whitegrid", context="paper")
    groups = list(table.groupby("paradigm", sort=False)) if "paradigm" in table.columns else [("", table)]
    fig, axes = plt.subplots(len(groups), 2, figsize=(10, 3.8 * len(groups)), squeeze=False)
    for (paradigm, t), (ax_l, ax_r) in zip(groups, axes):
        _pass1_by_iteration_row(t, ax_l, ax_r, ARM_LABELS.get(paradigm, paradigm))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _pass1_by_iteration_row(table: pd.DataFrame, ax_l, ax_r, name: str) -> None:
    p1 = table[table["metric"] == "pass@1"]
    lv = p1[(p1["split"] == "test") & p1["subset"].str.fullmatch(r"L\d+")].copy()
    lv["level"] = lv["subset"].str[1:].astype(int).map(lambda x: f"level {x}")
    if len(lv):
        sns.lineplot(lv, x="iteration", y="value", hue="level", marker="o", palette="viridis", ax=ax_l)
    else:  # a task without levels (GSM8K, CSQA, MBPP)
        ax_l.text(0.5, 0.5, "no difficulty levels in this task", ha="center", va="center", transform=ax_l.transAxes)
    overall = p1[p1["subset"] == "all"].copy()
    overall["split"] = overall["split"].map({"test": "test (in-domain)", "ood": "OOD (unseen templates)"})
    sns.lineplot(overall, x="iteration", y="value", hue="split", style="split", marker="o", ax=ax_r)
    for i, (_, g) in enumerate(overall.groupby("split", sort=False)):
        if g["ci_low"].notna().all():  # the 95% bootstrap interval over problems
            ax_r.fill_between(g["iteration"], g["ci_low"].astype(float), g["ci_high"].astype(float), alpha=0.15,
                              color=f"C{i}", linewidth=0)
    best = best_iterate(overall[overall["split"] == "test (in-domain)"])  # runs.best_iterate, as Figure 1
    if best is not None:
        ax_r.scatter([best["t"]], [best["value"]], s=140, zorder=5, color="C0", edgecolor="black", gid="best")
        ax_r.annotate(gain_text(best["gain"]), (best["t"], best["value"]), textcoords="offset points", xytext=(0, 9),
                      ha="center")
    prefix = f"{name}: " if name else ""
    for ax, panel in ((ax_l, "test pass@1 by level (greedy)"), (ax_r, "pass@1, in-domain vs OOD (greedy)")):
        ax.set_xlabel("iteration t (model M_t)")
        ax.set_ylabel("pass@1")
        ax.set_title(prefix + panel)
        ax.set_xticks(sorted(table["iteration"].unique()))
        ax.set_ylim(0, 1.02)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, title=None, loc="upper right")
