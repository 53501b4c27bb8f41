"""Every notebook in a real browser, opened as a new user does after `make demo`: JupyterLab on
127.0.0.1 with a token, headless Chromium (Debian's `chromium`, driven by Python Playwright through
`executable_path`; no browser download). A copy of the project (selfimprove/, notebooks/, pyproject.toml) in a
temporary folder holds a study made as `make demo` makes one, from the tiny recipe (`selfimprove run tiny --set
'paradigm=[dpo,sft]' --set name=demo`, so data/runs/demo/{dpo,sft}/), and nothing is written into the checkout.
notebooks/50_analysis.ipynb, notebooks/60_explore.ipynb and the stage notebooks 10-40 are opened with their default
parameters, their kernels start in notebooks/, and Run All Cells must finish without an error output: 50 shows
every figure, 60 its widgets, and each stage notebook shows the study's first run's stage as it ran, without
computing it again or changing a file of that run. In 60 the test then chooses a transition set and a problem in
the improvement explorer and checks that the problem's verdicts and extracted answers, read here from the run's
Parquet files, appear in the page; then it chooses the other run of the study in the run dropdown and checks again.
The screenshots are kept in tests/artifacts/ (analysis.png, explore.png, train.png, sample.png, verify.png,
evaluate.png).

`make test` installs chromium (`make browser`); without it or without playwright this test skips, saying so.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from selfimprove import explore

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
# Checked before any fixture runs, so that a machine without them does not build the tiny run for nothing.
pytestmark = [
    pytest.mark.browser, pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed: `make browser` (part of "
                       "`make test`) installs it with `apt-get install -y chromium`, which needs root"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="Python playwright is not installed (it is in requirements/cpu.txt)"),
]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
BUDGET_S = 900  # a guard against a hang, not a timing: the whole test after the study exists (server, six
# notebooks' kernels, run all, clicks) took over 420 s with a two-run study beside it on two cores (our choice)
ANALYSIS, EXPLORE = "notebooks/50_analysis.ipynb", "notebooks/60_explore.ipynb"
STAGES = ("notebooks/10_train.ipynb", "notebooks/20_sample.ipynb", "notebooks/30_verify.ipynb",
          "notebooks/40_evaluate.ipynb")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
SHOWN = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook tab on show (Lumino marks hidden tabs lm-mod-hidden)


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def ms(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the browser test ran past its {BUDGET_S} s budget")
        return left * 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (the kernels the server started run in their own sessions), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _stop(server: subprocess.Popen, base: str, token: str) -> None:
    """Ask the server to shut down (it stops its kernels), then kill whatever of it is left, by pid."""
    pids = _descendants(server.pid)
    try:
        req = urllib.request.Request(f"{base}/api/shutdown", method="POST",
                                     headers={"Authorization": f"token {token}"})
        urllib.request.urlopen(req, timeout=5).close()
        server.wait(timeout=15)
    except Exception:  # noqa: BLE001 - any failure to stop politely ends in kills below
        pass
    for pid in [server.pid, *pids]:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    server.wait(timeout=10)


def _wait_ready(server: subprocess.Popen, base: str, token: str, log: Path, deadline: Deadline) -> None:
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        deadline.ms()
        time.sleep(0.5)


def _expected(run_dir: Path) -> tuple[str, str, list[str], list[str]]:
    """A problem to choose: from the lost set when there is one, else gained, else stable wrong or correct;
    within it, one whose responses have the most different verdicts. Returns its id, its set's label, and its
    verdicts and extracted answers in the order the card lists them, computed with pandas alone."""
    keys = ["iteration", "split", "problem_id", "decoding", "sample_idx"]  # a sample row's grade: graded_<split>
    frames = [pd.read_parquet(p).merge(pd.read_parquet(p.with_name(p.name.replace("samples_", "graded_"))), on=keys)
              .assign(t=int(p.parent.name[5:]), split=p.stem[len("samples_"):])
              for p in sorted(run_dir.glob("iter_*/samples_*.parquet"))]
    df = pd.concat(frames, ignore_index=True)
    test_its = sorted(df.loc[df["split"] == "test", "t"].unique())
    greedy = df[(df["split"] == "test") & (df["decoding"] == "greedy")]
    solved = {t: greedy[greedy["t"] == t].set_index("problem_id")["status"].eq("correct")
              for t in (test_its[0], test_its[-1])}
    a, b = solved[test_its[0]], solved[test_its[-1]].reindex(solved[test_its[0]].index)
    sets = {"lost": a & ~b, "gained": b & ~a, "stable wrong": ~a & ~b, "stable correct": a & b}
    label, mask = next((k, m) for k, m in sets.items() if m.any())
    variety = df[df["problem_id"].isin(a.index[mask])].groupby("problem_id")["status"].nunique()
    pid = max(variety.index, key=lambda p: (variety[p], p))
    h = df[df["problem_id"] == pid].assign(g=lambda d: d["decoding"] != "greedy")
    h = h.sort_values(["t", "split", "g", "sample_idx"], kind="stable")
    extracted = ["—" if v is None or pd.isna(v) else str(v) for v in h["extracted"]]
    return pid, label, list(h["status"]), extracted


@pytest.fixture(scope="module")
def project(tmp_path_factory, organism_root) -> Path:
    """A copy of the project holding the demo study of the tiny recipe, made from its top as `make demo` does
    (into data/runs/demo/; the organism from the test session's shared folder)."""
    root = tmp_path_factory.mktemp("project")
    skip = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints")
    for name in ("selfimprove", "notebooks"):
        shutil.copytree(explore.artifacts.CHECKOUT / name, root / name, ignore=skip)
    shutil.copy2(explore.artifacts.CHECKOUT / "pyproject.toml", root)
    log = root / "demo.log"
    with open(log, "w") as fh:
        done = subprocess.run([sys.executable, "-m", "selfimprove.cli", "run", "tiny", "--set", "paradigm=[dpo,sft]",
                               "--set", "name=demo", "--organism-root", str(organism_root)], cwd=root,
                              env=_env_for(root), stdout=fh, stderr=subprocess.STDOUT)
    assert done.returncode == 0, f"the demo study failed:\n{log.read_text()[-3000:]}"
    return root


def _env_for(root: Path, **extra) -> dict:
    """The environment with the project copy's selfimprove first: its kernels import the copy, which finds the
    copy's data/ as a checkout's."""
    return os.environ | {"PYTHONPATH": str(root)} | extra


@pytest.mark.skipif(explore.artifacts.CHECKOUT is None, reason="needs the sources (a checkout)")
def test_notebooks_run_with_their_defaults_in_jupyterlab(project, tmp_path):
    from playwright import sync_api

    study = project / "data" / "runs" / "demo"
    runs = explore.runs_of(study)
    assert [r.name for r in runs] == ["sft", "dpo"]
    expected = [_expected(r) for r in runs]
    token, port = secrets.token_hex(16), _free_port()
    base = f"http://127.0.0.1:{port}"
    # Config, data, runtime, settings and workspace folders of our own: nothing of the user's Jupyter is read
    # or written, and no workspace of an earlier session is restored. Kernels and lab extensions still come
    # from the environment's share/jupyter.
    env = _env_for(project, **{k: str(tmp_path / k.lower()) for k in (
        "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR",
        "JUPYTERLAB_WORKSPACES_DIR")})
    news = Path(env["JUPYTERLAB_SETTINGS_DIR"]) / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)  # no "get notified about Jupyter news?" toast over the screenshot
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    log = tmp_path / "jupyter.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={project}",
           "--LabApp.news_url=None",  # offline: no announcement feed, no update check
           "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate"]
    if os.geteuid() == 0:  # CI containers run as root; Jupyter refuses that unless told
        cmd.append("--allow-root")
    deadline = Deadline(BUDGET_S)
    with open(log, "w") as fh:
        server = subprocess.Popen(cmd, cwd=project, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        _wait_ready(server, base, token, log, deadline)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--disable-dev-shm-usage"])
            try:
                shown = study / "dpo"  # the stage notebooks' default: the study's first run, as it ran
                before = _files(shown)
                checks = [(ANALYSIS, _check_analysis), (EXPLORE, _check_explore)] + [(n, _check_stage) for n in STAGES]
                for name, check in checks:
                    page = browser.new_page(viewport={"width": 1400, "height": 1600})
                    shot = ARTIFACTS / f"{Path(name).stem.split('_', 1)[1]}.png"
                    try:
                        _run_all(page, base, token, name, deadline)
                        cwds = _kernel_cwds(server.pid)
                        assert cwds == {(project / "notebooks").resolve()}, f"kernels run in {cwds}"
                        if name == EXPLORE:
                            _operate(page, runs, expected, deadline)
                        check(_saved(page, project / name, deadline), project)
                    finally:
                        page.screenshot(path=str(shot), full_page=name == ANALYSIS)
                        print(f"screenshot: {shot}")
                        page.close()
                    assert shot.stat().st_size > 10_000, f"{shot} is too small to show the notebook"
            finally:
                browser.close()
        assert _files(shown) == before, "a stage notebook opened with its defaults changed the run it shows"
    except Exception as e:
        raise AssertionError(f"{e}\n--- jupyter lab log (last 3000 chars) ---\n{log.read_text()[-3000:]}") from e
    finally:
        _stop(server, base, token)


def _kernel_cwds(server_pid: int) -> set[Path]:
    """The working directories of the kernels the server started (ipykernel processes below it)."""
    cwds = set()
    for pid in _descendants(server_pid):
        try:
            if b"ipykernel" in Path(f"/proc/{pid}/cmdline").read_bytes():
                cwds.add(Path(os.readlink(f"/proc/{pid}/cwd")))
        except OSError:
            continue
    return cwds


def _outputs(nb) -> list[tuple[int, dict]]:
    return [(i, o) for i, c in enumerate(nb.cells) if c.cell_type == "code" for o in c.outputs]


def _check_ran(nb, name: str) -> None:
    errors = [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, o in _outputs(nb) if o.output_type == "error"]
    assert not errors, f"{name}: error outputs: {errors}"
    not_run = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.execution_count is None]
    assert not not_run, f"{name}: cells {not_run} did not run"


def _files(run: Path) -> dict[str, int]:
    """The run's files (its executed notebooks aside) and their modification times."""
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("*")
            if p.is_file() and "notebooks" not in p.parts and p.name != "run.lock"}


def _check_stage(nb, project: Path) -> None:
    """A stage notebook with its defaults shows the demo's first run's stage, done, without computing it."""
    name = nb.metadata.get("papermill", {}).get("input_path") or "a stage notebook"
    _check_ran(nb, name)
    text = "".join(o.get("text", "") for _, o in _outputs(nb) if o.output_type == "stream")
    assert "is a study: showing its first run, dpo" in text and "not computed again" in text, text[-2000:]


def _check_analysis(nb, project: Path) -> None:
    _check_ran(nb, ANALYSIS)
    images = {i for i, o in _outputs(nb) if "image/png" in o.get("data", {})}
    figure_cells = {i for i, c in enumerate(nb.cells) if "plots.save(fig" in c.source}
    assert figure_cells and figure_cells <= images, f"{ANALYSIS}: cells {sorted(figure_cells - images)} show no figure"
    assert (project / "figures" / "reversal_dashboard.png").exists(), "figures_dir 'figures' is not the project's"


def _check_explore(nb, project: Path) -> None:
    _check_ran(nb, EXPLORE)
    widgets = {i for i, o in _outputs(nb) if WIDGET_MIME in o.get("data", {})}
    explorers = {i for i, c in enumerate(nb.cells) if "_explorer(" in c.source}
    assert explorers and explorers <= widgets, f"{EXPLORE}: cells {sorted(explorers - widgets)} show no widget"


def _saved(page, path: Path, deadline: Deadline):
    """The notebook as the page holds it (outputs, execution counts), saved with Ctrl+S and read back."""
    before = path.stat().st_mtime_ns
    # the shown notebook (a tab restored from the workspace may hold another, hidden)
    page.locator(f"{SHOWN} .jp-Notebook").first.click(position={"x": 5, "y": 5}, timeout=deadline.ms())
    page.keyboard.press("Control+s")
    while path.stat().st_mtime_ns == before:
        page.wait_for_timeout(250)
        deadline.ms()
    page.wait_for_timeout(500)  # the save has been renamed into place; read it whole
    return nbformat.read(path, as_version=4)


def _kernel_connected(base: str, token: str, name: str) -> bool:
    """The notebook's kernel is running, idle, and the page holds a connection to it (JupyterLab shows "idle" in
    its toolbar before the kernel has even started, so the page alone cannot tell)."""
    try:
        with urllib.request.urlopen(f"{base}/api/sessions?token={token}", timeout=2) as r:
            sessions = json.load(r)
    except OSError:
        return False
    return any(s.get("path") == name and s["kernel"].get("execution_state") == "idle"
               and s["kernel"].get("connections", 0) >= 1 for s in sessions)


def _run_all(page, base: str, token: str, name: str, deadline: Deadline) -> None:
    """Open the notebook, wait for its kernel (accepting JupyterLab's "Select Kernel" dialog, python3 being
    preselected, if it asks), Run > Run All Cells, and wait until no cell is queued or running any more."""
    # ?reset: a fresh workspace, so that the notebooks opened before this one are not restored beside it
    page.goto(f"{base}/lab/tree/{name}?reset&token={token}", timeout=deadline.ms())
    page.locator(f"{SHOWN} .jp-Cell").first.wait_for(timeout=deadline.ms())
    accept = page.locator(".jp-Dialog .jp-mod-accept")
    idle = page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]')
    while not (_kernel_connected(base, token, name) and idle.count()):
        if accept.count() and accept.first.is_visible():
            accept.first.click(timeout=deadline.ms())
        page.wait_for_timeout(500)
        deadline.ms()
    # Run > Run All Cells, by the menu's labels (JupyterLab 4).
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click(timeout=deadline.ms())
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click(timeout=deadline.ms())
    prompts = page.locator(f"{SHOWN} .jp-CodeCell .jp-InputPrompt")
    while True:  # every prompt is [n] or, after an error stopped the run, [ ]; none is [*]
        texts = [t.strip() for t in prompts.all_inner_texts()]
        if texts and re.fullmatch(r"\[\d+\]:", texts[0]) and not any("*" in t for t in texts) \
                and _kernel_connected(base, token, name):
            return
        page.wait_for_timeout(500)
        deadline.ms()


def _choose(page, pid, set_label, statuses, extracted, deadline: Deadline) -> None:
    page.wait_for_selector(".si-improvement .si-table table.si-transitions", timeout=deadline.ms())
    page.locator(".si-set select").select_option(label=set_label, timeout=deadline.ms())
    page.wait_for_selector(f'.si-problem select option[value="{pid}"]', state="attached", timeout=deadline.ms())
    page.locator(".si-problem select").select_option(value=pid, timeout=deadline.ms())
    card = page.locator(".si-problem-card")
    card.locator("h4", has_text=pid).wait_for(timeout=deadline.ms())
    shown = card.locator("td.si-status").all_inner_texts()
    assert shown == statuses, f"verdicts of {pid} in the page {shown} != in the run's Parquet files {statuses}"
    got = card.locator("td.si-extracted").all_inner_texts()
    assert got == extracted, f"extracted answers of {pid} in the page {got} != in the Parquet files {extracted}"
    card.scroll_into_view_if_needed(timeout=deadline.ms())  # the screenshot shows the card
    print(f"problem {pid} ({set_label}): verdicts {shown}")


def _operate(page, runs: list[Path], expected: list, deadline: Deadline) -> None:
    """In the explore notebook: the first run of the study is shown; a problem's card matches its Parquet files;
    the run dropdown (one above each explorer, the same widget) switches both explorers to the other run."""
    pickers = page.locator(".si-run select")
    assert pickers.count() == 2, f"{pickers.count()} run dropdowns, expected one above each explorer"
    assert pickers.first.input_value() == runs[0].name  # an ipywidgets option's DOM value is its label
    # The diversity explorer ran too: its heatmap image (embeddings of the samples) is there.
    page.wait_for_selector(".si-diversity img.si-heatmap[src^='blob:']", state="attached", timeout=deadline.ms())
    _choose(page, *expected[0], deadline)
    shown = [page.locator(css).element_handle(timeout=deadline.ms()) for css in (".si-improvement", ".si-diversity")]
    pickers.first.select_option(label=runs[1].name, timeout=deadline.ms())
    for old in shown:  # both explorers are made again for the chosen run
        page.wait_for_function("el => !el.isConnected", arg=old, timeout=deadline.ms())
    assert pickers.last.input_value() == runs[1].name, "the two run dropdowns disagree"
    page.wait_for_selector(".si-diversity img.si-heatmap[src^='blob:']", state="attached", timeout=deadline.ms())
    _choose(page, *expected[1], deadline)
