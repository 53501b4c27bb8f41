"""The verdict every grader returns, and the five statuses (the sample table's `status`; README, "Verification")."""

from __future__ import annotations

from typing import NamedTuple

# correct / incorrect: the answer was read and compared. no_answer: no final answer could be read from the
# response. timeout: grading the item passed its wall-clock limit and its worker was killed. error: the item
# could not be graded (an unreadable gold answer, an answer beyond the documented size limits, a sandbox
# violation or memory limit, a grader failure); `detail` says which.
STATUSES = ("correct", "incorrect", "no_answer", "timeout", "error")


class Grade(NamedTuple):
    status: str  # one of STATUSES
    extracted: str | None  # the final answer read from the response (MBPP: the code), None if none
    detail: str | None = None  # why, for error and timeout (and a few documented incorrect cases)
