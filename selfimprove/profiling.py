"""Where a stage's wall time goes: model compute (forward and backward) against everything else.

Each stage that runs a model records the seconds spent inside it in iter_<t>/timing/<stage>.json:
sampling the time inside the model's forward calls, training the time of the trainer's steps (forward,
backward and optimizer), evaluation the embedding model's forward calls. The runner's timing table puts them
beside each stage's wall time, so overhead (process and kernel starts, imports, model loads, tokenising,
grading, Parquet I/O) is visible (`bench/demo_profile.py` sums a whole run).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from . import artifacts


class Clock:
    """Accumulated seconds and calls of a timed block."""

    def __init__(self):
        self.seconds, self.calls = 0.0, 0

    @contextlib.contextmanager
    def timing(self):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1


@contextlib.contextmanager
def timed_forward(module, clock: Clock):
    """Time every call of `module.forward` into `clock` while the block runs.

    >>> import torch
    >>> lin, clock = torch.nn.Linear(2, 2), Clock()
    >>> with timed_forward(lin, clock):
    ...     _ = lin(torch.zeros(1, 2)); _ = lin(torch.zeros(1, 2))
    >>> clock.calls
    2
    """
    original = module.forward

    def forward(*args, **kwargs):
        with clock.timing():
            return original(*args, **kwargs)

    module.forward = forward
    try:
        yield clock
    finally:
        module.forward = original


def trainer_callback(clock: Clock):
    """A transformers TrainerCallback that times each optimizer step (forward, backward, update)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            clock.seconds += time.perf_counter() - self._t0
            clock.calls += 1

    return StepTimer()


def timing_path(run_dir: str | Path, t: int, stage: str) -> Path:
    return artifacts.RunPaths(run_dir).iter_dir(t) / "timing" / f"{stage}.json"


def record(run_dir: str | Path, t: int, stage: str, compute_s: float, what: str, **extra) -> Path:
    """Write a stage's compute seconds (and what they measure)."""
    path = timing_path(run_dir, t, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    return artifacts.write_json({"compute_s": round(compute_s, 3), "what": what, **extra}, path)


def read(run_dir: str | Path, t: int, stage: str) -> dict | None:
    import json

    path = timing_path(run_dir, t, stage)
    return json.loads(path.read_text()) if path.exists() else None
