"""MATH grader: read the final answer, then decide equivalence with sympy through Math-Verify.

Extraction (`extract_math`): the content of the last `\\boxed{...}` (or `\\fbox{...}`), braces matched by a
scanner that never recurses (Hendrycks et al. 2021 mark MATH answers with `\\boxed`); with no box, the text
after the last "final answer (is)" (the Minerva prompt's "Final Answer: The final answer is $x$", Lewkowycz et
al. 2022), `$` and markdown bold removed (Math-Verify issue 76: `**73**`).

Equivalence (`grade_math`), in order:
1. the two answers are the same text once spacing, `\\left`/`\\right` and `\\dfrac`/`\\tfrac` are normalised:
   correct (a gold answer always equals itself; lm-evaluation-harness issues 2212 and 4030);
2. both are parsed by Math-Verify (`latex2sympy2_extended`) and compared by `math_verify.verify(gold, pred)`,
   gold first (its docstring: not symmetric). Its rules apply: `\\frac12` = `\\dfrac{1}{2}` = `1/2` = `0.5`;
   `x = 3` matches `3`; `\\text{ cm}` and other units are dropped; `30^\\circ` matches `30` (the degree sign is
   dropped, not converted); `50\\%` matches `50` and `0.5`; intervals, sets, tuples and matrices compare by
   their elements (`(1,2)` is read as an open interval, so `[1,2]` differs from it);
3. a match between two plain numbers must also be exact (rationals), agree to a relative 1e-40 (other exact
   forms), or to a relative 1e-4 when a decimal is involved: Math-Verify compares numbers rounded to 6 decimal
   places, so on its own it equates `1/2004!` with `1/2006!` (its issue 14). Elements of tuples, sets and
   matrices are left to Math-Verify's own rule.

A gold that Math-Verify cannot parse makes the item an `error`; an answer it cannot parse, whose text differs
from the gold, is `incorrect` (the `detail` says so).

Limits (our choice; the item is still counted, with the reason in `detail`): an answer longer than
MAX_ANSWER_CHARS, or braces nested deeper than MAX_BRACE_DEPTH once redundant `{{...}}` pairs are removed,
is an `error`; an answer whose exact value would need more than MAX_EXACT_DIGITS digits (power towers like
`10^{10^{10^{10}}}`, which hang Math-Verify: its issue 65) is correct only if it is written exactly like the gold
and otherwise an `error`, never evaluated. Math-Verify's own signal.alarm timeouts are off (they work only on
the main thread); the batch runner's worker kill is the time limit.
"""

from __future__ import annotations

import logging
import math
import re

from .types import Grade

MAX_ANSWER_CHARS = 1000
MAX_BRACE_DEPTH = 50
MAX_EXACT_DIGITS = 10**6  # a 10^6-digit integer is ~0.4 MB; sympy handles it in well under a second
BOX_COMMANDS = ("\\boxed", "\\fbox")
_FINAL_RE = re.compile(r"(?i)final answer(?:\s+is)?\s*[:：]?\s*")
_HOPE_RE = re.compile(r"(?i)\.?\s*I hope it is correct\.?\s*$")

logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns once that we turned its timeouts off


def _match_braces(s: str, start: int) -> int | None:
    """Index of the `}` closing the `{` at `start`, skipping escaped `\\{`/`\\}`; None if unbalanced."""
    depth, i = 0, start
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def last_boxed(text: str, tries: int = 3) -> str | None:
    """Content of the last `\\boxed{...}` or `\\fbox{...}` with balanced braces (`\\boxed 5` also counts).

    >>> last_boxed(r"so \\boxed{1} or rather \\boxed{\\frac{1}{\\sqrt{2}}}.")
    '\\\\frac{1}{\\\\sqrt{2}}'
    >>> last_boxed(r"\\boxed 7$") , last_boxed("no box") is None
    ('7', True)
    """
    starts = sorted((m.start(), m.end()) for cmd in BOX_COMMANDS for m in re.finditer(re.escape(cmd), text))
    for _, end in reversed(starts[-tries:]):  # an unbalanced last box falls back to the one before
        k = end
        while k < len(text) and text[k] == " ":
            k += 1
        if k < len(text) and text[k] == "{":
            close = _match_braces(text, k)
            if close is not None:
                return text[k + 1:close]
        elif k > end:
            m = re.match(r"[^\s$]+", text[k:])
            if m:
                return m.group(0)
    return None


def extract_math(response: str) -> str | None:
    """The final answer of a MATH response (rules in the module docstring), or None.

    >>> extract_math(r"Hence $\\boxed{\\left( 1, 2 \\right)}$.")
    '\\\\left( 1, 2 \\\\right)'
    >>> extract_math("Final Answer: The final answer is $42$. I hope it is correct.")
    '42'
    >>> extract_math("Thus the count is **73**.\\n\\nFinal Answer: **73**")
    '73'
    >>> extract_math("I think it is 5") is None
    True
    """
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed.strip() or None
    found = list(_FINAL_RE.finditer(response))
    if not found:
        return None
    tail = response[found[-1].end():found[-1].end() + 2 * MAX_ANSWER_CHARS].split("\n", 1)[0]
    dollars = re.search(r"\$+([^$]+)\$+", tail)
    answer = dollars.group(1) if dollars else _HOPE_RE.sub("", tail)
    answer = answer.strip().strip("*_").strip().rstrip(".").strip()
    return answer or None


def collapse_braces(s: str) -> str:
    """Drop redundant groups: `{{x}}` is `{x}` in LaTeX, and a group around the whole answer goes too.

    Linear time, no recursion, so 5,000 nested braces cost nothing.

    >>> collapse_braces("{" * 5000 + "1" + "}" * 5000)
    '1'
    >>> collapse_braces(r"\\frac{{1}}{2}"), collapse_braces(r"\\{1, 2\\}")
    ('\\\\frac{1}{2}', '\\\\{1, 2\\\\}')
    """
    match, stack, i = {}, [], 0
    while i < len(s):
        if s[i] == "\\":
            i += 2
            continue
        if s[i] == "{":
            stack.append(i)
        elif s[i] == "}" and stack:
            match[stack.pop()] = i
        i += 1
    drop = set()
    for open_, close in match.items():
        if match.get(open_ + 1) == close - 1:  # this group's whole content is one inner group
            drop.update((open_ + 1, close - 1))
    if match.get(0) == len(s) - 1:
        drop.update((0, len(s) - 1))
    return "".join(c for j, c in enumerate(s) if j not in drop)


def brace_depth(s: str) -> int:
    """Deepest unescaped brace nesting.

    >>> brace_depth(r"\\frac{1}{x^{2}}"), brace_depth(r"\\{1\\}")
    (2, 0)
    """
    depth = best = i = 0
    while i < len(s):
        if s[i] == "\\":
            i += 2
            continue
        depth += s[i] == "{"
        depth -= s[i] == "}"
        best = max(best, depth)
        i += 1
    return best


def normalize_text(s: str) -> str:
    r"""The answer as text for the exact-text rule: no spacing commands, `\left`/`\right` or `\dfrac`.

    >>> normalize_text(r"\left( \dfrac{1}{2}, 3 \right).")
    '(\\frac{1}{2},3)'
    """
    s = re.sub(r"\\(?:left|right)(?![a-zA-Z])|\\[!,;: ]|~|\$", "", s)
    s = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", s)
    return re.sub(r"\s+", "", s).rstrip(".")


def _too_long(ans: str) -> str | None:
    if len(ans) > MAX_ANSWER_CHARS:
        return f"answer of {len(ans)} characters is longer than {MAX_ANSWER_CHARS}; not parsed"
    if brace_depth(ans) > MAX_BRACE_DEPTH:
        return f"braces nested {brace_depth(ans)} deep (limit {MAX_BRACE_DEPTH}); not parsed"
    return None


def _magnitude(e) -> float:
    """An upper bound on |e| for a number node, from its exact size."""
    import sympy

    if isinstance(e, sympy.Integer):
        return float(abs(int(e))) if abs(int(e)) < 10**300 else math.inf
    if isinstance(e, (sympy.Rational, sympy.Float)):
        return abs(float(e)) + 1
    digits = exact_digits(e)
    if digits >= 300:
        return math.inf
    try:  # small enough to evaluate: the bound becomes the value (2^{19} is 524288, not 10^19)
        return abs(float(sympy.N(e, 15))) + 1
    except (TypeError, ValueError, ArithmeticError):
        return 10.0**digits


def exact_digits(e) -> float:
    """An upper bound on the decimal digits needed to write the exact value of a parsed answer.

    >>> import sympy
    >>> exact_digits(sympy.Integer(12345))
    5.0
    >>> exact_digits(sympy.Pow(10, sympy.Pow(10, sympy.Pow(10, 10, evaluate=False), evaluate=False), evaluate=False))
    inf
    """
    import sympy

    if isinstance(e, sympy.Integer):
        return float(len(str(abs(int(e))))) if abs(int(e)).bit_length() < 10_000 else abs(int(e)).bit_length() * 0.302
    if isinstance(e, sympy.Rational):
        return exact_digits(sympy.Integer(e.p)) + exact_digits(sympy.Integer(e.q))
    if isinstance(e, sympy.Pow) and e.exp.is_number:
        if e.base.is_number and e.base in (0, 1, -1):
            return 1.0
        small_int = isinstance(e.base, sympy.Integer) and abs(int(e.base)).bit_length() < 64
        base = math.log10(abs(int(e.base))) if small_int else exact_digits(e.base)
        return base * max(1.0, _magnitude(e.exp)) if e.base.is_number else base + exact_digits(e.exp)
    if isinstance(e, sympy.factorial) and e.args[0].is_number:
        n = _magnitude(e.args[0])
        return n * math.log10(n) + 1 if n > 2 else 1.0
    if isinstance(e, sympy.MatrixBase):
        return sum(exact_digits(x) for x in e) + 1
    if isinstance(e, sympy.Basic):
        return sum(exact_digits(a) for a in e.args) + 1
    return float(len(str(e)))


def _parse(ans: str) -> list:
    from math_verify import LatexExtractionConfig, parse

    cfg = [LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False)]
    return parse("\\boxed{" + ans + "}", extraction_config=cfg, parsing_timeout=None)


def _values(e):
    from math_verify.grader import get_pct_val

    pct = get_pct_val(e)
    return [e] if pct is None else [e, pct]


def _close(a, b, floats: bool) -> bool:
    import sympy

    d = a - b
    if not floats and d.is_Rational:  # exact numbers: equal means equal
        return d == 0
    prec, tol = (30, 1e-4) if floats else (60, 1e-40)
    diff, scale = abs(sympy.N(d, prec)), max(abs(sympy.N(a, prec)), abs(sympy.N(b, prec)))
    return bool(diff == 0 or diff <= tol * scale)


def numeric_mismatch(gold, pred) -> bool:
    """True when two plain numbers differ: exact rationals must be equal, other exact forms must agree to a
    relative 1e-40 at 60 digits, and with a decimal involved to a relative 1e-4.

    >>> import sympy
    >>> numeric_mismatch(1 / sympy.factorial(2004), 1 / sympy.factorial(2006))
    True
    >>> numeric_mismatch(sympy.Integer(2)**100, sympy.Integer(2)**100 + sympy.Rational(1, 2**100))
    True
    >>> numeric_mismatch(sympy.Rational(1, 3), sympy.Float("0.333333"))
    False
    """
    import sympy

    if not all(isinstance(x, sympy.Expr) and x.is_number for x in (gold, pred)):
        return False
    floats = gold.has(sympy.Float) or pred.has(sympy.Float)
    for a in _values(gold):
        for b in _values(pred):
            try:
                if _close(a, b, floats):
                    return False
            except (TypeError, ValueError, ArithmeticError):
                return False  # not comparable as numbers: keep Math-Verify's verdict
    return True


def grade_math(response: str, gold: str) -> Grade:
    r"""MATH: the final answer of `response` against `gold` (an answer, or a solution whose last box is read).

    >>> grade_math(r"so the answer is $\boxed{\dfrac{1}{2}}$", r"\frac12").status
    'correct'
    >>> grade_math(r"\boxed{1+\frac{1}{e}}", r"1-\frac{1}{e}").status
    'incorrect'
    >>> grade_math("no box here", "3").status
    'no_answer'
    """
    import sympy
    from math_verify import verify

    g = extract_math(gold) if any(c in gold for c in BOX_COMMANDS) else gold.strip()
    if not g:
        return Grade("error", None, f"gold answer {gold[:80]!r} is empty or has no box")
    ans = extract_math(response)
    if ans is None:
        return Grade("no_answer", None)
    ans, g = collapse_braces(ans), collapse_braces(g)
    if len(ans) > MAX_ANSWER_CHARS:
        return Grade("error", ans[:200] + "...", _too_long(ans))
    if normalize_text(ans) == normalize_text(g):
        return Grade("correct", ans)
    for who, text in (("gold", g), ("answer", ans)):
        problem = _too_long(text)
        if problem:
            return Grade("error", ans, f"{who}: {problem}")
    gp, pp = _parse(g), _parse(ans)
    if not gp or isinstance(gp[0], str):
        return Grade("error", ans, f"gold answer {g[:80]!r} could not be parsed")
    if not pp or isinstance(pp[0], str):
        return Grade("incorrect", ans, "answer could not be parsed as math and its text differs from the gold")
    for who, expr in (("gold", gp[0]), ("answer", pp[0])):
        if exact_digits(expr) > MAX_EXACT_DIGITS:
            if sympy.srepr(gp[0]) == sympy.srepr(pp[0]):
                return Grade("correct", ans)
            return Grade("error", ans, f"{who} too large to evaluate exactly (> {MAX_EXACT_DIGITS} digits); "
                                       "not written like the gold")
    try:
        ok = verify(gp, pp, timeout_seconds=None, raise_on_error=True)
    except (MemoryError, RecursionError) as e:
        return Grade("error", ans, f"{type(e).__name__} while comparing")
    except Exception as e:  # Math-Verify raises on comparisons it cannot make; say so, do not guess
        return Grade("error", ans, f"comparison failed: {type(e).__name__}: {str(e)[:120]}")
    if ok and numeric_mismatch(gp[0], pp[0]):
        return Grade("incorrect", ans, "equal only to 6 decimal places (Math-Verify issue 14); differs relatively")
    return Grade("correct" if ok else "incorrect", ans)
