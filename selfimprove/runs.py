"""Reading a run directory (artifacts.RunPaths writes it) and a study folder: the one place that knows its layout.

    data/runs/<run>/manifest.json                 the run's config (`config`) and its stages
    data/runs/<run>/iter_<t>/samples_<split>.parquet, graded_<split>.parquet, metrics.json, per_problem.parquet
    data/runs/<study>/<paradigm>/...              a study: one run per paradigm

`Run` answers what the report, the verdict, the figures, the grid and the audit ask of a run: its
iterations (found here and nowhere else), the metrics of each, its sample and per-problem tables, the graded
sample table (`Run.graded`: the sample table joined with the verify stage's grades by `join_grades`, the one
join; every reader of `status` / `correct` goes through it, or through `Run.grades` for the grades alone),
per-problem greedy correctness (`greedy_correct`, the one computation), the best iterate M_t*
(`best_iterate`, the one rule: highest greedy test pass@1 among t >= 2, the paper's Figure 1) and the verdict
thresholds the run was made with (`Run.thresholds`). `Study` lists the runs of a study folder.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import artifacts
from .config import SPLITS

# The splits a run evaluates with greedy decoding (pass@1, the verdict): every split but the training one.
EVAL_SPLITS = tuple(s for s in SPLITS if s != "train")
BEST_FROM = 2  # M_t* is chosen among t >= 2: M1 is the start, not a result of self-improvement
_ITER = re.compile(r"iter_(\d+)")
# The graded table (iter_<t>/graded_<split>.parquet, the verify stage): these keys of a sample row, its grade.
GRADE_KEYS = ["iteration", "split", "problem_id", "decoding", "sample_idx"]
GRADE_COLUMNS = ["extracted", "status", "correct"]


class RunError(ValueError):
    """A run's files cannot be read; the message names the file and what is wrong."""


def iteration_of(name: str) -> int | None:
    """t of a folder named iter_<t>, else None.

    >>> iteration_of("iter_12"), iteration_of("iter_x"), iteration_of("report")
    (12, None, None)
    """
    m = _ITER.fullmatch(name)
    return int(m.group(1)) if m else None


def best_iterate(pass1: Mapping[int, float]) -> int | None:
    """M_t*: the iteration t >= 2 with the highest greedy test pass@1 (the earliest on a tie; missing values
    ignored), None without one. In: {t: pass@1}. The package's one definition (verdict, figures, grid, report).

    >>> best_iterate({1: 0.6, 2: 0.47, 3: 0.5, 4: 0.5})
    3
    >>> best_iterate({1: 0.4}) is None
    True
    """
    later = {t: v for t, v in pass1.items() if t >= BEST_FROM and v is not None and not math.isnan(v)}
    return max(sorted(later), key=lambda t: later[t]) if later else None


def greedy_correct(samples: pd.DataFrame) -> pd.Series:
    """Per problem (index problem_id, sorted): the share of its greedy responses graded correct, 1.0 or 0.0
    with the one greedy response a problem has; problems without a greedy response are absent. In: a graded
    sample table (columns problem_id, decoding, correct). The package's one computation of it.

    >>> df = pd.DataFrame({"problem_id": ["b", "a", "a"], "decoding": ["greedy", "greedy", "sample"],
    ...                    "correct": [True, False, True]})
    >>> greedy_correct(df).to_dict()
    {'a': 0.0, 'b': 1.0}
    """
    g = samples[samples["decoding"] == "greedy"].groupby("problem_id", sort=True)["correct"]
    return (g.sum().astype(int) / g.size()).rename("greedy_correct")


def _read_parquet(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    try:
        return pd.read_parquet(path, columns=columns)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError: a file cut short or not Parquet
        raise RunError(f"{path}: cannot be read, the file is damaged ({e})") from None


def join_grades(samples: pd.DataFrame, grades: pd.DataFrame, where: str = "the graded table") -> pd.DataFrame:
    """The sample table with the grades' GRADE_COLUMNS added on the right, in the sample table's row order
    and index; every sample row must have exactly one grade (RunError names `where` otherwise).

    >>> s = pd.DataFrame({"iteration": 1, "split": "test", "problem_id": ["b", "a"], "decoding": "greedy",
    ...                   "sample_idx": 0, "response": ["x", "y"]})
    >>> g = pd.DataFrame({"iteration": 1, "split": "test", "problem_id": ["a", "b"], "decoding": "greedy",
    ...                   "sample_idx": 0, "extracted": ["1", None], "status": ["correct", "no_answer"],
    ...                   "correct": [True, False]})
    >>> join_grades(s, g)[["problem_id", "status", "correct"]].values.tolist()
    [['b', 'no_answer', False], ['a', 'correct', True]]
    """
    if grades.duplicated(GRADE_KEYS).any():
        raise RunError(f"{where}: repeated row keys {GRADE_KEYS}")
    keyed = samples[GRADE_KEYS].merge(grades[GRADE_KEYS + GRADE_COLUMNS], on=GRADE_KEYS, how="left",
                                      validate="many_to_one", indicator=True)
    missing = int((keyed["_merge"] != "both").sum())
    if missing or len(grades) != len(samples):
        raise RunError(f"{where}: grades {len(grades)} rows for {len(samples)} sample rows ({missing} sample rows "
                       "without a grade); the verify stage of this iteration has to run again")
    out = samples.drop(columns=[c for c in GRADE_COLUMNS if c in samples.columns])
    for c in GRADE_COLUMNS:
        out[c] = keyed[c].to_numpy()
    return out


@dataclass(frozen=True)
class Run:
    """One run directory, read-only. Every method reads the files afresh (a run may still be running)."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @property
    def paths(self) -> artifacts.RunPaths:
        return artifacts.RunPaths(self.root)

    @property
    def name(self) -> str:
        return self.root.name

    def manifest(self) -> dict:
        """manifest.json's content; FileNotFoundError without one, artifacts.ManifestError for a damaged one."""
        if not self.paths.manifest.exists():
            raise FileNotFoundError(f"{self.paths.manifest} not found: {self.root} is not a run directory")
        return artifacts.read_manifest(self.paths.manifest)

    def config(self) -> dict:
        """The recorded config (the recipe as the run resolved it), a plain dict."""
        return self.manifest()["config"]

    def iterations(self, having: str | None = None) -> list[int]:
        """The iterations t with an iter_<t>/ folder, ascending; with `having` (a file name such as
        "metrics.json" or "samples_test.parquet") only those whose folder holds that file."""
        if not self.root.is_dir():
            return []
        found = [(t, d) for d in self.root.iterdir() if d.is_dir() and (t := iteration_of(d.name)) is not None]
        return sorted(t for t, d in found if having is None or (d / having).exists())

    def metrics(self, t: int) -> dict:
        """iter_<t>/metrics.json; RunError if it is not valid JSON."""
        p = self.paths.metrics(t)
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise RunError(f"{p}: not valid JSON ({e}); `selfimprove metrics {self.root}` writes it again from "
                           "the sample tables") from None

    def all_metrics(self) -> list[dict]:
        """Every iter_<t>/metrics.json, in iteration order."""
        return [self.metrics(t) for t in self.iterations("metrics.json")]

    def pass1(self, split: str = "test") -> dict[int, float]:
        """{t: greedy pass@1 on `split`} from metrics.json, for the iterations that evaluated that split."""
        return {m["iteration"]: m[split]["pass@1"] for m in self.all_metrics() if "pass@1" in m.get(split, {})}

    def best_iterate(self) -> int | None:
        """M_t* of this run (best_iterate on its test pass@1), None before an iterate t >= 2 is evaluated."""
        return best_iterate(self.pass1("test"))

    def evaluate_settings(self) -> dict:
        """The evaluate settings of the newest evaluated iteration (bootstrap, seed, ...), {} before any."""
        ms = self.all_metrics()
        return ms[-1].get("evaluate", {}) if ms else {}

    def sample_files(self) -> list[tuple[int, str, Path]]:
        """(t, split, path) of every iter_<t>/samples_<split>.parquet, by iteration then split (SPLITS order)."""
        return [(t, s, self.paths.samples(t, s)) for t in self.iterations() for s in SPLITS
                if self.paths.samples(t, s).exists()]

    def samples(self, t: int, split: str, columns: list[str] | None = None) -> pd.DataFrame:
        """The sample table of M_t on `split` (FileNotFoundError when the run has none)."""
        p = self.paths.samples(t, split)
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist; iterations with {split} samples: "
                                    f"{self.iterations(p.name)}")
        return _read_parquet(p, columns)

    def grades(self, t: int, split: str, columns: list[str] | None = None) -> pd.DataFrame:
        """iter_<t>/graded_<split>.parquet alone: GRADE_KEYS and GRADE_COLUMNS of each graded sample row
        (FileNotFoundError before the verify stage has graded it)."""
        p = self.paths.graded(t, split)
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist: the verify stage of iteration {t} has not graded the "
                                    f"{split} samples; iterations with {split} grades: {self.iterations(p.name)}")
        return _read_parquet(p, columns)

    def graded_files(self) -> list[tuple[int, str, Path]]:
        """(t, split, path) of every iter_<t>/graded_<split>.parquet, by iteration then split (SPLITS order)."""
        return [(t, s, self.paths.graded(t, s)) for t in self.iterations() for s in SPLITS
                if self.paths.graded(t, s).exists()]

    def graded(self, t: int, split: str, columns: list[str] | None = None) -> pd.DataFrame:
        """M_t's graded sample table on `split`: the sample table (in its row order, with its dtypes) with the
        verify stage's `extracted`, `status` and `correct` (join_grades). `columns` picks columns of the
        result (the join keys are read regardless). FileNotFoundError without samples or grades."""
        grades = self.grades(t, split)
        wanted = None if columns is None else [c for c in columns if c not in GRADE_COLUMNS]
        samples = self.samples(t, split, None if wanted is None else list(dict.fromkeys(GRADE_KEYS + wanted)))
        out = join_grades(samples, grades, str(self.paths.graded(t, split)))
        return out if columns is None else out[list(columns)]

    def greedy_correct(self, t: int, split: str = "test") -> pd.Series:
        """Per-problem greedy correctness of M_t on `split` (greedy_correct of its graded sample table)."""
        return greedy_correct(self.graded(t, split, columns=["problem_id", "decoding", "correct"]))

    def greedy_answers(self, t: int, split: str = "test") -> pd.Series:
        """Per problem (index problem_id): M_t's greedy final answer on `split` (the grader's `extracted`;
        None where it gave none)."""
        df = self.graded(t, split, columns=["problem_id", "decoding", "extracted"])
        return df[df["decoding"] == "greedy"].groupby("problem_id", sort=True)["extracted"].first()

    def answers_changed(self, t: int, split: str = "test") -> float | None:
        """The share of `split`'s problems whose greedy final answer from M_t differs from M(t-1)'s (a missing
        answer counts as an answer): how far iteration t moved the model (issue 17: at least 10% for training
        that moves it). None for t = 1 or without both iterates' grades."""
        if t < 2:
            return None
        try:
            a, b = self.greedy_answers(t - 1, split), self.greedy_answers(t, split)
        except FileNotFoundError:
            return None
        ids = a.index.intersection(b.index)
        if not len(ids):
            return None
        x, y = a.loc[ids].fillna("\0none"), b.loc[ids].fillna("\0none")
        return float((x != y).mean())

    def per_problem(self, t: int) -> pd.DataFrame:
        """iter_<t>/per_problem.parquet: one row per test/OOD problem (the evaluate stage writes it)."""
        return pd.read_parquet(self.paths.per_problem(t))

    def per_problem_tables(self) -> dict[int, pd.DataFrame]:
        """{t: iter_<t>/per_problem.parquet} for every iteration that has one."""
        return {t: self.per_problem(t) for t in self.iterations("per_problem.parquet")}

    def thresholds(self, overrides: Mapping | None = None):
        """The verdict thresholds of this run: schema.Thresholds from its recorded config's `verdict` section
        (absent in older runs: the defaults), with `overrides` ({name: value}) over them. A bad name or value
        raises config.RecipeError naming the manifest."""
        from .schema import Thresholds, build

        recorded = self.config().get("verdict") or {}
        th = build(Thresholds, recorded, f"{self.paths.manifest}: config 'verdict'")
        return build(Thresholds, {**recorded, **overrides}, "--threshold") if overrides else th


@dataclass(frozen=True)
class Study:
    """A folder of runs (one per paradigm): its subfolders that hold a manifest.json."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @staticmethod
    def is_run(path: str | Path) -> bool:
        """Whether `path` is a run directory (it holds a manifest.json)."""
        return (Path(path) / "manifest.json").exists()

    def run_dirs(self) -> list[Path]:
        """The run directories of the study, by name; [] for a run directory or a folder without runs."""
        if self.is_run(self.root) or not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and self.is_run(p))

    def runs(self) -> list[Run]:
        """The runs of the study, in run_dirs order."""
        return [Run(p) for p in self.run_dirs()]
