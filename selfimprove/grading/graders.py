"""The graders by task name, and one-item grading.

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
    """An input line's gold fields are missing or of the wrong type; the message says which (tasks.gold_of)."""


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
