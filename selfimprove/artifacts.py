"""The run directory (README, "What a run is") and its manifest: paths, atomic writes, hashes, stage states.

data/runs/<run>/
  manifest.json               config, its hash, versions, seeds, every stage's state, durations, output hashes
  problems/<split>.jsonl      the task's problems this run uses
  iter_<t>/model/             M_t (merged weights)      iter_<t>/train_log.json  how M_t was trained
  iter_<t>/adapter/           M_t's LoRA adapter on M1, only with train.merge_adapter: false
  iter_<t>/samples_<split>.parquet  the sample table, as the sample stage wrote it
  iter_<t>/graded_<split>.parquet   its grades (row keys + extracted, status, correct; the verify stage)
  iter_<t>/train_data.parquet  the data that made M_t (built by M_t's train stage from M(t-1)'s graded samples)
  iter_<t>/metrics.json       every metric of M_t       iter_<t>/notebooks/NN_stage.ipynb  executed notebooks
  iter_<t>/per_problem.parquet  per-problem values behind the metrics (the verdict reads them)
  iter_<t>/deep_test.parquet  M1's, M_t*'s and M_T's graded responses of the deep evaluation (deep.py)
  deep_metrics.json           the deep evaluation's comparisons, rows of the tidy metrics table
  report/                     summary table and figures for the whole run
  run.lock                    held (fcntl.flock) by the process running it, holding that process's pid

Every file is written to a temporary name and renamed, so a killed process never leaves a half-written
artifact under its final name; the manifest records a stage as done only after its outputs exist.

A run writes only inside its own folder (issue 20): the folder and those above it under the runs root must be
real folders, not symbolic links (check_run_dir); an existing folder is used only if it is a run (it has a
manifest.json) or holds nothing but what a run writes; `--overwrite` deletes only entries a run writes
(RUN_ENTRIES), and refuses a folder that holds anything else; and one process at a time runs in it (run_lock).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pandas as pd

_PACKAGE = Path(__file__).resolve().parent
# The folder that holds the `selfimprove` package (a checkout, or site-packages when installed): a kernel or
# worker process started elsewhere imports the same code from it.
IMPORT_ROOT = _PACKAGE.parent
# The checkout the package is imported from (its pyproject.toml and notebooks/ beside the package), or None
# when it is installed (`pip install .`).
CHECKOUT: Path | None = (IMPORT_ROOT if (IMPORT_ROOT / "pyproject.toml").is_file()
                         and (IMPORT_ROOT / "notebooks" / "params").is_dir() else None)
# The folder whose notebooks/ holds the stage notebooks and notebooks/params the recipes: the checkout, or the
# installed package, which ships them as package data `selfimprove.notebooks` (pyproject.toml).
PACKAGE_ROOT = CHECKOUT if CHECKOUT is not None else _PACKAGE


def project_dir(cwd: str | Path | None = None) -> Path:
    """The folder that relative paths such as `data/runs/demo` or `data/cache` are read from by the notebooks
    opened in JupyterLab: the checkout when the working directory is its notebooks/ folder or below (JupyterLab
    starts a notebook's kernel in the notebook's folder, while `make demo` writes data/ at the checkout's top),
    else the working directory, where `selfimprove run` writes data/ (and where its stages run)."""
    cwd = Path.cwd() if cwd is None else Path(cwd)
    if CHECKOUT is not None and cwd.resolve().is_relative_to(CHECKOUT / "notebooks"):
        return CHECKOUT
    return cwd


def resolve(path: str | Path, cwd: str | Path | None = None) -> Path:
    """`path` as given if absolute, else under project_dir() (the checkout from its notebooks/ folder, else the
    working directory)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_dir(cwd) / p


@dataclass(frozen=True)
class RunPaths:
    run_dir: str | Path

    @property
    def root(self) -> Path:
        return Path(self.run_dir)

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def problems(self, split: str) -> Path:
        return self.root / "problems" / f"{split}.jsonl"

    def iter_dir(self, t: int) -> Path:
        return self.root / f"iter_{t}"

    def model(self, t: int) -> Path:
        return self.iter_dir(t) / "model"

    def adapter(self, t: int) -> Path:
        """M_t's LoRA adapter over M1, kept when a recipe trains one adapter on (train.merge_adapter: false)."""
        return self.iter_dir(t) / "adapter"

    def samples(self, t: int, split: str) -> Path:
        return self.iter_dir(t) / f"samples_{split}.parquet"

    def graded(self, t: int, split: str) -> Path:
        """The verify stage's grades of samples_<split>.parquet (runs.Run.graded joins the two)."""
        return self.iter_dir(t) / f"graded_{split}.parquet"

    def train_data(self, t: int) -> Path:
        """The data that trained M_t (t >= 2), written by M_t's train stage."""
        return self.iter_dir(t) / "train_data.parquet"

    def train_log(self, t: int) -> Path:
        return self.iter_dir(t) / "train_log.json"

    def metrics(self, t: int) -> Path:
        return self.iter_dir(t) / "metrics.json"

    def per_problem(self, t: int) -> Path:
        return self.iter_dir(t) / "per_problem.parquet"

    def notebooks(self, t: int) -> Path:
        return self.iter_dir(t) / "notebooks"

    def deep_samples(self, t: int) -> Path:
        """M_t's graded responses of the deep evaluation (deep.py): sample columns and grades in one table."""
        return self.iter_dir(t) / "deep_test.parquet"

    @property
    def deep_metrics(self) -> Path:
        """The deep evaluation's comparisons of M1, M_t* and M_T (deep.py), rows of the tidy metrics table."""
        return self.root / "deep_metrics.json"


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_json(obj, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
    return path


def write_parquet(df: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    df.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def replace_dir(src: Path, dst: Path) -> Path:
    """Move a finished directory into place, replacing any older one (a stage rerun after a kill)."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old{os.getpid()}")
        dst.replace(old)
        src.replace(dst)
        shutil.rmtree(old)
    else:
        src.replace(dst)
    return dst


def link_copy(src: Path, dst: Path) -> Path:
    """`src` (a file or a folder) at `dst` as hard links where the file system allows, else as copies; put
    in place atomically. Safe to share: every artifact is rewritten by rename, never in place."""
    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    tmp = _tmp(dst)
    if src.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, copy_function=link)
        return replace_dir(tmp, dst)
    tmp.unlink(missing_ok=True)
    link(src, tmp)
    tmp.replace(dst)
    return dst


def clean_stale(directory: Path) -> list[Path]:
    """Remove what a killed stage may have left in `directory`: temporary files and folders."""
    stale = sorted({p for pattern in (".*.tmp*", "*.tmp", ".*.old*", "*.trainer") for p in directory.glob(pattern)})
    for p in stale:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return stale


def sha256(path: Path) -> str:
    """Hash of a file, or of a directory's files (names and contents, in sorted order)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def signature(path: Path) -> list[int]:
    """What tells cheaply that an output is as recorded: a file's size and modification time (ns), a folder's
    file count, total size and newest modification time. A differing signature makes the manifest hash the
    output again (Manifest.changed); hard links, which a study shares files with, keep the signature.

    >>> import tempfile; f = Path(tempfile.mkdtemp()) / "x"; _ = f.write_text("abc"); signature(f)[0]
    3
    """
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stats = [f.stat() for f in files]
    size, newest = sum(st.st_size for st in stats), max((st.st_mtime_ns for st in stats), default=0)
    return [len(files), size, newest] if path.is_dir() else [size, newest]


def versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("selfimprove", "torch", "transformers", "trl", "peft", "tokenizers", "papermill", "pandas"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    out["git"] = None  # the checkout's commit; an installed package has none (the working directory's is not ours)
    if CHECKOUT is not None:
        try:
            out["git"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                        cwd=CHECKOUT).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            pass
    return out


LOCK_NAME = "run.lock"
# The top-level entries a run writes (the layout above, temporary files of an interrupted write, the lock, and
# JupyterLab's checkpoints of a notebook opened there): the only ones --overwrite deletes.
RUN_ENTRIES = re.compile(r"manifest\.json|deep_metrics\.json|problems|report|iter_[0-9]+|kernel\.stderr\.log"
                         r"|run\.lock|\.ipynb_checkpoints|\..+\.tmp[0-9]*|\..+\.old[0-9]+")


class RunDirError(ValueError):
    """A run folder that a run must not use (a symbolic link, a folder that is not a run, one in use by another
    process, one that cannot be created); the message names the path and what is wrong."""


class NotWritableError(RunDirError):
    """A folder the package must write in (a runs root, a run folder, an organism root) that cannot be made or
    written: read-only, another user's, or under a file. The message names the folder and what is wrong."""


def check_writable(folder: Path, what: str, hint: str) -> None:
    """Refuse a folder the package is about to make or write in, but cannot, before any work (issue 20: a
    read-only runs root or organism root was a PermissionError traceback, an organism's build in vain): the
    nearest of `folder` and the folders above it that exists must be a folder in which a file can be created.
    A real probe, a temporary file made and removed there (os.access answers yes to root whatever the mode
    bits); its name is one a run writes (RUN_ENTRIES), so one left by a killed process is no foreign entry.
    NotWritableError names `what` and the folder, then `hint`."""
    import tempfile

    folder = Path(folder).absolute()
    p = folder
    while p != p.parent:
        try:
            if p.exists():
                break
        except OSError:  # a folder above it that may not be searched: the probe there says so
            pass
        p = p.parent
    where = f"{what} {folder}" + ("" if p == folder else f" cannot be created: {p}")
    if not p.is_dir():
        raise NotWritableError(f"{where} is a file, not a folder; {hint}")
    try:
        fd, name = tempfile.mkstemp(prefix=".write-check.", suffix=".tmp", dir=p)
    except OSError as e:
        raise NotWritableError(f"{where} is not writable ({e.strerror}); {hint}") from None
    os.close(fd)
    os.unlink(name)


def foreign_entries(root: Path) -> list[str]:
    """The names in `root` that a run does not write (RUN_ENTRIES), sorted."""
    return sorted(p.name for p in Path(root).iterdir() if not RUN_ENTRIES.fullmatch(p.name))


def _listed(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def check_run_dir(root: Path, runs_root: Path, study: bool = False) -> None:
    """Refuse `root` (a run's folder, or a study's with `study`) unless a run may write there: it and every folder
    above it under `runs_root` is a real folder, not a symbolic link (which would take the run, and what
    --overwrite deletes, elsewhere), an existing folder is a run (a manifest.json; a study: none) or holds
    only what a run writes (what an interrupted start left), and it can be made or written (check_writable: a
    read-only runs root or run folder). RunDirError names the path."""
    runs_root, root = Path(runs_root).absolute(), Path(root).absolute()
    p = runs_root
    for part in root.relative_to(runs_root).parts:  # run names hold no '..' (schema.run_name_problem)
        p = p / part
        if p.is_symlink():
            raise RunDirError(f"{p} is a symbolic link (to {os.readlink(p)}): a run's folder and those above it "
                              "under the runs root must be real folders; give the run another name, or --runs-root")
        if p.exists() and not p.is_dir():
            raise RunDirError(f"{p} is a file, not a run folder: give the run another name")
    if root.is_dir():
        has_manifest = (root / "manifest.json").exists()
        if study and has_manifest:
            raise RunDirError(f"{root} holds a run (manifest.json), not a study: give the study another name")
        if not study and not has_manifest and (other := foreign_entries(root)):
            raise RunDirError(f"{root} exists and is not a selfimprove run (no manifest.json; it holds "
                              f"{_listed(other)}): give the run another name, or move that folder away")
    check_writable(root, "study folder" if study else "run folder",
                   "a run writes its files there: give --runs-root a folder you can write")


def empty_run_dir(root: Path) -> None:
    """Delete a run's files for `--overwrite`: every entry of `root` but the lock, only if each is one a run
    writes (RUN_ENTRIES); anything else in the folder is refused and nothing is deleted. Symbolic links are
    removed, never followed."""
    if other := foreign_entries(root):
        raise RunDirError(f"--overwrite deletes only what a run writes, and {root} also holds {_listed(other)}: "
                          "move those away, or delete the folder yourself")
    for p in Path(root).iterdir():
        if p.name == LOCK_NAME:
            continue
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


LOCKED_HINT = "the command writes the run's files there: make it writable, or copy the run to a folder you can write"


@contextlib.contextmanager
def run_lock(root: Path):
    """Hold the run folder `root` (created if need be) for this process: an exclusive fcntl.flock on
    <root>/run.lock, which holds this process's pid. A second process is refused with RunDirError naming the
    holder's pid (issue 20: two runs in one folder lost each other's manifest entries). The operating system
    drops the lock when its process ends, however it ends, so a lock file left by a dead process is taken
    over. A folder that cannot be written (check_writable) is refused as well: the holder writes there."""
    import fcntl

    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        check_writable(root, "run folder", LOCKED_HINT)  # the folder that is read-only, or the file in the way
        raise RunDirError(f"{root / LOCK_NAME}: cannot create the run folder or its lock file ({e.strerror})") \
            from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = re.sub(r"[^0-9]", "", os.pread(fd, 32, 0).decode("ascii", "replace")) or "unknown"
            raise RunDirError(f"{root} is in use by another selfimprove run (pid {holder}); wait for it to end, or "
                              "stop it, then run the same command again") from None
        except OSError as e:  # a file system without locks (some network mounts)
            raise RunDirError(f"{root / LOCK_NAME}: cannot be locked ({e.strerror}); put the runs root on a local "
                              "file system") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        check_writable(root, "run folder", LOCKED_HINT)  # a lock file that could be written, in a read-only folder
        yield root
    finally:
        os.close(fd)  # releases the lock


def is_locked(root: Path) -> bool:
    """Whether a process holds run folder `root` (run_lock) now: a try of the same lock, let go at once."""
    import fcntl

    try:
        fd = os.open(Path(root) / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


class ManifestError(ValueError):
    """A run's manifest.json cannot be read; the message names the file and what is wrong with it."""


def read_manifest(path: Path) -> dict:
    """The content of a manifest.json; a damaged one (cut short, edited by hand) raises ManifestError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        problem = f"not valid JSON ({e})"
    else:
        if isinstance(data, dict) and isinstance(data.get("config"), dict) and isinstance(data.get("stages", {}), dict):
            data.setdefault("stages", {})  # none recorded: none done
            return data
        problem = "not a run manifest (a JSON object with 'config' and 'stages')"
    raise ManifestError(f"{path}: {problem}. The run's other files are kept: restore the manifest, or start the "
                        "run again with `selfimprove run ... --overwrite`, which deletes this run directory")


class Manifest:
    """manifest.json of a run: one writer (the pipeline), rewritten atomically after every change."""

    def __init__(self, path: Path, data: dict):
        self.path, self.data = path, data

    @classmethod
    def open(cls, paths: RunPaths, config: dict, digest: str, overwrite: bool = False) -> Manifest:
        """Load the run's manifest, or start one. A run made with another config is refused unless
        `overwrite`, which deletes that run's files first (empty_run_dir: only what a run writes)."""
        if paths.manifest.exists():
            try:
                data = read_manifest(paths.manifest)
            except ManifestError:
                if not overwrite:
                    raise
                data = {}
            if data.get("config_hash") == digest:
                return cls(paths.manifest, data)
            if not overwrite:
                raise FileExistsError(
                    f"{paths.root} holds a run made with another config (hash {data.get('config_hash')}, "
                    f"this recipe {digest}). Use another run name, or pass --overwrite to delete that run.")
            empty_run_dir(paths.root)
        paths.root.mkdir(parents=True, exist_ok=True)
        m = cls(paths.manifest, {"config": config, "config_hash": digest, "created": _now(), "stages": {},
                                 "versions": versions()})
        m.save()
        return m

    @classmethod
    def load(cls, paths: RunPaths) -> Manifest:
        """The manifest of an existing run."""
        if not paths.manifest.exists():
            raise FileNotFoundError(f"{paths.manifest} not found: {paths.root} is not a run directory")
        return cls(paths.manifest, read_manifest(paths.manifest))

    def save(self) -> None:
        write_json(self.data, self.path)

    def is_done(self, key: str, outputs: list[Path]) -> bool:
        st = self.data["stages"].get(key)
        return bool(st and st.get("state") == "done" and all(p.exists() for p in outputs))

    def changed(self, key: str, outputs: list[Path], root: Path) -> list[str]:
        """The outputs of done stage `key` that are no longer what it recorded, each with why ("missing",
        "changed since the stage finished", "not recorded"); [] when all are as they were. An output whose
        signature (artifacts.signature) still matches counts as unchanged without being read; one whose
        signature moved is hashed again, and if its content is the same its new signature is recorded."""
        st = self.data["stages"].get(key, {})
        hashes, stats = st.get("outputs", {}), st.setdefault("stat", {})
        problems, touched = [], False
        for p in outputs:
            rel = str(p.relative_to(root))
            if not p.exists():
                problems.append(f"{rel}: missing")
            elif rel not in hashes:
                problems.append(f"{rel}: not recorded")
            elif stats.get(rel) != (sig := signature(p)):
                if sha256(p) != hashes[rel]:
                    problems.append(f"{rel}: changed since the stage finished")
                else:
                    stats[rel], touched = sig, True
        if touched and not problems:
            self.save()
        return problems

    def start(self, key: str, inputs: str | None = None) -> None:
        """Stage `key` is running; `inputs` (its inputs key) lets a sibling run wait for it (lanes.py)."""
        prev = self.data["stages"].get(key, {})
        self.data["stages"][key] = {"state": "running", "started": _now(), "attempts": prev.get("attempts", 0) + 1}
        if inputs is not None:
            self.data["stages"][key]["inputs"] = inputs
        self.save()

    def finish(self, key: str, outputs: list[Path], seconds: float, root: Path, **extra) -> None:
        st = self.data["stages"][key]
        st.update(state="done", ended=_now(), seconds=round(seconds, 2),
                  outputs={str(p.relative_to(root)): sha256(p) for p in outputs},
                  stat={str(p.relative_to(root)): signature(p) for p in outputs}, **extra)
        self.save()

    def record(self, key: str, outputs: list[Path], root: Path, **extra) -> None:
        """Record done stage `key`'s outputs again after a command of the package rewrote them
        (`selfimprove metrics` rewrites the evaluate stage's), so that a resumed run keeps them."""
        st = self.data["stages"][key]
        st["outputs"].update({str(p.relative_to(root)): sha256(p) for p in outputs})
        st.setdefault("stat", {}).update({str(p.relative_to(root)): signature(p) for p in outputs})
        st.update(extra)
        self.save()

    def fail(self, key: str, error: str) -> None:
        self.data["stages"][key].update(state="failed", ended=_now(), error=error[-2000:])
        self.save()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
