"""Runs side by side (lanes.py): a failing run is reported, and a run waits for a stage a sibling is computing
with the same inputs instead of computing it twice. The study itself, run two at a time with the same numbers
as one run alone, is tests/test_controls.py."""

import threading
import time

import pytest

from selfimprove import artifacts, lanes, stagecache


def test_a_failing_run_is_raised():
    with pytest.raises(TypeError):  # int(log=...) fails in the run's own process; the error comes back
        lanes.run_side_by_side(int, {"a": {}, "b": {}}, jobs=2)


def _sibling(root, state: str, inputs: str):
    paths = artifacts.RunPaths(root)
    root.mkdir(parents=True, exist_ok=True)
    artifacts.write_json({"config": {}, "stages": {"2/train": {"state": state, "inputs": inputs}}}, paths.manifest)


def test_a_stage_a_live_sibling_computes_is_waited_for(tmp_path):
    sib = tmp_path / "dpo"
    _sibling(sib, "running", "k1")
    said = []
    stagecache.wait_for_sibling("2/train", "k1", [sib], poll_s=0.05, log=said.append)  # no process holds it
    stagecache.wait_for_sibling("2/train", "other", [sib], poll_s=0.05, log=said.append)
    assert said == []
    held, release = threading.Event(), threading.Event()

    def sibling_run():
        with artifacts.run_lock(sib):
            held.set()
            release.wait()
            _sibling(sib, "done", "k1")

    thread = threading.Thread(target=sibling_run)
    thread.start()
    held.wait()
    assert artifacts.is_locked(sib)
    threading.Timer(0.3, release.set).start()
    t0 = time.time()
    stagecache.wait_for_sibling("2/train", "k1", [sib], poll_s=0.05, log=said.append)
    thread.join()
    assert time.time() - t0 >= 0.25 and said == ["  [2/train] dpo is computing it with the same inputs: waiting for it"]
    assert not artifacts.is_locked(sib)


def test_a_run_that_shares_m2_is_started_after_the_others():
    from selfimprove import pipeline
    from selfimprove.config import load_recipe

    cfg = load_recipe(pipeline.RECIPES / "demo.yaml")  # SFT-DPO's M2 is DPO's: it would wait for it
    members = {p: {"cfg": cfg.member(p)} for p in cfg.paradigms}
    assert list(pipeline.sharers_last(cfg, members)) == ["dpo", "sft", "gold", "placebo-dpo", "sft-dpo"]


RUNNER = """
import sys, time
sys.path.insert(0, {folder!r})
from selfimprove import kernel, lanes
import slow_run
if __name__ == "__main__":
    try:
        with kernel.stop_kernels_on_interrupt():
            lanes.run_side_by_side(slow_run.slow, {{n: {{"secs": 120}} for n in "abc"}}, jobs=2)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
"""


@pytest.mark.parametrize("ignored", [False, True])  # True: started as `cmd &` in a script, SIGINT ignored
def test_sigint_to_the_runner_alone_stops_every_run(tmp_path, ignored):
    import os
    import signal
    import subprocess
    import sys

    (tmp_path / "slow_run.py").write_text("import time\ndef slow(log, secs):\n    log('start')\n    time.sleep(secs)\n")
    (tmp_path / "runner.py").write_text(RUNNER.format(folder=str(tmp_path)))
    pre = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignored else None
    proc = subprocess.Popen([sys.executable, str(tmp_path / "runner.py")], stdout=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=pre)
    try:
        started = [proc.stdout.readline(), proc.stdout.readline()]
        assert sorted(started) == ["[a] start\n", "[b] start\n"]
        t0 = time.time()
        os.kill(proc.pid, signal.SIGINT)  # the runner only, not its process group
        out, _ = proc.communicate(timeout=30)
        assert "interrupted" in out and time.time() - t0 < 30
        assert "[c] start" not in out  # the third run, waiting for a free process, never starts
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
