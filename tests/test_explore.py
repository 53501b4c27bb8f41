"""explore.py on a fabricated two-iteration run directory: the transition sets by level, a problem's history,
the training rows, equation highlighting (escaped), similarity matrices, and the widgets built on them."""

import numpy as np
import pandas as pd
import pytest

from selfimprove import explore

# Greedy verdicts of the four test problems: p2 gained, p3 lost, p1 stable correct, p4 stable wrong.
GREEDY = {1: {"p1": "correct", "p2": "incorrect", "p3": "correct", "p4": "no_answer"},
          2: {"p1": "correct", "p2": "correct", "p3": "incorrect", "p4": "no_answer"}}
LEVELS = {"p1": 1, "p2": 1, "p3": 2, "p4": 2, "t1": 1, "t2": 2}


def _row(t, split, pid, decoding, idx, status, response):
    extracted = None if status == "no_answer" else response.rsplit("#### ", 1)[-1]
    return dict(iteration=t, split=split, task="arith", problem_id=pid, level=LEVELS[pid], decoding=decoding,
                sample_idx=idx, prompt=f"Question {pid} <b>?", response=response, n_tokens=5, finish_reason="stop",
                extracted=extracted, status=status, correct=status == "correct")


def _response(pid, t, k, status):
    answer = {"correct": "7", "incorrect": "8", "no_answer": ""}[status]
    tail = f"#### {answer}" if answer else "I do not know"
    return f"{t} + {k} = {t + k}\n<{pid}> & 3 * 2 = 6\n{tail}"


@pytest.fixture
def run_dir(tmp_path, write_graded):
    for t in (1, 2):
        rows = []
        for pid, status in GREEDY[t].items():
            rows.append(_row(t, "test", pid, "greedy", 0, status, _response(pid, t, 0, status)))
            for k, s in enumerate(["correct", "incorrect", status]):
                rows.append(_row(t, "test", pid, "sample", k, s, _response(pid, t, k, s)))
        (tmp_path / f"iter_{t}").mkdir()
        write_graded(pd.DataFrame(rows), tmp_path / f"iter_{t}" / "samples_test.parquet")
    train = [_row(1, "train", pid, "sample", k, s, _response(pid, 1, k, s))
             for pid in ("t1", "t2") for k, s in enumerate(["correct", "incorrect", "no_answer"])]
    write_graded(pd.DataFrame(train), tmp_path / "iter_1" / "samples_train.parquet")
    pairs = pd.DataFrame([dict(problem_id="t1", level=1, prompt="Question t1", chosen=train[0]["response"],
                               rejected=train[1]["response"], chosen_idx=0, rejected_idx=1)])
    (tmp_path / "iter_2").mkdir(exist_ok=True)
    pairs.to_parquet(tmp_path / "iter_2" / "train_data.parquet")  # M2's data, from M1's graded train samples
    return tmp_path


def test_improvement_view_sets_and_levels(run_dir):
    view = explore.improvement_view(run_dir, 1, 2)
    sets = view.problems.groupby("set")["problem_id"].apply(list).to_dict()
    assert sets == {"improved": ["p2"], "lost": ["p3"], "stable_correct": ["p1"], "stable_wrong": ["p4"]}
    assert view.table.loc["L1", ["improved", "lost", "stable_correct", "stable_wrong"]].tolist() == [1, 0, 1, 0]
    assert view.table.loc["L2", ["improved", "lost", "stable_correct", "stable_wrong"]].tolist() == [0, 1, 0, 1]
    assert view.table.loc["all", "problems"] == 4
    back = explore.improvement_view(run_dir, 2, 1)  # the reverse direction swaps gained and lost
    assert list(back.problems.query("set == 'improved'")["problem_id"]) == ["p3"]


def test_bad_input_is_named(run_dir, tmp_path_factory):
    with pytest.raises(FileNotFoundError, match="iter_3.*iterations with test samples: \\[1, 2\\]"):
        explore.improvement_view(run_dir, 1, 3)
    with pytest.raises(FileNotFoundError, match="no iter_<t>/ folder"):
        explore.iterations(tmp_path_factory.mktemp("empty"))
    with pytest.raises(ValueError, match="'nope' is in no"):
        explore.problem_history(run_dir, "nope")
    with pytest.raises(FileNotFoundError, match="iter_3/train_data.parquet does not exist: M_2's samples trained no"):
        explore.training_rows(run_dir, 2, "t1")


def test_problem_history_orders_responses(run_dir):
    h = explore.problem_history(run_dir, "p3")
    assert list(h.columns) == explore.HISTORY_COLUMNS
    assert h["iteration"].tolist() == [1] * 4 + [2] * 4
    assert h["decoding"].tolist()[:4] == ["greedy", "sample", "sample", "sample"]
    assert h.loc[h["decoding"] == "greedy", "status"].tolist() == ["correct", "incorrect"]
    assert h["extracted"].tolist()[:2] == ["7", "7"]


def test_training_rows_and_problems(run_dir):
    assert explore.training_problems(run_dir, 1, 1) == ["t1"]
    assert explore.training_problems(run_dir, 2, 2) == []  # the last iteration trained nothing
    rows = explore.training_rows(run_dir, 1, "t1")
    assert rows[["chosen_idx", "rejected_idx"]].values.tolist() == [[0, 1]]
    assert explore.training_rows(run_dir, 1, "t2").empty
    html = explore.training_html({1: rows})
    assert "trained M2" in html and "si-pairs" in html and "&lt;t1&gt;" in html


def test_highlight_escapes_and_marks_every_equation():
    html = explore.highlight_equations("1 + 2 = 3\n<script>alert(1)</script> & 4 * 5 = 20")
    assert html.count('<mark class="si-eq">') == 2
    assert "<script>" not in html and "&lt;script&gt;" in html and "&amp;" in html
    generic = explore.highlight_equations("pays <<48/2=24>>24", task="gsm8k")  # the generic pattern
    assert generic == 'pays &lt;&lt;<mark class="si-eq">48/2=24</mark>&gt;&gt;24'


def test_history_html_shows_verdicts_and_escapes(run_dir):
    html = explore.history_html("p3", explore.problem_history(run_dir, "p3"))
    assert html.count('class="si-status"') == 8
    assert "Question p3 &lt;b&gt;?" in html and "<b>?" not in html
    assert "&lt;p3&gt; &amp;" in html


def test_similarity_matrices_match_the_diversity_metric():
    rng = np.random.default_rng(0)
    emb = {1: rng.normal(size=(4, 8)), 2: np.ones((3, 8))}
    mats = explore.similarity_matrices(emb)
    assert mats[1].shape == (4, 4) and np.allclose(np.diag(mats[1]), 1.0)
    assert np.allclose(mats[2], 1.0)  # identical responses: full collapse
    off = mats[1][~np.eye(4, dtype=bool)].mean()
    from selfimprove import diversity
    assert off == pytest.approx(1 - diversity.pairwise_diversity(emb[1]))


class FakeEmbedder:
    """Embeds a text as its character counts of '0'..'9' (no model needed)."""

    def embed(self, texts):
        return np.array([[t.count(str(d)) + 1 for d in range(10)] for t in texts], dtype=np.float32)


def test_problem_similarity_and_heatmap(run_dir):
    h = explore.problem_history(run_dir, "p1")
    mats = explore.problem_similarity(h, FakeEmbedder())
    assert sorted(mats) == [1, 2] and mats[1].shape == (3, 3)
    png = explore.heatmap_png(mats)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_side_by_side_counts_distinct_equations(run_dir):
    by_t = explore.sampled_by_iteration(explore.problem_history(run_dir, "p1"))
    html = explore.side_by_side_html(by_t)
    assert html.count('class="si-col"') == 2
    # M1's three samples: "1 + k = 1+k" differ, "3 * 2 = 6" repeats -> 4 distinct of 6 equations
    assert "M1 · 4 distinct of 6 equations" in html


def test_improvement_explorer_reacts_to_choices(run_dir):
    box = explore.improvement_explorer(run_dir)
    by_class = {c: w for w in _walk(box) for c in w._dom_classes}
    assert "p2" in by_class["si-problem-card"].value  # the gained set is shown first
    by_class["si-set"].value = "lost"
    assert by_class["si-problem"].options == ("p3",)
    assert "<h4>p3" in by_class["si-problem-card"].value
    assert "trained M2" in by_class["si-train-card"].value and "t1" in by_class["si-train-card"].value
    by_class["si-iter-a"].value = 2  # M2 -> M2: everything stable, no training data in between
    by_class["si-set"].value = "improved"
    assert by_class["si-problem"].options == ()
    assert "no problem in this set" in by_class["si-problem-card"].value
    assert "no training data" in by_class["si-train-card"].value


def test_diversity_explorer_without_embeddings(run_dir):
    box = explore.diversity_explorer(run_dir, embedding_model="")
    by_class = {c: w for w in _walk(box) for c in w._dom_classes}
    by_class["si-div-problem"].value = "p4"
    assert "I do not know" in by_class["si-samples"].value
    assert by_class["si-heatmap"].value == b""


def test_relative_paths_are_read_from_the_checkout_in_its_notebooks_folder(run_dir, tmp_path_factory, monkeypatch):
    """JupyterLab runs notebooks/60_explore.ipynb with the checkout's notebooks/ as its working directory; its
    study_dir ('data/runs/<run>') and cache_dir ('data/cache') are where `make demo` writes them, at the
    checkout's top. Anywhere else they are read from the working directory."""
    import re
    import shutil

    from selfimprove import artifacts

    checkout = tmp_path_factory.mktemp("checkout")
    shutil.copytree(run_dir, checkout / "data" / "runs" / "demo")
    (checkout / "notebooks" / "sub").mkdir(parents=True)
    monkeypatch.setattr(artifacts, "CHECKOUT", checkout)
    for cwd in (checkout / "notebooks", checkout / "notebooks" / "sub"):
        monkeypatch.chdir(cwd)
        assert artifacts.project_dir() == checkout
        assert explore.iterations("data/runs/demo") == [1, 2]
    seen = {}

    class RecordingEmbedder(FakeEmbedder):
        def __init__(self, model_name, cache_dir):
            seen["cache_dir"] = cache_dir

    monkeypatch.setattr(explore.diversity, "Embedder", RecordingEmbedder)
    explore.diversity_explorer("data/runs/demo", embedding_model="fake", cache_dir="data/cache")
    assert seen["cache_dir"] == checkout / "data" / "cache"
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)  # outside the checkout's notebooks/: the working directory
    assert artifacts.project_dir() == elsewhere
    with pytest.raises(FileNotFoundError, match=f"does not exist; relative folders are read from "
                                                f"{re.escape(str(elsewhere))}"):
        explore.run_picker("data/runs/demo")
    monkeypatch.chdir(checkout)
    assert explore.iterations("data/runs/demo") == [1, 2]
    monkeypatch.setattr(artifacts, "CHECKOUT", None)  # installed: the working directory, also in a notebooks/
    monkeypatch.chdir(checkout / "notebooks")
    assert artifacts.project_dir() == checkout / "notebooks"


@pytest.fixture
def study(run_dir, tmp_path_factory, write_graded):
    """A study folder as `selfimprove run` writes one: runs dpo/ and sft/ (sft: M2 lost nothing), a report/."""
    import shutil

    from selfimprove.runs import Run

    root = tmp_path_factory.mktemp("study")
    for paradigm in ("dpo", "sft"):
        shutil.copytree(run_dir, root / paradigm)
    df = Run(root / "sft").graded(2, "test")
    df.loc[df["problem_id"] == "p3", "status"] = "correct"
    df["correct"] = df["status"] == "correct"
    write_graded(df, root / "sft" / "iter_2" / "samples_test.parquet")
    (root / "report").mkdir()
    return root


def test_a_study_offers_its_runs_in_a_dropdown(study, run_dir):
    assert [p.name for p in explore.runs_of(study)] == ["sft", "dpo"]  # the paper's order of paradigms
    assert explore.runs_of(run_dir) == [run_dir]
    with pytest.raises(FileNotFoundError, match="a study folder: choose one of its runs"):
        explore.iterations(study)
    with pytest.raises(FileNotFoundError, match="neither a run .* nor a study"):
        explore.runs_of(study / "report")
    picker = explore.run_picker(study)
    assert picker.options == (("sft", str(study / "sft")), ("dpo", str(study / "dpo")))
    boxes = [explore.improvement_explorer(picker), explore.diversity_explorer(picker, embedding_model="")]
    for box in boxes:
        assert box.children[0] is picker  # the same dropdown above each explorer
    by_class = {c: w for box in boxes for w in _walk(box) for c in w._dom_classes}
    by_class["si-set"].value = "lost"
    assert by_class["si-problem"].options == ()  # sft: M2 lost nothing
    picker.value = str(study / "dpo")
    by_class = {c: w for box in boxes for w in _walk(box) for c in w._dom_classes}
    by_class["si-set"].value = "lost"
    assert by_class["si-problem"].options == ("p3",)
    box = explore.improvement_explorer(study)  # a study folder itself: its own dropdown
    assert "si-run" in box.children[0]._dom_classes and box.children[0].value == str(study / "sft")


def _walk(w):
    yield w
    for child in getattr(w, "children", ()):
        yield from _walk(child)


def test_explorer_shows_bad_input_in_the_page(run_dir, write_graded):
    df = explore.samples(run_dir, 2, "test")
    write_graded(df[df["problem_id"] != "p4"], run_dir / "iter_2" / "samples_test.parquet")  # M2 lacks p4
    box = explore.improvement_explorer(run_dir)
    table = next(w for w in _walk(box) if "si-table" in w._dom_classes)
    assert "si-error" in table.value and "same problems in both iterations" in table.value


def test_training_html_renders_sft_rows():
    rows = pd.DataFrame([dict(problem_id="t1", level=1, prompt="q", completion="2 + 2 = 4\n#### 4", sample_idx=3)])
    html = explore.training_html({2: rows})
    assert "trained M3" in html and "si-sft" in html and '<mark class="si-eq">2 + 2 = 4</mark>' in html
    assert "<td>3</td>" in html


def test_widget_classes_are_all_there(run_dir):
    picker = explore.run_picker(run_dir)
    boxes = [explore.improvement_explorer(picker), explore.diversity_explorer(picker, embedding_model="")]
    found = {c for box in boxes for w in _walk(box) for c in w._dom_classes}
    assert found == set(explore.WIDGET_CLASSES)
    with pytest.raises(ValueError, match="split 'train'"):
        explore.improvement_explorer(run_dir, split="train")
