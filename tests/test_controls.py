"""The ground-truth control arms of a study (schema.CONTROLS): `gold` trains on gold solutions of fresh
problems, `placebo-*` on the loop's data with correctness labels shuffled within each problem."""

import json

import numpy as np
import pandas as pd
import pytest

from selfimprove import arith, beyond_metrics, metrics, pipeline
from selfimprove.config import RecipeError, load_recipe, resolve_recipe
from selfimprove.runs import Run

# gold: 20 fresh problems per iteration, 2 of them in the OOD templates, 30 rows
ARMS = ["paradigm=[dpo,gold,placebo-dpo]", "organism.data.n_fresh=20", "organism.data.n_fresh_ood=2",
        "train.gold_problems=20", "train.gold_ood_share=0.1", "train.gold_rows=30", "name=controls"]


def test_the_gold_arm_needs_enough_fresh_problems():
    with pytest.raises(RecipeError, match="n_fresh is 0: set it to at least 20"):
        load_recipe(resolve_recipe("tiny", pipeline.RECIPES), ["paradigm=[dpo,gold]", "train.gold_problems=20"])
    with pytest.raises(RecipeError, match="n_fresh_ood is 1: set it to at least 2"):  # 20 x 0.1 OOD problems
        load_recipe(resolve_recipe("tiny", pipeline.RECIPES),
                    ["paradigm=[dpo,gold]", "train.gold_problems=20", "organism.data.n_fresh=18",
                     "organism.data.n_fresh_ood=1", "train.gold_ood_share=0.1"])
    for bad, why in ((".nan", "must be a finite number"), ("1.5", r"must be in \[0, 1\]")):
        with pytest.raises(RecipeError, match=f"section 'train': 'gold_ood_share' {why}"):
            load_recipe(resolve_recipe("tiny", pipeline.RECIPES), [f"train.gold_ood_share={bad}"])
    with pytest.raises(RecipeError, match="'gold_rows' must be >= 0"):
        load_recipe(resolve_recipe("tiny", pipeline.RECIPES), ["train.gold_rows=-1"])
    with pytest.raises(RecipeError, match="paradigm' must be one of"):
        load_recipe(resolve_recipe("tiny", pipeline.RECIPES), ["paradigm=[dpo,placebo]"])


@pytest.mark.slow
def test_control_arms_run_beside_the_loop_and_train_on_what_they_claim(organism_root, tmp_path, tiny_run):
    # two runs at a time (lanes.py), each in a process of its own, after the first run's iteration 1
    study = pipeline.run("tiny", overrides=ARMS, runs_root=tmp_path, organism_root=organism_root, jobs=2,
                         log=lambda *a: None)
    dpo, gold, placebo = (Run(study / arm) for arm in ("dpo", "gold", "placebo-dpo"))
    # side by side changes no number: the study's dpo arm is the plain tiny run (run alone, one stage at a time).
    # The scores of responses under the models (token entropy, KL) are float32 sums over a sequence's tokens,
    # which one thread (a run side by side) adds in another order than two (the plain run); KL is a small
    # difference of two such log-likelihoods (about -5 each), so their last digits move it by about 1e-4 of
    # itself: equal to 1e-3 there.
    side, alone = metrics.collect(dpo.root), metrics.collect(tiny_run)
    scored = alone["metric"].isin(beyond_metrics.SCORE_METRICS)
    assert scored.any() and side[~scored].equals(alone[~scored])
    assert side[scored].drop(columns=["value", "ci_low", "ci_high"]).equals(
        alone[scored].drop(columns=["value", "ci_low", "ci_high"]))
    assert np.allclose(side.loc[scored, ["value", "ci_low", "ci_high"]].astype(float),
                       alone.loc[scored, ["value", "ci_low", "ci_high"]].astype(float), rtol=1e-3, atol=1e-7)
    for arm in (gold, placebo):  # M1's stages were computed once, by the first run, and taken from it
        stages = json.loads(arm.paths.manifest.read_text())["stages"]
        assert {k for k, st in stages.items() if st.get("shared_from")} == {"1/sample", "1/verify", "1/evaluate"}
    # gold: the first 18 fresh problems and the first 2 fresh OOD-template ones, 30 rows: every problem's first
    # gold solution, then 10 second ones (gold_rows)
    def split(name):
        return [json.loads(line) for line in (gold.root / "problems" / f"{name}.jsonl").read_text().splitlines()]

    fresh, fresh_ood, ood = split("fresh"), split("fresh_ood"), split("ood")
    rows = pd.read_parquet(gold.paths.train_data(2))
    problems = fresh[:18] + fresh_ood[:2]
    assert set(rows["problem_id"]) == {p["id"] for p in problems} and len(rows) == 30
    assert sorted(rows["sample_idx"].value_counts().items()) == [(0, 20), (1, 10)]
    solutions = {(p["id"], s) for p in problems for s in p["solutions"][:2]}
    assert set(zip(rows["problem_id"], rows["completion"])) <= solutions
    assert {p["template"] for p in fresh_ood} <= set(arith.OOD_TEMPLATES)
    assert not {p["question"] for p in fresh_ood} & {p["question"] for p in ood}  # not the OOD test problems
    assert json.loads(gold.paths.train_log(2).read_text())["kind"] == "sft"
    train_ids = {json.loads(x)["id"] for x in (gold.root / "problems" / "train.jsonl").read_text().splitlines()}
    assert not train_ids & set(rows["problem_id"])  # fresh: none of them is a training problem of M1 or the loop
    # placebo-dpo: pairs from the same graded samples as dpo, labels shuffled: some chosen responses are wrong
    graded = dpo.graded(1, "train").set_index(["problem_id", "sample_idx"])["correct"]
    pairs = pd.read_parquet(placebo.paths.train_data(2))
    chosen_ok = [bool(graded[(pid, i)]) for pid, i in zip(pairs["problem_id"], pairs["chosen_idx"])]
    assert len(pairs) and not all(chosen_ok)
    real = pd.read_parquet(dpo.paths.train_data(2))
    assert all(bool(graded[(pid, i)]) for pid, i in zip(real["problem_id"], real["chosen_idx"]))
    # every arm has its verdict, and the study's figures draw the controls
    for run in (dpo, gold, placebo):
        assert json.loads((run.paths.report / "verdict.json").read_text())["label"]
    assert (study / "report" / "figure1_pass1.png").exists()
    assert "gold" in (study / "report" / "summary.md").read_text()
    # the paper's findings, arm by arm, read from each arm's own verdict signals
    found = pd.read_csv(study / "report" / "findings.csv")
    assert list(found["arm"].unique()) == ["dpo", "gold", "placebo-dpo"]
    for arm in ("dpo", "gold", "placebo-dpo"):
        signals = pd.read_csv(Run(study / arm).paths.report / "verdict.csv")
        gain = signals[(signals["signal"] == "pass@1") & (signals["split"] == "test")].iloc[0]
        row = found[(found["arm"] == arm) & (found["finding"] == "pass@1 gain")].iloc[0]
        assert bool(row["appears"]) == bool(gain["fired"]) and row["value"] == pytest.approx(gain["change"])
