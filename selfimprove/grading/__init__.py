"""Grading: one grader per task, a batch runner with a hard per-item limit, the MBPP sandbox, the audit.

    from selfimprove.grading import grade_batch
    grade_batch("math", [(response, gold), ...], timeout_s=10, workers=2)  # -> [Grade(status, extracted, detail)]

Graders (GRADERS): arith, gsm8k, csqa (grade_text.py), math (grade_math.py), mbpp (sandbox.py); each module
documents its extraction rule and its sources. `selfimprove grade` and `selfimprove audit` (cli.py) and the
verify stage (verify.py) all call `grade_batch`. The gold argument a grader takes is read from a row by
`tasks.gold_of`, the task registry's (tasks.TASKS_BY_NAME). A batch grades each distinct (answer, gold) once and
shares the verdict (pool.share_plan; ANSWER_OF is what each grader reads of a response).
"""

from .graders import ANSWER_OF, GRADERS, GoldError, grade_one
from .pool import grade_batch
from .types import STATUSES, Grade

__all__ = ["ANSWER_OF", "GRADERS", "STATUSES", "Grade", "GoldError", "grade_batch", "grade_one"]
