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
