"""The shared kernel (selfimprove/kernel.py): one process for many stages, each stage seeing a fresh namespace
but modules already imported, and a run computing the same numbers in it as with a kernel per stage."""

from __future__ import annotations

import json
import os
import signal
import time

import nbformat
import pandas as pd
import pytest
from jupyter_core.utils import run_sync

from selfimprove import artifacts, kernel, pipeline, stages
from selfimprove.config import EvaluateConfig, RecipeError, SampleConfig, TrainConfig, VerifyConfig

PROBE = [
    "x = 0  # parameters",
    "import os, sys\nwarm = 'tomllib' in sys.modules\nimport tomllib\nleftover = 'mark' in globals()\nmark = x\n"
    "print(json.dumps({'pid': os.getpid(), 'leftover': leftover, 'warm': warm, "
    "'x': x, 'progress': os.environ.get('SELFIMPROVE_PROGRESS')}))",
]


def _probe_notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(PROBE[0], metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("import json"), nbformat.v4.new_code_cell(PROBE[1])]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def _run_probe(session, nb, out, x):
    with open(out.with_suffix(".log"), "a") as err:
        session.execute(nb, out, {"x": x}, stderr_file=err, log_output=False)
    text = "".join(o.get("text", "") for o in nbformat.read(out, as_version=4).cells[-1].outputs)
    return json.loads(text)


def test_stages_share_a_process_but_not_a_namespace_or_random_state(tmp_path):
    nb = _probe_notebook(tmp_path / "probe.ipynb")
    with kernel.KernelSession(tmp_path, tmp_path / "kernel.stderr.log", env={"SELFIMPROVE_PROGRESS": "text"}) as s:
        first = _run_probe(s, nb, tmp_path / "a.ipynb", 1)
        second = _run_probe(s, nb, tmp_path / "b.ipynb", 2)
        assert s.starts == 1
        km = s.km
    assert first["pid"] == second["pid"]  # one kernel process
    assert (first["x"], second["x"]) == (1, 2)  # each stage's own parameters
    assert not first["leftover"] and not second["leftover"]  # the first stage's `mark` did not survive the reset
    assert not first["warm"] and second["warm"]  # what the first stage imported stays imported
    assert first["progress"] == "text"  # the environment given to the session reaches the kernel
    assert s.km is None and not km.has_kernel  # closed with the block


def _cells_notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 0", metadata={"tags": ["parameters"]})]
    nb.cells += [nbformat.v4.new_code_cell(src) for src in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_a_stages_torch_threads_end_with_the_stage(tmp_path):
    """sample.threads / train.threads hold for their stage only: the reset gives torch its own count back."""
    setting = _cells_notebook(tmp_path / "set.ipynb", "import json, torch\nfrom selfimprove import profiling\n"
                              "default = torch.get_num_threads()\nprofiling.set_torch_threads(default + 1)\n"
                              "print(json.dumps([default, torch.get_num_threads()]))")
    reading = _cells_notebook(tmp_path / "read.ipynb", "import json, torch\nprint(json.dumps(torch.get_num_threads()))")
    with kernel.KernelSession(tmp_path, tmp_path / "kernel.stderr.log") as s:
        outs = []
        for nb in (setting, reading):
            with open(tmp_path / "err.log", "a") as err:
                s.execute(nb, tmp_path / f"out_{nb.name}", {"x": 1}, stderr_file=err, log_output=False)
            cells = nbformat.read(tmp_path / f"out_{nb.name}", as_version=4).cells
            outs.append(json.loads("".join(o.get("text", "") for o in cells[-1].outputs)))
    (default, during), after = outs
    assert during == default + 1 and after == default


def test_a_kernel_that_died_between_stages_is_replaced(tmp_path):
    nb = _probe_notebook(tmp_path / "probe.ipynb")
    with kernel.KernelSession(tmp_path, tmp_path / "kernel.stderr.log") as s:
        pid = _run_probe(s, nb, tmp_path / "a.ipynb", 1)["pid"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 30
        while run_sync(s.km.is_alive)() and time.time() < deadline:  # SIGKILL lands asynchronously
            time.sleep(0.05)
        after = _run_probe(s, nb, tmp_path / "b.ipynb", 2)
        assert s.starts == 2 and after["pid"] != pid and not after["leftover"]


def test_fresh_kernel_stages_are_the_ones_holding_process_state(tmp_path):
    assert kernel.needs_fresh_kernel("sample", SampleConfig(run_dir=str(tmp_path), iteration=1, backend="vllm"))
    assert not kernel.needs_fresh_kernel("sample", SampleConfig(run_dir=str(tmp_path), iteration=1, backend="compact"))
    assert kernel.needs_fresh_kernel("train", TrainConfig(run_dir=str(tmp_path), iteration=2, backend="unsloth"))
    assert not kernel.needs_fresh_kernel("train", TrainConfig(run_dir=str(tmp_path), iteration=2, backend="trl"))
    for stage, cls in (("verify", VerifyConfig), ("evaluate", EvaluateConfig)):  # no backend: always shared
        assert not kernel.needs_fresh_kernel(stage, cls(run_dir=str(tmp_path), iteration=1))


def test_unknown_kernel_policy_is_refused_before_any_work(organism_root, tmp_path):
    with pytest.raises(RecipeError, match="kernel must be one of shared, fresh; got 'warm'"):
        pipeline.run("tiny", runs_root=tmp_path, organism_root=organism_root, kernel="warm", log=lambda *a: None)
    assert not (tmp_path / "tiny").exists()


def test_kernel_fresh_reaches_every_run_of_a_study(tmp_path, monkeypatch):
    sessions = []

    def stage(stage, stage_cfg, out_nb, log_output, session=None):
        sessions.append(session)
        raise RuntimeError("stop here")

    monkeypatch.setattr(pipeline, "prepare", lambda *a, **k: None)
    monkeypatch.setattr(stages, "execute_stage", stage)
    with pytest.raises(pipeline.StageError, match="stop here"):
        pipeline.run("tiny", overrides=["paradigm=[sft,dpo]", "name=study"], runs_root=tmp_path,
                     organism_root=tmp_path / "organism", kernel="fresh", log=lambda *a: None)
    assert sessions == [None]  # no shared session: the stage starts a kernel of its own


def test_a_run_with_a_kernel_per_stage_computes_what_the_shared_kernel_run_did(tiny_run, organism_root, tmp_path):
    run_dir = pipeline.run("tiny", runs_root=tmp_path, organism_root=organism_root, figures_dir=None,
                           kernel="fresh", log=lambda *a: None)
    assert (tiny_run / "kernel.stderr.log").exists() and not (run_dir / "kernel.stderr.log").exists()
    a, b = artifacts.RunPaths(run_dir), artifacts.RunPaths(tiny_run)
    compared = 0
    for t in (1, 2):
        for split in ("train", "test", "ood"):
            assert a.samples(t, split).exists() == b.samples(t, split).exists()
            if a.samples(t, split).exists():
                pd.testing.assert_frame_equal(pd.read_parquet(a.samples(t, split)),
                                              pd.read_parquet(b.samples(t, split)))
                pd.testing.assert_frame_equal(pd.read_parquet(a.graded(t, split)), pd.read_parquet(b.graded(t, split)))
                compared += 1
        assert json.loads(a.metrics(t).read_text()) == json.loads(b.metrics(t).read_text())
    assert compared >= 5  # M2's samples come from the model trained in each kernel setting


def _running(pid: int) -> bool:
    """A live process (not gone, not a zombie waiting to be reaped)."""
    try:
        return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_ctrl_c_stops_the_run_and_its_kernel_at_once(organism_root, tmp_path):
    import subprocess
    import sys

    # 128 samples of all 300 training problems: a sample stage that runs for minutes, far past the SIGINT
    proc = subprocess.Popen([sys.executable, "-m", "selfimprove.cli", "run", "tiny", "--runs-root", str(tmp_path),
                             "--organism-root", str(organism_root), "--set", "sample.n_samples=128",
                             "--set", "sample.problems_per_iteration=0"], stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "cli.stderr", "w"), cwd=pipeline.PACKAGE_ROOT)
    manifest, kernels = tmp_path / "tiny" / "manifest.json", []
    log = tmp_path / "tiny" / "iter_1" / "notebooks" / "20_sample.stderr.log"
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not kernels:
            if log.exists() and "prompts x" in log.read_text(errors="replace"):  # the sampling cell's progress bar
                time.sleep(1.0)
                kernels = [int(p) for p in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
            time.sleep(0.1)
        assert kernels, "the run ended before 1/sample was caught sampling"
        t0 = time.time()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        assert time.time() - t0 < 15  # at once, not when the sampling cell has finished (a minute later)
        said = (tmp_path / "cli.stderr").read_text()
        assert "interrupted: stage 1/sample of run tiny stopped" in said and "Traceback" not in said
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.time() + 15
    while time.time() < deadline and any(map(_running, kernels)):
        time.sleep(0.2)
    assert not [k for k in kernels if _running(k)]
    assert json.loads(manifest.read_text())["stages"]["1/sample"]["state"] == "running"  # a rerun redoes it


def test_ctrl_c_outside_a_stage_raises_at_once_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGINT)
    state = {}
    with pytest.raises(kernel.Interrupted):
        with kernel.stop_kernels_on_interrupt(state):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises in this frame at once
    assert signal.getsignal(signal.SIGINT) is before and state == {}
