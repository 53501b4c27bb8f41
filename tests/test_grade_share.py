"""Sharing verdicts within a batch (pool.share_plan): each distinct (answer, gold) is graded once, every item
gets the Grade one-by-one grading gives it (timeouts and errors included), in order; MBPP shares nothing."""

from itertools import groupby

import pytest

from selfimprove.grading import ANSWER_OF, grade_batch, grade_one, pool
from selfimprove.grading.pool import MAX_READ_CHARS, share_plan

HANG = r"\boxed{" + "\\frac{1}{" * 30 + "2" + "}" * 30 + "}"  # sympy does not finish comparing this with 2

# Responses worded differently around the same few answers, per task and gold (graded in this process)
SAME_ANSWERS = {
    "gsm8k": ("1000", ["#### 1000", "so #### 1,000", "#### 1000.00", "It costs $1,000.", "The answer is 1000.0",
                       "#### 999", "999 in all", "#### $999", "no number", "none here either"]),
    "arith": ("12", ["3 * 4 = 12\n#### 12", "#### 12", "4 * 3 = 12 #### 12", "#### 13", "2 + 11 = 13 #### 13",
                     "nothing", "#### 12.5"]),
    "math": (r"\frac12", [r"so $\boxed{\frac{1}{2}}$", r"we get \boxed{\frac{1}{2}}.",
                          "Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.",
                          r"\boxed{\dfrac{1}{2}}", r"thus \boxed{\dfrac{1}{2}}", r"\boxed{0.5}", r"hence \boxed{0.5}",
                          r"\boxed{3}", "I do not know", "no idea", r"\boxed{10^{10^{10^{10}}}}",
                          r"so \boxed{10^{10^{10^{10}}}}", r"\boxed{" + "{" * 60 + "1" + "}" * 60 + "}"]),
    "csqa": ({"answer": "B", "choices": {"label": ["A", "B"], "text": ["river", "bank"]}},
             ["The answer is (B).", "**B**", "bank", "The answer is bank", "The answer is A", "river", "(A)",
              "I cannot tell", "no idea"]),
}


@pytest.mark.parametrize("task", sorted(SAME_ANSWERS))
def test_responses_with_one_answer_get_one_grade(task):
    """The rule sharing rests on: a grader reads a response only through ANSWER_OF (graders.py)."""
    gold, responses = SAME_ANSWERS[task]
    keyed = sorted(((repr(ANSWER_OF[task](r, gold)), r) for r in responses), key=lambda x: x[0])
    groups = [[r for _, r in g] for _, g in groupby(keyed, key=lambda x: x[0])]
    assert len(groups) < len(responses)  # the table has answers written more than once
    for group in groups:
        assert len({grade_one(task, r, gold) for r in group}) == 1, group


def test_plan_keys_on_answer_and_gold():
    gold = "1000"
    items = [("#### 1,000", gold), ("it is 1000.00", gold), ("#### 999", gold), ("#### 1000", "999"),
             ("#### 1000", "1000"), ("no number", gold), ("none", gold)]
    assert share_plan("gsm8k", items) == ([0, 2, 3, 5], [0, 0, 1, 2, 0, 3, 3])


def test_plan_keys_on_the_whole_gold():
    """CommonsenseQA golds are dicts: equal ones share (one object or two), different choices do not."""
    g1 = {"answer": "A", "choices": {"label": ["A", "B"], "text": ["river", "bank"]}}
    g2 = {"answer": "A", "choices": {"label": ["A", "B"], "text": ["river", "bank"]}}
    g3 = {"answer": "A", "choices": {"label": ["A", "B"], "text": ["lake", "bank"]}}
    items = [("The answer is A", g1), ("(A)", g1), ("The answer is A", g2), ("The answer is A", g3)]
    assert share_plan("csqa", items) == ([0, 3], [0, 0, 0, 1])


def test_plan_reads_no_long_response_and_survives_a_failing_extraction(monkeypatch):
    long1 = "x" * MAX_READ_CHARS + " #### 5"
    items = [(long1, "5"), (long1, "5"), ("y" + long1, "5"), ("#### 5", "5")]
    assert share_plan("gsm8k", items) == ([0, 2, 3], [0, 0, 1, 2])  # the same long text still shares

    def boom(response, gold):
        raise ValueError("bad")

    monkeypatch.setitem(pool.ANSWER_OF, "gsm8k", boom)
    assert share_plan("gsm8k", [("#### 5", "5"), ("#### 5", "5"), ("#### 5.0", "5")]) == ([0, 2], [0, 0, 1])


def test_mbpp_is_not_shared(monkeypatch):
    """A program's run may differ between runs of the same code: each MBPP response is run by itself."""
    sent = _count_sends(monkeypatch)
    gold = {"tests": ["assert f(1) == 1"]}
    assert share_plan("mbpp", [("no code", gold)] * 3) == ([0, 1, 2], [0, 1, 2])
    assert [g.status for g in grade_batch("mbpp", [("no code", gold)] * 3, workers=1)] == ["no_answer"] * 3
    assert len(sent) == 3


def _count_sends(monkeypatch) -> list:
    sent, real = [], pool._Worker.send

    def send(self, i, response, gold, timeout_s):
        sent.append(response)
        return real(self, i, response, gold, timeout_s)

    monkeypatch.setattr(pool._Worker, "send", send)
    return sent


def test_duplicates_are_graded_once_in_order(monkeypatch):
    sent = _count_sends(monkeypatch)
    items = [(f"step {k}: {k} + 1 = {k + 1}\n#### {a}", "7") for k, a in enumerate([7, 8, "7.0", 8, "7", "x"])]
    done = []
    got = grade_batch("gsm8k", items, workers=2, progress=done.append)
    assert got == [grade_one("gsm8k", r, g) for r, g in items]
    assert [g.status for g in got] == ["correct", "incorrect", "correct", "incorrect", "correct", "no_answer"]
    assert len(sent) == 3 and sum(done) == len(items)


def test_shared_verdicts_equal_one_by_one_with_timeouts_and_errors(monkeypatch):
    """A hanging answer in three wordings is killed once and all three are `timeout`, as each is alone."""
    items = [(HANG, "2"), (r"so \boxed{2}", "2"), ("then " + HANG, "2"), (r"\boxed{10^{10^{10^{10}}}}", "5"),
             ("nothing", "2"), (r"\boxed{3}", "2"), ("and so " + HANG, "2"), (r"\boxed{1}", ""),
             (r"we find \boxed{10^{10^{10^{10}}}}", "5"), (r"\boxed{1}", "")]
    # 10 s per item: with 2 s, an item that finishes in well under a second on an idle machine timed out in
    # one of the two batches on a loaded one, and the verdicts differed. One kill, not three, is shown by the
    # number of times the hanging answer is sent, not by a clock.
    one_by_one = grade_batch("math", items, timeout_s=10.0, workers=2, share=False)
    sent = _count_sends(monkeypatch)
    shared = grade_batch("math", items, timeout_s=10.0, workers=2)
    assert shared == one_by_one
    assert [g.status for g in shared] == ["timeout", "correct", "timeout", "error", "no_answer", "incorrect",
                                          "timeout", "error", "error", "error"]
    assert len(sent) == 6  # the hang, 2, the tower, no answer, 3, the empty gold
    assert sent.count(HANG) == 1
