"""Where the stage notebooks run: one Jupyter kernel for a whole run (or study), reset after every stage.

A fresh kernel per stage pays, every time, for starting the kernel, importing torch, transformers, TRL and
pandas, and loading the embedding model: seconds of no model compute, 36 times in the demo. A `KernelSession`
starts one kernel and runs the stages in it one after another with papermill. After each stage it empties
what the next stage could tell apart from a fresh kernel: the user namespace and IPython's history (IPython
`reset`), then collects the garbage. Imported modules and process-level caches (the embedding model,
diversity.load_model) stay. Every stage seeds what it draws from its config (torch seeds its global generator
at random in each new process, so no stage could rely on it), so a stage computes the same numbers in a
shared kernel as in its own: tests/test_pipeline.py resumes a run killed mid-stage in a new kernel, and
tests/test_kernel.py runs with a kernel per stage; both match the shared-kernel run exactly. On the demo the
stages took 635 s instead of 904 s, with the same tables (README, Performance).

Stages that hold what a reset cannot give back get a fresh kernel of their own (`needs_fresh_kernel`):
vLLM sampling (the engine keeps its KV-cache memory and distributed state until its process exits) and
Unsloth training (it patches transformers and TRL when imported). `selfimprove run --kernel fresh` gives every
stage its own kernel, as before (our choice of default: shared).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from pathlib import Path

from jupyter_core.utils import run_sync

KERNEL_POLICIES = ("shared", "fresh")
ENGINE = "selfimprove-shared-kernel"

# Run silently after each stage's cells. Anything a stage defined goes (the parameters cell defines
# it again), and with it the memory it held; CUDA's cached blocks go back to the driver, so that a stage in
# another process (vLLM sampling) finds the GPU memory free. Modules, and what they cache, stay, and
# gc.freeze() leaves them out of later collections: a full collection over torch's, transformers' and TRL's
# objects took 0.24 s a stage, where one over what the last stage left takes milliseconds (frozen
# objects are still freed when no reference is left; only a reference cycle among them would stay).
RESET = """\
get_ipython().reset(new_session=False, aggressive=False)
import gc as _gc, sys as _sys
_gc.collect()
_gc.freeze()
if "torch" in _sys.modules and _sys.modules["torch"].cuda.is_initialized():
    _sys.modules["torch"].cuda.empty_cache()
if "selfimprove.profiling" in _sys.modules:  # a stage's sample.threads / train.threads ends with the stage
    _sys.modules["selfimprove.profiling"].set_torch_threads(0)
del _gc, _sys
"""


@contextlib.contextmanager
def stderr_to(path: Path):
    """Send file descriptor 2 (ours and the kernel's, which inherits it) to `path` for the block: the
    kernel's start-up chatter stays out of the terminal and its crash output stays with the run."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as fh:
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def env_set(**values: str):
    """Environment variables set for the block (a kernel started in it inherits them), then restored."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


# Which stage runs now ("stage"), and whether Ctrl-C came ("interrupted"): set by the pipeline around each
# stage and by stop_kernels_on_interrupt's handler; the pipeline turns a stage ended by the handler into
# Interrupted.
INTERRUPT: dict = {}


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; `what` names the stage that was running, if any."""

    def __init__(self, what: str = ""):
        super().__init__(what)
        self.what = what


def _kernel_processes() -> list:
    """This process's Jupyter kernels (its children running ipykernel), shared or started by papermill."""
    import psutil

    out = []
    for child in psutil.Process().children():
        try:
            if any("ipykernel" in part for part in child.cmdline()):
                out.append(child)
        except psutil.Error:
            continue
    return out


@contextlib.contextmanager
def stop_kernels_on_interrupt(state: dict = INTERRUPT):
    """Ctrl-C (SIGINT) during the block, in the main thread: while a stage runs in a kernel (`state["stage"]`
    set), kill that kernel's process group and let the stage end as a dead kernel, which the pipeline then
    reports as an interruption (raise Interrupted); outside a stage, raise KeyboardInterrupt at once, as Python
    does. A second Ctrl-C raises at once in any case.

    Why not Python's default: its KeyboardInterrupt lands wherever the main thread happens to be, often inside
    the asyncio loop that papermill and jupyter_client drive while a cell runs; landing in some of their
    callbacks left the run waiting on the still-busy kernel, now and then for as long as the cell took (a run
    did not stop within 60 s of SIGINT in tests/test_kernel.py). Killing the kernel is the same in every phase
    of the stage: nbclient's liveness poll sees it gone within a second (DeadKernelError).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum, frame):
        state["interrupted"] = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C raises at once
        kernels = _kernel_processes() if state.get("stage") else []
        if not kernels:
            raise Interrupted(state.get("stage") or "")
        for proc in kernels:
            try:  # jupyter_client starts each kernel in a session of its own: its pid is its process group
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        state.pop("interrupted", None)


class KernelResetError(RuntimeError):
    """The shared kernel could not be reset after a stage."""


def needs_fresh_kernel(stage: str, stage_cfg) -> bool:
    """Stages whose libraries keep process-wide state that a namespace reset cannot free (module docstring)."""
    return (stage == "sample" and stage_cfg.backend == "vllm") or (stage == "train" and stage_cfg.backend == "unsloth")


class KernelSession:
    """One kernel, started on first use and restarted if it died, that `execute` runs stage notebooks in.

    Use it as a context manager: the kernel is shut down when the block ends, also on an error or Ctrl-C.
    `stderr_path` receives the kernel process's own standard error (start-up messages, a crash); what a
    stage's cells write to stderr goes to the stage's log as before (papermill's stderr_file).
    """

    def __init__(self, cwd: str | Path, stderr_path: str | Path, kernel_name: str = "python3", env=None):
        self.cwd, self.stderr_path, self.kernel_name = str(cwd), Path(stderr_path), kernel_name
        self.env = dict(env or {})
        self.km = None
        self.starts = 0  # kernels started (tests: one per session unless one died)

    def __enter__(self) -> KernelSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ensure_kernel(self):
        """The session's kernel manager with a live kernel."""
        from jupyter_client import AsyncKernelManager

        if self.km is not None and run_sync(self.km.is_alive)():
            return self.km
        self.close()
        self.stderr_path.parent.mkdir(parents=True, exist_ok=True)
        km = AsyncKernelManager(kernel_name=self.kernel_name)
        with stderr_to(self.stderr_path), env_set(**self.env):  # the kernel inherits fd 2 and the environment
            run_sync(km.start_kernel)(cwd=self.cwd, extra_arguments=["--HistoryManager.hist_file=:memory:"])
        self.km, self.starts = km, self.starts + 1
        return km

    def execute(self, input_path: Path, output_path: Path, parameters: dict, stderr_file, log_output: bool) -> None:
        """Execute a notebook with papermill in the session's kernel, reset after it (RESET)."""
        import papermill as pm

        km = self.ensure_kernel()
        pm.execute_notebook(str(input_path), str(output_path), parameters=parameters, cwd=self.cwd,
                            progress_bar=False, log_output=log_output, stderr_file=stderr_file,
                            kernel_name=self.kernel_name, engine_name=register_engine(), km=km)

    def close(self) -> None:
        km, self.km = self.km, None
        if km is not None:
            try:
                run_sync(km.shutdown_kernel)(now=True)
            except Exception as e:  # a kernel that is already gone; nothing to keep
                logging.getLogger(__name__).debug("kernel shutdown: %s", e)


@functools.cache
def register_engine() -> str:
    """Register papermill engine ENGINE (imported here, not with the module: papermill takes seconds to import,
    which `selfimprove report` need not pay); returns its name."""
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines

    class _ResetClient(PapermillNotebookClient):
        """papermill's notebook client on a kernel it does not own: RESET after the last cell, and its channels
        closed afterwards (the kernel itself is left running for the next stage)."""

        def _reset(self) -> None:
            reply = self.wait_for_reply(self.kc.execute(RESET, silent=True, store_history=False))
            if reply is None or reply["content"].get("status") != "ok":
                content = (reply or {}).get("content", {})
                raise KernelResetError(f"resetting the shared kernel failed: {content.get('ename')}: "
                                       f"{content.get('evalue')} (run with --kernel fresh to avoid it)")

        def papermill_execute_cells(self):
            super().papermill_execute_cells()  # a failing cell is recorded in the notebook, not raised here
            # Not in a `finally`: after Ctrl-C the kernel is still busy with the cell, and a reset would wait
            # for it; the session shuts the kernel down instead (KernelSession.__exit__). So every stage after
            # the first starts on a kernel reset by the stage before it, and the first on a new kernel.
            self._reset()

        def execute(self, **kwargs):
            try:
                return super().execute(**kwargs)
            finally:
                if self.kc is not None:
                    self.kc.stop_channels()
                    self.kc = None

    class SharedKernelEngine(NBClientEngine):
        """papermill engine `selfimprove-shared-kernel`: NBClientEngine with the kernel manager (`km`) given."""

        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None, stderr_file=None,
                                     start_timeout=60, execution_timeout=None, km=None, **kwargs):
            if km is None:
                raise ValueError(f"engine {ENGINE} runs in a given kernel: pass km=")
            kwargs.pop("input_path", None)
            return _ResetClient(nb_man, km=km, timeout=execution_timeout, startup_timeout=start_timeout,
                                kernel_name=kernel_name, log=logging.getLogger("papermill"), log_output=log_output,
                                stdout_file=stdout_file, stderr_file=stderr_file, **kwargs).execute()

    papermill_engines.register(ENGINE, SharedKernelEngine)
    return ENGINE
