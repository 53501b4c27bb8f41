"""Problems: loading, validation and prompts.

A run keeps the problems it uses in <run_dir>/problems/<split>.jsonl, one JSON object per line with at
least `id`, `question` and `answer` (`level` and `solutions` where the task has them). Every row is checked
on load; a malformed one fails with its file and line number before any model is touched.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .artifacts import RunPaths

REQUIRED = {"id": str, "question": str, "answer": str}


class DataError(ValueError):
    """A problem file or row is malformed; the message names the file, line and field."""


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


def parse_json_line(line: str):
    """One JSONL line as Python, strictly (our choice, issue 20): ValueError with a one-line reason for text
    that is not JSON, for NaN / Infinity (Python's json reads them, JSON has none) and for a string holding a
    lone UTF-16 surrogate escape (`"\\ud800"`: json reads it into a str that no UTF-8 file or Parquet table can
    hold, so it would fail later, far from its line)."""
    try:
        obj = json.loads(line, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if "\\u" in line:  # only an escape can make a lone surrogate: the UTF-8 decoder refuses an encoded one
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a string holds a lone surrogate escape such as \\ud800, which is not Unicode "
                             "text") from None
    return obj


def json_objects(path: Path, error: type[Exception] = ValueError):
    """(line number, object) for each non-blank line of a JSONL file; a line that is not a JSON object (or not
    UTF-8 text, parse_json_line) raises `error` naming the file and the line. Lines end at '\\n' only: JSON
    strings may hold a raw U+2028 or U+0085, which str.splitlines would split at."""
    if path.is_dir():
        raise error(f"{path}: is a folder, not a JSONL file")
    for no, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(f"{path}:{no}: not UTF-8 text ({e.reason} at byte {e.start} of the line); expected JSONL, one "
                        "JSON object per line") from None
        if not line.strip():
            continue
        try:
            row = parse_json_line(line)
        except ValueError as e:
            raise error(f"{path}:{no}: {e}") from None
        if not isinstance(row, dict):
            raise error(f"{path}:{no}: expected a JSON object, got {type(row).__name__}")
        yield no, row


def load_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"problem file not found: {path}")
    rows, ids = [], set()
    for no, row in json_objects(path, DataError):
        for key, typ in REQUIRED.items():
            if not isinstance(row.get(key), typ):
                raise DataError(f"{path}:{no}: field '{key}' must be a {typ.__name__}, got {row.get(key)!r}")
        if row.get("level") is not None and not isinstance(row["level"], int):
            raise DataError(f"{path}:{no}: field 'level' must be an integer or null, got {row['level']!r}")
        sols = row.get("solutions", [])
        if not isinstance(sols, list) or not all(isinstance(s, str) for s in sols):
            raise DataError(f"{path}:{no}: field 'solutions' must be a list of strings")
        if row["id"] in ids:
            raise DataError(f"{path}:{no}: duplicate id {row['id']!r}")
        ids.add(row["id"])
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no problems")
    return rows


def load_split(run_dir: str | Path, split: str) -> list[dict]:
    return load_jsonl(RunPaths(run_dir).problems(split))


def training_subset(problems: list[dict], n: int, seed: int, iteration: int) -> list[dict]:
    """The `n` training problems used at `iteration` (all when n == 0 or n >= len), a seeded draw per
    iteration so successive iterations see different problems (docs/organism.md: 600 per iteration)."""
    if n == 0 or n >= len(problems):
        return problems
    rng = random.Random(seed * 1000 + iteration)
    return sorted(rng.sample(problems, n), key=lambda p: p["id"])


# A tokenizer without a chat template (the paper's base checkpoints, Llama-2-7b-hf among them): DIVE's
# zero-shot layout without its "Let's think step by step." line, since each task's question
# already says what to write (our choice).
PLAIN_PROMPT = "Question:\n{question}\nAnswer:\n"


def render_prompt(tokenizer, problem: dict) -> str:
    """Zero-shot prompt (paper, appendix Figure 6): the question as the only user turn of the tokenizer's chat template;
    without one, the BOS token (if any; prompts are tokenized without special tokens) and PLAIN_PROMPT."""
    if not tokenizer.chat_template:
        return (tokenizer.bos_token or "") + PLAIN_PROMPT.format(question=problem["question"])
    return tokenizer.apply_chat_template([{"role": "user", "content": problem["question"]}], tokenize=False,
                                         add_generation_prompt=True)
