"""`pip install .` (not editable) carries what a run needs: the stage notebooks and recipes are package data
(selfimprove/notebooks/, from the checkout's notebooks/; pyproject.toml). The package is installed into a
temporary folder from a copy of the sources, and `selfimprove run tiny` runs from another temporary folder with
only that install on PYTHONPATH: the run's data land under that folder, and nothing is read from the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from selfimprove import artifacts

CHECKOUT = artifacts.CHECKOUT
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHECKOUT is None, reason="needs the sources (a checkout)")]
# A quick tiny run: one iteration (sample, verify, evaluate in the kernel) of a smaller organism.
QUICK = ["iterations=1", "organism.pretrain_steps=5", "organism.sft_steps=40", "sample.problems_per_iteration=8"]


def _sources(dst: Path) -> Path:
    """The files a build reads, copied (a build writes build/ and *.egg-info beside its sources)."""
    skip = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "*.pyc")
    for name in ("selfimprove", "notebooks"):
        shutil.copytree(CHECKOUT / name, dst / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(CHECKOUT / name, dst / name)
    return dst


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
            and "__pycache__" not in p.parts and ".ipynb_checkpoints" not in p.parts}


def test_installed_package_runs_outside_the_checkout(tmp_path):
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(target), str(_sources(tmp_path / "src"))],
                         capture_output=True, text=True)
    assert pip.returncode == 0, f"pip install failed:\n{pip.stdout[-3000:]}\n{pip.stderr[-3000:]}"
    installed = target / "selfimprove" / "notebooks"
    missing = _files(CHECKOUT / "notebooks") - _files(installed)
    assert not missing, f"not installed (list their folder in pyproject.toml's packages): {sorted(missing)}"
    shipped = _files(CHECKOUT / "selfimprove" / "organisms")  # the shipped organism builds (organism.SHIPPED)
    missing = shipped - _files(target / "selfimprove" / "organisms")
    assert shipped and not missing, f"shipped organism files not installed (pyproject.toml package-data): {missing}"

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "from selfimprove import artifacts, pipeline; "
                            "print(artifacts.__file__, pipeline.NOTEBOOKS, artifacts.CHECKOUT, sep='\\n')"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.split("\n")
    assert Path(where[0]).is_relative_to(target), f"selfimprove imported from {where[0]}, not from {target}"
    assert Path(where[1]) == installed and where[2] == "None"

    cmd = [str(target / "bin" / "selfimprove"), "run", "tiny"] + [a for s in QUICK for a in ("--set", s)]
    result = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    run = work / "data" / "runs" / "tiny"
    manifest = json.loads((run / "manifest.json").read_text())
    states = {k: v["state"] for k, v in manifest["stages"].items()}
    assert states == {"prepare": "done", "1/sample": "done", "1/verify": "done", "1/evaluate": "done"}, states
    assert (run / "iter_1" / "metrics.json").exists() and (run / "report" / "summary.md").exists()
    assert (run / "iter_1" / "notebooks" / "40_evaluate.ipynb").exists()
    assert any((work / "data" / "organism").glob("*/M1")), "the organism is not under the working directory"
    assert manifest["versions"]["git"] is None, "an installed package has no commit of its own"
