"""The batch runner: a hard wall-clock limit per item enforced by killing the worker, from any thread, with
no process left behind; pathological items are counted and do not stall the batch."""

import os
import threading
import time
from pathlib import Path

import pytest

from selfimprove.grading import grade_batch

SLOW = r"\boxed{(x+1)^{1000}}"  # sympy needs ~20 s to compare this with (x+2)^{1000} on a 2-core machine
SLOW_GOLD = r"(x+2)^{1000}"


def _children() -> set[int]:
    """Live processes whose parent is this process (zombies count: an unreaped child is a leak too)."""
    me, out = os.getpid(), set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        if f"\nPPid:\t{me}\n" in text:
            out.add(int(status.parent.name))
    return out


def _workers_alive() -> list[str]:
    alive = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"selfimprove.grading.pool" in cmd.read_bytes():
                alive.append(cmd.parent.name)
        except OSError:
            continue
    return alive


def test_a_hung_item_is_killed_at_the_limit_and_the_rest_is_graded():
    before = _children()
    items = [(r"\boxed{2}", "2"), (SLOW, SLOW_GOLD), (r"\boxed{3}", "2"), ("no answer", "2")]
    t0 = time.monotonic()
    got = grade_batch("math", items, timeout_s=2.0, workers=2)
    elapsed = time.monotonic() - t0
    assert [g.status for g in got] == ["correct", "timeout", "incorrect", "no_answer"]
    assert "killed" in got[1].detail
    assert elapsed < 30, elapsed  # a loose bound for a loaded machine; the status and detail show the kill
    assert _children() - before == set()
    assert _workers_alive() == []


def test_limit_holds_off_the_main_thread():
    """signal.alarm-based timeouts (Math-Verify's) cannot work here; the worker kill can."""
    out = {}

    def work():
        out["grades"] = grade_batch("math", [(SLOW, SLOW_GOLD), (r"\boxed{1}", "1")], timeout_s=2.0, workers=1)

    t = threading.Thread(target=work)
    t.start()
    t.join(60)
    assert not t.is_alive()
    assert [g.status for g in out["grades"]] == ["timeout", "correct"]
    assert _workers_alive() == []


def test_pathological_answers_finish_and_are_counted():
    patho = [r"\boxed{10^{10^{10^{10}}}}", r"\boxed{99999!}", r"\boxed{" + "{" * 5000 + "7" + "}" * 5000 + "}",
             "x" * 1_000_000 + r" so \boxed{7}", r"\boxed{\frac{1}{2006!}}"]
    items = [(p, "7") for p in patho] + [(r"\boxed{7}", "7")] * 5
    t0 = time.monotonic()
    got = grade_batch("math", items, timeout_s=10.0, workers=2)
    assert time.monotonic() - t0 < 40
    assert [g.status for g in got] == ["error", "incorrect", "correct", "correct", "incorrect"] + ["correct"] * 5


def test_mbpp_in_the_batch_uses_the_sandbox_and_its_timeout():
    tests = {"tests": ["assert f(2) == 4"], "setup": ""}
    items = [("```python\ndef f(x):\n    return 2 * x\n```", tests),
             ("```python\ndef f(x):\n    while True:\n        pass\n```", tests),
             ("```python\nimport os\nos.system('true')\n```", tests)]
    got = grade_batch("mbpp", items, timeout_s=3.0, workers=2)
    assert [g.status for g in got] == ["correct", "timeout", "error"]
    assert "wall-clock limit" in got[1].detail  # the sandbox's own limit fired, before the worker kill


def test_an_item_over_the_memory_limit_costs_only_itself():
    """The worker's address-space limit ends a runaway item; its worker dies, is replaced, the batch goes on."""
    huge = "9" * 150_000_000  # reading this 150 MB line needs more than the 256 MB the worker may map
    got = grade_batch("gsm8k", [(huge, "1"), ("#### 1", "1")], timeout_s=20.0, workers=1, memory_mb=256)
    assert [g.status for g in got] == ["error", "correct"]
    assert "died" in got[0].detail
    assert _workers_alive() == []


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="timeout_s"):
        grade_batch("gsm8k", [("#### 1", "1")], timeout_s=0)
    assert grade_batch("gsm8k", []) == []
