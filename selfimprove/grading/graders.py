"""The grader registry, one-item grading, and the gold answer of a JSONL line.

`GRADERS[task](response, gold) -> Grade`; `grade_one` adds the guarantee that no grader exception escapes
(it becomes an `error` with its type). Time limits are the batch runner's job (pool.py): `grade_one` itself
can run as long as its grader does, so call it directly only on trusted, small inputs.
"""

from __future__ import annotations

from .grade_math import grade_math
from .grade_text import grade_arith, grade_csqa, grade_gsm8k
from .sandbox import Limits, grade_mbpp
from .types import Grade

GRADERS = {"arith": grade_arith, "gsm8k": grade_gsm8k, "math": grade_math, "csqa": grade_csqa, "mbpp": grade_mbpp}


class GoldError(ValueError):
    """An input line's gold fields are missing or of the wrong type; the message says which."""


def grade_one(task: str, response: str, gold, sandbox_s: float = Limits.wall_s) -> Grade:
    """Grade one response; any grader exception becomes an `error` naming it.

    >>> grade_one("gsm8k", "#### 1,000", "1000")
    Grade(status='correct', extracted='1000', detail=None)
    >>> grade_one("csqa", "The answer is (A)", None).status
    'error'
    """
    if task not in GRADERS:
        raise KeyError(f"unknown task {task!r}; graders: {', '.join(GRADERS)}")
    try:
        if task == "mbpp":
            return grade_mbpp(response, gold, Limits(wall_s=sandbox_s))
        return GRADERS[task](response, gold)
    except (MemoryError, RecursionError) as e:
        return Grade("error", None, f"{type(e).__name__} in the {task} grader")
    except Exception as e:  # a grader bug must not lose the batch; the row says what happened
        return Grade("error", None, f"{task} grader failed: {type(e).__name__}: {str(e)[:160]}")


def gold_of(task: str, line: dict):
    """The gold argument of `task`'s grader from one input line (`selfimprove grade`).

    Every task reads `gold`; MBPP reads `tests` (a list of assert strings) and optional `setup` instead, and
    CommonsenseQA also reads optional `choices` ({"label": [...], "text": [...]}, the dataset's field).

    >>> gold_of("mbpp", {"response": "", "tests": ["assert f() == 1"]})
    {'tests': ['assert f() == 1'], 'setup': ''}
    >>> gold_of("gsm8k", {"response": "", "gold": 12})
    '12'
    """
    if task == "mbpp":
        tests, setup = line.get("tests"), line.get("setup") or ""
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
            raise GoldError("field 'tests' must be a non-empty list of assert strings")
        if not isinstance(setup, str):
            raise GoldError("field 'setup' must be a string")
        return {"tests": tests, "setup": setup}
    gold = line.get("gold")
    if isinstance(gold, (int, float)) and not isinstance(gold, bool):
        gold = str(gold)
    if not isinstance(gold, str) or not gold.strip():
        raise GoldError(f"field 'gold' must be a non-empty string, got {gold!r}")
    if task == "csqa" and line.get("choices") is not None:
        choices = line["choices"]
        if not (isinstance(choices, dict) and isinstance(choices.get("label"), list)
                and isinstance(choices.get("text"), list) and len(choices["label"]) == len(choices["text"])):
            raise GoldError("field 'choices' must be {'label': [...], 'text': [...]} of equal lengths")
        return {"answer": gold, "choices": choices}
    return gold
