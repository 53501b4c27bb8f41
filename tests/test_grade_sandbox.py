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
    assert run_tests("import os\nassert 'SECRET_TOKEN' not in os.environ", ["assert True"],
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
    assert got.status == "incorrect" and "unreachable" in got.detail.lower(), got


@pytest.mark.skipif(os.geteuid() == 0 and sandbox._drop_target() is None,
                    reason="as root without a user to drop to, RLIMIT_NPROC does not bind: the guard stops forks")
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
