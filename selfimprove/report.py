"""The report of a run or a study: its tables (summary, timings, the paradigms side by side), the tidy metrics
table, the verdict, the measurements beyond the paper beside it (report/beyond.md, docs/beyond.md) and the
figures, into <run>/report/ (and a study's <study>/report/).

`selfimprove report <run or study>` and the end of `selfimprove run` call report_run / report_study; the
verdict is made with the run's own thresholds (runs.Run.thresholds: the recipe's `verdict` section).
"""

from __future__ import annotations

import json
from pathlib import Path

from . import artifacts, findings, metrics, profiling, verdict
from .runs import Run, Study


def report_run(run_dir: str | Path | Run, figures_dir: str | Path | None = None, log=print,
               thresholds: verdict.Thresholds | None = None, all_figures: bool = True) -> None:
    """Summary table, per-stage timings, the tidy metrics table, the verdict and the pass@1 figure of a
    finished run, into report/ and, when given, `figures_dir` (`make demo` passes figures/). The verdict uses
    `thresholds`, by default the run's own (Run.thresholds), which report/verdict.json records."""
    from . import plots

    run = run_dir if isinstance(run_dir, Run) else Run(run_dir)
    paths = run.paths
    manifest = artifacts.Manifest.load(paths)  # FileNotFoundError naming the folder when it is not a run
    # Before anything is written (issue 20): a run stopped before its first evaluate stage, a damaged or missing
    # metrics.json or per_problem.parquet, a report folder that cannot be written, each a RunError naming it.
    run.check_evaluated()
    artifacts.check_writable(paths.report, "report folder", "`selfimprove report` writes the run's report there: "
                             "make it writable, or copy the run to a folder you can write")
    metrics.write_table(paths.root)
    table = metrics.collect(paths.root)
    summary = summary_table(paths.root)
    (paths.report / "summary.md").write_text(summary + "\n")
    log("\n" + summary)
    log("\n" + timing_table(manifest))
    thresholds = thresholds or run.thresholds()
    v = verdict.for_run(run, thresholds)
    if v is not None:
        verdict.write(v, paths.root, thresholds)
        log("\n" + verdict.to_markdown(v))
    beside = beyond_markdown(run)  # beside the verdict's label, which none of it changes
    (paths.report / "beyond.md").write_text(beside + "\n")
    log("\n" + beside)
    fig = plots.pass1_by_iteration(table, title=f"run {paths.root.name}")
    for path in plots.save(fig, "pass1_by_iteration", [paths.report] + ([Path(figures_dir)] if figures_dir else []),
                           formats=("png",)):
        log(f"figure: {path}")
    plots.plt.close(fig)
    if all_figures:
        dirs = [paths.report] + ([Path(figures_dir)] if figures_dir else [])
        written = plots.render_all(plots.runs_table([paths.root]), dirs)
        log(f"figures ({', '.join(written)}): PNG and PDF in {', '.join(str(d) for d in dirs)}")


def _pm(x, digits: int = 3) -> str:
    return "" if x is None else f"{x:+.{digits}f}"


def _ci(ci) -> str:
    return "" if not ci or ci[0] is None else f" [{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _ledger(counts: dict | None) -> str:
    """'preserved / lost / gained / never' counts of a support ledger's subset "all"."""
    c = (counts or {}).get("all")
    return "" if not c else " / ".join(str(c.get(k, 0)) for k in ("preserved", "lost", "gained", "never"))


def _crossover(vs: dict) -> str:
    if not vs:
        return ""
    return f"{vs['crossover_k']}" if vs.get("crossover_k") is not None else f"none up to {vs['up_to_k']}"


def beyond_markdown(run: Run) -> str:
    """Beyond the paper (docs/beyond.md), reported beside the verdict and changing none of its labels: per
    iteration on the test split, M1 against M_t from the loop's samples (pass@k's crossover k* and pass@n's
    paired difference, Yue et al. 2025; the support ledger, greedy and sampled, Wu et al. 2025), cover@0.5
    (Dragoi et al. 2025), answer entropy on solved and unsolved problems (Song, Kempe & Munos 2025), token
    entropy and KL(M_t || M1) (RL's Razor) beside the OOD pass@1 change; the KL-OOD relation across iterations;
    the guessing check; and the deep evaluation (deep.py), if the run has one."""
    from .beyond import kl_ood_relation

    ms = run.all_metrics()
    lines = ["### Beyond the paper (docs/beyond.md): reported beside the verdict, no label depends on it", "",
             "| model | k* (M1 at or above M_t) | pass@n - M1 [95% CI] | ledger greedy: preserved / lost / gained / "
             "never | ledger sampled | cover@0.5 | answer entropy solved / unsolved | token entropy | "
             "KL(M_t ‖ M1) [95% CI] | OOD pass@1 - M1 |", "|" + "---|" * 10]
    kl, ood, flags = {}, {}, []
    for m in ms:
        t, b = m["iteration"], m.get("test", {}).get("beyond", {})
        vs, pn = b.get("vs_m1") or {}, (b.get("vs_m1") or {}).get("pass@n")
        support = b.get("support", {})
        ans = b.get("answers", {})
        scores = b.get("scores", {})
        ent = (scores.get("token_entropy") or {}).get("value")
        kld = (scores.get("kl_from_m1") or {}).get("per_response") or {}
        if kld.get("value") is not None:
            kl[t] = kld["value"]
        if "pass@1" in m.get("ood", {}):
            ood[t] = m["ood"]["pass@1"]
        for split in ("test", "ood"):
            ks = ((m.get(split, {}).get("beyond", {}).get("guess") or {}).get("uninformative_ks") or [])
            if ks:
                flags.append(f"M{t} {split}: pass@k at k = {', '.join(map(str, ks))}")
        cover = b.get("cover", {}).get("0.5")
        ood_change = ood[t] - ood[1] if t in ood and 1 in ood and t != 1 else None
        entropies = [ans.get(f"answer_entropy:{s}") for s in ("solved", "unsolved")]
        lines.append(" | ".join([
            f"| M{t}", _crossover(vs), "" if not pn else f"pass@{pn['k']} {_pm(pn['diff'])}{_ci(pn['ci'])}",
            _ledger(support.get("greedy")), _ledger(support.get("sample")),
            "" if cover is None else f"{cover:.3f}",
            " / ".join("-" if x is None else f"{x:.2f}" for x in entropies) if ans else "",
            "" if ent is None else f"{ent:.3f}",
            "" if kld.get("value") is None else f"{kld['value']:.4f}{_ci((kld['ci_low'], kld['ci_high']))}",
            _pm(ood_change)]) + " |")
    rel = kl_ood_relation(kl, ood)
    corr = ", ".join(f"{name} {rel[name]:+.2f}" for name in ("pearson", "spearman") if rel[name] is not None)
    lines += ["", f"KL(M_t ‖ M1) against the OOD pass@1 change (RL's Razor): {corr or 'no correlation'} over "
                  f"{rel['note']}."]
    lines.append("Guessing baseline (Dragoi et al. 2025): " + ("; ".join(flags) + " within "
                 "the margin of random guessing, uninformative" if flags else
                 "no pass@k within the margin of random guessing (or open answers: no baseline)") + ".")
    deep_m = run.deep_metrics()
    if deep_m:
        who = deep_m["roles"]
        lines += ["", f"Deep evaluation (deep.py): {deep_m['problems']} test problems x {deep_m['samples']} "
                      f"samples; M1, M_t* = M{who.get('best', '?')}, M_T = M{who['last']}.", "",
                  "| model | pass@k (k = 1, 2, 4, ...) | k* (M1 at or above M_t) | pass@n - M1 [95% CI] | ledger: "
                  "preserved / lost / gained / never |", "|---|---|---|---|---|"]
        for t, model in sorted(deep_m["models"].items(), key=lambda kv: int(kv[0])):
            comp = deep_m["comparisons"].get(t, {})
            pn = comp.get("pass@n")
            curve = " ".join(f"@{k} {v:.3f}" for k, v in model["pass@k_curve"].items())
            lines.append(f"| M{t} ({', '.join(model['roles'])}) | {curve} | {_crossover(comp)} | "
                         + ("" if not pn else f"pass@{pn['k']} {_pm(pn['diff'])}{_ci(pn['ci'])}")
                         + f" | {_ledger(comp.get('support'))} |")
    return "\n".join(lines)


def study_table(roots: list[Path]) -> str:
    """Markdown, one row per paradigm run of a study: greedy test pass@1 of every M_t, the best iterate M_t*
    (runs.best_iterate, t >= 2) and its gain over M1 (paper Figure 1), OOD pass@1 of M1 and of M_t*, and the
    verdict (each run's report/verdict.json, which its report wrote)."""
    rows, width = [], 0
    for root in roots:
        run = Run(root)
        ms = run.all_metrics()
        its = [m["iteration"] for m in ms]
        p1 = [m.get("test", {}).get("pass@1", float("nan")) for m in ms]
        ood = [m.get("ood", {}).get("pass@1", float("nan")) for m in ms]
        width = max(width, len(p1))
        path = run.paths.report / "verdict.json"
        v = json.loads(path.read_text()) if path.exists() else None
        t = run.best_iterate()
        best = its.index(t) if t is not None else None
        rows.append([run.config()["paradigm"], *[f"{x:.3f}" for x in p1],
                     f"M{t} ({(p1[best] - p1[0]) * 100:+.1f})" if best is not None else "",
                     f"{ood[0]:.3f} -> {ood[best]:.3f}" if best is not None else "",
                     v["label"].upper() if v else ""])
    header = ["paradigm", *[f"M{t} pass@1" for t in range(1, width + 1)], "best (gain, points)",
              "OOD pass@1 M1 -> best", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def study_runs(path: Path) -> list[Path]:
    """The runs of a study folder (runs.Study.run_dirs), [] for a run directory or anything else."""
    return Study(path).run_dirs()


def report_study(study: Path, roots: list[Path], figures_dir: str | Path | None = None, log=print) -> None:
    """The paradigms side by side: a table in <study>/report/summary.md and the printed log, and the paper's
    figures with the reversal dashboard (plots.FIGURES) into <study>/report and, when given, `figures_dir`."""
    from . import plots

    table = study_table(roots)
    (study / "report").mkdir(parents=True, exist_ok=True)
    (study / "report" / "summary.md").write_text(table + "\n")
    log("\nstudy " + study.name + ": the paradigms side by side (greedy test pass@1)\n\n" + table)
    path = findings.write(findings.table([Run(r) for r in roots]), study / "report")
    log(f"\n{path.read_text()}")
    log("\nwhere the time went, all runs (model compute: forward/backward inside the stage; profiling.py)\n\n"
        + time_by_stage_table(time_by_stage(roots)))
    dirs = [study / "report"] + ([Path(figures_dir)] if figures_dir else [])
    table = plots.runs_table(roots)
    written = plots.render_all(table, dirs)
    log(f"figures ({', '.join(written)}): PNG and PDF in {', '.join(str(d) for d in dirs)}")
    fig = plots.pass1_by_iteration(table, title=f"study {study.name}: pass@1 by level and OOD, per paradigm")
    for path in plots.save(fig, "pass1_by_iteration", dirs, formats=("png",)):
        log(f"figure: {path}")
    plots.plt.close(fig)


def summary_table(run_dir: Path) -> str:
    """Markdown: per iteration, greedy test pass@1 overall and per level, unbiased pass@k from the sampled
    responses, greedy OOD pass@1, M_t's coverage of its training problems, the share of test problems whose
    greedy answer M_t changed from M(t-1)'s (runs.Run.answers_changed), and the DPO signals at the end of the
    training that made M_t (reward margin, log-probability of the chosen responses)."""
    rows = []
    run = Run(run_dir)
    all_metrics = run.all_metrics()
    for m in all_metrics:
        moved = run.answers_changed(m["iteration"]) if m["iteration"] >= 2 else None
        test, ood = m.get("test", {}), m.get("ood", {})
        levels = test.get("pass@1_by_level", {})
        ks = test.get("pass@k", {})
        train = m.get("training", {}).get("summary", {})
        kind = m.get("training", {}).get("kind", "gold SFT" if m["iteration"] == 1 else "")
        rows.append([f"M{m['iteration']}", kind.upper() if kind != "gold SFT" else kind,
                     f"{test.get('pass@1', float('nan')):.3f}",
                     *[f"{levels[k]:.2f}" for k in sorted(levels, key=int)],
                     *[f"{ks[k]:.3f}" for k in sorted(ks, key=int)],
                     f"{ood.get('pass@1', float('nan')):.3f}",
                     f"{m['train']['coverage_mean']:.3f}" if "train" in m else "",
                     "" if moved is None else f"{moved:.1%}",
                     f"{train['rewards/margins']['last']:.2f}" if "rewards/margins" in train else "",
                     f"{train['logps/chosen']['last']:.1f}" if "logps/chosen" in train else ""])
    first = all_metrics[0]["test"]
    header = ["model", "F_t", "test pass@1", *[f"L{k}" for k in sorted(first.get("pass@1_by_level", {}), key=int)],
              *[f"pass@{k} (sampled)" for k in sorted(first.get("pass@k", {}), key=int)], "OOD pass@1",
              "train coverage", "answers changed", "DPO margin", "logp chosen"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _stages(manifest: artifacts.Manifest) -> dict:
    """The run's stages as its manifest records them: the loop's, then the deep evaluation's ("<t>/deep")."""
    return {**manifest.data["stages"], **manifest.data.get("deep", {})}


def stage_compute(root: Path, manifest: artifacts.Manifest, key: str) -> float | None:
    """Seconds of model compute (forward/backward) inside stage `key` (profiling.py; a deep evaluation's
    sampling as the sample stage's); None where not recorded. The prepare stage counts the organism's training
    loops when it built the organism."""
    st = _stages(manifest).get(key, {})
    if st.get("shared_from"):
        return 0.0
    if key == "prepare":
        org = manifest.data.get("organism", {})
        return org.get("train_s", 0.0) if manifest.data.get("organism_built_here") else 0.0
    t, stage = key.split("/")
    if stage == "verify":
        return 0.0  # grading runs no model
    rec = profiling.read(root, int(t), stage)
    return rec["compute_s"] if rec else None


def time_by_stage(roots: list[Path]) -> dict:
    """Wall and model-compute seconds per stage kind over runs, the deep evaluation's sampling as kind "deep"
    (shared stages cost nothing): {"kinds": {kind:
    {stages, shared, wall_s, compute_s}}, "wall_s", "compute_s", "other_share", "rows": one per stage}."""
    rows, kinds = [], {}
    for root in roots:
        manifest = artifacts.Manifest.load(artifacts.RunPaths(root))
        for key, st in _stages(manifest).items():
            if st.get("state") != "done":
                continue
            compute = stage_compute(root, manifest, key)
            rows.append({"run": root.name, "stage": key, "wall_s": st.get("seconds", 0.0), "compute_s": compute,
                         "shared": bool(st.get("shared_from"))})
            k = kinds.setdefault(key.split("/")[-1], {"stages": 0, "shared": 0, "wall_s": 0.0, "compute_s": 0.0})
            k["stages"] += 1
            k["shared"] += bool(st.get("shared_from"))
            k["wall_s"] += st.get("seconds", 0.0)
            k["compute_s"] += compute or 0.0
    wall = sum(k["wall_s"] for k in kinds.values())
    compute = sum(k["compute_s"] for k in kinds.values())
    return {"rows": rows, "kinds": kinds, "wall_s": round(wall, 1), "compute_s": round(compute, 1),
            "other_share": round((wall - compute) / wall, 3) if wall else None}


def time_by_stage_table(timing: dict) -> str:
    """Markdown of time_by_stage: per stage kind and in all, wall against model compute."""
    lines = ["| stage | stages (shared) | wall s | model compute s | other s | other share |",
             "|---|---|---|---|---|---|"]
    for kind, k in timing["kinds"].items():
        other = k["wall_s"] - k["compute_s"]
        share = f"{other / k['wall_s']:.0%}" if k["wall_s"] else ""
        lines.append(f"| {kind} | {k['stages']} ({k['shared']}) | {k['wall_s']:.1f} | {k['compute_s']:.1f} | "
                     f"{other:.1f} | {share} |")
    share = f"{timing['other_share']:.0%}" if timing["other_share"] is not None else ""
    lines.append(f"| all | {len(timing['rows'])} | {timing['wall_s']:.1f} | {timing['compute_s']:.1f} | "
                 f"{timing['wall_s'] - timing['compute_s']:.1f} | {share} |")
    return "\n".join(lines)


def timing_table(manifest: artifacts.Manifest) -> str:
    """Per stage (the deep evaluation's too): wall seconds, model compute seconds inside it, and the rest
    (overhead: kernel start, imports, model loads, tokenising, grading, I/O); shared stages cost nothing."""
    root = manifest.path.parent
    st = _stages(manifest)
    lines = ["| stage | seconds | model compute s | other s | attempts | note |", "|---|---|---|---|---|---|"]
    wall = compute = 0.0
    for k, v in st.items():
        c = stage_compute(root, manifest, k)
        s = v.get("seconds", 0) or 0
        wall += s
        compute += c or 0
        note = f"from {Path(v['shared_from']).name}" if v.get("shared_from") else ""
        lines.append(f"| {k} | {s:.1f} | {'' if c is None else f'{c:.1f}'} | {'' if c is None else f'{s - c:.1f}'} | "
                     f"{v.get('attempts', '')} | {note} |")
    share = f"{(wall - compute) / wall:.0%} of wall" if wall else ""
    lines.append(f"| total | {wall:.1f} | {compute:.1f} | {wall - compute:.1f} | | other = {share} |")
    return "\n".join(lines)


SEED_KEYS = ["arm", "iteration", "split", "metric", "subset", "k"]


def _runs_of(root: Path) -> list[Run]:
    """The runs of a study folder, or the one run a run directory is."""
    study = Study(root)
    return study.runs() or [Run(root)]


def seeds_tables(by_seed: dict[int, Path]) -> tuple:
    """(verdicts, spread) over seeds. `by_seed`: {seed: its run or study folder}. verdicts: one row per (seed,
    arm) with the run's label and one-line verdict (report/verdict.json). spread: every number of the runs'
    tidy metrics tables (metrics.collect, what the figures draw) with its mean, standard deviation (ddof 1),
    min and max over seeds and the number of seeds that have it, per (arm, iteration, split, metric, subset, k).
    The arm of a run is its paradigm."""
    import pandas as pd

    verdicts, tables = [], []
    for seed, root in by_seed.items():
        for run in _runs_of(Path(root)):
            arm = run.config()["paradigm"]
            path = run.paths.report / "verdict.json"
            v = json.loads(path.read_text()) if path.exists() else {}
            verdicts.append({"seed": seed, "arm": arm, "label": v.get("label", ""), "line": v.get("line", "")})
            tables.append(metrics.collect(run.root).assign(seed=seed, arm=arm))
    long = pd.concat(tables, ignore_index=True)
    long["k"] = long["k"].fillna(-1)  # groupby drops missing keys; -1 stands for "no k" and is put back below
    spread = (long.groupby(SEED_KEYS, sort=True)["value"]
              .agg(mean="mean", sd="std", min="min", max="max", seeds="count").reset_index())
    spread["k"] = spread["k"].astype("Int64").mask(spread["k"] == -1)
    return pd.DataFrame(verdicts), spread


def seeds_markdown(verdicts, spread) -> str:
    """The per-seed verdicts, the label counts per arm, and greedy pass@1 (test and OOD) per arm and iteration
    as mean ± sd [min, max] over seeds."""
    lines = ["| seed | arm | verdict |", "|---|---|---|"]
    lines += [f"| {r.seed} | {r.arm} | {r.label.upper()} |" for r in verdicts.itertuples()]
    lines += ["", "| arm | verdicts over seeds |", "|---|---|"]
    for arm, g in verdicts.groupby("arm", sort=False):
        counts = g["label"].value_counts()
        lines.append(f"| {arm} | " + ", ".join(f"{k} {v}/{len(g)}" for k, v in counts.items()) + " |")
    p1 = spread[(spread["metric"] == "pass@1") & (spread["subset"] == "all") & spread["split"].isin(["test", "ood"])]
    lines += ["", "| arm | model | split | pass@1 mean ± sd | min - max | seeds |", "|---|---|---|---|---|---|"]
    for r in p1.sort_values(["arm", "split", "iteration"]).itertuples():
        sd = "" if r.sd != r.sd else f" ± {r.sd:.3f}"  # NaN with one seed
        lines.append(f"| {r.arm} | M{r.iteration} | {r.split} | {r.mean:.3f}{sd} | {r.min:.3f} - {r.max:.3f} | "
                     f"{r.seeds} |")
    return "\n".join(lines)


def report_seeds(folder: Path, by_seed: dict[int, Path], log=print) -> None:
    """<folder>/report/: seeds.md (seeds_markdown), seeds_verdicts.csv and seeds_metrics.csv (seeds_tables: the
    across-seed mean and spread of every number the figures draw). Each seed's own figures are in its study's
    report/ (each seed has its own M1, which the figures keep apart)."""
    import pandas as pd

    verdicts, spread = seeds_tables(by_seed)
    out = Path(folder) / "report"
    out.mkdir(parents=True, exist_ok=True)
    verdicts.to_csv(out / "seeds_verdicts.csv", index=False)
    spread.to_csv(out / "seeds_metrics.csv", index=False)
    text = seeds_markdown(verdicts, spread)
    (out / "seeds.md").write_text(text + "\n")
    found = [findings.table(_runs_of(Path(root))).assign(seed=seed) for seed, root in by_seed.items()]
    text += "\n\n" + findings.write(pd.concat(found, ignore_index=True), out, seeds=True).read_text()
    log(f"\nseeds {', '.join(map(str, by_seed))}: verdicts and pass@1 across seeds ({out})\n\n" + text)


def log_paradigm_advice(paths, paradigm: str, log=print) -> None:
    """The paper's paradigm advice from M1's coverage (recorded in iter_1/metrics.json by the evaluate
    stage), logged before the first training stage."""
    if not paths.metrics(1).exists():
        return
    advice = json.loads(paths.metrics(1).read_text()).get("paradigm_advice")
    if advice:
        agrees = {"dpo": "DPO" in advice["advice"], "sft": advice["advice"] == "SFT"}.get(paradigm)
        log(f"  paradigm advice: M1 coverage_mean {advice['coverage_mean']:.3f} -> iterative {advice['advice']} "
            f"({advice['rule']}); this run: iterative {paradigm.upper()}"
            + ("" if agrees is None else " (as advised)" if agrees else " (not the advised paradigm)"))
