"""Hostile input (issue 20): each probe fails at once with one line that names what and where, and nothing outside
a run's own folder, nor the input of `selfimprove grade`, is deleted or overwritten. docs/faults.md lists them."""

import contextlib
import ctypes
import json
import os
import stat
import subprocess
import sys
import time

import pytest

from selfimprove import artifacts, cli, config, data, organism, pipeline
from selfimprove.grading import files
from selfimprove.grading.grade_text import extract_gsm8k, grade_gsm8k
from selfimprove.runs import Run


def _quiet(*args):
    pass


@pytest.fixture
def no_work(monkeypatch):
    """A run that gets past its checks fails at once instead of building an organism."""
    def prepare(*args, **kwargs):
        raise RuntimeError("the run went on past its checks")

    monkeypatch.setattr(pipeline, "prepare", prepare)


@contextlib.contextmanager
def _mode_bits_bind_root():
    """Root obeys a folder's mode bits as any user does, in this thread, while inside: the capability that lets
    it write where they forbid (CAP_DAC_OVERRIDE) is dropped from the thread's effective set (capset(2)) and put
    back after; it stays in the permitted set, so taking it back needs no privilege. The kernel then refuses the
    write as it would a user's: a real read-only folder, not a mock. Skips the test where capget or capset is
    unavailable (not Linux, or a sandbox forbids them)."""
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        capget, capset = libc.capget, libc.capset
    except (OSError, AttributeError):
        pytest.skip("no capget/capset here: root writes into a read-only folder")
    header, caps = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3, this thread
    if capget(ctypes.byref(header), caps) != 0:
        pytest.skip(f"capget failed ({os.strerror(ctypes.get_errno())}): root writes into a read-only folder")
    effective = caps[0].effective
    caps[0].effective &= ~(1 << 1)  # CAP_DAC_OVERRIDE
    if capset(ctypes.byref(header), caps) != 0:
        pytest.skip(f"capset failed ({os.strerror(ctypes.get_errno())}): root writes into a read-only folder")
    try:
        yield
    finally:
        caps[0].effective = effective
        assert capset(ctypes.byref(Header(0x20080522, 0)), caps) == 0


@pytest.fixture
def mode_bits_bind(tmp_path_factory):
    """A folder made read-only (mode 0o555) refuses writes in this test, whoever runs it: a user by its mode bits,
    root too (_mode_bits_bind_root: the tests run as root in containers, where chmod alone stops nothing). Checked
    on a folder of its own first; where root still writes there, the test is skipped."""
    probe = tmp_path_factory.mktemp("mode-bits") / "read-only"
    probe.mkdir(mode=0o555)
    with contextlib.ExitStack() as stack:
        if os.geteuid() == 0:
            stack.enter_context(_mode_bits_bind_root())
        try:
            (probe / "x").mkdir()
        except PermissionError:
            pass
        else:
            pytest.skip("a folder's mode bits do not stop writes here")
        yield


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _grade(src, dst):
    return cli.main(["grade", "--task", "gsm8k", "--input", str(src), "--output", str(dst)])


# ---- run names and the run folder ----------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("name=../x", r"'name' '\.\./x' holds '/'"),
    ("name=/abs", r"'name' '/abs' is an absolute path"),
    ("name=a/b", r"'name' 'a/b' holds '/'"),
    ("name=''", r"'name' must not be empty"),
    ("name=.", r"'name' '\.' may hold only letters"),
    ("name=..", r"'name' '\.\.' may hold only letters"),
    ("name=.hidden", r"'name' '\.hidden' may hold only letters"),
    (r'name="a\0b"', r"'name' 'a\\x00b' may hold only letters"),
    (r'name="a\nb"', r"'name' 'a\\nb' may hold only letters"),
    ("name=" + "x" * 101, r"'name' 'x{40}'\.\.\. is 101 characters long; at most 100"),
    ("name=study-seeds/seed0/dpo", r"holds '/'"),
])
def test_a_bad_run_name_is_refused_naming_the_key(override, message):
    with pytest.raises(config.RecipeError, match=message) as err:
        config.load_recipe(pipeline.RECIPES / "tiny.yaml", [override])
    assert "\n" not in str(err.value)


def test_a_recipe_file_name_that_is_no_run_name_says_to_set_name(tmp_path):
    p = tmp_path / "my recipe.yaml"
    p.write_text("iterations: 2\n")
    with pytest.raises(config.RecipeError, match=r"'name' 'my recipe' may hold .* named after its file; set `name:`"):
        config.load_recipe(p)


def test_the_names_the_package_makes_still_load():
    cfg = config.load_recipe(pipeline.RECIPES / "tiny.yaml", ["name=demo-seeds/seed3", "paradigm=[dpo, sft]"])
    assert [cfg.member(p).name for p in cfg.paradigms] == ["demo-seeds/seed3/dpo", "demo-seeds/seed3/sft"]
    assert config.load_recipe(pipeline.RECIPES / "tiny.yaml", ["name=paper_qwen2.5-1.5b_math+x"]).name


def test_the_cli_refuses_a_bad_name_before_writing_anything(tmp_path, capsys, no_work):
    assert cli.main(["run", "tiny", "--set", "name=.", "--overwrite", "--runs-root", str(tmp_path / "runs"),
                     "--organism-root", str(tmp_path / "org"), "--kernel", "fresh"]) == 2
    assert "'name' '.'" in _one_line_error(capsys)
    assert not any(tmp_path.iterdir())


def _run(tmp_path, name, **kwargs):
    return pipeline.run("tiny", overrides=[f"name={name}"], runs_root=tmp_path / "runs", organism_root=tmp_path / "org",
                        kernel="fresh", log=_quiet, **kwargs)


def test_a_folder_that_is_not_a_run_is_refused_even_with_overwrite(tmp_path, no_work):
    study = tmp_path / "runs" / "study"  # a study: one run per paradigm, no manifest of its own
    artifacts.Manifest.open(artifacts.RunPaths(study / "dpo"), {"a": 1}, "h")
    (study / "kernel.stderr.log").write_text("")
    with pytest.raises(artifacts.RunDirError, match=r"study exists and is not a selfimprove run \(no manifest.json; "
                                                    r"it holds 'dpo'\)"):
        _run(tmp_path, "study", overwrite=True)
    assert (study / "dpo" / "manifest.json").exists()


def test_a_web_folder_with_a_manifest_json_is_not_deleted_by_overwrite(tmp_path, no_work):
    site = tmp_path / "runs" / "site"
    site.mkdir(parents=True)
    (site / "manifest.json").write_text('{"name": "my app"}')  # a web app manifest, not a run's
    (site / "index.html").write_text("<html>")
    with pytest.raises(artifacts.RunDirError, match=r"--overwrite deletes only what a run writes, and .*site also "
                                                    r"holds 'index.html'"):
        _run(tmp_path, "site", overwrite=True)
    assert sorted(p.name for p in site.iterdir()) == ["index.html", "manifest.json", "run.lock"]


@pytest.mark.parametrize("link", ["linked", "linked-seeds"])
def test_a_run_folder_or_a_folder_above_it_that_is_a_symlink_is_refused(tmp_path, no_work, link):
    elsewhere = tmp_path / "elsewhere"
    artifacts.Manifest.open(artifacts.RunPaths(elsewhere / "seed0"), {"a": 1}, "h")
    artifacts.Manifest.open(artifacts.RunPaths(elsewhere), {"a": 1}, "h")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / link).symlink_to(elsewhere)
    name = "linked" if link == "linked" else "linked-seeds/seed0"
    with pytest.raises(artifacts.RunDirError, match=rf"runs/{link} is a symbolic link \(to .*elsewhere\)"):
        _run(tmp_path, name, overwrite=True)
    assert (elsewhere / "manifest.json").exists() and (elsewhere / "seed0" / "manifest.json").exists()


def test_overwrite_deletes_a_runs_files_only_and_follows_no_link(tmp_path):
    paths = artifacts.RunPaths(tmp_path / "run")
    artifacts.Manifest.open(paths, {"a": 1}, "h1")
    artifacts.write_json({"x": 1}, paths.metrics(1))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (paths.root / "iter_9").symlink_to(outside)  # a run entry's name, pointing out of the run
    (paths.iter_dir(1) / "model").symlink_to(outside)
    (paths.root / "notes.txt").write_text("mine")
    with pytest.raises(artifacts.RunDirError, match=r"also holds 'notes.txt'"):
        artifacts.Manifest.open(paths, {"a": 2}, "h2", overwrite=True)
    assert paths.metrics(1).exists()  # refused: nothing deleted
    (paths.root / "notes.txt").unlink()
    artifacts.Manifest.open(paths, {"a": 2}, "h2", overwrite=True)
    assert sorted(p.name for p in paths.root.iterdir()) == ["manifest.json"]
    assert (outside / "keep.txt").read_text() == "keep"


def test_a_study_name_that_holds_a_run_is_refused(tmp_path, no_work):
    artifacts.Manifest.open(artifacts.RunPaths(tmp_path / "runs" / "r"), {"a": 1}, "h")
    with pytest.raises(artifacts.RunDirError, match=r"runs/r holds a run \(manifest.json\), not a study"):
        pipeline.run("tiny", overrides=["name=r", "paradigm=[dpo, sft]"], runs_root=tmp_path / "runs",
                     organism_root=tmp_path / "org", kernel="fresh", log=_quiet)
    assert sorted(p.name for p in (tmp_path / "runs" / "r").iterdir()) == ["manifest.json"]


def test_a_runs_root_or_organism_root_under_a_file_is_a_named_error(tmp_path, capsys, no_work):
    (tmp_path / "file").write_text("")
    assert cli.main(["run", "tiny", "--runs-root", str(tmp_path / "file"), "--kernel", "fresh"]) == 2
    assert (f"run folder {tmp_path}/file/tiny cannot be created: {tmp_path}/file is a file, not a folder; a run "
            "writes its files there: give --runs-root") in _one_line_error(capsys)
    for argv in (["run", "tiny", "--runs-root", str(tmp_path / "runs")], ["organism", "tiny"]):
        assert cli.main([*argv, "--organism-root", str(tmp_path / "file" / "org")]) == 2
        assert (f"organism root {tmp_path}/file/org cannot be created: {tmp_path}/file is a file, not a folder; "
                "organism ") in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # refused before the run folder is made


def _read_only(folder):
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    return folder


def test_a_read_only_runs_root_is_a_named_error_before_any_work(tmp_path, capsys, no_work, mode_bits_bind):
    ro = _read_only(tmp_path / "ro")
    assert cli.main(["run", "tiny", "--runs-root", str(ro), "--organism-root", str(tmp_path / "org")]) == 2
    assert (f"error: run folder {ro}/tiny cannot be created: {ro} is not writable (Permission denied); a run writes "
            "its files there: give --runs-root a folder you can write") in _one_line_error(capsys)
    assert cli.main(["run", "tiny", "--set", "paradigm=[dpo, sft]", "--runs-root", str(ro)]) == 2  # a study
    assert f"study folder {ro}/tiny cannot be created: {ro} is not writable" in _one_line_error(capsys)
    assert not any(ro.iterdir()) and not (tmp_path / "org").exists()


def test_a_read_only_run_folder_is_a_named_error_for_run_metrics_and_report(tmp_path, capsys, no_work, mode_bits_bind,
                                                                            write_graded):
    paths = _made_run(tmp_path / "runs" / "tiny", write_graded, cfg=config.load_recipe(pipeline.RECIPES / "tiny.yaml"))
    (paths.root / "run.lock").write_text("")  # a lock file that can be written, in a folder that cannot
    _read_only(paths.root)
    before = _files(paths.root)
    assert cli.main(["run", "tiny", "--runs-root", str(tmp_path / "runs"), "--kernel", "fresh"]) == 2
    assert f"error: run folder {paths.root} is not writable (Permission denied)" in _one_line_error(capsys)
    assert cli.main(["metrics", str(paths.root)]) == 2
    assert (f"error: run folder {paths.root} is not writable (Permission denied); the command writes the run's files "
            "there") in _one_line_error(capsys)
    assert cli.main(["report", str(paths.root)]) == 2
    assert (f"error: report folder {paths.report} cannot be created: {paths.root} is not writable (Permission "
            "denied)") in _one_line_error(capsys)
    assert _files(paths.root) == before


def test_a_read_only_organism_root_is_a_named_error_unless_it_holds_the_build(tmp_path, capsys, no_work,
                                                                              mode_bits_bind, monkeypatch):
    def build(*args, **kwargs):
        raise AssertionError("the organism build started")

    monkeypatch.setattr(organism, "build", build)
    ro = _read_only(tmp_path / "ro")
    digest = config.load_recipe(pipeline.RECIPES / "tiny.yaml").organism_config().digest()
    for argv in (["run", "tiny", "--runs-root", str(tmp_path / "runs")],
                 ["run", "tiny", "--set", "paradigm=[dpo, sft]", "--runs-root", str(tmp_path / "runs")],
                 ["organism", "tiny"]):
        assert cli.main([*argv, "--organism-root", str(ro)]) == 2
        assert (f"error: organism root {ro} is not writable (Permission denied); organism {digest} is not built "
                "there, and a run builds it there: give --organism-root a folder you can write, or one that holds "
                "its build") in _one_line_error(capsys)
    assert not (tmp_path / "runs").exists() and not any(ro.iterdir())
    ro.chmod(0o755)
    (ro / digest).mkdir()
    (ro / digest / "build.json").write_text("{}")
    ro.chmod(0o555)  # a read-only root that holds the build is only read: the run goes on (to no_work)
    with pytest.raises(RuntimeError, match="the run went on past its checks"):
        cli.main(["run", "tiny", "--runs-root", str(tmp_path / "runs"), "--organism-root", str(ro), "--kernel",
                  "fresh"])


# ---- a run's own files: report, metrics, audit ----------------------------------------------------------------

STAGES_DONE = ("prepare", "1/sample", "1/verify", "1/evaluate", "2/train", "2/sample", "2/verify", "2/evaluate")


def _made_run(root, write_graded, cfg=None, done=STAGES_DONE):
    """A run of T = 2 made by hand, in milliseconds: each iteration's test and OOD sample tables and their grades
    (three problems, one greedy and two sampled responses each), metrics.json and per_problem.parquet; its manifest
    records the stages `done` as done, with their outputs."""
    import pandas as pd

    cfg = cfg or config.RunConfig(name=root.name, iterations=2)
    paths = artifacts.RunPaths(root)
    manifest = artifacts.Manifest.open(paths, cfg.recipe(), cfg.digest())
    outputs = {}
    for t in (1, 2):
        for split in ("test", "ood"):
            rows = [dict(iteration=t, split=split, task="arith", problem_id=f"p{i}", level=1, decoding=dec,
                         sample_idx=j, response=f"{i} + 1 = {i + 1}\n#### {i + 1}", finish_reason="stop",
                         status="correct" if i else "incorrect", correct=bool(i))
                    for i in range(3) for dec, j in (("greedy", 0), ("sample", 0), ("sample", 1))]
            write_graded(pd.DataFrame(rows), paths.samples(t, split))
            outputs.setdefault(f"{t}/sample", []).append(paths.samples(t, split))
            outputs.setdefault(f"{t}/verify", []).append(paths.graded(t, split))
        artifacts.write_json({"iteration": t, "test": {"pass@1": 2 / 3}, "table": []}, paths.metrics(t))
        artifacts.write_parquet(pd.DataFrame({"problem_id": ["p0", "p1", "p2"], "split": "test",
                                              "greedy_correct": [0.0, 1.0, 1.0]}), paths.per_problem(t))
        outputs[f"{t}/evaluate"] = [paths.metrics(t), paths.per_problem(t)]
    for key in done:
        manifest.data["stages"][key] = {"state": "done", "outputs": {str(f.relative_to(root)): "hash"
                                                                     for f in outputs.get(key, [])}}
    manifest.save()
    return paths


def _files(root) -> dict:
    """Every file under `root` with its bytes, the lock file (run.lock) aside: what a refused command must leave as
    it was."""
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*"))
            if f.is_file() and f.name != artifacts.LOCK_NAME}


def _unrecord(paths, *keys):
    data = json.loads(paths.manifest.read_text())
    for key in keys:
        del data["stages"][key]
    paths.manifest.write_text(json.dumps(data))


@pytest.mark.parametrize("graded", [False, True])
def test_report_of_a_run_stopped_before_its_first_evaluate_stage_says_how_to_go_on(tmp_path, capsys, write_graded,
                                                                                   graded):
    paths = _made_run(tmp_path / "run", write_graded)
    for t in (1, 2):
        for f in (paths.metrics(t), paths.per_problem(t)) + (() if graded else (paths.graded(t, "test"),
                                                                                  paths.graded(t, "ood"))):
            f.unlink()
    _unrecord(paths, "1/evaluate", "2/train", "2/sample", "2/verify", "2/evaluate", *(() if graded else ("1/verify",)))
    before = _files(paths.root)
    assert cli.main(["report", str(paths.root)]) == 2
    err = _one_line_error(capsys)
    last = "1/verify" if graded else "1/sample"
    assert (f"error: {paths.root}: no iteration is evaluated yet (no iter_<t>/metrics.json; the last stage done is "
            f"{last}): the run stopped before its first evaluate stage; `selfimprove run` with the recipe and "
            "settings that made the run resumes it") in err
    metrics_too = f"or `selfimprove metrics {paths.root}` evaluates the iterations sampled and graded so far"
    assert (metrics_too in err) is graded
    assert _files(paths.root) == before and not paths.report.exists()


@pytest.mark.parametrize("damage, message", [
    ("metrics.json", r"iter_2/metrics.json: not valid JSON \(Expecting .* \(char \d+\)\); `selfimprove metrics "),
    ("metrics.json=[]", r"iter_2/metrics.json: not the metrics of iteration 2 \(a JSON object with \"iteration\": 2\); "
                        r"`selfimprove metrics "),
    ("per_problem.parquet", r"iter_2/per_problem.parquet: cannot be read, the file is damaged \(.*\); `selfimprove "
                            r"metrics "),
    ("per_problem.parquet=missing", r"iter_2/per_problem.parquet does not exist, though metrics.json beside it does; "
                                    r"`selfimprove metrics "),
])
def test_report_names_a_damaged_metrics_or_per_problem_file_and_how_to_remake_it(tmp_path, capsys, write_graded,
                                                                                  damage, message):
    import re

    paths = _made_run(tmp_path / "run", write_graded)
    name, _, how = damage.partition("=")
    f = paths.iter_dir(2) / name
    if how == "missing":
        f.unlink()
    else:
        f.write_bytes(how.encode() if how else f.read_bytes()[:-40])  # cut short, or not a run's metrics
    before = _files(paths.root)
    assert cli.main(["report", str(paths.root)]) == 2
    err = _one_line_error(capsys)
    assert re.search(message + re.escape(f"{paths.root}` writes it again from the sample tables"), err), err
    assert _files(paths.root) == before and not paths.report.exists()  # checked before the report writes anything


@pytest.mark.parametrize("damage, message", [
    ("iter_2/samples_test.parquet", "iteration 2: {root}/iter_2/samples_test.parquet does not exist (though the "
                                    "sample stage of iteration 2 is recorded as done)"),
    ("iter_2/graded_ood.parquet", "iteration 2: the ood samples are not graded: {root}/iter_2/graded_ood.parquet "
                                  "does not exist (though the verify stage of iteration 2 is recorded as done)"),
    ("iter_1/graded_test.parquet=short", "iteration 1: {root}/iter_1/graded_test.parquet: grades 8 rows for 9 sample "
                                         "rows (1 sample rows without a grade)"),
])
def test_metrics_and_audit_name_a_lost_or_ungraded_table_and_recompute_nothing(tmp_path, capsys, write_graded,
                                                                              damage, message):
    import pandas as pd

    paths = _made_run(tmp_path / "run", write_graded)
    rel, _, how = damage.partition("=")
    f = paths.root / rel
    if how == "short":
        pd.read_parquet(f).iloc[:-1].to_parquet(f)
    else:
        f.unlink()
    message = message.format(root=paths.root)
    before = _files(paths.root)
    assert cli.main(["metrics", str(paths.root)]) == 2
    err = _one_line_error(capsys)
    assert err.startswith(f"error: {message}") and err.endswith(
        "; `selfimprove run` with the recipe and settings that made the run makes it again (a stage whose outputs are "
        "missing or not as recorded runs again); nothing was recomputed\n"), err
    assert _files(paths.root) == before  # checked before any iteration was recomputed: every metrics.json kept
    assert cli.main(["audit", "--task", "arith", "--run", str(paths.root)]) == 1
    out, err = capsys.readouterr()
    assert err.startswith(f"error: {message}; left out of the rates above; `selfimprove run`") and err.count("\n") == 1
    t, split = int(rel[5]), rel.split("_")[-1].split(".")[0]
    rates = [line.split()[:2] for line in out.splitlines()[2:]]
    assert [str(t), split] not in rates and len(rates) == 3  # the other three tables' rates


@pytest.mark.parametrize("stopped_after", ["2/train", "2/sample"])
def test_metrics_and_audit_note_an_iteration_not_sampled_or_graded_yet(tmp_path, capsys, write_graded, stopped_after):
    paths = _made_run(tmp_path / "run", write_graded)
    gone = [paths.metrics(2), paths.per_problem(2), paths.graded(2, "test"), paths.graded(2, "ood")]
    if stopped_after == "2/train":
        gone += [paths.samples(2, "test"), paths.samples(2, "ood")]
        _unrecord(paths, "2/sample")
    for f in gone:
        f.unlink()
    _unrecord(paths, "2/verify", "2/evaluate")
    note = (f"note: M2 left out: iteration 2: {paths.samples(2, 'test')} does not exist (the sample stage of "
            "iteration 2 has not run yet)" if stopped_after == "2/train" else
            f"note: M2 left out: iteration 2: the test samples are not graded: {paths.graded(2, 'test')} does not "
            "exist (the verify stage of iteration 2 has not run yet)")
    assert cli.main(["metrics", str(paths.root), "--set", "embedding_model=''", "--set", "bootstrap=0"]) == 0
    out = capsys.readouterr().out
    assert note + "; `selfimprove run` with the recipe and settings that made the run resumes it" in out
    assert json.loads(paths.metrics(1).read_text())["test"]["pass@1"] == pytest.approx(2 / 3)  # M1 recomputed
    assert not paths.metrics(2).exists()
    assert cli.main(["audit", "--task", "arith", "--run", str(paths.root)]) == 0
    assert note.replace("M2 left out: ", "") in capsys.readouterr().err


@pytest.mark.slow
def test_the_remedies_the_messages_name_work_on_a_real_run(tiny_run, tmp_path, capsys, monkeypatch):
    import shutil

    monkeypatch.chdir(pipeline.PACKAGE_ROOT)  # the stages' working directory: the same embedding cache
    run = tmp_path / "tiny"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("model", "notebooks"))
    paths = artifacts.RunPaths(run)
    staged = paths.metrics(2).read_bytes()
    paths.per_problem(2).write_bytes(paths.per_problem(2).read_bytes()[:100])
    assert cli.main(["report", str(run)]) == 2
    assert f"`selfimprove metrics {run}` writes it again" in _one_line_error(capsys)
    assert cli.main(["metrics", str(run)]) == 0  # as the message says
    assert paths.metrics(2).read_bytes() == staged  # the same numbers
    assert cli.main(["report", str(run)]) == 0
    capsys.readouterr()


def test_a_damaged_deep_table_or_deep_metrics_is_named_and_resuming_the_run_makes_it_again(
        tiny_run, organism_root, tmp_path, capsys, monkeypatch):
    import shutil

    import pandas as pd

    monkeypatch.chdir(pipeline.PACKAGE_ROOT)
    run = tmp_path / "tiny"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("notebooks"))
    paths = artifacts.RunPaths(run)
    table, summary = pd.read_parquet(paths.deep_samples(2)), Run(tiny_run).deep_metrics()
    paths.deep_samples(2).write_bytes(paths.deep_samples(2).read_bytes()[:100])
    staged = paths.metrics(2).read_bytes()
    assert cli.main(["metrics", str(run)]) == 2
    error = _one_line_error(capsys)
    assert f"{paths.deep_samples(2)}: cannot be read" in error and "samples it again" in error, error
    assert paths.metrics(2).read_bytes() == staged
    paths.deep_metrics.write_text("{")
    for command in ("metrics", "report"):
        assert cli.main([command, str(run)]) == 2
        assert f"{paths.deep_metrics}: not valid JSON" in _one_line_error(capsys)
    assert paths.metrics(2).read_bytes() == staged
    # as the messages say: the run, resumed, samples M2's deep table again (the same samples) and writes the rest
    pipeline.run("tiny", runs_root=tmp_path, organism_root=organism_root, figures_dir=None, log=lambda *a: None)
    assert pd.read_parquet(paths.deep_samples(2)).equals(table)
    assert Run(run).deep_metrics() == summary
    capsys.readouterr()


# ---- the run folder's lock ---------------------------------------------------------------------------------

def test_a_second_run_on_a_held_run_folder_is_refused_naming_the_holder(tmp_path, capsys, no_work):
    root = tmp_path / "runs" / "tiny"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from selfimprove import artifacts\n"
         f"with artifacts.run_lock({str(root)!r}):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(artifacts.IMPORT_ROOT)})
    try:
        assert holder.stdout.readline() == "held\n"
        t0 = time.time()
        assert cli.main(["run", "tiny", "--runs-root", str(tmp_path / "runs"), "--kernel", "fresh"]) == 2
        assert time.time() - t0 < 10
        assert f"is in use by another selfimprove run (pid {holder.pid})" in _one_line_error(capsys)
        assert not (root / "manifest.json").exists()
    finally:
        holder.kill()
        holder.wait()
    with artifacts.run_lock(root):  # its process is gone: the lock is free, the pid in the file is ours
        assert (root / "run.lock").read_text() == f"{os.getpid()}\n"


def test_a_lock_file_left_by_a_dead_process_is_taken_over(tmp_path):
    (tmp_path / "run.lock").write_text("999999999\n")
    with artifacts.run_lock(tmp_path):
        assert (tmp_path / "run.lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(artifacts.RunDirError, match=rf"in use by another selfimprove run \(pid {os.getpid()}\)"):
            with artifacts.run_lock(tmp_path):  # a second holder, even in this process
                pass
    with artifacts.run_lock(tmp_path):  # released on exit
        pass


# ---- numbers in configs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("sample.temperature=.nan", r"section 'sample': 'temperature' must be a finite number, got nan"),
    ("sample.top_p=.inf", r"'top_p' must be a finite number, got inf"),
    ("train.learning_rate=-.inf", r"section 'train': 'learning_rate' must be a finite number, got -inf"),
    ("train.beta=.NaN", r"'beta' must be a finite number"),
    ("train.epochs=.inf", r"'epochs' must be a finite number"),
    ("train.loss_weights=[1.0, .nan]", r"'loss_weights' must be a finite number, got nan"),
    ("verify.timeout_s=.inf", r"section 'verify': 'timeout_s' must be a finite number, got inf"),
    ("verdict.ood_drop=.nan", r"section 'verdict': 'ood_drop' must be a finite number"),
    ("organism.learning_rate=.nan", r"section 'organism': 'learning_rate' must be a finite number"),
    ("sample.temperature=nan", r"'temperature' must be float, got 'nan' \(str\)"),
    ("sample.temperature=inf", r"'temperature' must be float, got 'inf' \(str\)"),
    ("sample.n_samples=true", r"'n_samples' must be int, got True \(bool\)"),
])
def test_nan_inf_and_booleans_are_refused_in_number_fields(override, message):
    with pytest.raises(config.RecipeError, match=message):
        config.load_recipe(pipeline.RECIPES / "tiny.yaml", [override])


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_grade_refuses_a_timeout_that_is_not_finite(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["grade", "--task", "gsm8k", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"),
                  f"--timeout-s={value}"])
    assert exit_.value.code == 2 and "argument --timeout-s: must be a finite number" in capsys.readouterr().err


# ---- YAML ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("sample: {n_samples: 4}\niterations: 2\nsample: {n_samples: 8}", r"r.yaml: duplicate key 'sample' at line 3 "
                                                                      r"\(first at line 1\)$"),
    ("train:\n  beta: 0.1\n  beta: 0.2\n", r"duplicate key 'beta' at line 3 \(first at line 2\)$"),
    ("sample: {n_samples: 4, n_samples: 8}", r"duplicate key 'n_samples' at line 1"),
    ("a: " + "[" * 2000 + "]" * 2000, r"r.yaml: nested too deeply$"),
    ("sample: [1, 2", r"r.yaml: not valid YAML: .* at line 1, column 14$"),
])
def test_yaml_that_a_recipe_refuses_gets_one_line(tmp_path, text, message):
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(config.RecipeError, match=message) as err:
        config.load_recipe(tmp_path / "r.yaml")
    assert "\n" not in str(err.value)


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    lines = ['sample: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    # 9^6 strings once expanded, a few MB: enough to tell, small enough that a regression cannot exhaust memory
    lines += [f"{k}: &{k} [{', '.join([f'*{p}'] * 9)}]" for p, k in zip("abcde", "bcdef")]
    (tmp_path / "r.yaml").write_text("\n".join(lines).replace("*a", "*sample").replace("&a ", "&sample ") + "\n")
    t0 = time.time()
    with pytest.raises(config.RecipeError, match=r"r.yaml: alias \*sample at line 2: YAML aliases are refused"):
        config.load_recipe(tmp_path / "r.yaml")
    assert time.time() - t0 < 2
    with pytest.raises(config.RecipeError, match=r"override 'sample=\*x': alias \*x at line 1: YAML aliases are"):
        config.load_recipe(pipeline.RECIPES / "tiny.yaml", ["sample=*x"])


@pytest.mark.parametrize("argv", [
    ["run", "tiny", "--set", "x=[1,"],
    ["data", "gsm8k", "--set", "levels=[1,"],
    ["run", "tiny", "--set", "sample={a: 1, a: 2}"],
])
def test_an_unparseable_set_value_is_one_line_naming_the_override(capsys, argv, no_work):
    assert cli.main(argv) == 2
    err = _one_line_error(capsys)
    assert repr(argv[-1]) in err and ("not valid YAML" in err or "duplicate key 'a'" in err)


def test_unknown_keys_are_still_refused():
    with pytest.raises(config.RecipeError, match=r"section 'sample': unknown key 'temprature'"):
        config.load_recipe(pipeline.RECIPES / "tiny.yaml", ["sample.temprature=0.5"])


# ---- selfimprove grade --output ------------------------------------------------------------------------------

@pytest.fixture
def graded_input(tmp_path, monkeypatch):
    """An input with a malformed line; grading is replaced by a failure, so a refusal must come first."""
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"response": "#### 2", "gold": "2"}) + "\n{not json\n")

    def grade_batch(*args, **kwargs):
        raise AssertionError("grading started")

    monkeypatch.setattr(files, "grade_batch", grade_batch)
    return src


def test_grade_refuses_the_input_as_output_by_any_name(tmp_path, capsys, graded_input):
    before = graded_input.read_bytes()
    os.link(graded_input, tmp_path / "hardlink.jsonl")
    for dst in (graded_input, tmp_path / "." / "in.jsonl", tmp_path / "hardlink.jsonl"):
        assert _grade(graded_input, dst) == 2
        assert f"output {dst} is the input file" in _one_line_error(capsys)
    assert graded_input.read_bytes() == before


def test_grade_refuses_a_symlink_a_pipe_and_a_device_as_output(tmp_path, capsys, graded_input):
    target = tmp_path / "target.jsonl"
    target.write_text("kept\n")
    (tmp_path / "link.jsonl").symlink_to(target)
    assert _grade(graded_input, tmp_path / "link.jsonl") == 2
    assert "link.jsonl is a symbolic link (to " in _one_line_error(capsys)
    assert (tmp_path / "link.jsonl").is_symlink() and target.read_text() == "kept\n"
    os.mkfifo(tmp_path / "fifo")
    assert _grade(graded_input, tmp_path / "fifo") == 2
    assert "fifo is not a regular file" in _one_line_error(capsys)
    assert stat.S_ISFIFO((tmp_path / "fifo").stat().st_mode)
    with pytest.raises(files.GradeFileError, match=r"output /dev/null is not a regular file"):
        files.check_output(graded_input, __import__("pathlib").Path("/dev/null"))  # checked, never written


def test_grade_refuses_an_output_folder_it_cannot_write_before_grading(tmp_path, capsys, graded_input):
    assert _grade(graded_input, graded_input / "out.jsonl") == 2  # under a file: no folder can be made there
    assert "cannot write a file in" in _one_line_error(capsys)


def test_grade_refuses_a_read_only_output_folder_before_grading(tmp_path, capsys, graded_input, mode_bits_bind):
    (tmp_path / "ro").mkdir(mode=0o555)
    assert _grade(graded_input, tmp_path / "ro" / "out.jsonl") == 2
    err = _one_line_error(capsys)
    assert "cannot write a file in" in err and "(Permission denied)" in err


# ---- JSONL input ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, message", [
    ('{"id": "b", "question": "\\ud800", "answer": "1"}', r"p.jsonl:2: a string holds a lone surrogate escape"),
    ('{"id": "b", "question": "q", "answer": "1", "x": {"\\udfff": 1}}', r"p.jsonl:2: a string holds a lone"),
    ('{"id": "b", "question": "q", "answer": NaN}', r"p.jsonl:2: NaN is not JSON"),
    ('{"id": "b", "question": "q", "answer": -Infinity}', r"p.jsonl:2: -Infinity is not JSON"),
    ('{"id": "b", "question": "q", "answer": "1"', r"p.jsonl:2: not valid JSON \(Expecting ',' delimiter at column"),
    ('["id", "b"]', r"p.jsonl:2: expected a JSON object, got list"),
])
def test_a_malformed_problem_line_is_named_by_file_and_line(tmp_path, line, message):
    p = tmp_path / "p.jsonl"
    p.write_text('{"id": "a", "question": "\\ud83d\\ude00 pair is fine", "answer": "1"}\n' + line + "\n")
    with pytest.raises(data.DataError, match=message):
        data.load_jsonl(p)


def test_grade_names_a_lone_surrogate_line_and_grades_the_rest(tmp_path, capsys):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"response": "#### 2", "gold": "2"}\n{"response": "\\ud800 #### 2", "gold": "2"}\n')
    assert _grade(src, dst) == 1
    assert "in.jsonl:2: a string holds a lone surrogate escape" in capsys.readouterr().err
    assert [json.loads(x)["status"] for x in dst.read_text(encoding="utf-8").splitlines()] == ["correct"]


# ---- GSM8K numbers ------------------------------------------------------------------------------------------

BIG = "1" + "0" * 39 + "1"  # 41 digits


@pytest.mark.parametrize("response, gold, status", [
    ("#### 1000000000000000000000000000001", "1000000000000000000000000000000", "incorrect"),  # 31 digits
    ("#### " + "9" * 29, "9" * 29, "correct"),
    ("#### " + BIG, BIG, "correct"),
    ("#### " + BIG[:-1] + "2", BIG, "incorrect"),
    ("#### " + BIG + ".000", "#### " + BIG, "correct"),
    ("#### 0." + "0" * 40 + "1", "0." + "0" * 40 + "2", "incorrect"),
    ("#### 1e3", "1000", "no_answer"),  # an exponent is no GSM8K number, never read as its mantissa 1
    ("#### 1E+3", "1", "no_answer"),
    ("#### 1", "#### 1e3", "error"),
    ("#### 1000", "#### 1,000", "correct"),
    ("#### 1,000", "1000", "correct"),
    ("The answer is 5e2", "5", "no_answer"),  # the last-number fallback: the same rule
])
def test_gsm8k_numbers_compare_exactly_at_any_length(response, gold, status):
    assert grade_gsm8k(response, gold).status == status


def test_gsm8k_extraction_keeps_every_digit():
    digits = "1234567890" * 10
    assert extract_gsm8k(f"#### {digits}.50") == f"{digits}.5"
    assert extract_gsm8k("#### " + "9" * 10_000) == "9" * 10_000


# ---- docs/faults.md ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(artifacts.CHECKOUT is None, reason="needs the sources (a checkout): docs/ is not installed")
def test_an_mbpp_recipe_without_the_sandbox_is_refused_before_anything_runs(tmp_path, monkeypatch):
    """The verify stage runs MBPP's code in bubblewrap and has no unsafe mode: a machine without it is told at
    once, not after M1 has sampled (issue 20)."""
    from selfimprove.grading import sandbox

    monkeypatch.setattr(sandbox, "isolation_problem", lambda: "bubblewrap (bwrap) is not installed")
    (tmp_path / "model").mkdir()
    with pytest.raises(config.RecipeError, match=r"recipe 'tiny': task mbpp runs the generated code in a "
                                                  r"bubblewrap sandbox, .*: bubblewrap \(bwrap\) is not installed"):
        pipeline.run("tiny", overrides=["task=mbpp", f"model={tmp_path / 'model'}"], runs_root=tmp_path / "runs",
                     organism_root=tmp_path / "org", figures_dir=None, log=lambda *a: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_every_row_of_the_fault_table_names_a_test_of_this_file():
    lines = (artifacts.CHECKOUT / "docs" / "faults.md").read_text(encoding="utf-8").splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| input |")]
    named = [[n.strip() for n in row.rstrip(" |").rsplit(" | ", 1)[1].split(",")] for row in rows]
    here = {name for name in globals() if name.startswith("test_")}
    assert rows and all(names and set(names) <= here for names in named), \
        [row[:60] for row, names in zip(rows, named) if not set(names) <= here]
