"""The explore notebook in a real browser: JupyterLab on 127.0.0.1 with a token, headless Chromium (Debian's
`chromium`, driven by Python Playwright through `executable_path`; no browser download), Run All Cells on a
copy of notebooks/60_explore.ipynb pointed at the tiny run, then choose a transition set and a problem in
the improvement explorer and check that the problem's id, verdicts and extracted answers, read here from the
run's Parquet files, appear in the page. The screenshot is kept at tests/artifacts/explore.png.

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

from selfimprove import pipeline

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
BUDGET_S = 180  # the whole test after the tiny run exists: server, kernel, run all, clicks (our choice)
NOTEBOOK = "60_explore.ipynb"


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


def _notebook_copy(folder: Path, run_dir: Path) -> Path:
    nb = nbformat.read(pipeline.NOTEBOOKS / NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    source, n = re.subn(r"^run_dir: str = .*$", f"run_dir: str = {str(run_dir)!r}", params.source, flags=re.M)
    assert n == 1, f"{NOTEBOOK}: no `run_dir: str = ...` line in its parameters cell"
    params.source = re.sub(r"^cache_dir: str = .*$", f"cache_dir: str = {str(folder / 'cache')!r}", source,
                           flags=re.M)
    path = folder / NOTEBOOK
    nbformat.write(nb, path)
    return path


def test_explore_notebook_in_jupyterlab(tiny_run, tmp_path):
    from playwright import sync_api

    pid, set_label, statuses, extracted = _expected(Path(tiny_run))
    root = tmp_path / "lab"
    root.mkdir()
    _notebook_copy(root, Path(tiny_run))
    token, port = secrets.token_hex(16), _free_port()
    base = f"http://127.0.0.1:{port}"
    # Config, data, runtime, settings and workspace folders of our own: nothing of the user's Jupyter is read
    # or written, and no workspace of an earlier session is restored. Kernels and lab extensions still come
    # from the environment's share/jupyter.
    env = os.environ | {k: str(tmp_path / k.lower()) for k in (
        "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR",
        "JUPYTERLAB_WORKSPACES_DIR")}
    news = Path(env["JUPYTERLAB_SETTINGS_DIR"]) / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)  # no "get notified about Jupyter news?" toast over the screenshot
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    log = tmp_path / "jupyter.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.news_url=None",  # offline: no announcement feed, no update check
           "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate"]
    if os.geteuid() == 0:  # CI containers run as root; Jupyter refuses that unless told
        cmd.append("--allow-root")
    deadline = Deadline(BUDGET_S)
    with open(log, "w") as fh:
        server = subprocess.Popen(cmd, cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    shot = ARTIFACTS / "explore.png"
    try:
        _wait_ready(server, base, token, log, deadline)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--disable-dev-shm-usage"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1600})
                try:
                    _operate(page, base, token, pid, set_label, statuses, extracted, deadline)
                finally:
                    ARTIFACTS.mkdir(exist_ok=True)
                    page.screenshot(path=str(shot))
                    print(f"screenshot: {shot}")
            finally:
                browser.close()
    except Exception as e:
        raise AssertionError(f"{e}\n--- jupyter lab log (last 3000 chars) ---\n{log.read_text()[-3000:]}") from e
    finally:
        _stop(server, base, token)
    assert shot.stat().st_size > 10_000, f"{shot} is too small to show the explorer"


def _kernel_connected(base: str, token: str) -> bool:
    """A kernel is running, idle, and the page holds a connection to it (JupyterLab shows "idle" in its
    toolbar before the kernel has even started, so the page alone cannot tell)."""
    try:
        with urllib.request.urlopen(f"{base}/api/kernels?token={token}", timeout=2) as r:
            kernels = json.load(r)
    except OSError:
        return False
    return any(k.get("execution_state") == "idle" and k.get("connections", 0) >= 1 for k in kernels)


def _wait_for_kernel(page, base: str, token: str, deadline: Deadline) -> None:
    """Until the notebook's kernel is connected and idle; accepts JupyterLab's "Select Kernel" dialog
    (python3, the notebook's kernelspec, is preselected) if it asks."""
    accept = page.locator(".jp-Dialog .jp-mod-accept")
    idle = page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]')
    while not (_kernel_connected(base, token) and idle.count()):
        if accept.count() and accept.first.is_visible():
            accept.first.click(timeout=deadline.ms())
        page.wait_for_timeout(500)
        deadline.ms()


def _operate(page, base, token, pid, set_label, statuses, extracted, deadline: Deadline) -> None:
    page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}", timeout=deadline.ms())
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=deadline.ms())
    _wait_for_kernel(page, base, token, deadline)
    # Run > Run All Cells, by the menu's command id (JupyterLab 4).
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click(timeout=deadline.ms())
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click(timeout=deadline.ms())
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
    # The diversity explorer below it ran too: its heatmap image (embeddings of the samples) is there.
    page.wait_for_selector(".si-diversity img.si-heatmap[src^='blob:']", state="attached", timeout=deadline.ms())
    card.scroll_into_view_if_needed(timeout=deadline.ms())  # the screenshot shows the card
    print(f"problem {pid} ({set_label}): verdicts {shown}")
