"""Graders whose answer is a number or an option letter: arith, GSM8K, CommonsenseQA.

Each grader is `grade(response, gold) -> Grade` and never raises on a malformed response; a gold answer it
cannot read is an `error` (the problem is ungradable, not the response wrong).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from .. import arith
from .types import Grade

# A number as written in a word-problem answer: optional sign and `$`, thousands separators only in groups of
# three (so "1, 2, 3" stays three numbers), optional decimals. The unicode minus is read as a minus.
# The sign must touch the number or its `$` (lm-evaluation-harness's `-?[$0-9.,]`): in "Answer - 18" or a "- 18"
# bullet the dash is punctuation. An exponent right after the digits (`1e3`) is matched too, so that such a
# number is seen whole and refused (_to_decimal), never read as its mantissa (issue 20: `#### 1e3` read as 1).
NUMBER_RE = re.compile(r"(?<![\w.])([-−]?)(?:\$\s?)?(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
                       r"([eE][-+]?\d+)?")


def grade_arith(response: str, gold: str) -> Grade:
    """Arith: the number after the last `####` (GSM8K's marker), compared as an integer; a
    number that is not one ("#### 12.5") is incorrect.

    >>> grade_arith("3 * 4 = 12\\n#### 12", "12")
    Grade(status='correct', extracted='12', detail=None)
    >>> grade_arith("3 * 4 = 12", "12").status
    'no_answer'
    """
    got = arith.extract_answer(response)
    if got is None:
        return Grade("no_answer", None)
    return Grade("correct" if got.lstrip("-").isdigit() and int(got) == int(gold) else "incorrect", got)


def parse_number(text: str) -> Decimal | None:
    """The first number in `text` as an exact Decimal: `$`, thousands separators and trailing zeros do not
    matter; None when there is none, or when the first one has an exponent (`1e3`: our choice, GSM8K's answers
    are plain decimals, openai/grade-school-math; reading 1e3 as 1000 would let a huge exponent cost a huge
    string).

    >>> parse_number("$1,234.50 in total")
    Decimal('1234.50')
    >>> parse_number("-18.0 cm") == parse_number("−18")
    True
    >>> parse_number("no digits") is None, parse_number("1e3 apples") is None
    (True, True)
    """
    m = NUMBER_RE.search(text)
    return _to_decimal(m) if m else None


def _to_decimal(m: re.Match) -> Decimal | None:
    if m.group(3):  # an exponent: not a plain number (parse_number)
        return None
    try:  # Decimal(str) is exact at any length: the context's 28-digit precision applies to arithmetic only
        value = Decimal(m.group(2).replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the regex only matches digits
        return None
    return -value if m.group(1) else value


def _show(d: Decimal) -> str:
    """A Decimal as plain text without trailing zeros, exactly at any length: 18.0 -> '18', 0.50 -> '0.5'.
    (Decimal.normalize would round to the context's 28 digits: issue 20, a 31-digit answer graded equal to a
    different gold.)

    >>> _show(Decimal("18.0")), _show(Decimal("-0.0")), _show(Decimal("1" + "0" * 39 + "1"))
    ('18', '0', '10000000000000000000000000000000000000001')
    """
    text = format(d, "f")  # no precision given: every digit, no rounding
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "0") else text


def extract_gsm8k(response: str) -> str | None:
    """GSM8K extraction: the first number after the last `#### `, else the last number in the response.

    `####` is the dataset's own answer marker (openai/grade-school-math, `extract_answer` in dataset.py); the
    last-number fallback is lm-evaluation-harness's `flexible-extract` for gsm8k. Both strip `,` and `$`.

    >>> extract_gsm8k("She pays 3 * $1,000 = $3,000.\\n#### 3,000")
    '3000'
    >>> extract_gsm8k("So the answer is **18.0** dollars.")
    '18'
    >>> extract_gsm8k("#### twelve") is None
    True
    """
    if "####" in response:
        value = parse_number(response.rsplit("####", 1)[1])
    else:
        matches = list(NUMBER_RE.finditer(response))
        value = _to_decimal(matches[-1]) if matches else None
    return None if value is None else _show(value)


def grade_gsm8k(response: str, gold: str) -> Grade:
    """GSM8K: the extracted number equals the gold number (exact decimal comparison, so 18.0 equals 18).

    `gold` is the number, or the dataset's whole answer text (its number after `####` is read).

    >>> grade_gsm8k("The total is $1,250.", "1250").status
    'correct'
    >>> grade_gsm8k("#### 72", "Natalia sold 48/2 = 24 clips in May.\\n#### 72").status
    'correct'
    >>> grade_gsm8k("I am not sure.", "5").status
    'no_answer'
    """
    gold_value = parse_number(gold.rsplit("####", 1)[-1])
    if gold_value is None:
        return Grade("error", None, f"gold answer {gold[:80]!r} has no number (a plain decimal, no exponent)")
    got = extract_gsm8k(response)
    if got is None:
        return Grade("no_answer", None)
    return Grade("correct" if Decimal(got) == gold_value else "incorrect", got)


LETTERS = "ABCDE"  # CommonsenseQA has five options, labelled A-E (HF dataset `commonsense_qa`, field choices.label)
_ANSWER_MARK = re.compile(r"(?i)answer\s*(?:is|:)\s*:?\s*")
_LETTER_AT_START = re.compile(r"^[\s*_`\"'(\[]*([A-E])(?![A-Za-z])")
_PAREN_LETTER = re.compile(r"\(([A-E])\)")


def _norm_text(s: str) -> str:
    return re.sub(r"[\s*_`\"'.,!:;()\[\]]+", " ", s).strip().lower()


def extract_csqa(response: str, choices: dict | None = None) -> str | None:
    """CommonsenseQA extraction (our rule), the first that applies:

    1. after the last "answer is" / "answer:" followed by one, a letter A-E (bare, in parentheses or bold) or an
       option's text;
    2. the whole response is one letter, or one option's exact text (case and punctuation ignored);
    3. the last parenthesised letter "(C)" in the response.

    `choices` is the dataset's field `{"label": [...], "text": [...]}`; without it only letters are read.

    >>> extract_csqa("Let's think. The answer is (B).")
    'B'
    >>> extract_csqa("**D**")
    'D'
    >>> extract_csqa("bank", {"label": ["A", "B"], "text": ["river", "bank"]})
    'B'
    >>> extract_csqa("I cannot tell.") is None
    True
    """
    options = {_norm_text(t): lab for lab, t in zip(choices["label"], choices["text"])} if choices else {}
    for mark in reversed(list(_ANSWER_MARK.finditer(response))):  # the last marker that names an option
        tail = response[mark.end():]
        m = _LETTER_AT_START.match(tail)
        if m:
            return m.group(1)
        for text, label in options.items():
            if _norm_text(tail).startswith(text):
                return label
    whole = _norm_text(response)
    if len(whole) == 1 and whole.upper() in LETTERS:
        return whole.upper()
    if whole in options:
        return options[whole]
    found = _PAREN_LETTER.findall(response)
    return found[-1] if found else None


def grade_csqa(response: str, gold: str | dict) -> Grade:
    """CommonsenseQA: the extracted option letter equals the gold letter.

    `gold` is the letter (`answerKey`), or `{"answer": letter, "choices": {"label": [...], "text": [...]}}` so
    that a response giving the option's text is read too.

    >>> grade_csqa("The answer is C", "C").status
    'correct'
    >>> grade_csqa("river", {"answer": "A", "choices": {"label": ["A", "B"], "text": ["river", "bank"]}}).status
    'correct'
    """
    letter, choices = (gold.get("answer"), gold.get("choices")) if isinstance(gold, dict) else (gold, None)
    if not isinstance(letter, str) or letter.strip().upper() not in LETTERS:
        return Grade("error", None, f"gold answer {letter!r} is not a letter A-E")
    got = extract_csqa(response, choices)
    if got is None:
        return Grade("no_answer", None)
    return Grade("correct" if got == letter.strip().upper() else "incorrect", got)
