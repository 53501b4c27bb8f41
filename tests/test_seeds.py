"""`selfimprove run <recipe> --seeds ...`: one run per seed (run seed and organism seed), then the per-seed verdicts
and the across-seed mean and spread of every number of the metrics tables."""

import json

import pandas as pd
import pytest

from selfimprove import findings, metrics, pipeline
from selfimprove.config import RecipeError


@pytest.mark.slow
def test_seeds_run_the_recipe_per_seed_and_report_mean_and_spread(organism_root, tmp_path):
    folder = pipeline.run("tiny", seeds=[0, 1], overrides=["sample.problems_per_iteration=20"], runs_root=tmp_path,
                          organism_root=organism_root, log=lambda *a: None)
    assert folder == tmp_path / "tiny-seeds"
    values = {}
    for s in (0, 1):
        manifest = json.loads((folder / f"seed{s}" / "manifest.json").read_text())
        assert manifest["config"]["seed"] == s and manifest["config"]["organism"]["seed"] == s
        table = metrics.collect(folder / f"seed{s}")
        values[s] = table[(table["split"] == "test") & (table["metric"] == "pass@1") & (table["subset"] == "all")]
    spread = pd.read_csv(folder / "report" / "seeds_metrics.csv")
    p1 = spread[(spread["split"] == "test") & (spread["metric"] == "pass@1") & (spread["subset"] == "all")]
    assert sorted(p1["iteration"]) == [1, 2] and (p1["seeds"] == 2).all()
    for t in (1, 2):
        both = [float(values[s].loc[values[s]["iteration"] == t, "value"].iloc[0]) for s in (0, 1)]
        row = p1[p1["iteration"] == t].iloc[0]
        assert row["mean"] == pytest.approx(sum(both) / 2)
        assert (row["min"], row["max"]) == (pytest.approx(min(both)), pytest.approx(max(both)))
    verdicts = pd.read_csv(folder / "report" / "seeds_verdicts.csv")
    assert list(verdicts["seed"]) == [0, 1] and verdicts["label"].notna().all()
    text = (folder / "report" / "seeds.md").read_text()
    assert "| 0 | dpo |" in text and "| 1 | dpo |" in text and "M2 | test" in text
    # the paper's findings over seeds: per finding, how many of the 2 seeds show it
    found = pd.read_csv(folder / "report" / "findings.csv")
    assert sorted(found["seed"].unique()) == [0, 1] and len(found) == 2 * len(findings.FINDINGS)
    # each cell: the seeds that show it out of those that could tell (a seed whose improvement set is empty
    # cannot tell whether IS(t) lies within M1's reach), or n/a when none could
    row = (folder / "report" / "findings.md").read_text().splitlines()[-1]
    assert row.startswith("| dpo | ")
    cells = [c.strip() for c in row.split("|")[2:-1]]
    assert len(cells) == len(findings.FINDINGS)
    for finding, cell in zip(findings.FINDINGS, cells):
        told = found[(found["arm"] == "dpo") & (found["finding"] == finding) & found["appears"].notna()]
        shown = f"{int(told['appears'].astype(bool).sum())}/{len(told)} seeds" if len(told) else "n/a"
        assert cell.startswith(shown), (finding, cell, shown)


def test_a_bad_seed_list_or_override_is_refused_before_any_run(tmp_path):
    with pytest.raises(RecipeError, match="distinct seeds"):
        pipeline.run("tiny", seeds=[1, 1], runs_root=tmp_path, organism_root=tmp_path / "org", log=lambda *a: None)
    with pytest.raises(RecipeError, match="unknown key"):
        pipeline.run("tiny", seeds=[0, 1], overrides=["sample.n_sample=4"], runs_root=tmp_path,
                     organism_root=tmp_path / "org", log=lambda *a: None)
    with pytest.raises(RecipeError, match="--figures-dir does not go with --seeds"):
        pipeline.run("tiny", seeds=[0], figures_dir=tmp_path / "figures", runs_root=tmp_path,
                     organism_root=tmp_path / "org", log=lambda *a: None)
    assert not any(tmp_path.iterdir())
