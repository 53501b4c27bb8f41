"""Explore a run interactively (notebooks/60_explore.ipynb): which problems an iteration gained and lost, what
the model answered to one problem in every iteration and which pairs or SFT rows trained the next model, and
how a problem's sampled responses collapse (or not) across iterations.

Pure data functions read the run directory (README, "What a run is": iter_<t>/samples_<split>.parquet with its
grades iter_<t>/graded_<split>.parquet, joined by runs.Run.graded; iter_<t>/train_data.parquet, the data that
made M_t) and return DataFrames, arrays or HTML strings;
tests call them without widgets. `improvement_explorer(run_dir)` and `diversity_explorer(run_dir)` wire them to
ipywidgets; their key widgets carry stable CSS classes (`si-*`, see WIDGET_CLASSES) for the browser test. Given
a study folder (one run per paradigm, as `make demo` writes data/runs/demo) or a `run_picker` of one, they
show a dropdown of its runs above them and follow its choice.

A relative folder is read from artifacts.project_dir(): the checkout when the working directory is its
notebooks/ folder (JupyterLab starts the notebook's kernel there), else the working directory.

A problem's card also shows, per iteration, its support-ledger class against M1 and its final answers
(problem_ledger, docs/beyond.md).

Greedy correctness decides the transition sets, as in improvement.py (inferred from paper §5.1; the paper does
not state it); the equations highlighted are those the Distinct Equations metric counts (diversity.EQUATIONS);
the heatmaps are the cosine similarities whose mean the embedding-diversity metric reports
(diversity.pairwise_diversity).
"""

from __future__ import annotations

import html
import io
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from . import artifacts, diversity, improvement, tasks
from .runs import EVAL_SPLITS, Run, greedy_correct

SET_LABELS = {"improved": "gained", "lost": "lost", "stable_correct": "stable correct",
              "stable_wrong": "stable wrong"}
STATUS_COLORS = {"correct": "#1a7f37", "incorrect": "#cf222e", "no_answer": "#9a6700", "timeout": "#6e7781",
                 "error": "#6e7781"}
WIDGET_CLASSES = ("si-improvement", "si-iter-a", "si-iter-b", "si-split", "si-table", "si-set", "si-problem",
                  "si-problem-card", "si-train-problem", "si-train-card", "si-diversity", "si-div-problem",
                  "si-samples", "si-heatmap", "si-run")


class ImprovementView(NamedTuple):
    table: pd.DataFrame     # problems per transition set, rows L1.. and "all" (improvement.transition_table)
    problems: pd.DataFrame  # one row per problem: problem_id, level, set (a key of SET_LABELS)


# ---------------------------------------------------------------------------------------------------------
# Reading the run directory.

@lru_cache(maxsize=64)
def _read_parquet(path: str, mtime_ns: int) -> pd.DataFrame:
    return pd.read_parquet(path)


def _read(path: Path) -> pd.DataFrame:
    """A Parquet table, read once per file version (the widgets ask again on every click). Do not modify it."""
    return _read_parquet(str(path), path.stat().st_mtime_ns)


@lru_cache(maxsize=64)
def _graded_cached(root: str, t: int, split: str, *mtimes_ns: int) -> pd.DataFrame:
    run = Run(root)
    return run.graded(t, split) if run.paths.graded(t, split).exists() else run.samples(t, split)


def _graded(paths: artifacts.RunPaths, t: int, split: str) -> pd.DataFrame:
    """M_t's sample table on `split` with its grades (runs.Run.graded; without grades yet, the bare table),
    read once per file version. Do not modify it."""
    files = (paths.samples(t, split), paths.graded(t, split))
    return _graded_cached(str(paths.root), t, split, *(f.stat().st_mtime_ns if f.exists() else 0 for f in files))


def resolve(path: str | Path) -> Path:
    """`path` as given if absolute, else under artifacts.project_dir(): the checkout from its notebooks/ folder
    (where JupyterLab starts the notebook's kernel; `make demo` writes data/ at the checkout's top), else the
    working directory (where `selfimprove run` writes data/)."""
    return artifacts.resolve(path)


def _is_run(folder: Path) -> bool:
    return bool(Run(folder).iterations())


def _paths(run_dir: str | Path) -> artifacts.RunPaths:
    root = resolve(run_dir)
    if not _is_run(root):
        study = " (a study folder: choose one of its runs, or give it to run_picker)" if runs_in(root) else ""
        raise FileNotFoundError(f"run directory {str(run_dir)!r} ({root}) does not exist or has no iter_<t>/ "
                                f"folder{study}; give the folder `selfimprove run` wrote (data/runs/<run>)")
    return artifacts.RunPaths(root)


def runs_in(folder: Path) -> list[Path]:
    """The runs directly under a study folder, paradigms in the order sft, dpo, sft-dpo, then others by name."""
    from .config import PARADIGMS

    found = [p for p in folder.iterdir() if _is_run(p)] if folder.is_dir() else []
    return sorted(found, key=lambda p: (PARADIGMS.index(p.name) if p.name in PARADIGMS else len(PARADIGMS), p.name))


def runs_of(path: str | Path) -> list[Path]:
    """The runs to explore under `path`: [the run] for a run folder (with iter_<t>/ folders), the study's runs
    for a study folder (`selfimprove run` of a recipe with a list of paradigms: one run per paradigm)."""
    root = resolve(path)
    if _is_run(root):
        return [root]
    runs = runs_in(root)
    if not runs:
        where = "does not exist" if not root.exists() else "is neither a run (iter_<t>/ folders) nor a study " \
                "(one run per paradigm in subfolders)"
        raise FileNotFoundError(f"{str(path)!r} ({root}) {where}; relative folders are read from "
                                f"{artifacts.project_dir()} (the checkout from its notebooks/ folder, else the "
                                "working directory). Make one with `make demo` or `selfimprove run <recipe>`")
    return runs


def iterations(run_dir: str | Path, split: str = "test") -> list[int]:
    """The iterations t that have iter_<t>/samples_<split>.parquet, ascending."""
    return Run(_paths(run_dir).root).iterations(f"samples_{split}.parquet")


def samples(run_dir: str | Path, t: int, split: str) -> pd.DataFrame:
    """The graded sample table of M_t on one split (runs.Run.graded)."""
    paths = _paths(run_dir)
    path = paths.samples(t, split)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; iterations with {split} samples: "
                                f"{iterations(run_dir, split)}")
    df = _graded(paths, t, split)
    missing = {"problem_id", "decoding", "sample_idx", "response", "status", "extracted"} - set(df.columns)
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)}: has the verify stage graded it "
                         f"({paths.graded(t, split).name})?")
    return df


def _greedy(run_dir, t: int, split: str) -> pd.DataFrame:
    df = samples(run_dir, t, split)
    g = df[df["decoding"] == "greedy"]
    if g.empty:
        raise ValueError(f"iteration {t}, split {split!r}: no greedy responses; transition sets are defined on "
                         f"greedy correctness (splits with greedy decoding: {list(EVAL_SPLITS)})")
    level = g.groupby("problem_id", sort=True)["level"].first()
    return pd.DataFrame({"level": level, "correct": greedy_correct(g) == 1.0})


# ---------------------------------------------------------------------------------------------------------
# Pure views.

def improvement_view(run_dir: str | Path, t_a: int, t_b: int, split: str = "test") -> ImprovementView:
    """Gained, lost and stable problems from M_{t_a} to M_{t_b} on one split, by level (greedy correctness)."""
    a, b = _greedy(run_dir, t_a, split), _greedy(run_dir, t_b, split)
    table = improvement.transition_table(a["correct"], b["correct"], a["level"])
    sets = improvement.transition_sets(a["correct"], b["correct"])
    rows = [(pid, a.at[pid, "level"], name) for name in improvement.SETS for pid in sets[name]]
    problems = pd.DataFrame(rows, columns=["problem_id", "level", "set"])
    return ImprovementView(table, problems)


HISTORY_COLUMNS = ["iteration", "split", "level", "decoding", "sample_idx", "prompt", "response", "extracted",
                   "status"]


def problem_history(run_dir: str | Path, problem_id: str) -> pd.DataFrame:
    """Every response to one problem in every iteration and split: HISTORY_COLUMNS, by iteration, then greedy
    before sampled, then sample_idx."""
    paths = _paths(run_dir)
    parts = []
    for t, split, _ in Run(paths.root).sample_files():
        df = _graded(paths, t, split)
        rows = df[df["problem_id"] == problem_id]
        if len(rows):
            parts.append(rows.assign(iteration=t, split=split))
    if not parts:
        raise ValueError(f"problem {problem_id!r} is in no iter_*/samples_*.parquet of {paths.root}")
    out = pd.concat(parts, ignore_index=True)
    out["_greedy_first"] = out["decoding"] != "greedy"
    out = out.sort_values(["iteration", "split", "_greedy_first", "sample_idx"], kind="stable")
    return out.reindex(columns=HISTORY_COLUMNS).reset_index(drop=True)


LEDGER_COLUMNS = ["iteration", "greedy_correct", "samples", "correct_samples", "support_greedy", "support_sample",
                  "distinct_answers", "answer_entropy", "answers"]


def problem_ledger(run_dir: str | Path, problem_id: str, split: str = "test",
                   missing: str = "category") -> pd.DataFrame:
    """One problem across iterations, beyond the paper (docs/beyond.md): per iteration its greedy correctness,
    sampled responses and how many are correct, its support-ledger class against M1 (Wu et al. 2025; greedy:
    greedy correctness, sample: any of M_t's n samples correct against any of M1's first n; "" for M1 itself),
    and its final answers: how many distinct, their entropy in nats (beyond.answer_entropy with `missing`, the
    evaluate stage's answer_missing) and their distribution, most frequent first ("—" a missing answer).
    LEDGER_COLUMNS, by iteration."""
    from . import beyond

    history = problem_history(run_dir, problem_id)
    h = history[history["split"] == split]
    if h.empty:
        raise ValueError(f"problem {problem_id!r} has no responses on the {split} split")
    rows, m1 = [], None
    for t, g in h.groupby("iteration", sort=True):
        greedy = g[g["decoding"] == "greedy"]
        sampled = g[g["decoding"] == "sample"]
        correct = sampled["status"] == "correct"
        row = {"iteration": int(t), "greedy_correct": bool((greedy["status"] == "correct").any()) if len(greedy)
               else None, "samples": len(sampled), "correct_samples": int(correct.sum())}
        if m1 is None:
            m1 = g
            row["support_greedy"] = row["support_sample"] = ""
        else:
            for decoding in ("greedy", "sample"):
                a, b = m1[m1["decoding"] == decoding], g[g["decoding"] == decoding]
                n = min(len(a), len(b))
                if not n:
                    row[f"support_{decoding}"] = ""
                    continue
                counts = [pd.DataFrame({"n": [n], "c": [int((x.sort_values("sample_idx")["status"].iloc[:n]
                                                             == "correct").sum())]}, index=[problem_id])
                          for x in (a, b)]
                row[f"support_{decoding}"] = beyond.support_classes(*counts).iloc[0]
        answers = sampled["extracted"].tolist()
        row["distinct_answers"], row["answer_entropy"] = beyond.answer_entropy(answers, missing) if answers \
            else (0, float("nan"))
        shown = pd.Series(["—" if beyond._missing(a) else str(a).strip() for a in answers], dtype=object)
        row["answers"] = ", ".join(f"{a} ×{c}" for a, c in shown.value_counts().items())
        rows.append(row)
    return pd.DataFrame(rows, columns=LEDGER_COLUMNS)


def ledger_html(ledger: pd.DataFrame) -> str:
    """problem_ledger's table as HTML (class si-ledger): the ledger class and answer distribution per iteration."""
    body = "".join(
        f"<tr><td>M{r.iteration}</td><td>{'' if r.greedy_correct is None else 'yes' if r.greedy_correct else 'no'}"
        f"</td><td>{r.correct_samples} of {r.samples}</td><td>{html.escape(str(r.support_greedy))}</td>"
        f"<td>{html.escape(str(r.support_sample))}</td><td>{r.distinct_answers}</td>"
        f"<td>{'' if r.answer_entropy != r.answer_entropy else f'{r.answer_entropy:.2f}'}</td>"
        f"<td>{html.escape(r.answers)}</td></tr>" for r in ledger.itertuples())
    return ('<p><b>Support ledger against M1 and final answers per iteration</b> (Wu et al. 2025; Song, Kempe &amp; '
            'Munos 2025)</p><table class="si-cards si-ledger"><tr><th>model</th><th>greedy correct</th>'
            '<th>samples correct</th><th>ledger (greedy)</th><th>ledger (samples)</th><th>distinct answers</th>'
            f'<th>answer entropy (nats)</th><th>answers (samples)</th></tr>{body}</table>')


def training_rows(run_dir: str | Path, t: int, problem_id: str) -> pd.DataFrame:
    """The DPO pairs (chosen, rejected, chosen_idx, rejected_idx) or SFT rows (completion, sample_idx) that M_t's
    samples of one problem gave M(t+1) (iter_<t+1>/train_data.parquet); empty when it gave none."""
    path = _paths(run_dir).train_data(t + 1)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: M_{t}'s samples trained no model (the last iteration, "
                                f"or a run stopped before the train stage of iteration {t + 1})")
    df = _read(path)
    return df[df["problem_id"] == problem_id].reset_index(drop=True)


def training_problems(run_dir: str | Path, t_first: int, t_last: int) -> list[str]:
    """Problems with training rows in iterations t_first..t_last (those that trained M(t_first+1)..M(t_last+1))."""
    paths = _paths(run_dir)
    ids: set[str] = set()
    for t in range(t_first, t_last + 1):
        if paths.train_data(t + 1).exists():  # built by M(t+1)'s train stage from M_t's samples
            ids.update(_read(paths.train_data(t + 1))["problem_id"])
    return sorted(ids)


def highlight_equations(text: str, task: str = "arith") -> str:
    """HTML of a response with its equations in <mark class="si-eq">; everything else escaped.

    >>> highlight_equations("3 + 4 = 7 <b>\\n#### 7")
    '<mark class="si-eq">3 + 4 = 7</mark> &lt;b&gt;\\n#### 7'
    """
    pattern = tasks.task_of(task).equation_re if task in tasks.TASKS_BY_NAME else diversity.EQUATION_RE
    out, pos = [], 0
    for m in pattern.finditer(text):
        out += [html.escape(text[pos:m.start()]), f'<mark class="si-eq">{html.escape(m.group(0))}</mark>']
        pos = m.end()
    return "".join(out + [html.escape(text[pos:])])


def cosine_similarity(emb: np.ndarray) -> np.ndarray:
    """The (m, m) cosine similarities of m embeddings (a zero vector has similarity 0 with everything).

    >>> cosine_similarity(np.array([[1.0, 0.0], [1.0, 1.0]])).round(3).tolist()
    [[1.0, 0.707], [0.707, 1.0]]
    """
    e = np.asarray(emb, dtype=np.float64)
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    e = e / np.where(norms == 0, 1.0, norms)
    return np.clip(e @ e.T, -1.0, 1.0)


def similarity_matrices(emb_by_iteration: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """{t: cosine similarity matrix of that iteration's responses}. 1 - the mean of a matrix's off-diagonal
    entries is the problem's embedding diversity (diversity.pairwise_diversity)."""
    return {t: cosine_similarity(e) for t, e in sorted(emb_by_iteration.items()) if len(e)}


def sampled_by_iteration(history: pd.DataFrame, split: str = "test") -> dict[int, pd.DataFrame]:
    """{t: the problem's sampled (not greedy) responses of M_t on a split}, by sample_idx."""
    s = history[(history["decoding"] == "sample") & (history["split"] == split)]
    return {int(t): g.reset_index(drop=True) for t, g in s.groupby("iteration", sort=True)}


def problem_similarity(history: pd.DataFrame, embedder: diversity.Embedder, split: str = "test"):
    """{t: cosine similarity matrix of the problem's sampled responses of M_t}, embeddings from `embedder`."""
    by_t = sampled_by_iteration(history, split)
    return similarity_matrices({t: embedder.embed(list(g["response"])) for t, g in by_t.items()})


# ---------------------------------------------------------------------------------------------------------
# HTML and images (what the widgets display).

_CSS = ("<style>.si-eq{background:#fff3b0;padding:0 1px}.si-resp{white-space:pre-wrap;font-family:monospace;"
        "font-size:12px;margin:0}.si-cards td,.si-cards th{vertical-align:top;padding:2px 6px;text-align:left}"
        ".si-col{flex:1;min-width:180px;border-left:1px solid #ddd;padding:0 6px}</style>")


def _status(status: str) -> str:
    color = STATUS_COLORS.get(status, "#000")
    return f'<td class="si-status" style="color:{color};font-weight:bold">{html.escape(str(status))}</td>'


def _extracted(value) -> str:
    shown = "—" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
    return f'<td class="si-extracted">{html.escape(shown)}</td>'


def history_html(problem_id: str, history: pd.DataFrame, task: str = "arith") -> str:
    """One problem: its prompt, then a row per response (iteration, split, decoding, sample, verdict,
    extracted answer, response with equations highlighted)."""
    first = history.iloc[0]
    head = (f'<h4>{html.escape(problem_id)} · {html.escape(str(first["split"]))} · level '
            f'{html.escape(str(first["level"]))}</h4><pre class="si-resp">{html.escape(first["prompt"])}</pre>')
    rows = "".join(
        f'<tr><td>M{r.iteration}</td><td>{html.escape(r.split)}</td><td>{html.escape(r.decoding)}</td>'
        f'<td>{r.sample_idx}</td>{_status(r.status)}{_extracted(r.extracted)}'
        f'<td><pre class="si-resp">{highlight_equations(r.response, task)}</pre></td></tr>'
        for r in history.itertuples())
    return (f'{_CSS}{head}<table class="si-cards"><tr><th>model</th><th>split</th><th>decoding</th><th>sample</th>'
            f'<th>verdict</th><th>extracted</th><th>response</th></tr>{rows}</table>')


def training_html(rows_by_t: dict[int, pd.DataFrame], task: str = "arith") -> str:
    """The pairs or SFT rows of one problem that trained M(t+1), per iteration t."""
    parts = [_CSS]
    for t, rows in sorted(rows_by_t.items()):
        parts.append(f"<h4>trained M{t + 1}: {len(rows)} row(s) from M{t}'s samples</h4>")
        if "chosen" in rows.columns:
            body = "".join(f'<tr><td>{r.chosen_idx}</td><td><pre class="si-resp">{highlight_equations(r.chosen, task)}'
                           f'</pre></td><td>{r.rejected_idx}</td><td><pre class="si-resp">'
                           f'{highlight_equations(r.rejected, task)}</pre></td></tr>' for r in rows.itertuples())
            parts.append('<table class="si-cards si-pairs"><tr><th>chosen sample</th><th>chosen</th>'
                         f'<th>rejected sample</th><th>rejected</th></tr>{body}</table>')
        else:
            body = "".join(f'<tr><td>{r.sample_idx}</td><td><pre class="si-resp">'
                           f'{highlight_equations(r.completion, task)}</pre></td></tr>' for r in rows.itertuples())
            parts.append('<table class="si-cards si-sft"><tr><th>sample</th><th>completion</th></tr>'
                         f'{body}</table>')
    return "".join(parts)


def side_by_side_html(by_t: dict[int, pd.DataFrame], task: str = "arith") -> str:
    """A column per iteration with that iteration's sampled responses, verdicts and highlighted equations."""
    cols = []
    for t, g in sorted(by_t.items()):
        eqs = [e for r in g["response"] for e in diversity.EQUATIONS.get(task, diversity.generic_equations)(r)]
        stats = f"{len(set(eqs))} distinct of {len(eqs)} equations" if eqs else "no equation"
        items = "".join(f'<div><b class="si-status" style="color:{STATUS_COLORS.get(r.status, "#000")}">'
                        f'#{r.sample_idx} {html.escape(r.status)}</b><pre class="si-resp">'
                        f'{highlight_equations(r.response, task)}</pre></div>' for r in g.itertuples())
        cols.append(f'<div class="si-col"><h4>M{t} · {stats}</h4>{items}</div>')
    return f'{_CSS}<div style="display:flex">{"".join(cols)}</div>'


def heatmap_png(matrices: dict[int, np.ndarray]) -> bytes:
    """PNG of one cosine-similarity heatmap per iteration, on a shared colour scale."""
    from matplotlib.figure import Figure  # no pyplot: the notebook's backend is left alone

    fig = Figure(figsize=(3.2 * max(len(matrices), 1), 3.2), layout="constrained")
    axes = fig.subplots(1, max(len(matrices), 1), squeeze=False)[0]
    low = min([0.0] + [float(m.min()) for m in matrices.values()])
    image = None
    for ax, (t, m) in zip(axes, sorted(matrices.items())):
        image = ax.imshow(m, vmin=low, vmax=1.0, cmap="viridis")
        off = m[~np.eye(len(m), dtype=bool)]
        ax.set_title(f"M{t}: mean similarity {off.mean():.2f}" if off.size else f"M{t}", fontsize=9)
        ax.set_xlabel("sample")
        ax.set_ylabel("sample")
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8, label="cosine similarity")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------
# Widgets.

def _task(run_dir, t: int, split: str) -> str:
    df = samples(run_dir, t, split)
    return str(df["task"].iloc[0]) if "task" in df.columns and len(df) else "arith"


def _reporting(target, fn):
    """`fn` as a widget callback whose bad-input errors (a missing file, iterations with different problems)
    are shown in the `target` HTML widget instead of vanishing into the kernel's log."""
    def callback(change=None):
        try:
            fn(change)
        except (ValueError, FileNotFoundError) as e:
            target.value = f'<b class="si-error" style="color:#cf222e">{html.escape(str(e))}</b>'
    return callback


def _dropdown(widgets, css: str, description: str, options, value=None):
    w = widgets.Dropdown(options=options, value=value, description=description)
    w.add_class(css)
    return w


def run_picker(path: str | Path):
    """A dropdown (class si-run) of the runs under `path`, a study folder (its paradigms) or a run folder (that
    run alone); its value is the chosen run's folder. Give it to both explorers: they show it and follow it."""
    import ipywidgets as widgets

    runs = runs_of(path)
    return _dropdown(widgets, "si-run", "run", [(r.name, str(r)) for r in runs], str(runs[0]))


def _following(run, build):
    """`build(run_dir)` for a run folder; for a study folder or a run_picker, a box with the picker above what
    `build` makes for the chosen run, made again when the choice changes."""
    import ipywidgets as widgets

    if not isinstance(run, widgets.Dropdown):
        if _is_run(resolve(run)):
            return build(run)
        run = run_picker(run)
    body = widgets.VBox([build(run.value)])
    message = widgets.HTML()

    def rebuild(change=None):
        body.children = [build(run.value)]
        message.value = ""

    run.observe(_reporting(message, rebuild), names="value")
    return widgets.VBox([run, message, body])


def improvement_explorer(run_dir, split: str = "test"):
    """Widgets: choose two iterations and a split; see gained, lost and stable problems by level; choose a
    problem of a set to see its responses in every iteration; choose a training problem to see its samples
    and the pairs or SFT rows that trained the next model. `run_dir`: a run folder, a study folder or a
    run_picker (then a dropdown of the runs comes first)."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"split {split!r}: transition sets need greedy responses, which only {EVAL_SPLITS} have")
    return _following(run_dir, lambda r: _improvement_explorer(r, split))


def _improvement_explorer(run_dir: str | Path, split: str):
    import ipywidgets as widgets

    if split not in EVAL_SPLITS:
        raise ValueError(f"split {split!r}: transition sets need greedy responses, which only {EVAL_SPLITS} have")
    its = iterations(run_dir, split)
    if not its:
        raise FileNotFoundError(f"{run_dir}: no iter_<t>/samples_{split}.parquet; has the run sampled?")
    task = _task(run_dir, its[0], split)
    iter_a = _dropdown(widgets, "si-iter-a", "iteration A", its, its[0])
    iter_b = _dropdown(widgets, "si-iter-b", "iteration B", its, its[-1])
    split_w = _dropdown(widgets, "si-split", "split", [s for s in EVAL_SPLITS if iterations(run_dir, s)], split)
    table_w, card, train_card = widgets.HTML(), widgets.HTML(), widgets.HTML()
    table_w.add_class("si-table")
    card.add_class("si-problem-card")
    train_card.add_class("si-train-card")
    set_w = _dropdown(widgets, "si-set", "set", [(v, k) for k, v in SET_LABELS.items()], "improved")
    problem_w = _dropdown(widgets, "si-problem", "problem", [])
    train_w = _dropdown(widgets, "si-train-problem", "trained on", [])
    state: dict = {}

    def show_problem(change=None):
        pid = problem_w.value
        card.value = (history_html(pid, problem_history(run_dir, pid), task)
                      + ledger_html(problem_ledger(run_dir, pid, split_w.value)) if pid
                      else "<i>no problem in this set</i>")

    def show_set(change=None):
        problems = state["view"].problems
        ids = list(problems.loc[problems["set"] == set_w.value, "problem_id"])
        problem_w.options = ids
        problem_w.value = ids[0] if ids else None
        show_problem()

    def show_train(change=None):
        pid = train_w.value
        if not pid:
            train_card.value = f"<i>no training data between M{iter_a.value} and M{iter_b.value}</i>"
            return
        history = problem_history(run_dir, pid)
        rows = {t: training_rows(run_dir, t, pid) for t in range(iter_a.value, iter_b.value)}
        train_card.value = (history_html(pid, history, task)
                            + training_html({t: r for t, r in rows.items() if len(r)}, task))

    def show_view(change=None):
        a, b = iter_a.value, iter_b.value
        state["view"] = view = improvement_view(run_dir, a, b, split_w.value)
        counts = view.table.rename(columns=SET_LABELS)
        table_w.value = (f"<b>M{a} → M{b} on {html.escape(split_w.value)} (greedy correctness)</b>"
                         + counts.to_html(classes="si-transitions"))
        ids = training_problems(run_dir, a, b - 1)
        train_w.options = ids
        train_w.value = ids[0] if ids else None
        show_set()
        show_train()

    show_view = _reporting(table_w, show_view)
    for w in (iter_a, iter_b, split_w):
        w.observe(show_view, names="value")
    set_w.observe(_reporting(card, show_set), names="value")
    problem_w.observe(_reporting(card, show_problem), names="value")
    train_w.observe(_reporting(train_card, show_train), names="value")
    show_view()
    box = widgets.VBox([widgets.HBox([iter_a, iter_b, split_w]), table_w, widgets.HBox([set_w, problem_w]), card,
                        widgets.HTML("<h3>Training data that made the next models</h3>"), train_w, train_card])
    box.add_class("si-improvement")
    return box


def diversity_explorer(run_dir, split: str = "test", embedding_model: str = diversity.DEFAULT_MODEL,
                       cache_dir: str | Path = "data/cache"):
    """Widgets: choose a problem; its sampled responses across iterations side by side with the equations
    highlighted, and a cosine-similarity heatmap of their embeddings per iteration (`embedding_model` ''
    leaves the heatmaps out; embeddings are cached under `cache_dir`, as in the evaluate stage). `run_dir`: a
    run folder, a study folder or a run_picker (then a dropdown of the runs comes first)."""
    embedder = (diversity.Embedder(embedding_model, resolve(cache_dir) if cache_dir else "")
                if embedding_model else None)  # one for all runs: the model loads once
    return _following(run_dir, lambda r: _diversity_explorer(r, split, embedder))


def _diversity_explorer(run_dir: str | Path, split: str, embedder: diversity.Embedder | None):
    import ipywidgets as widgets

    its = iterations(run_dir, split)
    if not its:
        raise FileNotFoundError(f"{run_dir}: no iter_<t>/samples_{split}.parquet; has the run sampled?")
    task = _task(run_dir, its[0], split)
    ids = sorted(samples(run_dir, its[0], split)["problem_id"].unique())
    problem_w = _dropdown(widgets, "si-div-problem", "problem", ids, ids[0] if ids else None)
    side = widgets.HTML()
    side.add_class("si-samples")
    heat = widgets.Image(format="png")
    heat.add_class("si-heatmap")

    def show(change=None):
        history = problem_history(run_dir, problem_w.value)
        by_t = sampled_by_iteration(history, split)
        side.value = side_by_side_html(by_t, task) if by_t else "<i>no sampled responses</i>"
        matrices = problem_similarity(history, embedder, split) if embedder is not None else {}
        heat.value = heatmap_png(matrices) if matrices else b""

    show = _reporting(side, show)
    problem_w.observe(show, names="value")
    if ids:
        show()
    box = widgets.VBox([problem_w, widgets.HTML("<h3>Embedding similarity of the sampled responses</h3>"), heat,
                        widgets.HTML("<h3>Sampled responses per iteration</h3>"), side])
    box.add_class("si-diversity")
    return box
