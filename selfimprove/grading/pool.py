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

Sampled answers repeat (most samples of a problem end in the same few answers), so a batch sends each
distinct (answer, gold) to a worker once and gives its verdict to every item that shares it (`share_plan`;
issue 18: 50 samples per training problem are ~375,000 GSM8K responses an iteration).
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

from .graders import ANSWER_OF, grade_one
from .sandbox import Limits, grade_mbpp
from .types import Grade

STARTUP_S = 120.0  # a worker must import sympy and say it is ready within this (a loaded 2-core machine)
# Our choice: a longer response is not read in the calling process (where nothing limits time or memory) but
# graded as it is in a worker, shared only with responses of the same text. Extraction is linear, and model
# responses are far shorter (a token budget of a few thousand tokens), so this costs the caller milliseconds.
MAX_READ_CHARS = 100_000
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


def share_plan(task: str, items: list[tuple[str, object]]) -> tuple[list[int], list[int]]:
    """Which items to grade, and whose verdict each item takes: `(graded, owner)`, where `graded` lists the
    index of the first item of each distinct key and item i's Grade is that of `items[graded[owner[i]]]`.

    The key is what the verdict depends on: the gold as its worker receives it (its JSON text) and, for a task
    with an ANSWER_OF entry, the answer the grader extracts (graders.py: the whole Grade is a function of the
    two), read here in the calling process; else the whole response. A response longer than MAX_READ_CHARS,
    or whose extraction raises here, keys on its whole text (the worker then grades it under its limits).
    So answers written alike in differently worded responses are graded once; MBPP (no ANSWER_OF entry)
    shares nothing (its programs are run one by one).

    Timeouts and errors are shared too (our choice): the same answer against the same gold is the same input
    to the same grader, so a second try would spend the limit again to reach the same end. A pathological
    answer that recurs costs one kill, not one per sample.

    >>> share_plan("gsm8k", [("so 3 #### 3", "3"), ("#### 3.0", "3"), ("#### 4", "3"), ("#### 3", "4")])
    ([0, 2, 3], [0, 0, 1, 2])
    >>> share_plan("mbpp", [("def f(): pass", {"tests": []})] * 2)
    ([0, 1], [0, 1])
    """
    answer_of = ANSWER_OF.get(task)
    if answer_of is None:
        return list(range(len(items))), list(range(len(items)))
    gold_text: dict[int, str] = {}  # id(gold) -> its JSON: one problem's gold object serves all its samples
    first: dict[tuple, int] = {}
    graded, owner = [], []
    for i, (response, gold) in enumerate(items):
        g = gold_text.get(id(gold))
        if g is None:
            g = gold_text[id(gold)] = json.dumps(gold)
        key = None
        if isinstance(response, str) and len(response) <= MAX_READ_CHARS:
            try:
                key = (g, "answer", answer_of(response, gold))
            except Exception:  # the worker's grade_one turns it into the item's `error`; grade it there
                key = None
        if key is None:
            key = (g, "response", json.dumps(response))
        j = first.setdefault(key, len(graded))
        if j == len(graded):
            graded.append(i)
        owner.append(j)
    return graded, owner


def grade_batch(task: str, items: list[tuple[str, object]], timeout_s: float = 10.0, workers: int = 2,
                memory_mb: int = 2048, progress=None, unsafe: bool = False, share: bool = True) -> list[Grade]:
    """Grade `(response, gold)` pairs in `workers` processes; each graded item gets at most `timeout_s` seconds.

    Returns one Grade per item, in order. With `share` (the default) items with the same answer and gold are
    graded once and share the Grade, a timeout or error included (`share_plan`); `share=False` grades every
    item by itself (the same verdicts, slower: bench/grading.py compares them). `progress(k)` is called as
    items finish, k of them at a time. MBPP items run their sandbox for `timeout_s - 1` seconds (at least 1)
    so the sandbox normally reports its own timeout and the kill is the backstop. `unsafe=True` lets MBPP run
    without bubblewrap (sandbox.run_tests; every such verdict's detail says so).

    >>> [g.status for g in grade_batch("gsm8k", [("#### 3", "3"), ("#### 4", "3"), ("", "3")], workers=1)]
    ['correct', 'incorrect', 'no_answer']
    """
    if timeout_s <= 0 or workers < 1 or memory_mb < 256:
        raise ValueError(f"need timeout_s > 0, workers >= 1, memory_mb >= 256; got {timeout_s}, {workers}, "
                         f"{memory_mb}")
    if not share:
        return _grade_each(task, items, timeout_s, workers, memory_mb, progress, unsafe)
    graded, owner = share_plan(task, items)
    weight = [0] * len(graded)
    for j in owner:
        weight[j] += 1
    each = _grade_each(task, [items[i] for i in graded], timeout_s, workers, memory_mb,
                       progress and (lambda j: progress(weight[j])), unsafe)
    return [each[j] for j in owner]


def _grade_each(task: str, items: list[tuple[str, object]], timeout_s: float, workers: int, memory_mb: int,
                done, unsafe: bool) -> list[Grade]:
    """Every item graded by itself in the pool; `done(i)` is called when item i has its Grade."""
    results: list[Grade | None] = [None] * len(items)
    pending = deque(range(len(items)))
    sandbox_s = max(1.0, timeout_s - 1.0)
    pool: list[_Worker] = []

    def finish(i: int, g: Grade) -> None:
        results[i] = g
        if done:
            done(i)

    try:
        pool = [_Worker(task, memory_mb, sandbox_s, unsafe) for _ in range(min(workers, len(items)))]
        while pending or any(w.item is not None for w in pool):
            for k, w in enumerate(pool):
                if w.ready and w.item is None and pending:
                    i = pending.popleft()
                    if not w.send(i, *items[i], timeout_s):  # it died taking the item (e.g. its memory limit)
                        finish(i, Grade("error", None, f"grader process died reading the item (exit "
                                                       f"{w.proc.wait()})"))
                        w.kill()
                        pool[k] = _Worker(task, memory_mb, sandbox_s, unsafe)
            now = time.monotonic()
            deadlines = [w.deadline if w.item is not None else w.started + STARTUP_S for w in pool]
            readable, _, _ = select.select([w.fd for w in pool], [], [], max(0.0, min(deadlines) - now))
            for k, w in enumerate(pool):
                lines = w.read_lines() if w.fd in readable else []
                if lines is None:  # died: its item (if any) is an error
                    if w.item is not None:
                        finish(w.item, Grade("error", None, f"grader process died (exit {w.proc.wait()})"))
                    w.kill()
                    pool[k] = _Worker(task, memory_mb, sandbox_s, unsafe)
                    continue
                for msg in lines:
                    if msg.get("ready"):
                        w.ready = True
                    else:
                        w.item = None
                        finish(msg["i"], Grade(msg["status"], msg["extracted"], msg["detail"]))
                now = time.monotonic()
                if w.item is not None and now > w.deadline:
                    finish(w.item, Grade("timeout", None, f"grading passed the {timeout_s:g} s limit; "
                                                          "its process was killed"))
                    w.kill()
                    pool[k] = _Worker(task, memory_mb, sandbox_s, unsafe)
                elif not w.ready and now > w.started + STARTUP_S:
                    raise RuntimeError(f"a {task} grading worker did not start within {STARTUP_S:g} s")
    finally:  # killed, not asked to exit: nothing is in flight, and a worker's own exit (freeing sympy) takes ~0.5 s
        for w in pool:
            w.kill()
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
