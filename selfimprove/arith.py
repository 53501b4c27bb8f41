"""The `arith` task: seeded multi-step arithmetic word problems, the package's model-organism task.

A problem starts with a quantity and applies `level` operations (level 1-5) in a story; its gold solution is
one equation per line (`3 * 4 = 12`) ending in `#### <answer>`, the GSM8K format. Each
training problem carries several gold solutions that differ in step order and operand order, so sampled
solutions can genuinely differ (the diversity that self-improvement may lose). The `ood` split uses story
templates that never occur in `train` or `test`: same arithmetic, new stories and wording (docs/organism.md, 'OOD
by number range': a range shift measures nothing for a tiny model, an unseen template does).

Writes data/problems/arith/{train,test,ood}.jsonl via `selfimprove data arith`; deterministic for a seed.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict
from pathlib import Path

from .schema import LEVELS, ArithConfig  # noqa: F401  (ArithConfig: importable from here)

# Each template is a story frame. `ops` maps an operation kind to phrasings; {n}, {k}, {m} are operands.
# kinds: add (+n), sub (-n), add_groups (+k*m), sub_groups (-k*m).
ID_TEMPLATES = {
    "collector": {
        "start": "{name} has {n} {item}.",
        "ops": {
            "add": ["{name} finds {n} more {item}.", "{name} gets {n} more {item}."],
            "sub": ["{name} gives away {n} {item}.", "{name} loses {n} {item}."],
            "add_groups": ["{name} buys {k} bags of {m} {item}.", "{name} gets {k} boxes with {m} {item} each."],
            "sub_groups": ["{name} gives {k} friends {m} {item} each.", "{name} sells {k} packs of {m} {item}."],
        },
        "question": "How many {item} does {name} have now?",
        "names": ["Finn", "Mia", "Omar", "Lena", "Ravi", "Sara", "Tom", "Yuki"],
        "items": ["stamps", "marbles", "cards", "shells", "stickers", "coins"],
    },
    "garden": {
        "start": "A garden has {n} {item}.",
        "ops": {
            "add": ["{name} plants {n} more {item}.", "{n} new {item} grow."],
            "sub": ["{name} picks {n} {item}.", "{n} {item} die."],
            "add_groups": ["{name} plants {k} rows of {m} {item}.", "{k} beds with {m} {item} each are added."],
            "sub_groups": ["{name} cuts {k} bunches of {m} {item}.", "{k} pots of {m} {item} are sold."],
        },
        "question": "How many {item} are in the garden now?",
        "names": ["Ana", "Ben", "Kofi", "Ivy", "Leo", "Nora"],
        "items": ["flowers", "roses", "tulips", "trees", "plants"],
    },
}

# Held out of train and test: other frames, verbs and question forms for the same four operation kinds.
OOD_TEMPLATES = {
    "bakery": {
        "start": "At dawn the bakery holds {n} {item}.",
        "ops": {
            "add": ["The oven turns out {n} extra {item}.", "A supplier delivers {n} {item}."],
            "sub": ["Customers buy {n} {item}.", "The staff eat {n} {item}."],
            "add_groups": ["The baker makes {k} trays carrying {m} {item} apiece.",
                           "{k} crates holding {m} {item} arrive."],
            "sub_groups": ["{k} cafes each order {m} {item}.", "{k} schools take {m} {item} per school."],
        },
        "question": "What is the count of {item} at the bakery when the day ends?",
        "names": ["the baker"],
        "items": ["loaves", "muffins", "rolls", "pies"],
    },
}

OPS = ("add", "sub", "add_groups", "sub_groups")
# The number after `####`, decimals and digit groups included so that "#### 12.5" is read whole (and graded
# wrong), not as 12; a trailing period ends the sentence.
ANSWER_RE = re.compile(r"####\s*(-?\d+(?:[.,]\d+)*)")
EQUATION_RE = re.compile(r"(-?\d+)\s*([-+*])\s*(-?\d+)\s*=\s*(-?\d+)")


def _story_ops(rng: random.Random, level: int, cfg: ArithConfig):
    """Draw a start value and `level` operations whose running total stays within 0..max_total."""
    while True:
        total = rng.randint(2, cfg.max_operand)
        start, ops = total, []
        for _ in range(level):
            kind = rng.choice(OPS)
            if kind in ("add", "sub"):
                n = rng.randint(1, cfg.max_operand)
                k = m = None
                delta = n
            else:
                k, m = rng.randint(2, 9), rng.randint(2, 12)
                n, delta = None, k * m
            new = total + delta if kind.startswith("add") else total - delta
            if not 0 <= new <= cfg.max_total:
                break
            ops.append({"kind": kind, "n": n, "k": k, "m": m})
            total = new
        if len(ops) == level:
            return start, ops, total


def solution_steps(start: int, ops: list[dict], order: str, rng: random.Random) -> list[str]:
    """Equation lines for one solution order.

    Orders (docs/organism.md): `sentence` applies operations as told; `products` computes every group product
    first; `gains` sums the start and every gain first, then takes the losses. Operands of `*` and `+` are
    swapped at random, which is valid arithmetic and adds surface diversity.
    """
    lines, values = [], []
    for op in ops:  # products of group operations
        if op["n"] is None:
            a, b = (op["k"], op["m"]) if rng.random() < 0.5 else (op["m"], op["k"])
            values.append(op["k"] * op["m"])
            if order != "sentence":
                lines.append(f"{a} * {b} = {values[-1]}")
        else:
            values.append(op["n"])

    def apply(total, op, value, out):
        if op["n"] is None and order == "sentence":
            a, b = (op["k"], op["m"]) if rng.random() < 0.5 else (op["m"], op["k"])
            out.append(f"{a} * {b} = {value}")
        if op["kind"].startswith("add"):
            x, y = (total, value) if rng.random() < 0.5 else (value, total)
            out.append(f"{x} + {y} = {total + value}")
            return total + value
        out.append(f"{total} - {value} = {total - value}")
        return total - value

    total = start
    if order == "gains":
        gains = [(op, v) for op, v in zip(ops, values) if op["kind"].startswith("add")]
        losses = [(op, v) for op, v in zip(ops, values) if op["kind"].startswith("sub")]
        for op, v in gains + losses:
            total = apply(total, op, v, lines)
    else:
        for op, v in zip(ops, values):
            total = apply(total, op, v, lines)
    return lines


def format_solution(lines: list[str], answer: int) -> str:
    return "\n".join(lines + [f"#### {answer}"])


def _render(rng: random.Random, template: dict, start: int, ops: list[dict]) -> str:
    name, item = rng.choice(template["names"]), rng.choice(template["items"])
    parts = [template["start"].format(n=start, name=name, item=item)]
    for op in ops:
        phrase = rng.choice(template["ops"][op["kind"]])
        parts.append(phrase.format(n=op["n"], k=op["k"], m=op["m"], name=name, item=item))
    parts.append(template["question"].format(name=name, item=item))
    text = " ".join(parts)
    return text[0].upper() + text[1:]


def make_problem(rng: random.Random, pid: str, split: str, level: int, templates: dict,
                 n_solutions: int, cfg: ArithConfig) -> dict:
    """One problem row: question, integer answer, and up to `n_solutions` distinct gold solutions."""
    tname = rng.choice(sorted(templates))
    start, ops, answer = _story_ops(rng, level, cfg)
    question = _render(rng, templates[tname], start, ops)
    canonical = format_solution(solution_steps(start, ops, "sentence", random.Random(0)), answer)
    solutions = [canonical]
    for _ in range(8 * n_solutions):  # bounded: level 1 problems have few distinct solutions
        if len(solutions) >= n_solutions:
            break
        sol = format_solution(solution_steps(start, ops, rng.choice(["sentence", "products", "gains"]), rng), answer)
        if sol not in solutions:
            solutions.append(sol)
    return {"id": pid, "split": split, "level": level, "template": tname, "question": question,
            "answer": str(answer), "solutions": solutions}


def generate(cfg: ArithConfig = ArithConfig()) -> dict[str, list[dict]]:
    """The splits train, test, ood (and fresh when `n_fresh` > 0); the same config always gives the same rows, and
    no question appears in two splits. `fresh` is drawn last, so train, test and ood do not depend on it."""
    rng = random.Random(cfg.seed)
    seen: set[str] = set()
    out: dict[str, list[dict]] = {}
    plan = [("train", cfg.n_train, ID_TEMPLATES, cfg.solutions_per_problem),
            ("test", cfg.n_test, ID_TEMPLATES, 1), ("ood", cfg.n_ood, OOD_TEMPLATES, 1)]
    if cfg.n_fresh:
        plan.append(("fresh", cfg.n_fresh, ID_TEMPLATES, cfg.solutions_per_problem))
    for split, n, templates, n_sol in plan:
        rows = []
        while len(rows) < n:
            level = cfg.levels[len(rows) % len(cfg.levels)]  # even spread over levels
            row = make_problem(rng, f"arith-{split}-{len(rows):05d}", split, level, templates, n_sol, cfg)
            if row["question"] in seen:  # keeps test and OOD problems out of training
                continue
            seen.add(row["question"])
            rows.append(row)
        out[split] = rows
    return out


def write_jsonl(splits: dict[str, list[dict]], out_dir: Path, cfg: ArithConfig) -> list[Path]:
    """Write one JSONL per split plus `config.json` (the generator settings that made them)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, rows in splits.items():
        path = out_dir / f"{split}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        tmp.replace(path)
        paths.append(path)
    (out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2, sort_keys=True) + "\n")
    return paths


def extract_answer(response: str) -> str | None:
    """The number after the last `####` (an integer without leading zeros, anything else as written), else
    None (GSM8K's answer marker).

    >>> extract_answer("2 + 3 = 5\\n#### 5"), extract_answer("#### 2.5."), extract_answer("2 + 3 = 5") is None
    ('5', '2.5', True)
    """
    found = ANSWER_RE.findall(response)
    if not found:
        return None
    return str(int(found[-1])) if found[-1].lstrip("-").isdigit() else found[-1]


def equations_valid(response: str) -> bool:
    """True when the response has at least one equation and every `a op b = c` in it is true arithmetic.

    A process check: a correct final answer reached through false equations is luck (docs/organism.md,
    'Lucky answers').
    """
    eqs = EQUATION_RE.findall(response)
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    return bool(eqs) and all(ops[o](int(a), int(b)) == int(c) for a, o, b, c in eqs)


def equations(response: str) -> list[str]:
    """The equations of a response, whitespace-normalised (the units of the Distinct Equations metric)."""
    return [f"{a} {o} {b} = {c}" for a, o, b, c in EQUATION_RE.findall(response)]
