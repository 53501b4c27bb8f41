"""The graders by task name, and one-item grading.

`GRADERS[task](response, gold) -> Grade`; `grade_one` adds the guarantee that no grader exception escapes
(it becomes an `error` with its type). Time limits are the batch runner's job (pool.py): `grade_one` itself
can run as long as its grader does, so call it directly only on trusted, small inputs.

`ANSWER_OF[task](response, gold)` is the part of a response its grader reads: the grader calls this same
extraction and uses nothing else of the response, so its whole Grade (status, extracted, detail) is a function
of (this answer, gold). The batch runner grades each distinct (answer, gold) once (pool.share_plan). MBPP has
none: its verdict is a run of the program (our choice, below).
"""

from __future__ import annotations

from .. import arith
from .grade_math import extract_math, grade_math
from .grade_text import extract_csqa, extract_gsm8k, grade_arith, grade_csqa, grade_gsm8k
from .sandbox import Limits, grade_mbpp
from .types import Grade

GRADERS = {"arith": grade_arith, "gsm8k": grade_gsm8k, "math": grade_math, "csqa": grade_csqa, "mbpp": grade_mbpp}

# Each entry is the extraction its grader calls, with the same arguments (grade_arith, grade_gsm8k, grade_math,
# grade_csqa); a change to a grader's extraction must change it here too (tests/test_grade_pool.py checks
# responses that share an answer get one Grade). No MBPP entry (our choice): a program's run may differ between
# runs of the same code (random, time, hash order), so each response is run on its own, as one-by-one grading does.
ANSWER_OF = {
    "arith": lambda response, gold: arith.extract_answer(response),
    "gsm8k": lambda response, gold: extract_gsm8k(response),
    "math": lambda response, gold: extract_math(response),
    "csqa": lambda response, gold: extract_csqa(response, gold.get("choices") if isinstance(gold, dict) else None),
}


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
