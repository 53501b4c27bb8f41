"""The deep evaluation: at the end of a run, a fixed level-balanced subset of test problems sampled many times by
M1, the best iterate M_t* (runs.best_iterate) and the last iterate M_T, so that pass@k curves reach a large k.
The loop's own test samples are few per problem (the demo draws 4), too few to see where the curves cross.

Yue et al. 2025 ("Does Reinforcement Learning Really Incentivize Reasoning Capacity in LLMs Beyond the Base
Model?", code LeapLabTHU/limit-of-RLVR) compare a base model's and an RL-trained model's pass@k up to k = 128
and more: the trained model leads at small k and the base model catches up (on MATH500 with Qwen2.5-7B, between
k = 16 and 32; pass@128 96.2 against 93.0, -3.2 points, paired interval [-5.0, -1.4] in an audited
reproduction). Here M1 plays the base model and M_t* and M_T the trained ones. Recipe section `deep:`
(schema.DeepConfig): `problems` (default 100, 0 turns it off) and `samples` per problem (default 64); sampling
takes the run's `sample:` settings through the sample stage's own function (sample.sample_split), grading the
verify stage's (verify.grade_table).

It writes, per model M_t, iter_<t>/deep_test.parquet (its responses, sample.SAMPLE_COLUMNS with the grades'
extracted, status and correct), and for the run deep_metrics.json: the rows of the tidy metrics table, named as
the evaluate stage's beyond-the-paper rows (beyond_metrics.py) with the prefix `deep_` (deep_pass@k_curve,
deep_pass@k_diff, deep_crossover_k, deep_support_sample:<class> per level, deep_cover@<tau>, deep_guess_pass@k
and deep_pass@k_uninformative), and a readable summary (which model is which, k*, pass@n's paired difference,
the ledger's counts). The intervals, taus and rules are the evaluate settings of the last iteration.

Each model's sampling is recorded in the run's manifest under `deep` ("<t>/deep", the loop's stages being under
`stages`) with an inputs key (stagecache.inputs_key: M_t, the deep, sample and verify settings): a rerun keeps it
while that key and its output are as recorded, takes it from a sibling run of a study that has the same (every
arm shares M1's), and redoes it otherwise, as the loop does its stages. deep_metrics.json is computed from the
deep tables every time (seconds; beyond_metrics.write_deep, which `selfimprove metrics` calls too).
"""

from __future__ import annotations

import gc
import hashlib
import time
from pathlib import Path

from . import artifacts, beyond_metrics, data, profiling, stagecache
from .runs import Run

SECTION = "deep"  # the manifest's part that records the deep evaluation's stages


class _Section(artifacts.Manifest):
    """The manifest's `deep` part, seen as a manifest whose stages are the deep evaluation's; saving it saves
    the whole manifest."""

    def __init__(self, manifest: artifacts.Manifest):
        super().__init__(manifest.path, {"stages": manifest.data.setdefault(SECTION, {})})
        self._whole = manifest

    def save(self) -> None:
        self._whole.save()


def subset(problems: list[dict], n: int, seed: int = 0) -> list[dict]:
    """`n` problems balanced over levels: the levels take turns (ascending, problems without a level last), each
    giving its next problem in a seeded hash order of ids, until `n` are chosen or none is left. The same for
    every model and every rerun. Returned by id.

    >>> ps = [{"id": f"p{i}", "level": 1 + i % 3} for i in range(9)] + [{"id": "q", "level": None}]
    >>> sorted(p["level"] or 0 for p in subset(ps, 5))
    [0, 1, 1, 2, 3]
    """
    if n <= 0:
        return []
    groups: dict = {}
    for p in problems:
        groups.setdefault(p.get("level"), []).append(p)
    order = sorted(groups, key=lambda lv: (lv is None, lv if lv is not None else 0))
    queues = [sorted(groups[lv], key=lambda p: hashlib.sha256(f"{seed}:{p['id']}".encode()).hexdigest())
              for lv in order]
    chosen: list[dict] = []
    while len(chosen) < n and any(queues):
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop(0))
    return sorted(chosen, key=lambda p: str(p["id"]))


def roles(run: Run, last: int) -> dict[str, int]:
    """Which iterations the deep evaluation samples: {"M1": 1, "best": t* (runs.best_iterate), "last": T}."""
    best = run.best_iterate()
    return {"M1": 1} | ({"best": best} if best is not None else {}) | {"last": last}


def inputs(stages: dict, cfg, t: int, root: Path) -> str:
    """The inputs key of M_t's deep sampling: M_t itself (the manifest's record of what made it), the deep
    settings, and the sample and verify settings it samples and grades with."""
    extra = {"sample": stagecache.settings("sample", t, cfg.stage("sample", t, root)),
             "verify": stagecache.settings("verify", t, cfg.stage("verify", t, root))}
    return stagecache.inputs_key(stages, "deep", t, cfg.deep_config(t, root), extra)


def sample_model(cfg, paths: artifacts.RunPaths, t: int, problems: list[dict], log=print) -> Path:
    """M_t's deep responses, sampled (sample.sample_split with `deep`) and graded (verify.grade_table) with the
    run's settings, into iter_<t>/deep_test.parquet."""
    from . import sample, verify

    scfg, vcfg = cfg.stage("sample", t, paths.root), cfg.stage("verify", t, paths.root)
    n = cfg.deep_config(t, paths.root).samples
    sampler = sample.make_sampler(scfg, paths.model(t))
    clock = profiling.Clock()  # model compute, as the sample stage times it (report.stage_compute)
    in_model = hasattr(sampler, "model")
    try:
        prompts = [data.render_prompt(sampler.tokenizer, p) for p in problems]
        sample.check_context(sampler.tokenizer, problems, prompts, max_new_tokens=scfg.max_new_tokens,
                             context=sample.context_length(sampler), split="test")
        with sample.timed(sampler, clock):
            df = sample.sample_split(sampler, problems, prompts, cfg=scfg, split="test", task=cfg.task, deep=n)
        profiling.record(paths.root, t, SECTION, clock.seconds,
                         "model forward calls" if in_model else "vLLM generate calls", calls=clock.calls)
    finally:
        if hasattr(sampler, "close"):
            sampler.close()
        del sampler
        gc.collect()
    graded = verify.grade_table(df, data.load_split(paths.root, "test"), cfg.task, timeout_s=vcfg.timeout_s,
                                workers=vcfg.workers, memory_mb=vcfg.memory_mb)
    log(f"  [{t}/deep] M{t}: {len(problems)} problems x {n}: {int(graded['correct'].sum())} of {len(graded)} correct")
    return artifacts.write_parquet(graded, paths.deep_samples(t))


def run(cfg, paths: artifacts.RunPaths, manifest: artifacts.Manifest, siblings: list[Path] = (),
        log=print) -> Path | None:
    """The deep evaluation of a finished run (`cfg`: its RunConfig): sample each of M1, M_t*, M_T that is not
    done (or take it from a sibling run), then write deep_metrics.json; None when `deep.problems` is 0 or the
    run has no iterate after M1."""
    dcfg = cfg.deep_config(cfg.iterations, paths.root)
    if not dcfg.problems:
        return None
    if cfg.iterations < 2:
        log("  [deep] the deep evaluation compares M1 with later iterates; this run has only M1")
        return None
    who = roles(Run(paths.root), cfg.iterations)
    problems = subset(data.load_split(paths.root, "test"), dcfg.problems, cfg.seed)
    section = _Section(manifest)
    for t in sorted(set(who.values())):
        key, outputs = f"{t}/deep", [paths.deep_samples(t)]
        key_now = inputs(manifest.data["stages"], cfg, t, paths.root)
        why = stagecache.why_not_done(section, key, outputs, key_now)
        if why is None:
            log(f"  [{key}] done, kept")
            continue
        if siblings:  # runs side by side (lanes.py): M1's deep samples are computed once
            stagecache.wait_for_sibling(key, key_now, list(siblings), log=log, section=SECTION)
        shared = stagecache.find_shared(key, key_now, list(siblings), SECTION)
        section.start(key, key_now)
        t0 = time.time()
        if shared is not None:
            artifacts.link_copy(artifacts.RunPaths(shared).deep_samples(t), paths.deep_samples(t))
            section.finish(key, outputs, 0.0, paths.root, inputs=key_now, shared_from=str(shared))
            log(f"  [{key}] the same as in {shared.name}: taken from there")
            continue
        log(f"  [{key}] sampling M{t} ({why}): {len(problems)} test problems x {dcfg.samples}")
        try:
            sample_model(cfg, paths, t, problems, log)
        except Exception as e:
            section.fail(key, f"{type(e).__name__}: {e}")
            raise
        section.finish(key, outputs, time.time() - t0, paths.root, inputs=key_now)
        log(f"  [{key}] done in {time.time() - t0:.1f}s")
    return beyond_metrics.write_deep(paths, cfg, who)
