"""Committed notebooks are clean inputs: no outputs, no execution counts, no widget state, no
execution timing, the python3 kernelspec, exactly one cell tagged `parameters` in each stage notebook (and in
every other notebook that has parameters), and each is a fixed point of nbstripout (so the git filter that
.gitattributes names would change nothing)."""

import copy

import nbformat
import nbstripout
import pytest

from selfimprove import pipeline

NOTEBOOKS = sorted(pipeline.NOTEBOOKS.glob("*.ipynb"))
IDS = [p.name for p in NOTEBOOKS]
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"  # an output that displays a widget (ipywidgets)
# Cell metadata that records an execution: JupyterLab's `recordTiming` (execution), the ExecuteTime
# extension, papermill's per-cell state; notebook metadata papermill writes into an executed copy.
TIMING_CELL_KEYS = ("execution", "ExecuteTime", "papermill")
TIMING_NOTEBOOK_KEYS = ("papermill",)


def _parameters_cells(nb) -> list:
    return [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        where = f"{path.name}, cell {i}"
        assert "widgets" not in cell.metadata, f"{where}: widget state in the cell's metadata"
        for key in TIMING_CELL_KEYS:
            assert key not in cell.metadata, f"{where}: execution record {key!r} in the cell's metadata"
        if cell.cell_type == "code":
            assert not any(WIDGET_MIME in o.get("data", {}) for o in cell.outputs), f"{where}: a widget output"
            assert cell.outputs == [], f"{where}: the cell has outputs"
            assert cell.execution_count is None, f"{where}: the cell has an execution count"
    assert "widgets" not in nb.metadata, f"{path.name}: widget state in the notebook's metadata"
    for key in TIMING_NOTEBOOK_KEYS:
        assert key not in nb.metadata, f"{path.name}: {key!r} in the notebook's metadata (an executed copy?)"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernelspec is not python3"


# What the nbstripout command strips besides outputs and counts: its default extra keys (nbstripout 0.9.1,
# nbstripout/_nbstripout.py, main()).
NBSTRIPOUT_EXTRA_KEYS = ["metadata.signature", "metadata.widgets", "cell.metadata.collapsed",
                         "cell.metadata.ExecuteTime", "cell.metadata.execution", "cell.metadata.heading_collapsed",
                         "cell.metadata.hidden", "cell.metadata.scrolled"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_an_nbstripout_fixed_point(path):
    # keep_id: the committed cell ids are kept (README, 'Explore in JupyterLab', installs the filter so).
    nb = nbformat.read(path, as_version=4)
    stripped = nbstripout.strip_output(copy.deepcopy(nb), keep_output=None, keep_count=False, keep_id=True,
                                       extra_keys=NBSTRIPOUT_EXTRA_KEYS)
    assert stripped == nb, f"{path.name}: nbstripout would change it"


REQUIRED = sorted(pipeline.STAGE_NOTEBOOKS.values()) + ["60_explore.ipynb"]


@pytest.mark.parametrize("name", REQUIRED)
def test_notebook_has_one_parameters_cell(name):
    nb = nbformat.read(pipeline.NOTEBOOKS / name, as_version=4)
    tagged = _parameters_cells(nb)
    assert len(tagged) == 1, f"{name}: {len(tagged)} cells tagged parameters"
    assert tagged[0].cell_type == "code", f"{name}: the parameters cell is not a code cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_no_notebook_has_two_parameters_cells(path):
    # papermill injects its parameters after the first tagged cell; a second one would silently win.
    tagged = _parameters_cells(nbformat.read(path, as_version=4))
    assert len(tagged) <= 1, f"{path.name}: {len(tagged)} cells tagged parameters"


DEFECTS = {  # name: (how a notebook gets dirty, what the check says)
    "outputs": (lambda nb, c: c.outputs.append(nbformat.v4.new_output("stream", text="hi")), "has outputs"),
    "count": (lambda nb, c: setattr(c, "execution_count", 3), "execution count"),
    "widget_output": (lambda nb, c: c.outputs.append(nbformat.v4.new_output(
        "display_data", data={WIDGET_MIME: {"model_id": "x", "version_major": 2, "version_minor": 0}})),
        "a widget output"),
    "widget_state": (lambda nb, c: nb.metadata.update(widgets={"application/vnd.jupyter.widget-state+json": {}}),
                     "widget state in the notebook"),
    "cell_widgets": (lambda nb, c: c.metadata.update(widgets={}), "widget state in the cell"),
    "timing": (lambda nb, c: c.metadata.update(execution={"iopub.execute_input": "2026-01-01T00:00:00Z"}),
               "execution record"),
    "papermill": (lambda nb, c: nb.metadata.update(papermill={"parameters": {}}), "'papermill'"),
    "kernel": (lambda nb, c: nb.metadata.kernelspec.update(name="other"), "kernelspec"),
}


@pytest.mark.parametrize("defect", DEFECTS)
def test_checks_catch_a_dirty_notebook(defect, tmp_path):
    """Each check fails on a notebook with its defect (the checks can fail)."""
    nb = nbformat.read(pipeline.NOTEBOOKS / "60_explore.ipynb", as_version=4)
    code = next(c for c in nb.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", []))
    make_dirty, message = DEFECTS[defect]
    make_dirty(nb, code)
    dirty = tmp_path / "dirty.ipynb"
    nbformat.write(nb, dirty)
    with pytest.raises(AssertionError, match=message):
        test_notebook_is_clean(dirty)


def test_nbstripout_check_catches_outputs(tmp_path):
    nb = nbformat.read(pipeline.NOTEBOOKS / "60_explore.ipynb", as_version=4)
    nb.cells[-1].outputs = [nbformat.v4.new_output("stream", text="hi")]
    nb.cells[-1].metadata["execution"] = {"iopub.execute_input": "2026-01-01T00:00:00Z"}
    dirty = tmp_path / "dirty.ipynb"
    nbformat.write(nb, dirty)
    with pytest.raises(AssertionError, match="nbstripout would change it"):
        test_notebook_is_an_nbstripout_fixed_point(dirty)
