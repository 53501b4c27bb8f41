"""JSONL in, JSONL out: the `selfimprove grade` command.

Each input line is a JSON object with `response` and the gold fields of its task (`gold`; MBPP: `tests` and
optional `setup`; CommonsenseQA: optional `choices`, see tasks.gold_of). Each output line is the input
object plus `status`, `extracted` and `detail`. A malformed line is reported with its line number and left
out of the output; every valid line is still graded.
"""

from __future__ import annotations

import json
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


def grade_jsonl(task: str, src: str | Path, dst: str | Path, timeout_s: float = 10.0, workers: int = 2,
                memory_mb: int = 2048, unsafe: bool = False) -> tuple[Counter, list[str]]:
    """Grade every valid line of `src` into `dst`; returns the status counts and the malformed-line messages."""
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"input file not found: {src}" + (" (it is a folder)" if src.is_dir() else ""))
    if dst.is_dir():
        raise FileExistsError(f"output {dst} is a folder; give a file name, e.g. {dst / 'graded.jsonl'}")
    items, problems = read_items(src, task)
    grades = grade_batch(task, [(obj["response"], gold) for _, obj, gold in items], timeout_s=timeout_s,
                         workers=workers, memory_mb=memory_mb, unsafe=unsafe)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for (_, obj, _), g in zip(items, grades):
            f.write(json.dumps({**obj, "status": g.status, "extracted": g.extracted, "detail": g.detail},
                               ensure_ascii=False) + "\n")
    tmp.replace(dst)
    return Counter(g.status for g in grades), problems
