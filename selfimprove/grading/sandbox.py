"""MBPP sandbox: run generated code against a problem's assert statements in a separate, limited process.

What contains the code (the boundary), all from the kernel and applied before the code runs:
- a fresh `python -I -S` process (no site-packages, no environment, no user site) in its own session, killed
  with its whole process group (SIGKILL) at the wall-clock limit and again after every run;
- rlimits: CPU seconds (RLIMIT_CPU), address space (RLIMIT_AS), processes (RLIMIT_NPROC), file size
  (RLIMIT_FSIZE), open files, no core dumps; PR_SET_NO_NEW_PRIVS, and PR_SET_PDEATHSIG so it dies with its
  parent;
- a throwaway working directory (also HOME and TMPDIR), removed afterwards, with the result file outside it;
  an empty environment;
- a new network namespace (no interfaces but a down loopback) where the kernel allows it (root, or
  unprivileged user namespaces);
- run as root, it drops to `nobody` when the interpreter is readable by nobody (then RLIMIT_NPROC binds and
  the user's files are not writable); otherwise it keeps the caller's user.

What guards against mistakes (a guard, not a security boundary: Python code that sets out to escape it can):
the harness replaces process, network and file-removal functions (`os.system`, `os.fork`, `subprocess`,
`socket`, `os.remove`, `shutil.rmtree`, ...) and `open` for paths outside the working directory (reading the
standard library's sources, as a printed traceback does, excepted) with functions that raise
`SandboxViolation`; any attempt, even one the code catches, makes the item an `error`. The code runs as module
`solution`, not `__main__`, so a demo `if __name__ == "__main__":` block is skipped (human-eval's execution.py).

For untrusted code from unknown sources, run the whole grader in a container or VM as well.

Statuses: all asserts pass -> correct; an assert fails, or the code raises / does not compile -> incorrect;
CPU or wall-clock limit -> timeout; sandbox violation, memory limit, output limit, or the process dying
without a result -> error. Sources: MBPP (Austin et al. 2021, google-research/mbpp) ships `test_list`
(asserts) and `test_setup_code`; human-eval's `execution.py` is the model for a limited child process.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .types import Grade

NOBODY = 65534


@dataclass(frozen=True)
class Limits:
    wall_s: float = 5.0  # wall-clock seconds for the whole program (human-eval: 3 s per problem; our choice)
    memory_mb: int = 512  # address space of the process (our choice; MBPP solutions need a few MB)
    nproc: int = 32  # processes beyond those the sandbox user already has (stops fork bombs)
    fsize_mb: int = 16  # largest file the code may write
    guard: bool = True  # the Python-level guard; False only to test the kernel limits alone


HARNESS = r'''
import builtins, io, json, os, posix, resource, shutil, signal, sys
P = json.loads(sys.stdin.read())
root = os.path.realpath(os.getcwd())
me = os.getpid()
result_fd = os.open(P["result"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
null = os.open(os.devnull, os.O_RDWR)
isolation = []
try:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    NEWNET, NEWUSER = 0x40000000, 0x10000000
    if libc.unshare(NEWNET if os.geteuid() == 0 else NEWNET | NEWUSER) == 0:
        isolation.append("netns")
    if os.geteuid() == 0 and P["drop_to"] is not None:
        os.fchown(result_fd, P["drop_to"], P["drop_to"])
        os.setgroups([]); os.setgid(P["drop_to"]); os.setuid(P["drop_to"])
        isolation.append("nobody")
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG (after setuid, which clears it)
    del ctypes, libc
except Exception as e:
    isolation.append("isolation failed: " + type(e).__name__)
def limit(which, soft, hard=None):
    try:
        resource.setrlimit(which, (soft, soft if hard is None else hard))
    except (ValueError, OSError):
        isolation.append("no " + str(which))
limit(resource.RLIMIT_CPU, P["cpu_s"], P["cpu_s"] + 1)
limit(resource.RLIMIT_NPROC, P["nproc"])
limit(resource.RLIMIT_FSIZE, P["fsize"])
limit(resource.RLIMIT_NOFILE, 64)
limit(resource.RLIMIT_CORE, 0)
violations = []
class SandboxViolation(PermissionError):
    pass
def deny(name):
    def refuse(*a, **k):
        violations.append(name)
        raise SandboxViolation(name + " is not allowed in the sandbox")
    return refuse
def inside(path):
    if isinstance(path, int):
        return True
    p = os.path.realpath(os.path.join(root, os.fsdecode(os.fspath(path))))
    return p == root or p.startswith(root + os.sep)
stdlib = os.path.realpath(os.path.dirname(os.__file__))
def stdlib_read(a, k):  # traceback.print_exc() and inspect read stdlib sources through open(path, "rb")
    if not a or isinstance(a[0], int) or str(a[1] if len(a) > 1 else k.get("mode", "r")).strip("rbt"):
        return False
    return os.path.realpath(os.fsdecode(os.fspath(a[0]))).startswith(stdlib + os.sep)
def checked(name, fn, nargs=1, reads_stdlib=False):
    def call(*a, **k):
        if reads_stdlib and stdlib_read(a, k):
            return fn(*a, **k)
        if k.get("dir_fd") is not None or k.get("src_dir_fd") is not None or not all(inside(x) for x in a[:nargs]):
            violations.append(name)
            raise SandboxViolation(name + " outside the sandbox directory")
        return fn(*a, **k)
    return call
if P["guard"]:
    for mod in (os, posix):
        for name in ("system", "popen", "fork", "forkpty", "kill", "killpg", "setsid", "execv", "execve",
                     "execl", "execle", "execlp", "execlpe", "execvp", "execvpe", "spawnv", "spawnve", "spawnl",
                     "spawnle", "spawnlp", "spawnlpe", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp",
                     "chroot", "setuid", "setgid"):
            if hasattr(mod, name):
                setattr(mod, name, deny("os." + name))
    # file functions are checked on `os` only: the import system calls `posix` directly
    for name in ("remove", "unlink", "rmdir", "removedirs", "truncate", "chmod", "chown", "lchown", "mkdir",
                 "makedirs", "open", "utime"):
        setattr(os, name, checked("os." + name, getattr(os, name)))
    for name in ("rename", "renames", "replace", "link", "symlink"):
        setattr(os, name, checked("os." + name, getattr(os, name), 2))
    shutil.rmtree = checked("shutil.rmtree", shutil.rmtree)
    shutil.move = checked("shutil.move", shutil.move, 2)
    builtins.open = io.open = checked("open", io.open, reads_stdlib=True)
    BLOCKED = {"socket", "_socket", "ssl", "_ssl", "ctypes", "_ctypes", "subprocess", "_posixsubprocess",
               "multiprocessing", "_multiprocessing", "pty", "asyncio", "urllib", "http", "ftplib", "smtplib"}
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]
    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                violations.append("import " + name)
                raise SandboxViolation("import " + name + " is not allowed in the sandbox")
            return None
    sys.meta_path.insert(0, Blocker())
limit(resource.RLIMIT_AS, P["memory"])
os.dup2(null, 1); os.dup2(null, 2)
def report(status, detail):
    if os.getpid() == me:
        os.write(result_fd, json.dumps({"status": status, "detail": detail, "violations": violations,
                                        "isolation": isolation}).encode())
    os._exit(0)
def run(src, what, ns):
    exec(compile(src, what, "exec"), ns)
ns = {"__name__": "solution"}  # not "__main__": a demo `if __name__ == "__main__":` block (input(), sys.exit) is
# not part of the answer; human-eval's execution.py runs programs in `{}`, where that block is skipped too
try:
    try:
        run(P["setup"], "<setup>", ns)
        run(P["code"], "<solution>", ns)
    except SyntaxError as e:
        report("incorrect", "code does not compile: " + str(e)[:200])
    for k, test in enumerate(P["tests"]):
        try:
            run(test, "<test %d>" % k, ns)
        except AssertionError:
            report("incorrect", "failed: " + test[:200])
    report("correct", None)
except SandboxViolation as e:
    report("error", "sandbox violation: " + str(e))
except MemoryError:
    report("error", "memory limit")
except BaseException as e:
    report("incorrect", "raised " + type(e).__name__ + ": " + str(e)[:200])
'''


def _drop_target() -> int | None:
    """`nobody` when running as root and the interpreter's standard library is readable by every user."""
    if os.geteuid() != 0:
        return None
    lib = Path(os.__file__).resolve().parent
    for d in [lib, *lib.parents]:
        if not d.stat().st_mode & 0o001:
            return None
    return NOBODY


def _procs_of(uid: int) -> int:
    """How many processes `uid` has now (RLIMIT_NPROC counts them all)."""
    n = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            if re.search(rf"^Uid:\s+{uid}\s", status.read_text(), re.M):
                n += 1
        except OSError:
            continue
    return n


def run_tests(code: str, tests: list[str], setup: str = "", limits: Limits = Limits()) -> Grade:
    """Run `setup`, then `code`, then each assert of `tests` in the sandbox; the Grade says how it went.

    >>> run_tests("def add(a, b):\\n    return a + b", ["assert add(1, 2) == 3"]).status
    'correct'
    """
    work = Path(tempfile.mkdtemp(prefix="selfimprove-sandbox-"))
    box = work / "box"  # the code's directory; the result file is beside it, out of reach of its guarded open
    box.mkdir()
    drop = _drop_target()
    result = work / f".result-{secrets.token_hex(8)}.json"
    payload = {"code": code, "tests": list(tests), "setup": setup or "", "guard": limits.guard,
               "result": str(result), "cpu_s": _cpu_s(limits), "drop_to": drop,
               "memory": limits.memory_mb * 2**20, "fsize": limits.fsize_mb * 2**20,
               "nproc": _procs_of(drop if drop is not None else os.getuid()) + limits.nproc}
    if drop is not None:
        os.chown(box, drop, drop)
        os.chmod(work, 0o711)  # nobody may pass through to its directory, not list or write beside it
    env = {"PATH": "/usr/bin:/bin", "HOME": str(box), "TMPDIR": str(box), "LANG": "C.UTF-8"}
    t0 = time.monotonic()
    proc = subprocess.Popen([os.path.realpath(sys.executable), "-I", "-S", "-c", HARNESS], cwd=box, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        try:
            proc.stdin.write(json.dumps(payload).encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            rc = proc.wait(timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            rc = None
    finally:
        _kill_group(proc)
    try:
        out = json.loads(result.read_text()) if result.exists() and result.stat().st_size else None
    except (OSError, ValueError):
        out = None
    shutil.rmtree(work, ignore_errors=True)
    if rc is None:
        return Grade("timeout", code, f"wall-clock limit {limits.wall_s:g} s")
    if out is not None:
        if out["violations"] and out["status"] != "error":
            return Grade("error", code, f"sandbox violation: {', '.join(sorted(set(out['violations'])))}")
        return Grade(out["status"], code, out["detail"])
    return _grade_of_exit(rc, code, time.monotonic() - t0, limits)


def _cpu_s(limits: Limits) -> int:
    """The CPU-seconds limit: one second above the wall-clock limit. A single thread cannot use more CPU time
    than wall time, so a busy loop always meets the wall-clock limit first and is reported as such; the CPU
    limit is the backstop for code that burns CPU in several threads at once. (Set to the wall-clock seconds,
    the two limits raced: which fired first depended on the machine's load.)"""
    return math.ceil(limits.wall_s) + 1


def _grade_of_exit(rc: int, code: str, seconds: float, limits: Limits) -> Grade:
    """A process that left no result: say why from its exit status."""
    if rc in (-signal.SIGXCPU, -signal.SIGKILL) and seconds >= limits.wall_s * 0.5:
        return Grade("timeout", code, f"CPU limit {_cpu_s(limits)} s")
    if rc == -signal.SIGXFSZ:
        return Grade("error", code, f"output file limit {limits.fsize_mb} MB")
    if rc < 0:
        return Grade("error", code, f"killed by {signal.Signals(-rc).name} before the tests finished "
                                    "(a memory limit is a common cause)")
    return Grade("error", code, f"exited with code {rc} before the tests finished")


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the sandbox's whole process group (it is its own session) and reap the harness."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


_FENCE_RE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.S | re.I)


def extract_code(response: str) -> str | None:
    """The code of an MBPP response: the last fenced block that defines something (else the last block), else
    the text between `[BEGIN]` and `[DONE]` (the MBPP paper's prompt format), else the whole response if it
    compiles as Python. None when there is none.

    >>> extract_code("Here:\\n```python\\ndef f():\\n    return 1\\n```\\nDone.")
    'def f():\\n    return 1\\n'
    >>> extract_code("[BEGIN]\\ndef g(x): return x\\n[DONE]")
    'def g(x): return x'
    >>> extract_code("I do not know.") is None
    True
    """
    blocks = _FENCE_RE.findall(response)
    if blocks:
        defining = [b for b in blocks if re.search(r"^\s*(def|class|import|from)\s", b, re.M)]
        return (defining or blocks)[-1]
    m = re.search(r"\[BEGIN\](.*?)(?:\[DONE\]|$)", response, re.S)
    if m:
        return m.group(1).strip() or None
    text = response.strip()
    if not text:
        return None
    try:
        compile(text, "<response>", "exec")
    except (SyntaxError, ValueError):
        return None
    return text if re.search(r"^\s*(def|class|import|from|lambda)\b|=", text, re.M) else None


def grade_mbpp(response: str, gold: dict, limits: Limits = Limits()) -> Grade:
    """MBPP: the response's code against `gold["tests"]` (assert strings), after `gold.get("setup")`.

    >>> grade_mbpp("```python\\ndef sq(x):\\n    return x * x\\n```", {"tests": ["assert sq(3) == 9"]}).status
    'correct'
    >>> grade_mbpp("no code", {"tests": ["assert sq(3) == 9"]}).status
    'no_answer'
    """
    tests = gold.get("tests") if isinstance(gold, dict) else None
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        return Grade("error", None, "gold needs 'tests': a non-empty list of assert strings")
    code = extract_code(response)
    if code is None:
        return Grade("no_answer", None)
    return run_tests(code, tests, gold.get("setup") or "", limits)


def describe() -> dict:
    """The limits and isolation this machine gives (for logs and the README)."""
    return {**asdict(Limits()), "drop_to_nobody": _drop_target() is not None}
