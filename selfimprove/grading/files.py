"""JSONL in, JSONL out: the `selfimprove grade` command.

Each input line is a JSON object with `response` and the gold fields of its task (`gold`; MBPP: `tests` and
optional `setup`; CommonsenseQA: optional `choices`, see tasks.gold_of). Each output line is the input
object plus `status`, `extracted` and `detail`. A malformed line is reported with its line number and left
out of the output; every valid line is still graded.

The output is written to a temporary file beside it, created before grading starts, and renamed over it at
the end. So the output path is checked first (issue 20): the input file itself (by any name or hard link), a
symbolic link, a device such as /dev/null, a pipe, and a folder that cannot be written are refused with
GradeFileError before any line is graded, and the input is never replaced.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from ..data import parse_json_line
from ..tasks import gold_of
from .graders import GoldError
from .pool import grade_batch


def read_items(path: Path, task: str) -> tuple[list[tuple[int, dict, object]], list[str]]:
    """(line number, object, gold) for every valid line, and one message per malformed line."""
    items, problems = [], []
    with open(path, "rb") as f:
        for no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.append(f"{path}:{no}: not UTF-8 text ({e.reason} at byte {e.start} of the line)")
                continue
            if not line.strip():
                continue
            try:
                obj = parse_json_line(line)
            except ValueError as e:
                problems.append(f"{path}:{no}: {e}")
                continue
            if not isinstance(obj, dict):
                problems.append(f"{path}:{no}: expected a JSON object, got {type(obj).__name__}")
                continue
            if not isinstance(obj.get("response"), str):
                problems.append(f"{path}:{no}: field 'response' must be a string, got {obj.get('response')!r:.60}")
                continue
            try:
                items.append((no, obj, gold_of(task, obj, answer="gold")))
            except GoldError as e:
                problems.append(f"{path}:{no}: {e}")
    return items, problems


class GradeFileError(ValueError):
    """An output path `selfimprove grade` refuses; the message names it and why."""


def check_output(src: Path, dst: Path) -> None:
    """Refuse an output path that renaming the graded file over it would harm (module docstring). Our choice:
    only a regular file or a new name is an output; /dev/null is refused too (the rename would replace the
    device with a file), so to keep only the counts write to a temporary file."""
    if dst.is_symlink():
        raise GradeFileError(f"output {dst} is a symbolic link (to {os.readlink(dst)}): give the path of a regular "
                             "file (the output is renamed over it, which would replace the link)")
    if not dst.exists():
        return
    if dst.is_dir():
        raise GradeFileError(f"output {dst} is a folder; give a file name, e.g. {dst / 'graded.jsonl'}")
    if os.path.samefile(src, dst):
        raise GradeFileError(f"output {dst} is the input file {src}: grading would replace it, and with it the "
                             "malformed lines it reports; give another output path")
    if not dst.is_file():
        raise GradeFileError(f"output {dst} is not a regular file (a device, pipe or socket; /dev/null too): the "
                             "output is renamed over it, which would replace it; give a file path")


def grade_jsonl(task: str, src: str | Path, dst: str | Path, timeout_s: float = 10.0, workers: int = 2,
                memory_mb: int = 2048, unsafe: bool = False) -> tuple[Counter, list[str]]:
    """Grade every valid line of `src` into `dst`; returns the status counts and the malformed-line messages.
    The output path is checked, and its temporary file created, before anything is graded."""
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"input file not found: {src}" + (" (it is a folder)" if src.is_dir() else ""))
    check_output(src, dst)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise GradeFileError(f"output {dst}: cannot write a file in {dst.parent} ({e.strerror})") from None
    try:
        with open(fd, "w", encoding="utf-8") as f:
            items, problems = read_items(src, task)
            grades = grade_batch(task, [(obj["response"], gold) for _, obj, gold in items], timeout_s=timeout_s,
                                 workers=workers, memory_mb=memory_mb, unsafe=unsafe)
            for (_, obj, _), g in zip(items, grades):
                f.write(json.dumps({**obj, "status": g.status, "extracted": g.extracted, "detail": g.detail},
                                   ensure_ascii=False) + "\n")
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
    return Counter(g.status for g in grades), problems
