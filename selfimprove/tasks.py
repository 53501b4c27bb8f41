"""The tasks: one `Task` record per task in TASKS_BY_NAME, and the real tasks' problems (GSM8K, MATH,
CommonsenseQA, MBPP) from the Hugging Face Hub or from local files.

The registry. `TASKS_BY_NAME[name]` (or `task_of(name)`) is everything the package knows about a task: its
loader (None for arith, which arith.py generates), prompt template and `render`, grader (grading.GRADERS),
gold fields and gold reader (`gold_of`, the one function that turns a problem row, or a `selfimprove grade`
line, into the grader's gold argument), equation extractor and pattern (the Distinct Equations metric), token
budget, and audit hook (grading/audit.py). LOADERS and PROMPTS are views of it by name.

`load_problems(task, DataConfig)` reads a task's splits through `datasets` and turns every row into the run's
problem format (data.py); `write_problems` writes them to <out>/<split>.jsonl. The run's prepare stage
(`prepare_problems`, recipe section `data:`) and `selfimprove data <task> [--train F --test F --ood F]` call it.

Sources (hub ids; rows are read in each dataset's published format, `Loader.fields` in LOADERS):
- gsm8k: `openai/gsm8k`, config `main` (Cobbe et al. 2021), train 7,473 / test 1,319.
- math: `EleutherAI/hendrycks_math`, one config per subject (Hendrycks et al. 2021; the copy that
  lm-evaluation-harness's `hendrycks_math` task reads, since `hendrycks/competition_math` left the Hub),
  train 7,500 / test 5,000. `level` is the dataset's "Level 1".."Level 5" ("Level ?" -> None).
  `DigitalLearningGmbH/MATH-lighteval` (lighteval's copy, Parquet) has the same configs and fields: set it as
  `source` if the default will not load.
- csqa: `tau/commonsense_qa` (Talmor et al. 2019). Its test split has no labels, so `validation` (1,221)
  serves as test (our inference; the paper does not name its split).
- mbpp: `google-research-datasets/mbpp`, config `full` (Austin et al. 2021), train 374 / test 500.
- OOD (paper §5.3, Fig. 5): a GSM8K run is evaluated on the MATH algebra test set (1,187 problems), with the MATH
  prompt and grader (its rows say `task: math`). The paper defines no OOD set for the other tasks: none by
  default, `data.ood` sets one.

Problem rows: `id` (stable: CSQA's own id, `mbpp-<task_id>`, `gsm8k-<split>-<row>`,
`math-<split>-<subject>-<row within subject>`), `task` (the format and grader of the row), `question` (the
full zero-shot prompt below, so data.render_prompt uses it unchanged), `problem` (the dataset's own text),
`answer` (the gold the grader reads; MBPP: the reference code), `level` (MATH 1-5, else None),
`solutions` (gold responses for gold SFT, each in the format its prompt asks for), and `subject` (MATH),
`choices` (CSQA), `tests` and `setup` (MBPP).

Zero-shot prompts (PROMPTS; the paper's own template, in its appendix Figure 6, is not known to us, so these
are our choice, each asking for exactly what its grader reads, grading/):
- gsm8k: the question, then "#### <number>" as the last line: GSM8K's own answer marker, which the responses
  of the paper's GSM8K case study end with (section not identified) and grade_gsm8k reads first.
- math: the problem, then "Please reason step by step, and put your final answer within \\boxed{}." (the
  zero-shot instruction of DeepSeekMath, Shao et al. 2024, and Qwen2.5-Math); MATH's gold solutions box
  their answers (Hendrycks et al. 2021) and grade_math reads the last box.
- csqa: the question and "Answer Choices:" (A)..(E), then the answer line "The answer is (X)": the layout of
  Wei et al. 2022's chain-of-thought CommonsenseQA exemplars; grade_csqa reads the letter after "answer is".
- mbpp: "You are an expert Python programmer, and here is your task: {text} Your code should pass these
  tests:\\n\\n{asserts}" (Austin et al. 2021's prompt, as lm-evaluation-harness's mbpp task renders it),
  then a request for one ```python block, the first thing grade_mbpp's extract_code reads.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import os
import re
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from . import arith
from .grading import grade_math
from .grading.graders import GRADERS, GoldError
from .schema import MATH_SUBJECTS, REAL_TASKS, SPLITS, TASKS, DataConfig  # noqa: F401  (importable from here)

DATA_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class TaskDataError(ValueError):
    """A task's data cannot be loaded (unreachable hub, missing file) or a row is malformed; the message names
    the dataset, file or row and says how to fix it."""


# ---- rows: one parser per dataset format, shared with the audit (grading/audit.py) --------------------------

def need(row: dict, where: str, **fields) -> None:
    """Raise naming the row and field unless each field of `row` has its type."""
    for name, typ in fields.items():
        if not isinstance(row.get(name), typ):
            raise TaskDataError(f"{where}: field '{name}' must be {typ.__name__}, got {row.get(name)!r:.60}")


def parse_gsm8k(row: dict, where: str) -> dict:
    """{question, answer: worked solution ending in '#### n'} -> the number after `####`, commas removed."""
    need(row, where, question=str, answer=str)
    if "####" not in row["answer"]:
        raise TaskDataError(f"{where}: field 'answer' has no '#### n' final answer")
    gold = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
    # The worked solution keeps GSM8K's <<a*b=c>> calculator notes: the paper's responses carry them (its GSM8K
    # case study; section not identified).
    return {"problem": row["question"], "answer": gold, "level": None, "solutions": [row["answer"]]}


def math_level(value, where: str) -> int | None:
    """MATH's "Level 3" (or 3) -> 3; "Level ?" (a few published rows) and None -> None."""
    if value is None or value == "Level ?":
        return None
    m = re.fullmatch(r"(?:Level )?([1-5])", str(value).strip())
    if not m:
        raise TaskDataError(f"{where}: field 'level' must be 'Level 1'..'Level 5', got {value!r:.60}")
    return int(m.group(1))


def parse_math(row: dict, where: str) -> dict:
    """{problem, level, type, solution, optional answer} -> the gold answer (the `answer` field, else the last
    \\boxed{} of the solution), level 1-5 and the subject as its config name ("Counting & Probability" ->
    counting_and_probability)."""
    need(row, where, problem=str, solution=str)
    if row.get("answer") is not None and not isinstance(row["answer"], str):
        raise TaskDataError(f"{where}: field 'answer' must be str, got {row['answer']!r:.60}")
    gold = row.get("answer") or grade_math.last_boxed(row["solution"])
    if not isinstance(gold, str) or not gold.strip():
        raise TaskDataError(f"{where}: no 'answer' field and no \\boxed{{...}} in 'solution'")
    kind = row.get("type") or row.get("subject")  # `subject` in MATH-500-style copies
    subject = re.sub(r"\s+", "_", kind.strip().lower().replace("&", "and")) if isinstance(kind, str) else None
    return {"problem": row["problem"], "answer": gold.strip(), "level": math_level(row.get("level"), where),
            "subject": subject, "solutions": [row["solution"]]}


def parse_csqa(row: dict, where: str) -> dict:
    """{id, question, choices {label, text}, answerKey} -> the letter; the gold response is the answer line the
    prompt asks for (CommonsenseQA has no worked solutions; our choice)."""
    need(row, where, id=str, question=str, answerKey=str, choices=dict)
    labels, texts = row["choices"].get("label"), row["choices"].get("text")
    if not (isinstance(labels, list) and isinstance(texts, list) and len(labels) == len(texts)):
        raise TaskDataError(f"{where}: field 'choices' must be {{'label': [...], 'text': [...]}} of equal lengths")
    if not row["answerKey"]:
        raise TaskDataError(f"{where}: field 'answerKey' is empty (CommonsenseQA's test split has no labels; "
                            "use its validation split as test, the default)")
    if row["answerKey"] not in labels:
        raise TaskDataError(f"{where}: answerKey {row['answerKey']!r} is not one of the choice labels")
    return {"id": row["id"], "problem": row["question"], "answer": row["answerKey"], "level": None,
            "choices": {"label": labels, "text": texts}, "solutions": [f"The answer is ({row['answerKey']})."]}


def parse_mbpp(row: dict, where: str) -> dict:
    """{task_id, text, code, test_list, test_setup_code} (config full; `prompt` and `test_imports` in config
    sanitized) -> tests and setup for the sandbox; the gold response is the reference code in the ```python
    block the prompt asks for."""
    text = row.get("text", row.get("prompt"))
    need({"text": text, **row}, where, text=str, code=str, test_list=list)
    tests = row["test_list"]
    if not tests or not all(isinstance(t, str) for t in tests):
        raise TaskDataError(f"{where}: field 'test_list' must be a non-empty list of assert strings")
    setup = row.get("test_setup_code") or "\n".join(row.get("test_imports") or [])
    out = {"problem": text, "answer": row["code"], "level": None, "tests": tests, "setup": setup,
           "solutions": [f"```python\n{row['code'].strip()}\n```"]}
    if row.get("task_id") is not None:
        out["id"] = f"mbpp-{row['task_id']}"
    return out


# ---- prompts ----------------------------------------------------------------------------------------------

GSM8K_PROMPT = ("{problem}\n\nSolve the problem step by step. Then write the final answer as a number on the last "
                "line, in the form \"#### <number>\".")
MATH_PROMPT = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
CSQA_PROMPT = ("{problem}\n\nAnswer Choices:\n{choices}\n\nThink it through briefly, then end your response with "
               "\"The answer is (X)\", where X is the letter of the correct choice.")
MBPP_PROMPT = ("You are an expert Python programmer, and here is your task: {problem} Your code should pass these "
               "tests:\n\n{tests}\n\nWrite your solution as one Python code block (```python ... ```).")


def prompt_text(task: str, row: dict) -> str:
    """The user turn of `row` (its `problem`, and `choices` or `tests`) in `task`'s zero-shot template.

    >>> row = {"problem": "Where?", "choices": {"label": ["A", "B"], "text": ["here", "there"]}}
    >>> print(*prompt_text("csqa", row).splitlines()[:5], sep="\\n")
    Where?
    <BLANKLINE>
    Answer Choices:
    (A) here
    (B) there
    """
    choices = row.get("choices") or {"label": [], "text": []}
    return PROMPTS[task].format(problem=row["problem"].strip(), tests="\n".join(row.get("tests", [])),
                                choices="\n".join(f"({lab}) {t}" for lab, t in zip(choices["label"], choices["text"])))


# ---- gold answers -----------------------------------------------------------------------------------------

def _gold_answer(row: dict, answer: str):
    """The gold answer as text: the row's `answer` field (`gold` in a `selfimprove grade` line)."""
    gold = row.get(answer)
    if isinstance(gold, (int, float)) and not isinstance(gold, bool):
        gold = str(gold)
    if not isinstance(gold, str) or not gold.strip():
        raise GoldError(f"field '{answer}' must be a non-empty string, got {gold!r}")
    return gold


def _gold_csqa(row: dict, answer: str):
    """The letter and, when the row has them, the options: a response giving an option's text is read too."""
    gold = _gold_answer(row, answer)
    choices = row.get("choices")
    if choices is None:
        return gold
    if not (isinstance(choices, dict) and isinstance(choices.get("label"), list)
            and isinstance(choices.get("text"), list) and len(choices["label"]) == len(choices["text"])):
        raise GoldError("field 'choices' must be {'label': [...], 'text': [...]} of equal lengths")
    return {"answer": gold, "choices": choices}


def _gold_mbpp(row: dict, answer: str):
    """The asserts (`tests`) and their setup code (`setup`); MBPP's `answer` is the reference code, not read."""
    tests, setup = row.get("tests"), row.get("setup") or ""
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise GoldError("field 'tests' must be a non-empty list of assert strings")
    if not isinstance(setup, str):
        raise GoldError("field 'setup' must be a string")
    return {"tests": tests, "setup": setup}


def gold_of(task: str, row: dict, answer: str = "answer"):
    """The gold argument of `task`'s grader from a problem row, or from a `selfimprove grade` input line with
    `answer="gold"`: every task reads its answer field; MBPP reads `tests` (a list of assert strings) and
    optional `setup` instead, and CommonsenseQA also reads optional `choices` ({"label": [...], "text": [...]},
    the dataset's field). Raises GoldError naming a missing or malformed field.

    >>> gold_of("mbpp", {"response": "", "tests": ["assert f() == 1"]})
    {'tests': ['assert f() == 1'], 'setup': ''}
    >>> gold_of("gsm8k", {"response": "", "gold": 12}, answer="gold")
    '12'
    """
    return task_of(task).gold(row, answer)


# ---- audit: what must grade correct in a dataset row (grading/audit.py) -----------------------------------

def _audit_arith(row: dict, where: str) -> list[tuple[str, str, str, object]]:
    need(row, where, id=str, answer=str)  # the package's problem format
    return [(row["id"], "gold_vs_itself", f"#### {row['answer']}", row["answer"])] + \
        [(row["id"], "solution_vs_gold", s, row["answer"]) for s in row.get("solutions", [])]


def _audit_gsm8k(row: dict, where: str) -> list[tuple[str, str, str, object]]:
    p = parse_gsm8k(row, where)
    gold = p["answer"]
    return [(where, "gold_vs_itself", f"#### {gold}", gold), (where, "solution_vs_gold", p["solutions"][0], gold)]


def _audit_math(row: dict, where: str) -> list[tuple[str, str, str, object]]:
    p = parse_math(row, where)
    gold = p["answer"]
    return [(where, "gold_vs_itself", "\\boxed{" + gold + "}", gold),
            (where, "solution_vs_gold", p["solutions"][0], gold)]


def _audit_csqa(row: dict, where: str) -> list[tuple[str, str, str, object]]:
    p = parse_csqa(row, where)
    text = p["choices"]["text"][p["choices"]["label"].index(p["answer"])]
    gold = {"answer": p["answer"], "choices": p["choices"]}
    return [(p["id"], "gold_vs_itself", p["answer"], gold), (p["id"], "solution_vs_gold", text, gold)]


def _audit_mbpp(row: dict, where: str) -> list[tuple[str, str, str, object]]:
    p = parse_mbpp(row, where)
    gold = {"tests": p["tests"], "setup": p["setup"]}  # the reference code against its own asserts
    return [(str(row.get("task_id", where)), "solution_vs_gold", p["answer"], gold)]


# ---- equations: the units of the Distinct Equations metric (diversity.py) ---------------------------------

# A generic equation: numbers joined by + - * / x × ÷ (parentheses allowed), then '=' and a number.
# It finds GSM8K's `<<48/2=24>>` calculator annotations and plain `250 * 5 = 1250` lines alike; a number may
# carry a dollar sign, as GSM8K's solutions write amounts (`12/60 = $0.2`; dropped when normalising, our choice).
_NUM = r"\$?-?\d+(?:[.,]\d+)*"
EQUATION_RE = re.compile(rf"\(*{_NUM}\)*(?:\s*[-+*/x×÷]\s*\(*{_NUM}\)*)+\s*=\s*{_NUM}")


def generic_equations(text: str) -> list[str]:
    """Arithmetic equations in free text, normalised: whitespace, dollar signs and thousands separators
    removed, and parentheses removed when unbalanced (a match can start inside a bracket).

    >>> generic_equations("She pays 2,000 - 1,800 = <<2000-1800=200>>200 and 200 / 1250 = 0.16.")
    ['2000-1800=200', '200/1250=0.16']
    """
    out = []
    for m in EQUATION_RE.finditer(text):
        eq = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", re.sub(r"[\s$]+", "", m.group(0)))
        if eq.count("(") != eq.count(")"):
            eq = eq.replace("(", "").replace(")", "")
        out.append(eq)
    return out


# ---- the registry -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Loader:
    parse: Callable[[dict, str], dict]  # a dataset row -> the problem fields; raises TaskDataError naming the row
    hub: str  # default hub id
    configs: tuple[str, ...]  # hub configs read, concatenated (MATH: one per subject)
    splits: dict  # run split -> split of the hub dataset (ood: of the OOD task's)
    fields: str  # the row format, for error messages
    ood_task: str = ""  # format of the default OOD rows, "" = no default OOD set
    ood_subjects: tuple[str, ...] = ()  # MATH subjects of the default OOD set


@dataclass(frozen=True)
class Task:
    """Everything the package knows about one task; TASKS_BY_NAME holds one per name of schema.TASKS."""

    name: str  # as in recipes (`task:`) and in problem rows (`task`)
    title: str  # for tables and plots
    loader: Loader | None  # where its problems come from; None: generated (arith.generate, the organism's data)
    prompt: str  # zero-shot template of the user turn (prompt_text); "": the row's `question` is the prompt
    grader: Callable  # grading.GRADERS[name]: (response, gold) -> Grade
    gold_fields: tuple[str, ...]  # the problem-row fields the grader's gold is read from (gold_of)
    gold: Callable[[dict, str], object]  # (row, answer field) -> the grader's gold argument; raises GoldError
    equations: Callable[[str], list[str]]  # a response's equations, the units of Distinct Equations
    equation_re: re.Pattern  # what explore highlights: the matches `equations` counts
    max_new_tokens: int  # sampling budget a recipe for the task starts from
    audit: Callable[[dict, str], list[tuple[str, str, str, object]]]  # a dataset row -> (id, check, response,
    # gold) items that must all grade `correct` (grading/audit.py)
    process_check: Callable[[str], bool] | None = None  # a correct response's process is sound (arith: every
    # equation true, arith.equations_valid); None where the task has no such check
    answer_options: int = 0  # answers a random guess picks from where the answer space is small and known (csqa:
    # the 5 options A-E, Talmor et al. 2019); 0: open answers, no guessing baseline (beyond.guess_pass_at_k)

    def render(self, row: dict) -> str:
        """The user turn of a problem row (its `question` for a generated task)."""
        return prompt_text(self.name, row) if self.prompt else row["question"]


def _task(name, title, loader, prompt, gold, gold_fields, budget, audit, equations=generic_equations,
          equation_re=EQUATION_RE, process_check=None, answer_options=0) -> Task:
    return Task(name, title, loader, prompt, GRADERS[name], gold_fields, gold, equations, equation_re, budget, audit,
                process_check, answer_options)


TASKS_BY_NAME: dict[str, Task] = {t.name: t for t in (
    # arith: 128 new tokens are 3x its longest gold solution (SampleConfig.max_new_tokens)
    _task("arith", "arith", None, "", _gold_answer, ("answer",), 128, _audit_arith,
          equations=arith.equations, equation_re=arith.EQUATION_RE, process_check=arith.equations_valid),
    _task("gsm8k", "GSM8K", Loader(parse_gsm8k, "openai/gsm8k", ("main",),
                                   {"train": "train", "test": "test", "ood": "test"},
                                   "question, answer (a worked solution ending in '#### <number>')", "math",
                                   ("algebra",)),
          GSM8K_PROMPT, _gold_answer, ("answer",), 1024, _audit_gsm8k),
    _task("math", "MATH", Loader(parse_math, "EleutherAI/hendrycks_math", MATH_SUBJECTS,
                                 {"train": "train", "test": "test"},
                                 "problem, level ('Level 1'..'Level 5'), type (the subject), solution (answer in "
                                 "\\boxed{})"),
          MATH_PROMPT, _gold_answer, ("answer",), 1024, _audit_math),
    _task("csqa", "CommonsenseQA", Loader(parse_csqa, "tau/commonsense_qa", ("",),
                                          {"train": "train", "test": "validation"},
                                          "id, question, choices {label: [A..E], text: [...]}, answerKey"),
          CSQA_PROMPT, _gold_csqa, ("answer", "choices"), 256, _audit_csqa, answer_options=5),
    _task("mbpp", "MBPP", Loader(parse_mbpp, "google-research-datasets/mbpp", ("full",),
                                 {"train": "train", "test": "test"},
                                 "task_id, text, code, test_list (asserts), test_setup_code"),
          MBPP_PROMPT, _gold_mbpp, ("tests", "setup"), 512, _audit_mbpp),
)}
assert tuple(TASKS_BY_NAME) == TASKS and set(GRADERS) == set(TASKS), "schema.TASKS, the registry and GRADERS differ"

# Views of the registry, by name: the loaders of the real tasks and their prompt templates.
LOADERS = {name: t.loader for name, t in TASKS_BY_NAME.items() if t.loader}
PROMPTS = {name: t.prompt for name, t in TASKS_BY_NAME.items() if t.prompt}
assert tuple(LOADERS) == REAL_TASKS


def task_of(name: str) -> Task:
    """The registry's record of task `name`; KeyError naming the tasks otherwise."""
    if name not in TASKS_BY_NAME:
        raise KeyError(f"unknown task {name!r}; tasks: {', '.join(TASKS_BY_NAME)}")
    return TASKS_BY_NAME[name]


@dataclass(frozen=True)
class SplitPlan:
    """Where one run split comes from."""

    split: str  # train, test or ood
    fmt: str  # the task whose format, prompt and grader its rows have
    spec: str  # a split of `source`, or a local file, folder or glob
    source: str  # hub id or local copy of the dataset (when `spec` is a split)
    configs: tuple[str | None, ...]  # hub configs read, concatenated
    subjects: tuple[str, ...]  # MATH subjects kept, () = all
    limit: int
    revision: str = ""  # hub revision of `source`, "" = its default branch


def _is_local(spec: str) -> bool:
    """A split value names local files (not a split of the source) when it is a path or has a data suffix."""
    return spec.startswith(("/", ".", "~")) or os.sep in spec or "/" in spec or Path(spec).suffix in DATA_SUFFIXES


def _is_local_source(source: str) -> bool:
    """A source is a local copy when it is an explicit or existing path (datasets' own rule), else a hub id."""
    return source.startswith(("/", ".", "~")) or Path(source).expanduser().exists()


def plan(task: str, cfg: DataConfig) -> list[SplitPlan]:
    """The sources of every split of `task` under `cfg`; raises on settings that cannot apply to the task."""
    if task not in LOADERS:
        raise TaskDataError(f"no loader for task {task!r}; loaders: {', '.join(LOADERS)}")
    loader = LOADERS[task]
    ood_task = cfg.ood_task or loader.ood_task or task
    has_ood = bool(cfg.ood or loader.ood_task)
    if not has_ood and (cfg.ood_task or cfg.ood_source or cfg.limit_ood):
        raise TaskDataError(f"task {task} has no OOD set by default (paper §5.3 defines one for gsm8k only); "
                            "set data.ood to a file or a split of data.ood_source")
    if (cfg.subjects or cfg.levels) and "math" not in (task, ood_task if has_ood else None):
        raise TaskDataError(f"data.subjects and data.levels filter MATH rows; task {task} has none")
    out = []
    for split in SPLITS if has_ood else SPLITS[:2]:
        fmt = ood_task if split == "ood" else task
        default_source = split != "ood" or (fmt == task and not cfg.ood_source)
        source = (cfg.source or loader.hub) if default_source else (cfg.ood_source or LOADERS[fmt].hub)
        given = getattr(cfg, split)
        if split == "ood" and not given and fmt != task:
            given = loader.splits["ood"]
        subjects = tuple(cfg.subjects) or (loader.ood_subjects if split == "ood" and fmt != task else ())
        out.append(SplitPlan(split, fmt, given or LOADERS[fmt].splits.get(split, "test"), source,
                             _configs(fmt, source, cfg.hub_config if default_source else "", subjects),
                             subjects if fmt == "math" else (), getattr(cfg, f"limit_{split}"),
                             cfg.revision if default_source else ""))
    return out


def _configs(fmt: str, source: str, hub_config: str, subjects: tuple[str, ...]) -> tuple[str | None, ...]:
    """Hub configs to read: the given one; else the task's own on its hub id or on a local copy of a hub
    repository (a folder with README.md); else the folder's single default (None)."""
    if hub_config:
        return (hub_config,)
    path = Path(source).expanduser()
    if source != LOADERS[fmt].hub and not (path.is_dir() and (path / "README.md").exists()):
        return (None,)
    configs = LOADERS[fmt].configs
    if fmt == "math" and subjects:
        configs = tuple(c for c in configs if c in subjects)
    return tuple(c or None for c in configs)


# ---- reading ----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hub answers a TCP connection within `timeout_s` (checked once per process). Without this,
    `datasets` retries an unreachable Hub for ~25 s per dataset before it fails. Behind a proxy the client
    is left to try; HF_HUB_OFFLINE / HF_DATASETS_OFFLINE mean no."""
    import datasets.config
    from huggingface_hub import constants

    if datasets.config.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout_s).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline():
    """The datasets/huggingface_hub offline switch for the block: a copy in the datasets cache loads, at once."""
    import datasets.config
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def recipe_hint(task: str, plans: list[SplitPlan]) -> str:
    """How to point `task` at local files: the recipe lines, each file's row format, and the other ways."""
    paths = {p.split: f"/path/to/{p.fmt}_{p.split}.jsonl" for p in plans}
    width = max(map(len, paths.values())) + 4
    lines = ["data:"] + [f"  {p.split + ':':<7}{paths[p.split]:<{width}}# {p.fmt} rows: {LOADERS[p.fmt].fields}"
                         for p in plans]
    flags = " ".join(f"--{p.split} F" for p in plans)
    main = plans[0].source if not _is_local_source(plans[0].source) else LOADERS[task].hub
    ood = [p.source for p in plans if p.split == "ood" and p.source != main and not _is_local_source(p.source)]
    return ("Point the recipe at local files (JSON, JSONL or Parquet, in the dataset's own fields):\n"
            + "\n".join(lines) + f"\n`selfimprove data {task} {flags}` reads the same files. Or copy the whole "
            f"dataset where there is network, `hf download {main} --repo-type dataset --local-dir DIR`, and set "
            "`data: {source: DIR}`" + (f" (and `ood_source:` a copy of {ood[0]})" if ood else "") + ".")


def _read_hub(p: SplitPlan, cfg: DataConfig, task: str, plans: list[SplitPlan]) -> list[tuple[str, dict]]:
    import datasets

    local = _is_local_source(p.source)
    if local and not Path(p.source).expanduser().is_dir():
        raise TaskDataError(f"data source {p.source} is not a folder; give files per split as data.train, "
                            "data.test (and data.ood)")
    rows = []
    for config in p.configs:
        name = f"{p.source} ({config + ', ' if config else ''}split {p.spec})"
        kwargs = {"split": p.spec, "cache_dir": cfg.cache_dir or None}
        if not local:
            kwargs["revision"] = p.revision or None
        try:
            with contextlib.nullcontext() if local or hub_reachable() else _offline():
                ds = datasets.load_dataset(str(Path(p.source).expanduser()) if local else p.source, config, **kwargs)
        except Exception as e:  # no network, unknown id/config/split, unreadable files: all named, with the fix
            reason = f"{type(e).__name__}: {e}".strip()
            if local:
                raise TaskDataError(f"cannot load {name}: {reason}") from e
            if not hub_reachable() and isinstance(e, (ConnectionError, FileNotFoundError)):
                reason = "the Hub cannot be reached from this machine and the datasets cache has no copy"
            raise TaskDataError(f"cannot load {p.fmt} data {name} from the Hugging Face Hub: {reason}.\n"
                                + recipe_hint(task, plans)) from e
        rows += [(f"{name} row {i}", r) for i, r in enumerate(ds, 1)]
    return rows


def _read_local(spec: str, cfg: DataConfig) -> list[tuple[str, dict]]:
    import datasets

    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix in DATA_SUFFIXES)
    else:
        files = sorted(Path(f) for f in glob.glob(str(path))) if glob.has_magic(spec) else [path]
    if not files or not all(f.exists() for f in files):
        raise TaskDataError(f"data file not found: {spec} (a JSON, JSONL or Parquet file, a folder or a glob)")
    rows = []
    for f in files:
        if f.suffix not in DATA_SUFFIXES:
            raise TaskDataError(f"{f}: not a data file (expected {', '.join(DATA_SUFFIXES)})")
        if f.is_dir():
            raise TaskDataError(f"{f}: a folder, not a data file")
        with open(f, "rb") as fh:
            if not fh.read(1 << 16).strip() and not fh.read(1):
                raise TaskDataError(f"{f}: an empty file, no rows")
        try:
            ds = datasets.load_dataset(DATA_SUFFIXES[f.suffix], data_files=str(f), split="train",
                                       cache_dir=cfg.cache_dir or None)
        except Exception as e:
            cause = e.__cause__ or e
            raise TaskDataError(f"{f}: cannot be read as {DATA_SUFFIXES[f.suffix]} "
                                f"({str(cause) or type(cause).__name__})") from e
        rows += [(f"{f} row {i}", r) for i, r in enumerate(ds, 1)]
    return rows


def _stable_subset(rows: list[dict], n: int) -> list[dict]:
    """At most n rows, chosen by the hash of their id: the same for every run and order, nested as n grows."""
    if not n or len(rows) <= n:
        return rows
    keep = set(sorted((r["id"] for r in rows), key=lambda i: hashlib.sha256(i.encode()).hexdigest())[:n])
    return [r for r in rows if r["id"] in keep]


def _problems(p: SplitPlan, items: list[tuple[str, dict]], levels: list[int]) -> list[dict]:
    rows, per_subject, where_of = [], Counter(), {}
    for i, (where, raw) in enumerate(items):
        fields = LOADERS[p.fmt].parse(raw, where)
        if p.fmt == "math":  # numbered within the subject, so the subject and level filters keep ids stable
            pid = f"math-{p.split}-{fields['subject'] or 'unknown'}-{per_subject[fields['subject']]:04d}"
            per_subject[fields["subject"]] += 1
            if (p.subjects and fields["subject"] not in p.subjects) or (levels and fields["level"] not in levels):
                continue
        else:
            pid = fields.pop("id", None) or f"{p.fmt}-{p.split}-{i:05d}"
        if pid in where_of:
            raise TaskDataError(f"{where}: duplicate id {pid!r} (also {where_of[pid]})")
        where_of[pid] = where
        rows.append({"id": pid, "task": p.fmt, "question": prompt_text(p.fmt, fields), **fields})
    return _stable_subset(rows, p.limit)


def load_problems(task: str, cfg: DataConfig = DataConfig()) -> dict[str, list[dict]]:
    """Every split of `task` (train, test and, where there is one, ood) as problem rows (module docstring).

    Raises TaskDataError naming the dataset and the recipe lines for local files when the Hub cannot be
    reached, and naming the file, row and field of a malformed row.
    """
    plans = plan(task, cfg)
    out = {}
    for p in plans:
        items = _read_local(p.spec, cfg) if _is_local(p.spec) else _read_hub(p, cfg, task, plans)
        out[p.split] = _problems(p, items, cfg.levels)
        if not out[p.split]:
            raise TaskDataError(f"task {task}: no {p.split} problems left from {p.spec} (subjects {list(p.subjects)}, "
                                f"levels {cfg.levels})")
    return out


def write_problems(task: str, cfg: DataConfig, out_dir: str | Path) -> list[Path]:
    """Write <out_dir>/<split>.jsonl for each split of `task` and config.json (task, DataConfig, row counts);
    a split file of an earlier write that this config has no split for is removed."""
    out_dir = Path(out_dir)
    splits = load_problems(task, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for split in SPLITS:
        path = out_dir / f"{split}.jsonl"
        if split not in splits:
            path.unlink(missing_ok=True)
            continue
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in splits[split]),
                       encoding="utf-8")
        tmp.replace(path)
        paths.append(path)
    info = {"task": task, "data": asdict(cfg), "problems": {s: len(rows) for s, rows in splits.items()}}
    (out_dir / "config.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return paths


def prepare_problems(cfg, paths) -> list[Path]:
    """The prepare stage's problems for a real task: `cfg` a RunConfig, `paths` its artifacts.RunPaths."""
    return write_problems(cfg.task, cfg.data_config(), paths.root / "problems")
