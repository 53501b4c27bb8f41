"""Committed notebooks are clean inputs (STYLE.md H9): no outputs, no execution counts, no widget state, and
exactly one cell tagged `parameters` in each stage notebook."""

import nbformat
import pytest

from selfimprove import pipeline

NOTEBOOKS = sorted(pipeline.NOTEBOOKS.glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a cell has outputs"
            assert cell.execution_count is None, f"{path.name}: a cell has an execution count"
    assert "widgets" not in nb.metadata, f"{path.name}: widget state in metadata"


@pytest.mark.parametrize("name", sorted(pipeline.STAGE_NOTEBOOKS.values()))
def test_stage_notebook_has_one_parameters_cell(name):
    nb = nbformat.read(pipeline.NOTEBOOKS / name, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: {len(tagged)} cells tagged parameters"
