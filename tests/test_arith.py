"""The arith generator: determinism, levels, valid gold solutions, several orders, disjoint splits."""

import random

import pytest

from selfimprove import arith

SMALL = arith.ArithConfig(n_train=300, n_test=100, n_ood=50)


@pytest.fixture(scope="module")
def splits():
    return arith.generate(SMALL)


def test_same_seed_same_rows_other_seed_other_rows(splits):
    assert arith.generate(SMALL) == splits
    other = arith.generate(arith.ArithConfig(seed=1, n_train=300, n_test=100, n_ood=50))
    assert other["train"][0]["question"] != splits["train"][0]["question"]


def test_sizes_and_even_levels(splits):
    assert [len(splits[s]) for s in ("train", "test", "ood")] == [300, 100, 50]
    for rows in splits.values():
        counts = {lv: sum(r["level"] == lv for r in rows) for lv in arith.LEVELS}
        assert max(counts.values()) - min(counts.values()) <= 1


def test_every_gold_solution_is_true_arithmetic_and_ends_in_the_answer(splits):
    for rows in splits.values():
        for r in rows:
            for sol in r["solutions"]:
                assert arith.equations_valid(sol), sol
                assert arith.extract_answer(sol) == r["answer"]
                # one equation per operation, plus one per group product
                assert len(arith.equations(sol)) >= r["level"]


def test_training_problems_have_several_distinct_solutions(splits):
    multi = [r for r in splits["train"] if r["level"] >= 3]
    assert all(len(set(r["solutions"])) == len(r["solutions"]) for r in splits["train"])
    assert sum(len(r["solutions"]) == SMALL.solutions_per_problem for r in multi) / len(multi) > 0.9
    # the orders differ in their equations, not only in operand order
    assert any(set(arith.equations(r["solutions"][0])) != set(arith.equations(r["solutions"][1])) for r in multi)


def test_splits_disjoint_and_ood_uses_unseen_templates(splits):
    questions = [r["question"] for rows in splits.values() for r in rows]
    assert len(questions) == len(set(questions))
    assert {r["template"] for r in splits["train"] + splits["test"]} <= set(arith.ID_TEMPLATES)
    assert {r["template"] for r in splits["ood"]} <= set(arith.OOD_TEMPLATES)
    id_words = {w for r in splits["train"] for w in r["question"].split()}
    ood_words = {w for r in splits["ood"] for w in r["question"].split()}
    assert len(ood_words - id_words) >= 10  # new wording, not only new numbers


def test_running_totals_stay_in_range(splits):
    for r in splits["train"]:
        # the told order keeps every total in 0..max_total; "gains first" may pass it, never below 0
        told = arith.equations(r["solutions"][0])
        assert all(0 <= int(eq.split("= ")[1]) <= SMALL.max_total for eq in told)
        for sol in r["solutions"]:
            assert all(int(c) >= 0 for *_, c in arith.EQUATION_RE.findall(sol))


@pytest.mark.parametrize("text,answer", [("1 + 2 = 3\n#### 3", "3"), ("#### 4\n#### 5", "5"),
                                          ("#### 007", "7"), ("no marker 12", None), ("####", None)])
def test_extract_answer(text, answer):
    assert arith.extract_answer(text) == answer


def test_equations_valid_rejects_false_and_empty():
    assert arith.equations_valid("2 * 3 = 6\n6 + 1 = 7")
    assert not arith.equations_valid("2 * 3 = 7")
    assert not arith.equations_valid("#### 7")


def test_solution_orders_agree_on_answer():
    rng = random.Random(3)
    cfg = arith.ArithConfig()
    for _ in range(200):
        start, ops, answer = arith._story_ops(rng, 5, cfg)
        for order in ("sentence", "products", "gains"):
            lines = arith.solution_steps(start, ops, order, rng)
            assert int(lines[-1].split("=")[1]) == answer, (order, lines)


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="n_test"):
        arith.ArithConfig(n_test=0)


def test_write_jsonl_roundtrip(tmp_path, splits):
    from selfimprove import data

    arith.write_jsonl(splits, tmp_path, SMALL)
    assert data.load_jsonl(tmp_path / "test.jsonl") == splits["test"]
    assert (tmp_path / "config.json").exists()


def test_fresh_split_is_held_out_and_leaves_the_other_splits_unchanged():
    from selfimprove.arith import ArithConfig, generate

    small = dict(n_train=60, n_test=20, n_ood=10)
    base, more = generate(ArithConfig(**small)), generate(ArithConfig(**small, n_fresh=30))
    assert "fresh" not in base and len(more["fresh"]) == 30
    assert all(base[s] == more[s] for s in ("train", "test", "ood"))  # drawn last: nothing else moves
    others = {r["question"] for s in ("train", "test", "ood") for r in more[s]}
    assert not others & {r["question"] for r in more["fresh"]}
    assert all(len(r["solutions"]) >= 1 and r["split"] == "fresh" for r in more["fresh"])
