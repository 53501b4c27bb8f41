"""MBPP sandbox: run generated code in an operating-system sandbox; check its asserts outside of it.

Two processes, two roles (the design):
- The code's process (the sandbox) receives the solution, the problem's setup code, and only the parts of each
  assert that need the solution's names: for `assert set(f((3, 4), (4, 5))) == set((4,))` it receives
  `f((3, 4), (4, 5))`, never the expected `set((4,))`. It runs the code, evaluates those expressions, and sends
  back each value as plain data (int, float, complex, str, bytes, bool, None, list, tuple, set, frozenset,
  dict, and Counter, OrderedDict, deque, Fraction, Decimal), one JSON line each.
- The checker (this module, in the grading process) parses the gold asserts itself (`ast`), rebuilds the values
  as plain builtin objects, and evaluates each assert with them. A value is only data: an object whose
  `__eq__` always returns True arrives as its plain content (or not at all), code that patches builtins or
  the harness changes nothing the checker runs, and a forged or early message can only claim values, which it
  cannot choose to match answers it never sees. Exiting early, closing or writing file descriptors, printing a
  fake verdict: the checker misses values it needs, and the item is an `error`, never `correct`.
Gold tests must each be exactly one `assert` whose expression uses the solution; an empty test, a non-assert
statement, or an assert that does not call the code (`assert True`) is refused as bad gold (`error`).

What contains the code (the boundary): the kernel, through bubblewrap (`bwrap`, Debian's `bubblewrap`
package; its manual: https://github.com/containers/bubblewrap/blob/main/bwrap.xml):
- new user, PID, network, IPC, UTS and cgroup namespaces (`--unshare-all --unshare-user`, `--uid 65534`):
  the code runs as an unprivileged user with no capabilities, sees only its own processes, and has no network
  but its own loopback; every process of an item dies with it: the PID namespace ends when its first process
  does, and bwrap dies with the grader (`--die-with-parent`); a timed-out item is killed through that first
  process. RLIMIT_NPROC counts the processes of the new user namespace, so forks are bounded as root too;
- a new mount namespace that holds only /usr (and the /bin, /lib* links or folders), the Python installation
  read-only at /opt/python (when it is not under /usr), a fresh /proc and /dev, and a private size-limited
  tmpfs at /tmp, the only writable place: no /etc (so no /etc/passwd or /etc/shadow), no /root, /home, /work,
  no checkout and no current directory;
- `--new-session` (no terminal injection), `--clearenv`, `python -I -S` (no site-packages, no user site);
- rlimits set before the code runs: CPU seconds, address space, processes, file size, open files, no cores;
- the wall-clock limit, enforced by the grader (SIGKILL of the sandbox's first process).
It works as root and as a normal user where the kernel allows user namespaces (Debian 12 does by default). The
checker's own evaluation of a gold assert runs in the grading process on plain data the sandbox sent (bounded by
an output limit): it trusts the gold tests, not the code.

Where bwrap is missing or cannot create its namespaces, MBPP grading refuses (`error`, saying why and how to fix
it) unless the caller passes `unsafe=True` (`selfimprove grade --unsafe`): then the harness runs as a plain
child process with the process-level protections only (its own session killed as a group, the rlimits,
PR_SET_NO_NEW_PRIVS, a new network namespace where allowed, `nobody` as root when it can read the interpreter),
and every such verdict's detail starts with "unsafe sandbox". The checker split above holds in both modes.

What is not the boundary: the Python-level guard (`Limits.guard`), which replaces process, network and file
functions and `open` outside the working directory with functions that raise `SandboxViolation`; any attempt,
even a caught one, makes the item an `error`. It catches honest mistakes early; code that sets out to escape it
can (through `_imp.create_builtin` or `_io.FileIO`, for example), and then meets the kernel's limits above.
Not covered: kernel bugs, and CPU or memory a many-process item uses below its limits. For code from unknown
sources at scale, run the grader in a VM as well.

The code runs as module `solution`, not `__main__`, so a demo `if __name__ == "__main__":` block is skipped
(human-eval's execution.py, https://github.com/openai/human-eval/blob/master/human_eval/execution.py, runs
programs in a fresh namespace in a limited child process; it also warns that its guard is not a sandbox).

Statuses: all asserts pass -> correct; an assert fails, or the code raises / does not compile -> incorrect;
CPU or wall-clock limit -> timeout; sandbox violation, memory limit, output limit, a value the checker cannot
read, the process dying before the tests finished, bad gold, or no sandbox -> error. Asserts are checked in
order as their values arrive; the first failing one ends the item. Sources: MBPP (Austin et al. 2021,
google-research/mbpp) ships `test_list` (asserts) and `test_setup_code`.
"""

from __future__ import annotations

import ast
import builtins
import collections
import decimal
import fractions
import functools
import json
import math
import os
import re
import select
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
PYTHON_MOUNT = "/opt/python"  # where the Python installation appears inside the sandbox (not under /usr)
OUTPUT_LIMIT = 16 * 2**20  # bytes the sandbox may send back; more is an `error`
NO_SANDBOX_FIX = ("install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; `make test` does it as root) "
                  "and allow user namespaces (`sysctl user.max_user_namespaces=15000`, and on Debian/Ubuntu "
                  "`sysctl kernel.unprivileged_userns_clone=1` or an AppArmor profile for bwrap), or pass --unsafe "
                  "(API: unsafe=True) to run only the process-level sandbox")


@dataclass(frozen=True)
class Limits:
    wall_s: float = 5.0  # wall-clock seconds for the whole program (human-eval: 3 s per problem; our choice)
    memory_mb: int = 512  # address space of the process (our choice; MBPP solutions need a few MB)
    nproc: int = 32  # processes (stops fork bombs); in the sandbox's own user namespace, so it binds as root too
    fsize_mb: int = 16  # largest file the code may write
    tmp_mb: int = 64  # size of the private /tmp (all files together)
    guard: bool = True  # the Python-level guard; False only to test the kernel limits alone


# The code's process. It reads the payload on stdin, answers on stdout (moved to a private descriptor; the
# code's own stdout and stderr go to /dev/null), one JSON line per step. Everything it writes is only a claim
# about values: the checker (run_tests) decides.
HARNESS = r'''
import builtins, io, json, os, posix, resource, shutil, signal, sys
P = json.loads(sys.stdin.read())
root = os.path.realpath(os.getcwd())
out = os.dup(1)
null = os.open(os.devnull, os.O_RDWR)
isolation = []
if P["unsafe"]:  # no bwrap: what a plain child process can do for itself
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        NEWNET, NEWUSER = 0x40000000, 0x10000000
        if libc.unshare(NEWNET if os.geteuid() == 0 else NEWNET | NEWUSER) == 0:
            isolation.append("netns")
        if os.geteuid() == 0 and P["drop_to"] is not None:
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
import collections, decimal, fractions, math
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
me = os.getpid()
def send(msg):
    if os.getpid() != me:  # a forked child of the code says nothing
        os._exit(0)
    msg["violations"] = violations
    data = (json.dumps(msg) + "\n").encode()
    while data:
        data = data[os.write(out, data):]
def raised(e):
    kind = "violation" if isinstance(e, SandboxViolation) else "memory" if isinstance(e, MemoryError) else "raised"
    return {kind: type(e).__name__ + ": " + str(e)[:200]}
def enc(x, depth=0):
    if depth > 100:
        raise ValueError("a value nested more than 100 deep")
    if x is None or x is True or x is False:
        return x
    if isinstance(x, int):
        return ["i", format(int.__index__(x), "x")]
    if isinstance(x, float):
        return ["f", float.hex(float(x))]
    if isinstance(x, complex):
        return ["c", float.hex(x.real), float.hex(x.imag)]
    if isinstance(x, str):
        return ["s", str.__str__(x)]
    if isinstance(x, (bytes, bytearray)):
        return ["ba" if isinstance(x, bytearray) else "b", bytes(x).hex()]
    if isinstance(x, (fractions.Fraction, decimal.Decimal)):
        return ["fr" if isinstance(x, fractions.Fraction) else "dec", str(x)]
    d = depth + 1
    if isinstance(x, dict):
        tag = "ctr" if isinstance(x, collections.Counter) else "od" if isinstance(x, collections.OrderedDict) else "d"
        return [tag, [[enc(k, d), enc(v, d)] for k, v in dict.items(x)]]
    for t, tag in ((list, "l"), (tuple, "t"), (set, "S"), (frozenset, "F"), (collections.deque, "q")):
        if isinstance(x, t):
            return [tag, [enc(v, d) for v in t.__iter__(x)]]
    raise TypeError("a value of type " + type(x).__qualname__ + " (the checker reads only plain data)")
ns = {"__name__": "solution"}  # not "__main__": a demo `if __name__ == "__main__":` block (input(), sys.exit) is
# not part of the answer; human-eval's execution.py runs programs in `{}`, where that block is skipped too
try:
    exec(compile(P["setup"], "<setup>", "exec"), ns)
    code = compile(P["code"], "<solution>", "exec")
except SyntaxError as e:
    send({"compile": str(e)[:200]}); os._exit(0)
except BaseException as e:
    send({"setup": raised(e)}); os._exit(0)
try:
    exec(code, ns)
except BaseException as e:
    send({"code": raised(e)}); os._exit(0)
send({"code": "ran", "isolation": isolation})
for k, src in enumerate(P["units"]):
    try:
        value = eval(compile(src, "<test>", "eval"), ns)
        try:
            msg = {"u": k, "v": enc(value)}
        except (TypeError, ValueError, RecursionError) as e:
            msg = {"u": k, "unreadable": str(e)[:200]}
    except BaseException as e:
        msg = {"u": k, **raised(e)}
    send(msg)
send({"done": True})
os._exit(0)
'''


# --- the checker: gold asserts, split into what the sandbox evaluates and what is compared here -------------

# Names an assert may use that the checker evaluates itself; any other name is the solution's (or the setup's),
# and the smallest expression that needs it (a call, or the name alone) is sent to the sandbox.
LOCAL_BUILTINS = ("abs", "all", "any", "bool", "bytes", "chr", "complex", "dict", "divmod", "enumerate", "filter",
                  "float", "frozenset", "int", "isinstance", "len", "list", "map", "max", "min", "ord", "pow",
                  "range", "repr", "reversed", "round", "set", "sorted", "str", "sum", "tuple", "type", "zip",
                  "True", "False", "None", "ValueError", "TypeError", "Exception")
LOCAL_MODULES = {"math": math}


class BadGold(ValueError):
    """A gold test that cannot check anything; the message says which and why."""


@dataclass(frozen=True)
class _Assert:
    source: str
    check: object  # compiled expression over __unit(k)
    units: tuple[int, ...]


def _local_names() -> dict:
    return {"__builtins__": {n: getattr(builtins, n) for n in LOCAL_BUILTINS}, **LOCAL_MODULES}


def _plan(tests: list[str]) -> tuple[list[_Assert], list[str]]:
    """Each test as an assert over units, and the units' sources (what the sandbox evaluates). Raises BadGold."""
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise BadGold("gold needs 'tests': a non-empty list of assert strings")
    units: list[str] = []
    return [_split(test, n, units) for n, test in enumerate(tests)], units


def _split(test: str, n: int, units: list[str]) -> _Assert:
    """One gold test: its smallest expressions that need the solution become `__unit(k)` (appended to `units`)."""
    where = f"bad gold: test {n + 1} {test[:80]!r}"
    try:
        tree = ast.parse(test)
    except (SyntaxError, ValueError) as e:
        raise BadGold(f"{where} does not parse: {e}") from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        raise BadGold(f"{where} is not a single assert statement")
    expr = tree.body[0].test
    bound = set()  # names the assert binds itself (comprehension targets, lambda arguments, :=)
    for node in ast.walk(expr):
        if isinstance(node, (ast.comprehension, ast.NamedExpr)):
            bound |= {x.id for x in ast.walk(node.target) if isinstance(x, ast.Name)}
        elif isinstance(node, ast.Lambda):
            bound |= {x.arg for x in ast.walk(node.args) if isinstance(x, ast.arg)}
    local = set(LOCAL_BUILTINS) | set(LOCAL_MODULES) | bound
    mine: list[int] = []

    def remote(node: ast.AST) -> bool:
        return any(isinstance(x, ast.Name) and x.id not in local for x in ast.walk(node))

    class Split(ast.NodeTransformer):
        def visit(self, node):
            if (isinstance(node, ast.Call) and remote(node.func)) or \
                    (isinstance(node, ast.Name) and node.id not in local):
                if any(isinstance(x, ast.Name) and x.id in bound for x in ast.walk(node)):
                    raise BadGold(f"{where} calls the solution with a name bound inside the assert; write one "
                                  "assert per input")
                units.append(ast.unparse(node))
                mine.append(len(units) - 1)
                return ast.copy_location(ast.Call(ast.Name("__unit", ast.Load()), [ast.Constant(len(units) - 1)],
                                                  []), node)
            return self.generic_visit(node)

    check = ast.fix_missing_locations(ast.Expression(Split().visit(expr)))
    if not mine:
        raise BadGold(f"{where} does not use the solution (it would pass any code)")
    return _Assert(test, compile(check, f"<test {n + 1}>", "eval"), tuple(mine))


def _dec(x, depth: int = 0):
    """A value the sandbox sent, rebuilt as plain builtin objects; ValueError if it is not well formed."""
    if depth > 102:
        raise ValueError("nested too deeply")
    if x is None or x is True or x is False:
        return x
    if not isinstance(x, list) or not x or not isinstance(x[0], str):
        raise ValueError("not a tagged value")
    tag, args, d = x[0], x[1:], depth + 1
    scalars = {"i": lambda s: int(s, 16), "f": float.fromhex, "s": str, "b": bytes.fromhex,
               "ba": lambda s: bytearray.fromhex(s), "fr": fractions.Fraction, "dec": decimal.Decimal}
    if tag in scalars and len(args) == 1 and isinstance(args[0], str):
        return scalars[tag](args[0])
    if tag == "c" and len(args) == 2 and all(isinstance(a, str) for a in args):
        return complex(float.fromhex(args[0]), float.fromhex(args[1]))
    if len(args) != 1 or not isinstance(args[0], list):
        raise ValueError(f"bad value tag {tag!r}")
    items = args[0]
    if tag in ("d", "od", "ctr"):
        if not all(isinstance(p, list) and len(p) == 2 for p in items):
            raise ValueError("bad dict")
        kind = {"d": dict, "od": collections.OrderedDict, "ctr": collections.Counter}[tag]
        return kind((_dec(k, d), _dec(v, d)) for k, v in items) if tag != "ctr" else \
            collections.Counter(dict((_dec(k, d), _dec(v, d)) for k, v in items))
    kinds = {"l": list, "t": tuple, "S": set, "F": frozenset, "q": collections.deque}
    if tag not in kinds:
        raise ValueError(f"bad value tag {tag!r}")
    return kinds[tag](_dec(v, d) for v in items)


class _Raised(Exception):
    """A unit that raised in the sandbox: the assert raised, as it would have in one process."""


def _drop_target() -> int | None:
    """`nobody` when running as root and the interpreter's standard library is readable by every user (unsafe
    mode only; bwrap runs the code as an unprivileged user of its own user namespace)."""
    if os.geteuid() != 0:
        return None
    lib = Path(os.__file__).resolve().parent
    for d in [lib, *lib.parents]:
        if not d.stat().st_mode & 0o001:
            return None
    return NOBODY


def _procs_of(uid: int) -> int:
    """How many processes `uid` has now (RLIMIT_NPROC counts them all; unsafe mode)."""
    n = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            if re.search(rf"^Uid:\s+{uid}\s", status.read_text(), re.M):
                n += 1
        except OSError:
            continue
    return n


def _readable_by_all(path: Path) -> bool:
    return all(d.stat().st_mode & 0o005 == 0o005 for d in [path, *path.parents])


def _python() -> tuple[str, list[str], dict, int | None]:
    """The interpreter inside the sandbox: its path there, the bwrap arguments that show it, its environment,
    and the user bwrap runs as (`nobody` as root, so that RLIMIT_NPROC binds: the kernel exempts uid 0 from it
    even in a user namespace). As root, an interpreter that `nobody` cannot read (pyenv under /root) is replaced
    by Debian's /usr/bin/pythonX.Y of the same version when there is one."""
    exe = Path(os.path.realpath(sys.executable))
    prefix = Path(os.path.realpath(sys.base_prefix))
    user = None
    if os.geteuid() == 0:
        stdlib = Path(os.path.realpath(os.path.dirname(os.__file__)))
        same = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
        if _readable_by_all(stdlib) and _readable_by_all(exe):
            user = NOBODY
        elif same.exists() and _readable_by_all(same.resolve()):
            exe, prefix, user = same.resolve(), Path("/usr"), NOBODY
    if prefix == Path("/usr") or Path("/usr") in prefix.parents:
        return str(exe), [], {}, user
    if prefix not in exe.parents:
        raise OSError(f"the interpreter {exe} is not inside its installation {prefix}")
    env = {"LD_LIBRARY_PATH": PYTHON_MOUNT + "/lib"} if any((prefix / "lib").glob("libpython*.so*")) else {}
    return f"{PYTHON_MOUNT}/{exe.relative_to(prefix)}", ["--ro-bind", str(prefix), PYTHON_MOUNT], env, user


def _bwrap_command(limits: Limits) -> tuple[list[str], int | None]:
    """The bwrap command line that runs the harness, and the user to run it as (None: the caller's)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise OSError("bubblewrap (bwrap) is not installed")
    exe, mounts, env, user = _python()
    cmd = [bwrap, "--unshare-all", "--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY),
           "--die-with-parent", "--new-session", "--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    cmd += mounts + ["--proc", "/proc", "--dev", "/dev", "--size", str(limits.tmp_mb * 2**20), "--tmpfs", "/tmp",
                     "--dir", "/tmp/work", "--chdir", "/tmp/work", "--clearenv"]
    for k, v in {"PATH": "/usr/bin:/bin", "HOME": "/tmp/work", "TMPDIR": "/tmp/work", "LANG": "C.UTF-8", **env}.items():
        cmd += ["--setenv", k, v]
    return cmd + ["--", exe, "-I", "-S", "-c", HARNESS], user


@functools.cache
def isolation_problem() -> str | None:
    """None when bubblewrap can run the sandbox on this machine, else why not (checked once per process)."""
    try:
        cmd, user = _bwrap_command(Limits())
    except OSError as e:
        return str(e)
    cmd[-1] = "import sys; sys.stdout.write('ok')"
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=30, stdin=subprocess.DEVNULL, cwd="/",
                           **_as_user(user))
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap did not run: {e}"
    if p.stdout != b"ok":
        err = p.stderr.decode(errors="replace").strip().splitlines()
        return f"bwrap could not create the sandbox ({err[-1] if err else f'exit {p.returncode}'})"
    return None


def describe() -> dict:
    """The limits and isolation this machine gives (for logs and the README)."""
    return {**asdict(Limits()), "bwrap": isolation_problem() or "ok", "python": _python()[0], "unsafe_drop_to_nobody":
            _drop_target() is not None}


def run_tests(code: str, tests: list[str], setup: str = "", limits: Limits = Limits(), unsafe: bool = False) -> Grade:
    """Run `setup` and `code` in the sandbox and check each assert of `tests` with the values it sends.

    `unsafe=True` runs without bubblewrap (the process-level sandbox only; the detail says so).

    >>> run_tests("def add(a, b):\\n    return a + b", ["assert add(1, 2) == 3"]).status
    'correct'
    """
    try:
        asserts, units = _plan(tests)
    except BadGold as e:
        return Grade("error", code, str(e))
    payload = {"code": code, "setup": setup or "", "units": units, "guard": limits.guard, "unsafe": unsafe,
               "cpu_s": _cpu_s(limits), "memory": limits.memory_mb * 2**20, "fsize": limits.fsize_mb * 2**20,
               "nproc": limits.nproc, "drop_to": None}
    work = None
    if unsafe:
        drop = _drop_target()
        work = Path(tempfile.mkdtemp(prefix="selfimprove-sandbox-"))
        if drop is not None:
            os.chown(work, drop, drop)
        payload.update(drop_to=drop, nproc=_procs_of(drop if drop is not None else os.getuid()) + limits.nproc)
        cmd, user = [os.path.realpath(sys.executable), "-I", "-S", "-c", HARNESS], None
        env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
    else:
        problem = isolation_problem()
        if problem:
            return Grade("error", code, f"no sandbox for MBPP code: {problem}; to fix it, {NO_SANDBOX_FIX}")
        (cmd, user), env = _bwrap_command(limits), {}
    try:
        grade = _run(cmd, env, work, user, json.dumps(payload).encode(), asserts, code, limits, unsafe)
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    if unsafe:
        return grade._replace(detail="unsafe sandbox (process level only)" + (f"; {grade.detail}" if grade.detail
                                                                                else ""))
    return grade


class _Verdict(Exception):
    def __init__(self, status: str, detail: str | None):
        super().__init__(status, detail)
        self.grade = (status, detail)


class _Check:
    """Values from the sandbox, and the asserts checked in order as soon as their values are all in."""

    def __init__(self, asserts: list[_Assert]):
        self.asserts, self.next, self.values, self.ran = asserts, 0, {}, False

    def take(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
            if not isinstance(msg, dict):
                raise ValueError
        except ValueError:
            raise _Verdict("error", "the sandbox sent a message the checker cannot read") from None
        if msg.get("violations"):
            names = sorted({str(v) for v in msg["violations"]}) if isinstance(msg["violations"], list) else ["?"]
            raise _Verdict("error", f"sandbox violation: {', '.join(names)}")
        if "compile" in msg:
            raise _Verdict("incorrect", f"code does not compile: {str(msg['compile'])[:200]}")
        failure = msg.get("code", msg.get("setup"))
        if isinstance(failure, dict):
            self._failed(failure)
        if msg.get("code") == "ran":
            self.ran = True
        elif "u" in msg and self.ran:
            k = msg["u"]
            if not isinstance(k, int) or k in self.values or not 0 <= k < sum(len(a.units) for a in self.asserts):
                raise _Verdict("error", "the sandbox sent a message the checker cannot read")
            if "v" in msg:
                try:
                    self.values[k] = ("value", _dec(msg["v"]))
                except (ValueError, TypeError, ArithmeticError, RecursionError) as e:
                    raise _Verdict("error", f"the sandbox sent an unreadable value ({type(e).__name__})") from None
            elif "unreadable" in msg:
                self.values[k] = ("unreadable", str(msg["unreadable"])[:200])
            else:
                self._failed(msg, k)
        self._check()

    def _failed(self, msg: dict, unit: int | None = None) -> None:
        if "memory" in msg:
            raise _Verdict("error", "memory limit")
        if "violation" in msg:
            raise _Verdict("error", f"sandbox violation: {str(msg['violation'])[:200]}")
        text = str(msg.get("raised", "an unknown error"))[:200]
        if unit is None:
            raise _Verdict("incorrect", f"raised {text}")
        self.values[unit] = ("raised", text)

    def _check(self) -> None:
        while self.next < len(self.asserts) and all(k in self.values for k in self.asserts[self.next].units):
            a = self.asserts[self.next]

            def unit(k):
                kind, value = self.values[k]
                if kind == "value":
                    return value
                raise _Raised(f"raised {value}" if kind == "raised" else f"the code's value is not plain data: "
                                                                            f"{value}")

            try:
                ok = bool(eval(a.check, {**_local_names(), "__unit": unit}))
            except _Raised as e:
                raise _Verdict("incorrect", str(e)) from None
            except (MemoryError, RecursionError) as e:
                raise _Verdict("error", f"{type(e).__name__} while checking {a.source[:100]}") from None
            except Exception as e:  # as the assert would have raised in one process
                raise _Verdict("incorrect", f"raised {type(e).__name__}: {str(e)[:200]}") from None
            if not ok:
                raise _Verdict("incorrect", "failed: " + a.source[:200])
            self.next += 1
        if self.next == len(self.asserts):
            raise _Verdict("correct", None)


def _as_user(user: int | None) -> dict:
    return {} if user is None else {"user": user, "group": user, "extra_groups": []}


def _run(cmd: list[str], env: dict, work: Path | None, user: int | None, payload: bytes, asserts: list[_Assert],
         code: str, limits: Limits, unsafe: bool) -> Grade:
    check = _Check(asserts)
    t0 = time.monotonic()
    deadline = t0 + limits.wall_s
    proc = subprocess.Popen(cmd, cwd=work or "/", env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True, **_as_user(user))
    out, inp = proc.stdout.fileno(), proc.stdin.fileno()
    os.set_blocking(inp, False)
    buf, total, verdict, rc = b"", 0, None, None
    try:
        while verdict is None:
            left = deadline - time.monotonic()
            if left <= 0:
                verdict = ("timeout", f"wall-clock limit {limits.wall_s:g} s")
                break
            r, w, _ = select.select([out], [inp] if payload else [], [], left)
            if w:
                try:
                    payload = payload[os.write(inp, payload[:1 << 16]):]
                except (BrokenPipeError, BlockingIOError):
                    payload = payload if not isinstance(sys.exc_info()[1], BrokenPipeError) else b""
                if not payload:
                    proc.stdin.close()
            if not r:
                continue
            chunk = os.read(out, 1 << 16)
            if not chunk:  # the sandbox closed its end: it finished, or the code closed it
                try:
                    rc = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    verdict = ("timeout", f"wall-clock limit {limits.wall_s:g} s")
                break
            total += len(chunk)
            if total > OUTPUT_LIMIT:
                verdict = ("error", f"output limit {OUTPUT_LIMIT // 2**20} MB")
                break
            *lines, buf = (buf + chunk).split(b"\n")
            try:
                for line in lines:
                    check.take(line)
            except _Verdict as v:
                verdict = v.grade
    finally:
        _kill(proc, unsafe)
    if verdict is not None:
        return Grade(verdict[0], code, verdict[1])
    if rc is None:
        rc = proc.returncode
    if not unsafe and rc > 128:  # bwrap exits with 128 + the signal that killed its command
        rc = -(rc - 128)
    return _grade_of_exit(rc, code, time.monotonic() - t0, limits)


def _kill(proc: subprocess.Popen, unsafe: bool) -> None:
    """SIGKILL the sandbox: bwrap and the first process of its PID namespace (whose end kills every process
    in it), or in unsafe mode the harness's process group; reap, and wait until the namespace is gone."""
    firsts = []
    if not unsafe:
        try:
            firsts = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        except (OSError, ValueError):
            pass
    for pid in firsts:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    for f in (proc.stdin, proc.stdout):
        try:
            f.close()
        except OSError:
            pass
    end = time.monotonic() + 5.0
    for pid in firsts:  # reaped by bwrap, or by init once bwrap is gone: wait until it is no longer running
        while time.monotonic() < end:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                break
            if state in ("Z", "X"):
                break
            time.sleep(0.005)


def _cpu_s(limits: Limits) -> int:
    """The CPU-seconds limit: one second above the wall-clock limit. A single thread cannot use more CPU time
    than wall time, so a busy loop always meets the wall-clock limit first and is reported as such; the CPU
    limit is the backstop for code that burns CPU in several threads at once. (Set to the wall-clock seconds,
    the two limits raced: which fired first depended on the machine's load.)"""
    return math.ceil(limits.wall_s) + 1


def _grade_of_exit(rc: int, code: str, seconds: float, limits: Limits) -> Grade:
    """A process that left no verdict: say why from its exit status."""
    if rc in (-signal.SIGXCPU, -signal.SIGKILL) and seconds >= limits.wall_s * 0.5:
        return Grade("timeout", code, f"CPU limit {_cpu_s(limits)} s")
    if rc == -signal.SIGXFSZ:
        return Grade("error", code, f"output file limit {limits.fsize_mb} MB")
    if rc < 0:
        return Grade("error", code, f"killed by {signal.Signals(-rc).name} before the tests finished "
                                    "(a memory limit is a common cause)")
    return Grade("error", code, f"exited with code {rc} before the tests finished")


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




def grade_mbpp(response: str, gold: dict, limits: Limits = Limits(), unsafe: bool = False) -> Grade:
    """MBPP: the response's code against `gold["tests"]` (assert strings), after `gold.get("setup")`.
    Bad gold is an `error` before any code is read; `unsafe` as in `run_tests`.

    >>> grade_mbpp("```python\\ndef sq(x):\\n    return x * x\\n```", {"tests": ["assert sq(3) == 9"]}).status
    'correct'
    >>> grade_mbpp("no code", {"tests": ["assert sq(3) == 9"]}).status
    'no_answer'
    >>> grade_mbpp("def f(): pass", {"tests": [""]}).detail
    "bad gold: test 1 '' is not a single assert statement"
    """
    tests = gold.get("tests") if isinstance(gold, dict) else None
    try:
        _plan(tests)
    except BadGold as e:
        return Grade("error", None, str(e))
    code = extract_code(response)
    if code is None:
        return Grade("no_answer", None)
    return run_tests(code, tests, gold.get("setup") or "", limits, unsafe)
