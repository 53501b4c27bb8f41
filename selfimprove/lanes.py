"""A study's runs side by side: `selfimprove run <study> --jobs N` runs N of its runs at once, each in a process
of its own (its own Jupyter kernel, its own Ctrl-C handling), with the machine's cores divided between them.

Why processes. A stage's model compute is in its kernel, but the runner drives the kernel (papermill's event
loop, the kernel's standard error redirected on file descriptor 2, the environment the kernel inherits, the
Ctrl-C state), and none of that is safe to share between threads. A process per run keeps each run exactly as
`selfimprove run` drives it alone.

Why this pays on a CPU. The organism's matrices are small (hidden 128): one thread per run does more work per
core than two threads on one run, which wait on each other at every product (bench/results/train_step_demo.json
and the sampling benchmarks measure at one thread; docs/performance.md). Each run's kernels get
OMP_NUM_THREADS = cores // jobs (at least 1) unless the caller set it; a recipe's own `sample.threads` and
`train.threads` still decide inside a stage, and they are part of each stage's inputs key, so the demo, which
sets them to 1, computes the same numbers with any --jobs.

Sharing still works between runs that run at once: a stage that a sibling is computing with the same inputs
key is waited for and then taken from it (stagecache.wait_for_sibling), not computed twice.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """The cores each of `jobs` runs gets.

    >>> threads_per_job(2, 2), threads_per_job(3, 2), threads_per_job(2, 16)
    (1, 1, 8)
    """
    return max(1, (cores or os.cpu_count() or 1) // jobs)


def _member(fn: Callable, name: str, threads: int, kwargs: dict):
    """One run in its own process: the threads its kernels get, and its log lines prefixed with its name."""
    from .kernel import stop_kernels_on_interrupt

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))

    def log(*parts):  # one write per line, so that the lines of runs side by side do not interleave
        text = " ".join(map(str, parts))
        sys.stdout.write("".join(f"[{name}] {line}\n" for line in text.split("\n")))
        sys.stdout.flush()

    with stop_kernels_on_interrupt():  # Ctrl-C: this run's kernel stops, its stage is recorded as interrupted
        return fn(log=log, **kwargs)


def _idle_ignores_sigint() -> None:
    """A run's process between runs ignores Ctrl-C (the runner stops it); during a run _member handles it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _interrupt_children() -> None:
    """SIGINT to this process's children (the runs' processes): each stops its kernel and ends, as after a
    Ctrl-C in the terminal, which reaches them anyway; a SIGINT sent to the runner alone would not."""
    import signal

    for child in multiprocessing.active_children():
        try:
            os.kill(child.pid, signal.SIGINT)
        except OSError:
            pass


def run_side_by_side(fn: Callable, members: dict[str, dict], jobs: int) -> dict:
    """`fn(log=..., **kwargs)` for each member name -> kwargs, at most `jobs` at once, in spawned processes
    (`fn` must be importable by name: pipeline.run_config). Returns name -> result, in the members' order. A
    run starts only when a process is free (none waits in the pool's queue, where it could no longer be
    stopped). The first failure starts no further run and is raised once the running ones end (their finished
    stages are kept; the same command resumes them); Ctrl-C stops the running ones too."""
    threads = threads_per_job(jobs)
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that has threads and open kernels
    queue, running, ended, failed = list(members), {}, {}, None
    with ProcessPoolExecutor(max_workers=min(jobs, len(members)), mp_context=ctx,
                             initializer=_idle_ignores_sigint) as pool:
        try:
            while queue or running:
                while queue and len(running) < jobs:
                    name = queue.pop(0)
                    running[pool.submit(_member, fn, name, threads, members[name])] = name
                # a second at a time: the main thread then runs Python code often, and a Ctrl-C handler with it
                done, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
                for f in done:
                    ended[running.pop(f)] = f
                    if f.exception() is not None and failed is None:
                        failed, queue = f, []
        except BaseException:  # Ctrl-C, or SIGINT to the runner alone: the running runs stop too
            queue.clear()
            _interrupt_children()
            raise
    if failed is not None:
        raise failed.exception()
    return {name: ended[name].result() for name in members}
