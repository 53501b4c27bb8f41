"""The stage cache: a stage is known by what it reads, and a finished stage is reused while that is unchanged.

A stage's inputs key (inputs_key) hashes

- its settings: the stage config without `run_dir`, the train stage's `paradigm` replaced by what M_t is
  trained with (config.lineage(paradigm, t)[-1]: the kind F_t, tagged with a control arm's name), since that is
  all a train stage asks of the paradigm; and
- the hashes its run's manifest recorded for the outputs of the stages it reads:

      sample t      prepare, train t (M_t)
      verify t      prepare, sample t
      train t       prepare, train, sample and verify of every s < t (M(t-1), its graded samples, earlier data)
      evaluate t    prepare, train, sample and verify of every s <= t (M1's samples for the improvement sets)
      deep t        prepare, train t (M_t; the deep evaluation of deep.py, keyed with the sample and verify
                    settings it samples and grades with as well)

  but for evaluate (which reports its training signals) leaving out the train logs, which hold times.

The loop (pipeline.run_config) uses it three ways, each our choice of rule:

- resume: a stage recorded done is skipped only while its recorded inputs key is the one it would have now and
  its outputs are as recorded (artifacts.Manifest.changed: size and time, else the hash); otherwise it runs
  again and says why. A stage whose inputs changed (an earlier stage redone with another result, an output
  edited by hand) is redone, and so, through their keys, are the stages after it that read it;
- sharing: a stage that a sibling run of a study finished with the same inputs key is taken from it as hard
  links (SFT-DPO's M2 is DPO's M2, and every arm's M1 stages are the same), rather than computed again;
- notebooks: run_stage, which each stage notebook calls, shows a stage its run records as done with the same
  inputs instead of computing it again, and refuses to overwrite one recorded with other settings.

A stage recorded before inputs keys were (no `inputs` in its manifest entry) counts as done while its outputs
exist; its key is recorded then.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, fields
from pathlib import Path

from . import artifacts
from .schema import LATER_FIELDS, SPLITS, STAGES, RunConfig, build, lineage

STAGE_OF = {cls: stage for stage, cls in STAGES.items()}  # TrainConfig -> "train", ...


class StageCacheError(RuntimeError):
    """A stage notebook was asked to redo a stage its run records as done with other settings."""


def stage_outputs(paths: artifacts.RunPaths, stage: str, t: int, cfg) -> list[Path]:
    """The files a finished stage leaves; a stage counts as done only while they are as recorded."""
    if stage == "train":  # M_t, from t = 2 the data it was trained on (built by this stage), and its log
        keep_adapter = not cfg.merge_adapter and cfg.lora_r  # (the order of train.run's return)
        return [paths.model(t)] + ([paths.adapter(t)] if keep_adapter else []) \
            + ([paths.train_data(t)] if t >= 2 else []) + [paths.train_log(t)]
    if stage == "sample":  # OOD only where the task has an OOD split (paper §5.3 defines one for GSM8K)
        return [paths.samples(t, s) for s in cfg.splits if s != "ood" or paths.problems("ood").exists()]
    if stage == "verify":  # one graded table beside each sample table; the sample tables stay as sampled
        return [paths.graded(t, s) for s in SPLITS if paths.samples(t, s).exists()]
    return [paths.metrics(t), paths.per_problem(t)]


def upstream(stage: str, t: int) -> list[str]:
    """The manifest keys of the stages whose outputs stage `stage` of iteration t reads (module docstring).

    >>> upstream("sample", 2), upstream("verify", 1), upstream("deep", 3)
    (['prepare', '2/train'], ['prepare', '1/sample'], ['prepare', '3/train'])
    >>> upstream("train", 3)
    ['prepare', '1/train', '1/sample', '1/verify', '2/train', '2/sample', '2/verify']
    """
    loop = ("train", "sample", "verify")
    if stage in ("sample", "deep"):
        return ["prepare", f"{t}/train"]
    if stage == "verify":
        return ["prepare", f"{t}/sample"]
    last = t - 1 if stage == "train" else t
    return ["prepare"] + [f"{s}/{k}" for s in range(1, last + 1) for k in loop if (s, k) != (t, stage)]


def settings(stage: str, t: int, cfg) -> dict:
    """The part of a stage config its inputs key holds: everything but the run directory; for train, the
    paradigm as what it means at t (lineage's last step), so that DPO's and SFT-DPO's M2 are one stage; a field
    added later (schema.LATER_FIELDS) only where it is not at the value that computes what came before it."""
    values = {k: v for k, v in asdict(cfg).items()
              if k != "run_dir" and not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
    if stage == "train":
        values["paradigm"] = lineage(cfg.paradigm, t)[-1] if t >= 2 else None
    return values


def inputs_key(stages: dict, stage: str, t: int, cfg, extra: dict | None = None) -> str:
    """The inputs key of stage `stage` at t with config `cfg`, from `stages` (a manifest's "stages": the
    recorded hashes of the outputs of the stages it reads); `extra`: more settings it depends on (the deep
    evaluation's sampling and grading settings)."""
    read = {}
    for key in upstream(stage, t):
        read.update(stages.get(key, {}).get("outputs", {}))
    if stage != "evaluate":  # a train log (times, losses) feeds only the metrics' training signals
        read = {rel: h for rel, h in read.items() if not rel.endswith("train_log.json")}
    what = {"stage": stage, "t": t, "settings": settings(stage, t, cfg), "reads": read}
    blob = json.dumps(what | ({"extra": extra} if extra is not None else {}), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def why_not_done(manifest: artifacts.Manifest, key: str, outputs: list[Path], inputs: str) -> str | None:
    """None when stage `key` is done and still valid (module docstring); else why it must run."""
    st = manifest.data["stages"].get(key)
    if not st:
        return "not run yet"
    if st.get("state") != "done":
        return {"running": "it was stopped before it ended", "failed": "it failed"}.get(st.get("state"),
                                                                                        "not done")
    if st.get("inputs") not in (None, inputs):
        return "what it reads changed since it ran (its settings, or the outputs of a stage before it)"
    changed = manifest.changed(key, outputs, manifest.path.parent)
    if changed:
        return "its outputs are not as recorded: " + "; ".join(changed[:3]) + (" ..." if len(changed) > 3 else "")
    if st.get("inputs") is None:  # recorded before inputs keys: its key from now on
        st["inputs"] = inputs
        manifest.save()
    return None


def find_shared(key: str, inputs: str, siblings: list[Path], section: str = "stages") -> Path | None:
    """A sibling run of the study that finished stage `key` with the same inputs key, its outputs present.
    `section`: the part of the manifest that records the stage ("deep" for the deep evaluation's)."""
    for root in siblings:
        try:
            st = artifacts.Manifest.load(artifacts.RunPaths(root)).data.get(section, {}).get(key, {})
        except (FileNotFoundError, ValueError):
            continue
        if st.get("state") == "done" and st.get("inputs") == inputs \
                and all((root / rel).exists() for rel in st.get("outputs", {})):
            return root
    return None


def wait_for_sibling(key: str, inputs: str, siblings: list[Path], poll_s: float = 2.0, log=print,
                     section: str = "stages") -> None:
    """While a sibling run computes stage `key` with the same inputs key (recorded running, its run folder
    locked by a live process), wait for it to end, so that the stage is taken from it rather than computed
    twice (runs side by side, lanes.py). A sibling that stopped (no lock) is not waited for. `section`: as
    find_shared's."""
    def busy() -> Path | None:
        for root in siblings:
            try:
                st = artifacts.Manifest.load(artifacts.RunPaths(root)).data.get(section, {}).get(key, {})
            except (FileNotFoundError, ValueError):
                continue
            if st.get("state") == "running" and st.get("inputs") == inputs and artifacts.is_locked(root):
                return root
        return None

    root, said = busy(), False
    while root is not None:
        if not said:
            log(f"  [{key}] {root.name} is computing it with the same inputs: waiting for it")
            said = True
        time.sleep(poll_s)
        root = busy()


def notebook_config(cls, ns: dict):
    """The config of a stage notebook from its globals (parameters cell and papermill's injected cell).

    `run_dir` relative is read under the project folder (artifacts.resolve: the checkout from its notebooks/
    folder), so a notebook opened in JupyterLab finds data/runs/ whatever folder its kernel starts in. A
    `run_dir` that is a study folder (the default, data/runs/demo, which `make demo` makes) stands for the
    study's first run, and the notebook then shows that run's stage as it ran: its config is the one the run
    recorded (our choice: the other parameters' defaults are not the demo's settings, and computing the
    stage again with them would replace what the run's later stages were built from)."""
    from .runs import Study

    values = {f.name: ns[f.name] for f in fields(cls) if f.name in ns}
    where = f"{cls.__name__} parameters"
    if not isinstance(values.get("run_dir"), str) or not values["run_dir"]:
        return build(cls, values, where)  # build names the problem
    root = artifacts.resolve(values["run_dir"])
    members = Study(root).run_dirs()
    if not members:
        return build(cls, {**values, "run_dir": str(root)}, where)
    run_root, t = members[0], values.get("iteration", 1)
    print(f"run_dir {values['run_dir']} is a study: showing its first run, {run_root.name}, iteration {t}, "
          "with the settings it ran with")
    return recorded_stage(run_root, STAGE_OF[cls], t)


def recorded_stage(run_root: Path, stage: str, t: int):
    """The config of `stage` at t as the run in `run_root` recorded it (its manifest's recipe)."""
    recorded = artifacts.Manifest.load(artifacts.RunPaths(run_root)).data["config"]
    return build(RunConfig, recorded, f"run {run_root} (its manifest config)").stage(stage, t, run_root)


def run_stage(cfg) -> list[Path]:
    """Run the stage `cfg` is the config of (sample.run, verify.run, train.run or metrics.run) and return
    what it wrote; but a stage its run's manifest records as done, with this inputs key and its outputs
    as recorded, is not computed again: its outputs are returned (the stage cache, seen from a notebook).
    A done stage recorded with other settings is refused (StageCacheError): computing it here would replace
    outputs that the run's later stages were built from."""
    stage = STAGE_OF[type(cfg)]
    t, paths = cfg.iteration, artifacts.RunPaths(cfg.run_dir)
    key = f"{t}/{stage}"
    if paths.manifest.exists():
        manifest = artifacts.Manifest.load(paths)
        st = manifest.data["stages"].get(key, {})
        if st.get("state") == "done":
            outputs = stage_outputs(paths, stage, t, cfg)
            inputs = inputs_key(manifest.data["stages"], stage, t, cfg)
            if st.get("inputs") not in (None, inputs):
                raise StageCacheError(
                    f"{paths.root}: stage {key} is recorded as done with other settings ({differing(paths, cfg)});"
                    " computing it here would replace the outputs its run's later stages were built from. "
                    "Give run_dir a new run (`selfimprove run <recipe> --set name=...` with these settings), or "
                    "set the parameters as the run has them.")
            if why_not_done(manifest, key, outputs, inputs) is None:
                print(f"stage {key} of {paths.root.name} is done with these settings: its outputs are shown, "
                      "not computed again")
                return outputs
    from . import metrics, sample, train, verify

    return {"sample": sample.run, "verify": verify.run, "train": train.run, "evaluate": metrics.run}[stage](cfg)


def differing(paths: artifacts.RunPaths, cfg) -> str:
    """The fields in which `cfg` differs from the stage config its run recorded, as 'name: recorded -> given'."""
    try:
        was = asdict(recorded_stage(paths.root, STAGE_OF[type(cfg)], cfg.iteration))
    except (ValueError, KeyError, FileNotFoundError):
        return "the recorded config cannot be read"
    diff = [f"{k}: {was.get(k)!r} -> {v!r}" for k, v in asdict(cfg).items() if k != "run_dir" and was.get(k) != v]
    return ", ".join(diff) or "the outputs of a stage before it changed"
