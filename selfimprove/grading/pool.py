"""Batch grading in parallel worker processes, with a hard wall-clock limit per item.

Each worker is a `python -m selfimprove.grading.pool` process that reads one item at a time (a JSON line on
its stdin) and writes one verdict (a JSON line). The parent sends an item only to an idle worker and gives
it `timeout_s`; a worker still busy at the deadline is SIGKILLed, reaped and replaced, and its item is a
`timeout`. A worker that dies (a crash, a memory limit) costs only its item, graded `error`. No signal
handler or alarm is used, so `grade_batch` works from any thread; every worker is killed and reaped before
it returns or raises, and each worker also dies with its parent (PR_SET_PDEATHSIG) and at end of input.

Workers run with an address-space limit (RLIMIT_AS, `memory_mb`) so a pathological item ends as a
MemoryError (`error`) in the worker, not as an out-of-memory kill of the caller. Math-Verify's own
signal.alarm timeouts are off in workers: the kill is the limit.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from .graders import grade_one
from .sandbox import Limits, grade_mbpp
from .types import Grade

STARTUP_S = 120.0  # a worker must import sympy and say it is ready within this (a loaded 2-core machine)
PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


class _Worker:
    def __init__(self, task: str, memory_mb: int, sandbox_s: float, unsafe: bool = False):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_PARENT,
                                                                          os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "selfimprove.grading.pool", task, str(memory_mb), str(sandbox_s)]
            + (["unsafe"] if unsafe else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        self.fd = self.proc.stdout.fileno()
        self.buf = b""
        self.ready = False
        self.started = time.monotonic()
        self.item: int | None = None
        self.deadline = 0.0

    def send(self, i: int, response: str, gold, timeout_s: float) -> bool:
        try:
            self.proc.stdin.write((json.dumps({"i": i, "response": response, "gold": gold}) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        self.item, self.deadline = i, time.monotonic() + timeout_s
        return True

    def read_lines(self) -> list[dict] | None:
        """Complete lines now readable; None at end of file (the worker died)."""
        chunk = os.read(self.fd, 1 << 20)
        if not chunk:
            return None
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        return [json.loads(x) for x in lines if x.strip()]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass

    def stop(self, wait_s: float = 2.0) -> None:
        try:
            self.proc.stdin.close()  # end of input: the worker exits
            self.proc.wait(timeout=wait_s)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


def grade_batch(task: str, items: list[tuple[str, object]], timeout_s: float = 10.0, workers: int = 2,
                memory_mb: int = 2048, progress=None, unsafe: bool = False) -> list[Grade]:
    """Grade `(response, gold)` pairs in `workers` processes; each item gets at most `timeout_s` seconds.

    Returns one Grade per item, in order. MBPP items run their sandbox for `timeout_s - 1` seconds (at least
    1) so the sandbox normally reports its own timeout and the kill is the backstop. `unsafe=True` lets MBPP
    run without bubblewrap (sandbox.run_tests; every such verdict's detail says so).

    >>> [g.status for g in grade_batch("gsm8k", [("#### 3", "3"), ("#### 4", "3"), ("", "3")], workers=1)]
    ['correct', 'incorrect', 'no_answer']
    """
    if timeout_s <= 0 or workers < 1 or memory_mb < 256:
        raise ValueError(f"need timeout_s > 0, workers >= 1, memory_mb >= 256; got {timeout_s}, {workers}, "
                         f"{memory_mb}")
    results: list[Grade | None] = [None] * len(items)
    pending = deque(range(len(items)))
    sandbox_s = max(1.0, timeout_s - 1.0)
    pool: list[_Worker] = []
    try:
        pool = [_Worker(task, memory_mb, sandbox_s, unsafe) for _ in range(min(workers, len(items)))]
        while pending or any(w.item is not None for w in pool):
            for k, w in enumerate(pool):
                if w.ready and w.item is None and pending:
                    i = pending.popleft()
                    if not w.send(i, *items[i], timeout_s):  # it died taking the item (e.g. its memory limit)
                        results[i] = Grade("error", None, f"grader process died reading the item (exit "
                                                          f"{w.proc.wait()})")
                        w.kill()
                        pool[k] = _Worker(task, memory_mb, sandbox_s, unsafe)
            now = time.monotonic()
            deadlines = [w.deadline if w.item is not None else w.started + STARTUP_S for w in pool]
            readable, _, _ = select.select([w.fd for w in pool], [], [], max(0.0, min(deadlines) - now))
            for k, w in enumerate(pool):
                lines = w.read_lines() if w.fd in readable else []
                if lines is None:  # died: its item (if any) is an error
                    if w.item is not None:
                        results[w.item] = Grade("error", None, f"grader process died (exit {w.proc.wait()})")
                    w.kill()
                    pool[k] = _Worker(task, memory_mb, sandbox_s, unsafe)
                    continue
                for msg in lines:
                    if msg.get("ready"):
                        w.ready = True
                    else:
                        results[msg["i"]] = Grade(msg["status"], msg["extracted"], msg["detail"])
                        w.item = None
                        if progress:
                            progress(1)
                now = time.monotonic()
                if w.item is not None and now > w.deadline:
                    results[w.item] = Grade("timeout", None, f"grading passed the {timeout_s:g} s limit; "
                                                             "its process was killed")
                    w.kill()
                    pool[k] = _Worker(task, memory_mb, sandbox_s, unsafe)
                elif not w.ready and now > w.started + STARTUP_S:
                    raise RuntimeError(f"a {task} grading worker did not start within {STARTUP_S:g} s")
    finally:
        for w in pool:
            w.stop()
    return results


def _worker_main(task: str, memory_mb: int, sandbox_s: float, unsafe: bool = False) -> None:
    """Read items from stdin, write verdicts to a private copy of stdout; stray prints go to stderr."""
    import logging
    import resource

    try:  # die with the parent (Linux); a worker busy on a hard item would otherwise outlive it
        import ctypes

        ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    logging.disable(logging.WARNING)
    if task == "math":
        import math_verify  # noqa: F401  (import before the memory limit and before saying ready)
    soft = memory_mb * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        msg = json.loads(line)
        g = _unsafe_mbpp(msg["response"], msg["gold"], sandbox_s) if unsafe and task == "mbpp" else \
            grade_one(task, msg["response"], msg["gold"], sandbox_s=sandbox_s)
        out.write(json.dumps({"i": msg["i"], "status": g.status, "extracted": g.extracted, "detail": g.detail})
                  + "\n")
        out.flush()


def _unsafe_mbpp(response: str, gold, sandbox_s: float) -> Grade:
    """grade_one's guarantee (no exception escapes) for MBPP without bubblewrap."""
    try:
        return grade_mbpp(response, gold, Limits(wall_s=sandbox_s), unsafe=True)
    except Exception as e:
        return Grade("error", None, f"mbpp grader failed: {type(e).__name__}: {str(e)[:160]}")


if __name__ == "__main__":
    _worker_main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:] == ["unsafe"])
