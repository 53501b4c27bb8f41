"""The paper's figures (selfimprove/plots.py): labelled axes, one colour per paradigm, the best-iterate gain,
missing data shown rather than fatal, PNG + PDF files; the run/study loader, the CLI and the analysis
notebook against a finished tiny run copied into a two-paradigm study (slow: needs the tiny_run fixture)."""

import json
import time

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import nbformat
import pandas as pd
import pytest

from selfimprove import cli, pipeline, plots

FIGURES = sorted(plots.FIGURES)


def _table(paradigms=("sft", "dpo"), iterations=3) -> pd.DataFrame:
    """A hand-made multi-run table with every metric the figures read; pass@1 differs by paradigm."""
    rows = []
    for j, par in enumerate(paradigms):
        for t in range(1, iterations + 1):
            def add(split, metric, subset, k, v, n=50, par=par, t=t):
                rows.append(dict(run=f"study/{par}", task="arith", model="organism", paradigm=par, iteration=t,
                                 split=split, metric=metric, subset=subset, k=k, value=v, ci_low=v - 0.02,
                                 ci_high=v + 0.02, n=n))
            p1 = 0.40 if t == 1 else 0.40 + 0.01 * (j + 1) * t  # best iterate: the last; gain 0.01 * (j+1) * T
            add("test", "pass@1", "all", 1, p1)
            add("ood", "pass@1", "all", 1, 0.30 - 0.01 * t)
            for split in ("test", "ood"):
                add(split, "group_disparity", "L1-L5", None, 0.8 + 0.01 * t)
            for k in (1, 2, 4):
                add("test", "pass@k", "all", k, 0.4 + 0.05 * k)
            for m in ("distinct_n", "embedding_diversity", "distinct_equations"):
                for s in ("correct", "incorrect"):
                    add("test", m, s, 4, 0.6 - 0.05 * t)
            if t < iterations:
                add("train", "coverage_mean", "all", None, 0.62)
                add("train", "coverage_any", "all", None, 0.80)
            if t >= 2:
                for n_draws in (1, 2, 4):
                    for subset in ("improved", "all", "m1_wrong"):
                        add("test", "m1_accuracy@N", subset, n_draws, min(1.0, 0.25 * n_draws + 0.01 * t))
    return pd.DataFrame(rows)


def _visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def _artists(fig):
    for ax in fig.axes:
        yield from ax.get_children()


def _texts(fig, gid_prefix: str) -> dict[str, str]:
    return {a.get_gid(): a.get_text() for a in _artists(fig)
            if hasattr(a, "get_text") and (a.get_gid() or "").startswith(gid_prefix)}


@pytest.fixture(scope="module")
def rendered():
    figs = {name: plots.FIGURES[name](_table()) for name in FIGURES}
    yield figs
    for fig in figs.values():
        plt.close(fig)


@pytest.mark.parametrize("name", FIGURES)
def test_every_visible_axes_is_labelled(rendered, name):
    axes = _visible_axes(rendered[name])
    assert axes
    for ax in axes:
        assert ax.get_xlabel().strip(), f"{name}: an Axes ({ax.get_title()!r}) has no x label"
        assert ax.get_ylabel().strip(), f"{name}: an Axes ({ax.get_title()!r}) has no y label"


def _paradigm_colours(fig) -> dict[str, set[str]]:
    """{paradigm: hex colours of its lines and bars}."""
    out: dict[str, set[str]] = {}
    for a in _artists(fig):
        gid = a.get_gid() or ""
        if gid.startswith("paradigm:"):
            colour = a.get_color() if hasattr(a, "get_linestyle") and not hasattr(a, "get_width") \
                else a.get_facecolor()
            out.setdefault(gid.split(":", 1)[1], set()).add(mcolors.to_hex(colour))
    return out


def test_one_colour_per_paradigm_in_every_figure(rendered):
    for name in ("figure1_pass1", "figure2_coverage", "figure4_diversity", "figure5_ood_disparity",
                 "reversal_dashboard"):
        colours = _paradigm_colours(rendered[name])
        assert set(colours) == {"sft", "dpo"}, name
        for paradigm, found in colours.items():
            assert found == {plots.PARADIGM_COLORS[paradigm]}, f"{name}: {paradigm} drawn in {found}"
    # Figure 3 shades each paradigm's colour by IS(t); its hue stays the paradigm's.
    for paradigm, found in _paradigm_colours(rendered["figure3_improvement_sets"]).items():
        base = mcolors.rgb_to_hsv(mcolors.to_rgb(plots.PARADIGM_COLORS[paradigm]))[0]
        assert all(abs(mcolors.rgb_to_hsv(mcolors.to_rgb(c))[0] - base) < 0.03 for c in found), paradigm
    assert len(set(plots.PARADIGM_COLORS.values())) == len(plots.PARADIGM_COLORS)


def test_best_iterate_is_marked_with_its_gain(rendered):
    gains = _texts(rendered["figure1_pass1"], "gain:")
    # The table's best iterate is t = 3 for both; pass@1 0.40 -> 0.43 (sft) and 0.46 (dpo), in points.
    assert gains == {"gain:study/sft": "+3.0", "gain:study/dpo": "+6.0"}
    values = _texts(rendered["figure1_pass1"], "value:")
    assert values == {"value:study/sft": "43.0", "value:study/dpo": "46.0"}
    # Figure 2 stars the best paradigm (dpo) with its gain over M1.
    assert _texts(rendered["figure2_coverage"], "best:") == {"best:dpo": "+6.0 ★"}


def test_best_iterate_is_after_m1_even_when_m1_scores_highest():
    rows = pd.DataFrame({"iteration": [1, 2, 3], "value": [0.5, 0.3, 0.4]})
    assert plots.best_iterate(rows) == {"t": 3, "value": 0.4, "gain": pytest.approx(-0.1)}
    assert plots.best_iterate(rows[rows["iteration"] == 1]) is None
    assert plots.gain_text(-0.1) == "-10.0"


def test_pass1_by_iteration_marks_the_best_iterate_after_m1_as_figure1():
    table = _table(("dpo",))
    m1 = (table["iteration"] == 1) & (table["split"] == "test") & (table["metric"] == "pass@1")
    table.loc[m1, "value"] = 0.50  # M1 scores highest; M_t* is t = 3 (0.43), 7 points below it
    fig = plots.pass1_by_iteration(table)
    ax_r = fig.axes[1]
    marks = [c.get_offsets().tolist() for c in ax_r.collections if c.get_gid() == "best"]
    assert marks == [[[3.0, pytest.approx(0.43)]]]
    assert [a.get_text() for a in ax_r.texts] == ["-7.0"]
    assert _texts(plots.figure1_pass1(table), "gain:") == {"gain:study/dpo": "-7.0"}
    assert [t.get_text() for t in fig.axes[0].texts] == ["no difficulty levels in this task"]  # no L1.. rows
    plt.close("all")


def _fake_run(root, organism, pass1):
    """A run directory with a manifest (organism digest) and one evaluated iteration."""
    root.mkdir(parents=True)
    manifest = {"config": {"paradigm": "dpo", "task": "arith", "model": ""}, "stages": {},
                "organism": {"digest": organism}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "iter_1").mkdir()
    row = dict(split="test", metric="pass@1", subset="all", k=1, value=pass1, ci_low=None, ci_high=None, n=40)
    (root / "iter_1" / "metrics.json").write_text(json.dumps({"iteration": 1, "table": [row]}))


def test_runs_of_different_organisms_are_different_models(tmp_path):
    _fake_run(tmp_path / "demo" / "dpo", "174d693d60ca", 0.36)
    _fake_run(tmp_path / "demo" / "sft", "174d693d60ca", 0.36)
    _fake_run(tmp_path / "tiny", "a9beeeb52399", 0.08)
    assert set(plots.runs_table(tmp_path / "demo")["model"]) == {"organism"}  # one organism: its plain name
    table = plots.runs_table([tmp_path / "demo", tmp_path / "tiny"])
    assert table.groupby("run")["model"].first().to_dict() == {
        "demo/dpo": "organism 174d693d", "demo/sft": "organism 174d693d", "tiny": "organism a9beeeb5"}
    fig = plots.figure5_ood_disparity(table)  # a panel per M1, each with its own M1 line
    m1_lines = sorted(round(float(ln.get_ydata()[0]), 2) for ax in fig.axes for ln in ax.get_lines()
                      if ln.get_linestyle() == ":" and "test" in ax.get_title())
    assert m1_lines == [8.0, 36.0]
    plt.close(fig)


def test_coverage_table_gives_the_advice_and_the_best_paradigm():
    cov = plots.coverage_table(_table())
    assert cov.loc[0, "coverage_mean"] == pytest.approx(0.62)
    assert cov.loc[0, "advice"] == "DPO or SFT-DPO"
    assert cov.loc[0, "best"] == "dpo"
    assert cov.loc[0, "M1"] == pytest.approx(40.0)


@pytest.mark.parametrize("drop, note", [
    (lambda t: t["split"] == "ood", "no OOD split"),
    (lambda t: t["metric"].isin(["embedding_diversity", "distinct_equations"]), "no diversity measure"),
    (lambda t: t["metric"].isin(["coverage_mean", "coverage_any", "m1_accuracy@N"]), "no coverage, no IS(t)"),
    (lambda t: t["iteration"] > 1, "only M1"),
    (lambda t: t["paradigm"] == "sft", "one paradigm"),
])
def test_missing_data_is_said_in_the_panel_not_fatal(drop, note):
    table = _table()
    table = table[~drop(table)]
    notes = 0
    for name in FIGURES:
        fig = plots.FIGURES[name](table)
        for ax in _visible_axes(fig):
            assert ax.get_xlabel() and ax.get_ylabel(), f"{note}: {name}"
        notes += sum(1 for a in _artists(fig) if a.get_gid() == "missing")
        plt.close(fig)
    assert notes > 0, f"{note}: no panel says what is missing"


def test_a_single_run_table_without_run_columns_renders():
    table = _table(("dpo",)).drop(columns=plots.RUN_COLUMNS)
    fig = plots.figure1_pass1(table)
    assert set(_paradigm_colours(fig)) == {"dpo"}
    plt.close(fig)
    with pytest.raises(plots.PlotsError, match="lacks column"):
        plots.figure1_pass1(table.drop(columns=["value"]))


def test_save_writes_png_and_pdf_into_each_folder(rendered, tmp_path):
    written = plots.save(rendered["figure1_pass1"], "figure1_pass1", [tmp_path / "a", tmp_path / "b"])
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "a/figure1_pass1.pdf", "a/figure1_pass1.png", "b/figure1_pass1.pdf", "b/figure1_pass1.png"]
    assert (tmp_path / "a/figure1_pass1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "a/figure1_pass1.pdf").read_bytes()[:5] == b"%PDF-"
    with pytest.raises(plots.PlotsError, match="bare name"):
        plots.save(rendered["figure1_pass1"], "figure1.png", tmp_path)


def test_runs_table_errors_name_the_path(tmp_path):
    with pytest.raises(plots.PlotsError, match="nowhere"):
        plots.runs_table([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(plots.PlotsError, match="neither a run"):
        plots.runs_table(tmp_path / "empty")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd/manifest.json").write_text(json.dumps({"config": {"paradigm": "rlhf"}}))
    with pytest.raises(plots.PlotsError, match="'rlhf'"):
        plots.runs_table(tmp_path / "odd")
    (tmp_path / "odd/manifest.json").write_text(json.dumps({"config": {"paradigm": "sft"}}))
    with pytest.raises(plots.PlotsError, match="no evaluated iteration"):
        plots.runs_table(tmp_path / "odd")


# ---------------------------------------------------------------------------------------------------------
# Against a real (tiny) run: slow, it needs the tiny_run fixture.

def _copy_run(src, dest, paradigm=None, pass1_shift=0.0):
    """The manifest and metrics of a run (no models), its paradigm set (None: the key removed) and its test
    pass@1 at t >= 2 shifted, so two paradigms draw apart."""
    dest.mkdir(parents=True)
    manifest = json.loads((src / "manifest.json").read_text())
    if paradigm is None:
        manifest["config"].pop("paradigm", None)
    else:
        manifest["config"]["paradigm"] = paradigm
    (dest / "manifest.json").write_text(json.dumps(manifest))
    for path in src.glob("iter_*/metrics.json"):
        m = json.loads(path.read_text())
        for r in m["table"]:
            if (r["split"], r["metric"], r["subset"]) == ("test", "pass@1", "all") and m["iteration"] >= 2:
                r["value"] = min(1.0, r["value"] + pass1_shift)
        (dest / path.parent.name).mkdir()
        (dest / path.parent.name / "metrics.json").write_text(json.dumps(m))


@pytest.fixture(scope="module")
def study(tiny_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("studies") / "study"
    _copy_run(tiny_run, root / "dpo", "dpo")
    _copy_run(tiny_run, root / "sft", "sft", pass1_shift=0.05)
    return root


@pytest.mark.slow
def test_runs_table_expands_a_study_and_reads_each_manifest(study, tiny_run, tmp_path):
    _copy_run(tiny_run, tmp_path / "old", paradigm=None)  # no paradigm key: counts as DPO
    table = plots.runs_table([study, tmp_path / "old", study / "dpo"])  # study/dpo twice: read once
    runs = table.groupby("run")["paradigm"].first().to_dict()
    assert runs == {"study/dpo": "dpo", "study/sft": "sft", "old": "dpo"}
    assert list(table.columns[:4]) == plots.RUN_COLUMNS
    assert set(table["task"]) == {"arith"} and set(table["model"]) == {"organism"}
    assert table["iteration"].max() == 2


@pytest.mark.slow
def test_figures_of_the_tiny_study(study, tmp_path, capsys):
    table = plots.runs_table(study)
    fig = plots.figure1_pass1(table)
    p1 = table[(table["split"] == "test") & (table["metric"] == "pass@1") & (table["subset"] == "all")]
    for run, r in p1.groupby("run"):
        v = r.set_index("iteration")["value"]
        assert _texts(fig, f"gain:{run}")[f"gain:{run}"] == f"{(v[2] - v[1]) * 100:+.1f}"
    plt.close(fig)
    assert cli.main(["figures", str(study), "--out", str(tmp_path / "figs")]) == 0
    files = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert files == sorted(f"{n}.{ext}" for n in plots.FIGURES for ext in ("png", "pdf"))
    assert "figure1_pass1:" in capsys.readouterr().out
    assert cli.main(["figures", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


@pytest.mark.slow
def test_analysis_notebook_runs_against_the_study(study, tmp_path):
    import papermill as pm

    t0 = time.perf_counter()
    out = tmp_path / "50_analysis.ipynb"
    pm.execute_notebook(str(pipeline.NOTEBOOKS / "50_analysis.ipynb"), str(out),
                        parameters={"runs": [str(study)], "figures_dir": str(tmp_path / "figs")},
                        cwd=str(pipeline.PACKAGE_ROOT), progress_bar=False, kernel_name="python3")
    seconds = time.perf_counter() - t0
    files = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert files == sorted(f"{n}.{ext}" for n in plots.FIGURES for ext in ("png", "pdf"))
    nb = nbformat.read(out, as_version=4)
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images == len(plots.FIGURES), "the notebook shows each figure once"
    print(f"50_analysis.ipynb executed in {seconds:.1f}s")


def test_analysis_notebook_has_one_parameters_cell():
    nb = nbformat.read(pipeline.NOTEBOOKS / "50_analysis.ipynb", as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert "runs: list" in tagged[0].source and "figures_dir: str" in tagged[0].source


def _demo_pass1(demo: dict) -> pd.DataFrame:
    """A study table whose test pass@1 per arm is M1 0.604, then demo[arm] = (M2, M3), each +- 0.033."""
    table = _table(paradigms=tuple(demo))
    p1 = (table["split"] == "test") & (table["metric"] == "pass@1")
    for par, (m2, m3) in demo.items():
        for t, value in ((1, 0.604), (2, m2), (3, m3)):
            rows = p1 & (table["paradigm"] == par) & (table["iteration"] == t)
            table.loc[rows, ["value", "ci_low", "ci_high"]] = value, value - 0.033, value + 0.033
    return table


def test_figure1_labels_of_best_iterates_at_one_t_do_not_overlap():
    """The demo study's pass@1 (seed 0, T = 3; values and intervals as its report has them), whose Figure 1
    printed two pairs of gain labels over each other (gold's and SFT-DPO's at t = 3, DPO's and the placebo's
    at t = 2): every gain label and every value label has a box of its own."""
    demo = {"dpo": (0.596, 0.548), "gold": (0.604, 0.633), "placebo-dpo": (0.587, 0.583), "sft": (0.600, 0.617),
            "sft-dpo": (0.596, 0.619)}  # M2, M3; M1 0.604 [0.571, 0.637] for all
    fig = plots.figure1_pass1(_demo_pass1(demo))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for prefix in ("gain:", "value:"):
        boxes = [a.get_window_extent(renderer) for a in _artists(fig)
                 if hasattr(a, "get_text") and (a.get_gid() or "").startswith(prefix)]
        assert len(boxes) == 5
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), prefix
    # at one t, the highest value's gain stands on top
    gains = {a.get_gid(): a.get_window_extent(renderer).y0 for a in _artists(fig)
             if (a.get_gid() or "").startswith("gain:")}
    assert gains["gain:study/gold"] > gains["gain:study/sft-dpo"] > gains["gain:study/sft"]
    plt.close(fig)


def test_figure1_labels_stand_clear_of_every_point_at_their_t():
    """The three-seed demo study's seed 0, whose gain labels at t = 2 stood on the gold control's M2 (a point
    that is no best iterate, above the best ones): gains above every point drawn at their t, values below."""
    demo = {"dpo": (0.595, 0.537), "gold": (0.616, 0.661), "placebo-dpo": (0.599, 0.577), "sft": (0.601, 0.600),
            "sft-dpo": (0.595, 0.603)}  # M2, M3; M1 0.604 for all
    fig = plots.figure1_pass1(_demo_pass1(demo))
    fig.canvas.draw()
    renderer, ax = fig.canvas.get_renderer(), fig.axes[0]
    for a in _artists(fig):
        gid = a.get_gid() or ""
        if not gid.startswith(("gain:", "value:")):
            continue
        t = next(b["t"] for b in [plots.best_iterate(pd.DataFrame({"iteration": [1, 2, 3],
                                                                  "value": [0.604, *demo[gid.split("/")[1]]]}))])
        points = [ax.transData.transform((t, m[t - 2] * 100))[1] for m in demo.values()]
        box = a.get_window_extent(renderer)
        assert box.y0 > max(points) if gid.startswith("gain:") else box.y1 < min(points), (gid, box, points)
    plt.close(fig)
