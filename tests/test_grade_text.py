"""GSM8K and CommonsenseQA graders, table-driven, and the gold fields of a `selfimprove grade` line."""

import pytest

from selfimprove.grading import GoldError, grade_one
from selfimprove.grading.grade_text import extract_csqa, extract_gsm8k, grade_csqa, grade_gsm8k
from selfimprove.tasks import gold_of


@pytest.mark.parametrize("response,extracted", [
    ("Janet has 16 - 3 - 4 = 9 eggs.\n#### 9", "9"),
    ("#### 1,234", "1234"),  # thousands separator
    ("It costs $1,250.50 in total.", "1250.5"),  # `$`, separator, decimals; last number
    ("The answer is 18.0", "18"),  # trailing .0
    ("He walks 5 km, then 7 km. Total: 12 km.", "12"),  # units; the last number
    ("#### -4", "-4"),
    ("The change is −4 dollars", "-4"),  # unicode minus
    ("#### 72\nI double-checked with 3 other numbers", "72"),  # `####` wins over the last number
    ("She has 1, 2, 3 apples", "3"),  # a list is not a thousands separator
    ("So the answer is **18**.", "18"),  # markdown bold
    ("Final answer - 18", "18"),  # a dash before a space is punctuation, not a minus
    ("The total is:\n- 42", "42"),  # a markdown bullet
    ("#### no number", None),
    ("No digits at all.", None),
])
def test_gsm8k_extraction(response, extracted):
    assert extract_gsm8k(response) == extracted


@pytest.mark.parametrize("response,gold,status", [
    ("#### 18", "18", "correct"),
    ("#### 18.00", "18", "correct"),
    ("The total is $1,000.", "1000", "correct"),
    ("#### 17", "18", "incorrect"),
    ("#### 18", "Natalia sold 48/2 = 24 clips.\n#### 18", "correct"),  # the dataset's answer text as gold
    ("#### 0.5", "0.50", "correct"),
    ("I cannot solve this.", "18", "no_answer"),
    ("#### 18", "eighteen", "error"),  # an unreadable gold is ungradable, not a wrong response
])
def test_gsm8k_grading(response, gold, status):
    assert grade_gsm8k(response, gold).status == status


CHOICES = {"label": ["A", "B", "C", "D", "E"], "text": ["bank", "library", "river bank", "school", "park"]}


@pytest.mark.parametrize("response,extracted", [
    ("The answer is (B).", "B"),
    ("Answer: C", "C"),
    ("**D**", "D"),
    ("(e)", "E"),
    ("E.", "E"),
    ("library", "B"),  # the exact option text
    ("The answer is river bank.", "C"),  # option text after the marker; longest-prefix safe: not "bank"
    ("Library.", "B"),
    ("A person would go to (A) or (C), so (C).", "C"),  # last parenthesised letter
    ("To find the answer: A bank holds money, but fish live in a river. So the answer is C.", "C"),  # the last
    ("Answer: B\n\nWait, actually the answer is C.", "C"),
    ("The answer is B. I am confident this answer is right.", "B"),  # the last marker followed by an option
    ("I am not sure.", None),
    ("The answer is a big question", None),  # "a" as a word is not option A
])
def test_csqa_extraction(response, extracted):
    assert extract_csqa(response, CHOICES) == extracted


def test_csqa_grading():
    gold = {"answer": "C", "choices": CHOICES}
    assert grade_csqa("The answer is (C)", gold).status == "correct"
    assert grade_csqa("river bank", gold).status == "correct"
    assert grade_csqa("bank", gold).status == "incorrect"
    assert grade_csqa("The answer is C", "C").status == "correct"
    assert grade_csqa("hmm", "C").status == "no_answer"
    assert grade_csqa("The answer is C", "F").status == "error"


def test_gold_of_reads_each_task_and_names_bad_fields():
    assert gold_of("math", {"gold": r"\frac12"}, answer="gold") == r"\frac12"
    assert gold_of("csqa", {"gold": "A", "choices": CHOICES}, answer="gold") == {"answer": "A", "choices": CHOICES}
    assert gold_of("mbpp", {"tests": ["assert f()"], "setup": "import math"}) == {"tests": ["assert f()"],
                                                                                   "setup": "import math"}
    with pytest.raises(GoldError, match="'gold'"):
        gold_of("gsm8k", {"response": "x"}, answer="gold")
    with pytest.raises(GoldError, match="'tests'"):
        gold_of("mbpp", {"tests": "assert f()"})
    with pytest.raises(GoldError, match="'choices'"):
        gold_of("csqa", {"gold": "A", "choices": {"label": ["A"]}}, answer="gold")


def test_gold_of_reads_a_problem_row_as_verify_does():
    """The one gold reader serves problem rows (`answer`) and `selfimprove grade` lines (`gold`) alike."""
    assert gold_of("gsm8k", {"id": "p", "answer": "12", "solutions": []}) == "12"
    assert gold_of("csqa", {"answer": "A", "choices": CHOICES}) == {"answer": "A", "choices": CHOICES}
    assert gold_of("csqa", {"answer": "A"}) == "A"
    assert gold_of("mbpp", {"answer": "def f(): ...", "tests": ["assert f()"]}) == {"tests": ["assert f()"],
                                                                                     "setup": ""}
    with pytest.raises(GoldError, match="'answer'"):
        gold_of("arith", {"answer": " "})


def test_grade_one_turns_grader_exceptions_into_errors():
    got = grade_one("gsm8k", "#### 1", 12345)  # a non-string gold: the grader raises, the item is an error
    assert got.status == "error" and "AttributeError" in got.detail
    with pytest.raises(KeyError, match="unknown task"):
        grade_one("nope", "", "")
