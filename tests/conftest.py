"""Shared fixtures. The tiny organism is built once per test session and shared by the pipeline tests."""

from pathlib import Path

import pytest

from selfimprove import pipeline


@pytest.fixture(scope="session")
def organism_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("organism")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, organism_root) -> Path:
    """A complete run of the `tiny` recipe (T = 2), uninterrupted: the reference for the resume tests."""
    runs = tmp_path_factory.mktemp("runs")
    return pipeline.run("tiny", runs_root=runs, organism_root=organism_root, figures_dir=None, log=lambda *a: None)


@pytest.fixture
def write_graded():
    """`write_graded(df, samples_path)`: a graded table written as a run holds it (_write_graded)."""
    return _write_graded


def _write_graded(df, samples_path: Path) -> None:
    """Write a graded sample table (sample columns + extracted/status/correct) as a run holds it: the sample
    table at `samples_path` (iter_<t>/samples_<split>.parquet) and its grades beside it (graded_<split>)."""
    from selfimprove import artifacts
    from selfimprove.runs import GRADE_COLUMNS, GRADE_KEYS

    df = df.reset_index(drop=True)
    if "extracted" not in df.columns:
        df = df.assign(extracted=None)
    grades = df[GRADE_KEYS + [c for c in GRADE_COLUMNS if c in df.columns]]
    artifacts.write_parquet(df.drop(columns=[c for c in GRADE_COLUMNS if c in df.columns]), samples_path)
    artifacts.write_parquet(grades, samples_path.with_name(samples_path.name.replace("samples_", "graded_", 1)))
