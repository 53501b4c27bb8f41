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


STAGE_ORDER = ("train", "sample", "verify", "evaluate")  # the stages of an iteration, in the order they run
RERUN = ("`selfimprove run` with the recipe and settings that made the run makes it again (a stage whose outputs "
         "are missing or not as recorded runs again)")
RESUME = "`selfimprove run` with the recipe and settings that made the run resumes it"


def remedy(path: Path) -> str:
    """How to make a run's file again, for a message that names it: `selfimprove metrics` for the evaluate
    stage's outputs (metrics.json, per_problem.parquet), else `selfimprove run` (RERUN).

    >>> remedy(Path("runs/r/iter_2/per_problem.parquet"))
    '`selfimprove metrics runs/r` writes it again from the sample tables'
    """
    path = Path(path)
    if path.name in ("metrics.json", "per_problem.parquet"):
        root = path.parent.parent if iteration_of(path.parent.name) is not None else path.parent
        return f"`selfimprove metrics {root}` writes it again from the sample tables"
    return RERUN


def _read_parquet(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    try:
        return pd.read_parquet(path, columns=columns)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError: a file cut short or not Parquet
        why = " ".join(str(e).split())
        raise RunError(f"{path}: cannot be read, the file is damaged ({why}); {remedy(path)}") from None


@dataclass(frozen=True)
class Gap:
    """A sample table of a run that cannot be read with complete grades (Run.gaps)."""

    iteration: int
    split: str
    problem: str  # one line, naming the iteration and the file
    expected: bool  # the run recorded it (its stage is done, or metrics.json was computed from it): lost or stale;
    # False: an unfinished run has not made it yet


REGRADE = "; the verify stage of this iteration has to run again"  # join_grades' advice (Run.gaps gives its own)


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
                       f"without a grade){REGRADE}")
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
        """iter_<t>/metrics.json; RunError if it is not valid JSON, or not the metrics of iteration t."""
        p = self.paths.metrics(t)
        try:
            m = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunError(f"{p}: not valid JSON ({e}); {remedy(p)}") from None
        if not isinstance(m, dict) or m.get("iteration") != t:
            raise RunError(f"{p}: not the metrics of iteration {t} (a JSON object with \"iteration\": {t}); "
                           f"{remedy(p)}")
        return m

    def all_metrics(self) -> list[dict]:
        """Every iter_<t>/metrics.json, in iteration order."""
        return [self.metrics(t) for t in self.iterations("metrics.json")]

    def pass1(self, split: str = "test") -> dict[int, float]:
        """{t: greedy pass@1 on `split`} from metrics.json, for the iterations that evaluated that split."""
        return {m["iteration"]: m[split]["pass@1"] for m in self.all_metrics() if "pass@1" in m.get(split, {})}

    def deep_metrics(self) -> dict:
        """deep_metrics.json, the deep evaluation's comparisons (deep.py); {} when the run has none. RunError for
        a damaged one."""
        p = self.paths.deep_metrics
        if not p.exists():
            return {}
        try:
            m = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunError(f"{p}: not valid JSON ({e}); `selfimprove run` with the run's recipe writes it again") \
                from None
        if not isinstance(m, dict) or not isinstance(m.get("table", []), list):
            raise RunError(f"{p}: not the deep evaluation's metrics (a JSON object with a \"table\" list)")
        return m

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
        """iter_<t>/per_problem.parquet: one row per test/OOD problem (the evaluate stage writes it); RunError
        naming it when it is damaged."""
        return _read_parquet(self.paths.per_problem(t))

    def per_problem_tables(self) -> dict[int, pd.DataFrame]:
        """{t: iter_<t>/per_problem.parquet} for every iteration that has one."""
        return {t: self.per_problem(t) for t in self.iterations("per_problem.parquet")}

    def last_done(self) -> str | None:
        """The key of the last stage the manifest records as done, in the order the stages run ("prepare",
        then "<t>/<stage>"); None before any."""
        done = [k for k, st in self.manifest()["stages"].items() if st.get("state") == "done"]

        def order(key: str) -> tuple:
            t, _, stage = key.partition("/")
            return (int(t), STAGE_ORDER.index(stage)) if t.isdigit() and stage in STAGE_ORDER else (0, 0)

        return max(done, key=order) if done else None

    def check_evaluated(self) -> list[int]:
        """The evaluated iterations (those with a metrics.json), ascending, each with its metrics.json and
        per_problem.parquet read: what a report needs, checked before it writes anything. RunError, naming the
        file and how to make it again, for a damaged or missing one, and for a run stopped before its first
        evaluate stage."""
        evaluated = self.iterations("metrics.json")
        if not evaluated:
            last = self.last_done()
            metrics_too = (f", or `selfimprove metrics {self.root}` evaluates the iterations sampled and graded so "
                           "far" if self.iterations("graded_test.parquet") else "")
            raise RunError(f"{self.root}: no iteration is evaluated yet (no iter_<t>/metrics.json; "
                           f"{f'the last stage done is {last}' if last else 'no stage is done'}): the run stopped "
                           f"before its first evaluate stage; {RESUME}{metrics_too}")
        for t in evaluated:
            self.metrics(t)
            p = self.paths.per_problem(t)
            if not p.exists():
                raise RunError(f"{p} does not exist, though {self.paths.metrics(t).name} beside it does; {remedy(p)}")
            self.per_problem(t)
        return evaluated

    def gaps(self) -> list[Gap]:
        """Every sample table of the run that cannot be read with complete grades, by iteration and split:
        missing, not graded (no graded table), or with sample rows that have no grade or no `correct` value.
        An iteration's tables: those its sample stage recorded (manifest.json) and those on disk; one that has
        begun (a folder, or a stage recorded) without a sample table lacks its test table. Iterations past the
        recipe's T, and those not begun, have none. A table that cannot be read at all raises RunError."""
        stages, last = {}, None
        if self.paths.manifest.exists():
            data = self.manifest()
            stages, last = data["stages"], data["config"].get("iterations")
        begun = set(self.iterations()) | {int(k.split("/")[0]) for k in stages if k.split("/")[0].isdigit()}
        return [g for t in sorted(x for x in begun if last is None or x <= last) for g in self._gaps(t, stages)]

    def _gaps(self, t: int, stages: dict) -> list[Gap]:
        """The gaps of iteration t (Run.gaps); `stages`: the manifest's."""
        def done(stage: str) -> bool:
            return stages.get(f"{t}/{stage}", {}).get("state") == "done"

        evaluated = self.paths.metrics(t).exists()

        def why(stage: str) -> str:
            if done(stage):
                return f"though the {stage} stage of iteration {t} is recorded as done"
            if evaluated:
                return f"though {self.paths.metrics(t).name} of iteration {t} was computed from it"
            return f"the {stage} stage of iteration {t} has not run yet"

        recorded = {Path(rel).name for rel in stages.get(f"{t}/sample", {}).get("outputs", {})}
        splits = [s for s in SPLITS if f"samples_{s}.parquet" in recorded or self.paths.samples(t, s).exists()]
        out = []
        for s in splits or ["test"]:
            sp, gp = self.paths.samples(t, s), self.paths.graded(t, s)
            if not sp.exists():
                out.append(Gap(t, s, f"iteration {t}: {sp} does not exist ({why('sample')})",
                               done("sample") or evaluated))
                continue
            if not gp.exists():
                out.append(Gap(t, s, f"iteration {t}: the {s} samples are not graded: {gp} does not exist "
                                     f"({why('verify')})", done("verify") or evaluated))
                continue
            samples, grades = _read_parquet(sp, GRADE_KEYS), _read_parquet(gp)
            if lacks := [c for c in GRADE_KEYS + GRADE_COLUMNS if c not in grades.columns]:
                out.append(Gap(t, s, f"iteration {t}: {gp}: no column(s) {lacks}", True))
                continue
            try:
                correct = join_grades(samples, grades, str(gp))["correct"]
            except RunError as e:
                out.append(Gap(t, s, f"iteration {t}: {str(e).removesuffix(REGRADE)}", done("verify") or evaluated))
                continue
            if n := int(correct.isna().sum()):
                out.append(Gap(t, s, f"iteration {t}: {gp}: {n} graded row(s) with no 'correct' value",
                               done("verify") or evaluated))
        return out

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
