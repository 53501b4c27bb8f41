"""The MBPP sandbox contains what generated code may do: each case below runs real code in a real child
process and checks both its status and that the user's files are untouched."""

import os
import socket
from pathlib import Path

import pytest

from selfimprove.grading import sandbox
from selfimprove.grading.sandbox import Limits, grade_mbpp, run_tests

FAST = Limits(wall_s=3.0)
TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]


@pytest.fixture
def user_dir(tmp_path):
    """A directory of the user's, outside the sandbox, with a canary file in it."""
    d = tmp_path / "user"
    d.mkdir()
    (d / "canary.txt").write_text("precious")
    return d


def _untouched(d: Path) -> bool:
    return (d / "canary.txt").exists() and (d / "canary.txt").read_text() == "precious" and \
        sorted(p.name for p in d.iterdir()) == ["canary.txt"]


def _sandboxes() -> list[str]:
    """Sandbox directories still on disk and sandbox processes still running (both must be none)."""
    import tempfile

    left = [p.name for p in Path(tempfile.gettempdir()).glob("selfimprove-sandbox-*")]
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"SandboxViolation" in cmd.read_bytes():
                left.append(cmd.parent.name)
        except OSError:
            continue
    return left


@pytest.mark.parametrize("code,status,detail", [
    ("def add(a, b):\n    return a + b", "correct", None),
    ("def add(a, b):\n    return a - b", "incorrect", "failed: assert add(1, 2) == 3"),
    ("def add(a, b):\n    return a +", "incorrect", "does not compile"),
    ("def add(a, b):\n    raise ValueError('no')", "incorrect", "ValueError"),
    ("def add(a, b):\n    while True:\n        pass", "timeout", "limit"),  # infinite loop
    ("import os\nos.system('echo hi')\ndef add(a, b):\n    return a + b", "error", "os.system"),
    ("import os\nwhile True:\n    os.fork()", "error", "os.fork"),  # fork bomb
    ("import subprocess\nsubprocess.run(['ls'])", "error", "subprocess"),
    ("import socket\nsocket.create_connection(('127.0.0.1', 80))", "error", "socket"),
    ("x = bytearray(10**10)", "error", "memory"),  # a 10 GB allocation
    ("x = [0] * (10**9)", "error", "memory"),
    ("import os\nos._exit(3)", "error", "exited with code 3"),
    ("print('x' * 10**6)\ndef add(a, b):\n    return a + b", "correct", None),  # output is discarded
    ("open('scratch.txt', 'w').write('ok')\ndef add(a, b):\n    return a + b", "correct", None),  # own dir is fine
    # a demo main block is not run (human-eval's execution.py): no EOFError from input(), no SystemExit
    ("def add(a, b):\n    return a + b\nif __name__ == '__main__':\n    print(add(*map(int, input().split())))",
     "correct", None),
    ("import sys\ndef add(a, b):\n    return a + b\nif __name__ == '__main__':\n    sys.exit(0)", "correct", None),
    # a printed traceback reads the standard library's sources: not a violation
    ("import json, traceback\ndef add(a, b):\n    try:\n        json.loads('x')\n    except ValueError:\n"
     "        traceback.print_exc()\n    return a + b", "correct", None),
    # the code may empty its own directory; the result file is not in it
    ("import os\nfor f in os.listdir('.'):\n    os.remove(f)\ndef add(a, b):\n    return a + b", "correct", None),
])
def test_sandbox_statuses(code, status, detail):
    got = run_tests(code, TESTS, limits=FAST)
    assert got.status == status, got
    assert detail is None or detail in got.detail


@pytest.mark.parametrize("attack", [
    "import os\nos.remove({canary!r})",
    "import os\nos.unlink({canary!r})",
    "import shutil\nshutil.rmtree({user!r})",
    "from pathlib import Path\nPath({canary!r}).unlink()",
    "open({canary!r}, 'w').write('gone')",
    "import os\nos.rename({canary!r}, {canary!r} + '.moved')",
    "print(open({canary!r}).read())",  # reading the user's files is refused too
    "import os\ntry:\n    os.remove({canary!r})\nexcept Exception:\n    pass\ndef add(a, b):\n    return a + b",
])
def test_user_files_are_untouched_and_the_attempt_is_an_error(attack, user_dir):
    code = attack.format(canary=str(user_dir / "canary.txt"), user=str(user_dir))
    got = run_tests(code, TESTS, limits=FAST)
    assert got.status == "error" and "sandbox violation" in got.detail, got  # even when the code catches it
    assert _untouched(user_dir)


def test_code_cannot_write_a_passing_result_file():
    forge = ("import json, os\ndef add(a, b):\n    return 0\n"
             "for name in os.listdir('.'):\n"
             "    open(name, 'w').write(json.dumps({'status': 'correct', 'detail': None, 'violations': [],"
             " 'isolation': []}))\n"
             "os._exit(0)")
    assert run_tests(forge, TESTS, limits=FAST).status != "correct"


def test_setup_code_runs_first_and_nothing_is_left_behind():
    got = run_tests("def area(r):\n    return math.pi * r * r", ["assert abs(area(1) - 3.14159) < 1e-4"],
                    setup="import math", limits=FAST)
    assert got.status == "correct"
    assert _sandboxes() == []


def test_environment_is_stripped(monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "abc")
    assert run_tests("import os\ndef env():\n    return sorted(os.environ)", ["assert 'SECRET_TOKEN' not in env()"],
                     limits=FAST).status == "correct"


def test_kernel_limits_hold_without_the_guard():
    """The rlimits and the process-group kill are the boundary; the Python guard is only a first line."""
    loose = Limits(wall_s=3.0, guard=False)
    assert run_tests("while True:\n    pass", TESTS, limits=loose).status == "timeout"
    assert run_tests("x = bytearray(10**10)", TESTS, limits=loose).status == "error"
    assert _sandboxes() == []


def test_network_namespace_blocks_loopback_without_the_guard():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\nREACHED = True"
        got = run_tests(code, ["assert REACHED"], limits=Limits(wall_s=3.0, guard=False))
    finally:
        server.close()
    if got.status == "correct":
        pytest.skip("this kernel does not allow a new network namespace here; the guard alone blocks sockets")
    # its own namespace: the host's loopback is unreachable (process level) or has no listener (bwrap's loopback)
    assert got.status == "incorrect" and ("unreachable" in got.detail.lower() or "refused" in got.detail.lower()), got


def test_fork_bomb_is_contained_without_the_guard():
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    got = run_tests(code, TESTS, limits=Limits(wall_s=2.0, guard=False))
    assert got.status in ("timeout", "error")
    assert _sandboxes() == []


@pytest.mark.parametrize("response,status", [
    ("```python\ndef add(a, b):\n    return a + b\n```", "correct"),
    ("Here is my solution:\n```python\ndef add(a, b):\n    return b + a\n```\n"
     "Example:\n```python\nprint(add(1, 2))\n```", "correct"),  # the last block that defines something
    ("[BEGIN]\ndef add(a, b):\n    return a + b\n[DONE]", "correct"),
    ("def add(a, b):\n    return a + b", "correct"),
    ("I would add the two numbers.", "no_answer"),
])
def test_grade_mbpp_extracts_code(response, status):
    assert grade_mbpp(response, {"tests": TESTS}, FAST).status == status


def test_grade_mbpp_names_bad_gold():
    got = grade_mbpp("def f(): pass", {"tests": []}, FAST)
    assert got.status == "error" and "tests" in got.detail


# --- Probes of the reliability issue (each passed, or leaked, on the process-level sandbox alone) ----------------

# `posix` as a fresh builtin module: none of the Python guard's replacements are on it
POSIX = "import _imp, importlib.machinery as m\nposix = _imp.create_builtin(m.ModuleSpec('posix', None))\n"
CHECKOUT = str(Path(__file__).resolve().parents[1])


def test_empty_or_non_assert_tests_are_refused_as_bad_gold():
    for tests in ([""], ["   "], ["x = 1"], ["print('hi')"], ["assert f(1) == 1", ""], ["assert True"],
                  ["assert 1 == 1"], ["assert f(1) == 1\nimport os"], ["assert ("]):
        got = grade_mbpp("def f(x):\n    return 0", {"tests": tests}, FAST)
        assert got.status == "error" and "gold" in got.detail, (tests, got)


def test_an_object_whose_eq_is_always_true_fails():
    rigged = ("class Any:\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n"
              "        return False\n    __hash__ = None\n")
    for ret in ("Any()", "type('L', (list,), {'__eq__': lambda s, o: True})()",
                "type('I', (int,), {'__eq__': lambda s, o: True})(0)",
                "type('S', (str,), {'__eq__': lambda s, o: True})('')"):
        got = run_tests(rigged + f"def f(x):\n    return {ret}", ["assert f(2) == 4", "assert not f(3) != 9"],
                        limits=FAST)
        assert got.status in ("incorrect", "error"), (ret, got)
    # a true value of a subclass still compares by its value
    assert run_tests("class I(int):\n    pass\ndef f(x):\n    return I(2 * x)", ["assert f(2) == 4"],
                     limits=FAST).status == "correct"


@pytest.mark.parametrize("trick", [
    # call the harness's own report function, found through the garbage collector
    "import gc\nfor o in gc.get_objects():\n"
    "    if callable(o) and getattr(o, '__name__', '') in ('report', 'verdict'):\n"
    "        try:\n            o('correct', None)\n        except Exception:\n            pass",
    # empty the harness's list of tests (or of expressions) so that nothing is checked
    "import gc\nfor o in gc.get_objects():\n    if isinstance(o, dict):\n"
    "        for k in ('tests', 'exprs', 'units'):\n"
    "            if isinstance(o.get(k), list):\n                o[k].clear()",
    # write a passing verdict on every open file descriptor, then leave before the tests run
    "import os, json\n"
    "v = json.dumps({'status': 'correct', 'detail': None, 'violations': [], 'isolation': []})\n"
    "for fd in range(3, 64):\n    try:\n        os.write(fd, v.encode())\n    except OSError:\n        pass\n"
    "os._exit(0)",
    # the same through posix, and close every descriptor
    POSIX + "for fd in range(3, 64):\n    try:\n"
    "        posix.write(fd, b'{\"status\": \"correct\"}\\n')\n"
    "        posix.close(fd)\n    except OSError:\n        pass",
    # print a fake verdict and exit 0 early
    "print('{\"status\": \"correct\", \"detail\": null}')\nimport sys\nsys.stdout.flush()\nimport os\nos._exit(0)",
    "raise SystemExit(0)",
    # make every assert pass: AssertionError patched, builtins patched, sys.exit patched
    "import builtins\nbuiltins.AssertionError = type('X', (BaseException,), {})\nbuiltins.isinstance = lambda *a: True",
    "import sys, builtins\nsys.excepthook = lambda *a: None\nbuiltins.sorted = lambda *a, **k: [3]\n"
    "builtins.set = lambda *a: {3}",
])
def test_code_that_reaches_for_the_harness_cannot_pass(trick):
    code = trick + "\ndef add(a, b):\n    return 0\n"
    tests = ["assert add(1, 2) == 3", "assert sorted([add(1, 2)]) == [3]", "assert set([add(1, 2)]) == {3}"]
    got = run_tests(code, tests, limits=FAST)
    assert got.status != "correct", got


def test_files_outside_are_neither_readable_nor_visible():
    code = (POSIX + "import _io, os\n"
            "def leak():\n    return _io.FileIO('/etc/passwd').read()[:80]\n"
            f"def seen():\n    return [p for p in ('/etc/passwd', '/etc/shadow', '/root', '/home', '/work',\n"
            f"        {CHECKOUT!r}, {os.getcwd()!r}, {sandbox.__file__!r}) if os.path.exists(p)]\n")
    got = run_tests(code, ["assert seen() == []"], limits=FAST)
    assert got.status == "correct", got
    got = run_tests(code, ["assert leak() == b''"], limits=FAST)
    assert got.status != "correct" and "root:" not in (got.detail or ""), got


def test_no_file_written_outside_the_private_folder_survives(user_dir):
    canary, new = str(user_dir / "canary.txt"), str(user_dir / "new.txt")
    code = (POSIX + "import _io\n"
            f"for act in (lambda: _io.FileIO({new!r}, 'w').write(b'x'), lambda: _io.FileIO({canary!r}, 'w'),\n"
            f"            lambda: posix.unlink({canary!r})):\n"
            "    try:\n        act()\n    except OSError:\n        pass\n"
            "_io.FileIO('/tmp/mine', 'w').write(b'ok')\n"
            "def add(a, b):\n    return a + b\n")
    got = run_tests(code, TESTS, limits=FAST)
    assert got.status == "correct", got
    assert _untouched(user_dir)
    # the rest of what the code sees is read-only (checked inside, so that the old sandbox wrote nothing there)
    ro = (POSIX + "import os\ndef writable():\n    return [p for p in ('/usr', '/usr/lib', '/opt/python') if "
          "os.path.isdir(p) and not os.statvfs(p).f_flag & os.ST_RDONLY]\n")
    assert run_tests(ro, ["assert writable() == []"], limits=FAST).status == "correct"


def _token_processes(token: str) -> list[str]:
    out = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if token.encode() in cmd.read_bytes():
                out.append(cmd.parent.name)
        except OSError:
            continue
    return out


def test_a_child_in_its_own_process_group_dies_with_the_item(user_dir):
    import secrets
    import time

    token = "late-" + secrets.token_hex(6)
    marker = user_dir / "marker.txt"
    script = f"sleep 2; echo {token} > {marker}; echo {token} > /tmp/marker"
    code = (POSIX + "def add(a, b):\n    return a + b\n"
            "if posix.fork() == 0:\n    posix.setpgid(0, 0)\n    posix.setsid() if False else None\n"
            f"    posix.execv('/bin/sh', ['sh', '-c', {script!r}])\n")
    got = run_tests(code, TESTS, limits=FAST)
    assert got.status in ("correct", "error"), got
    assert _token_processes(token) == []  # dead when the item returns
    time.sleep(2.5)
    assert not marker.exists()
    assert _untouched(user_dir)


def test_forks_are_bounded_for_every_user():
    """RLIMIT_NPROC binds even when the grader runs as root (the code runs in its own user namespace)."""
    code = (POSIX + "import time\n"
            "def forks():\n    n = 0\n    while n < 200:\n        try:\n            pid = posix.fork()\n"
            "        except OSError:\n            return n\n        if pid == 0:\n            time.sleep(30)\n"
            "            posix._exit(0)\n        n += 1\n    return n\n")
    got = run_tests(code, ["assert forks() <= 40"], limits=Limits(wall_s=4.0))
    assert got.status == "correct", got
    assert _sandboxes() == []


def test_unsafe_runs_without_bwrap_and_says_so(monkeypatch):
    got = run_tests("def add(a, b):\n    return a + b", TESTS, limits=FAST, unsafe=True)
    assert got.status == "correct" and got.detail.startswith("unsafe sandbox"), got
    rigged = "class A:\n    def __eq__(s, o):\n        return True\ndef add(a, b):\n    return A()"
    assert run_tests(rigged, TESTS, limits=FAST, unsafe=True).status != "correct"
    monkeypatch.setattr(sandbox, "isolation_problem", lambda: "bubblewrap (bwrap) is not installed")
    got = run_tests("def add(a, b):\n    return a + b", TESTS, limits=FAST)
    assert got.status == "error" and "not installed" in got.detail and "--unsafe" in got.detail, got
