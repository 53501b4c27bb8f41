"""Diversity metrics against values computed by hand on small strings; the set rule; the embedding cache."""

import numpy as np
import pandas as pd
import pytest

from selfimprove import diversity


def test_distinct_n_by_hand_for_every_order():
    texts = ["the cat sat", "the cat ran"]
    # unigrams: the cat sat the cat ran -> 4 distinct of 6; bigrams: (the cat) x2, (cat sat), (cat ran) -> 3/4;
    # trigrams: 2 distinct of 2; no 4- or 5-grams -> 0 (Kirk et al.'s rule)
    expected = {1: 4 / 6, 2: 3 / 4, 3: 1.0, 4: 0.0, 5: 0.0}
    for n, want in expected.items():
        assert diversity.distinct_n(texts, n) == pytest.approx(want), n
    assert diversity.distinct_n_avg(texts) == pytest.approx(sum(expected.values()) / 5)


def test_distinct_n_splits_on_newlines_and_keeps_decimals():
    # "12\n12" must stay two words and 0.16 must not become 016 (diversity.ngrams docstring)
    assert diversity.ngrams("3 * 4 = 12\n12 + 1 = 13", 1)[4:6] == [("12",), ("12",)]
    assert diversity.distinct_n(["0.16 016"], 1) == 1.0
    assert diversity.distinct_n(["a a a a"], 1) == 0.25
    assert diversity.distinct_n([], 1) == 0.0


def test_identical_responses_have_low_distinct_n_and_different_ones_high():
    same = ["1 + 2 = 3\n#### 3"] * 4  # 7 words, 6 distinct (3 twice), four times over
    assert diversity.distinct_n(same, 1) == pytest.approx(6 / 28)
    different = ["1 + 2 = 3", "4 - 1 = 3", "6 / 2 = 3", "9 * 1 = 9"]
    assert diversity.distinct_n_avg(different) > diversity.distinct_n_avg(same)


def test_distinct_equations_by_hand():
    arith_set = ["3 + 4 = 7\n7 * 2 = 14\n#### 14", "3 + 4 = 7\n14 - 0 = 14\n#### 14", "4 + 3 = 7\n#### 7"]
    # equations: 3 + 4 = 7 (x2), 7 * 2 = 14, 14 - 0 = 14, 4 + 3 = 7 -> 4 distinct of 5
    assert diversity.distinct_equations(arith_set, "arith") == pytest.approx(4 / 5)
    assert diversity.distinct_equations(["#### 3", "no math here"], "arith") is None
    gsm = ["He pays 250*5 = <<250*5=1250>>1250 dollars.", "250 * 5 = 1250, then 1,250 - 50 = 1,200"]
    # generic: 250*5=1250 (the annotation, then the plain line), 1250-50=1200 -> 2 distinct of 3
    assert diversity.distinct_equations(gsm, "gsm8k") == pytest.approx(2 / 3)


@pytest.mark.parametrize("text,expected", [
    ("<<0.8*50=40>>40", ["0.8*50=40"]),
    ("(3 + 4) * 2 = 14", ["(3+4)*2=14"]),
    ("x (3 + 4 = 7", ["3+4=7"]),
    ("it costs $12 and = 5", []),
    ("2000-1800 = 200 and 200/1250 = 0.16.", ["2000-1800=200", "200/1250=0.16"]),
    ("3 x 4 = 12 and 5 × 2 = 10", ["3x4=12", "5×2=10"]),  # the module comment's operators
    ("Weng earns 12/60 = $0.2 per minute, 3 * $5 = $15", ["12/60=0.2", "3*5=15"]),  # GSM8K writes dollars
])
def test_generic_equations(text, expected):
    assert diversity.generic_equations(text) == expected


def test_pairwise_diversity_by_hand_and_batched():
    # orthogonal pair: cosine 0 -> diversity 1; identical (up to scale): 0; opposite: cosine -1 -> 2
    assert diversity.pairwise_diversity(np.array([[1.0, 0.0], [0.0, 3.0]])) == pytest.approx(1.0)
    assert diversity.pairwise_diversity(np.array([[1.0, 1.0], [2.0, 2.0]])) == pytest.approx(0.0, abs=1e-12)
    assert diversity.pairwise_diversity(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(2.0)
    rng = np.random.default_rng(0)
    stack = rng.normal(size=(7, 5, 3))
    batched = diversity.pairwise_diversity(stack)
    for p in range(7):  # the batched product equals the loop over pairs i < j
        e = stack[p] / np.linalg.norm(stack[p], axis=1, keepdims=True)
        sims = [e[i] @ e[j] for i in range(5) for j in range(i + 1, 5)]
        assert batched[p] == pytest.approx(1 - np.mean(sims))
    with pytest.raises(ValueError, match="at least 2"):
        diversity.pairwise_diversity(np.ones((1, 3)))


def _samples(spec):
    """spec: {problem_id: [(response, correct), ...]} in sample_idx order."""
    rows = [dict(problem_id=pid, level=1, decoding="sample", sample_idx=i, response=r, correct=c)
            for pid, items in spec.items() for i, (r, c) in enumerate(items)]
    rows += [dict(problem_id=pid, level=1, decoding="greedy", sample_idx=0, response="greedy text", correct=True)
             for pid in spec]
    return pd.DataFrame(rows)


SPEC = {"p1": [("a", True), ("b", True), ("c", False), ("d", True)],  # 3 correct, 1 incorrect
        "p2": [("e", False), ("f", False)],                          # 0 correct, 2 incorrect
        "p3": [("g", True)]}                                          # 1 correct


def test_response_sets_fixed_size_rule():
    sets = diversity.response_sets(_samples(SPEC), per_problem=2)
    assert sets["correct"] == {"p1": ["a", "b"]}  # first 2 by sample_idx; p3 has 1 < 2: left out
    assert sets["incorrect"] == {"p2": ["e", "f"]}  # p1 has 1 incorrect < 2: left out
    sets = diversity.response_sets(_samples(SPEC), per_problem=3)
    assert sets["correct"] == {"p1": ["a", "b", "d"]} and sets["incorrect"] == {}
    sets = diversity.response_sets(_samples(SPEC), per_problem=0)  # all responses, at least two
    assert sets["correct"] == {"p1": ["a", "b", "d"]} and sets["incorrect"] == {"p2": ["e", "f"]}
    with pytest.raises(ValueError, match=">= 0"):
        diversity.response_sets(_samples(SPEC), per_problem=-1)


class FakeModel:
    """One-hot embedding per distinct first letter; counts the texts it encodes."""

    def __init__(self):
        self.encoded = 0

    def encode(self, texts, **_):
        self.encoded += len(texts)
        out = np.zeros((len(texts), 26), dtype=np.float32)
        for i, t in enumerate(texts):
            out[i, ord(t[0]) - ord("a")] = 1.0
        return out


@pytest.fixture
def fake_model(monkeypatch):
    model = FakeModel()
    monkeypatch.setitem(diversity._MODELS, "fake", model)
    return model


def test_problem_diversity_values_by_hand(fake_model, tmp_path):
    spec = {"p1": [("a x", True), ("a y", True), ("b z", False), ("c w", False)],
            "p2": [("d 1 + 1 = 2", True), ("e 1 + 1 = 2", True), ("f", False)]}
    div = diversity.problem_diversity(_samples(spec), 2, "arith", diversity.Embedder("fake", tmp_path))
    # p1 correct: same first letter -> cosine 1 -> 0; p1 incorrect: orthogonal -> 1; p2 correct: orthogonal -> 1
    assert div.loc["p1", "embedding_diversity:correct"] == pytest.approx(0.0)
    assert div.loc["p1", "embedding_diversity:incorrect"] == pytest.approx(1.0)
    assert div.loc["p2", "embedding_diversity:correct"] == pytest.approx(1.0)
    assert np.isnan(div.loc["p2", "embedding_diversity:incorrect"])  # one incorrect response: no value
    # distinct-n of p1 correct ("a x", "a y"): unigrams 3/4, bigrams 2/2, none above -> (0.75 + 1) / 5
    assert div.loc["p1", "distinct_n:correct"] == pytest.approx(1.75 / 5)
    # p2 correct: the equation 1 + 1 = 2 twice -> 1/2; p1 has no equation -> no value
    assert div.loc["p2", "distinct_equations:correct"] == pytest.approx(0.5)
    assert np.isnan(div.loc["p1", "distinct_equations:correct"])


def test_embedding_cache_computes_each_text_once_and_is_read_back_from_disk(fake_model, tmp_path):
    texts = ["a", "b", "a", "c"]
    first = diversity.Embedder("fake", tmp_path).embed(texts)
    assert fake_model.encoded == 3  # "a" once
    shards = list((tmp_path / "embeddings" / "fake").glob("*.npz"))
    assert len(shards) == 1
    again = diversity.Embedder("fake", tmp_path)  # a new process would start like this: from disk only
    second = again.embed(["c", "a", "b"])
    assert fake_model.encoded == 3 and again.stats["computed"] == 0
    np.testing.assert_array_equal(second, first[[3, 0, 1]])
    again.embed(["d"])
    assert fake_model.encoded == 4 and len(list((tmp_path / "embeddings" / "fake").glob("*.npz"))) == 2


def test_unloadable_model_names_itself(tmp_path):
    with pytest.raises(diversity.EmbeddingError, match="'/no/such/model' could not be loaded"):
        diversity.Embedder("/no/such/model", tmp_path).embed(["x"])


def test_packaged_minilm_loads_offline_and_ranks_similar_sets_below_unrelated(tmp_path):
    e = diversity.Embedder(diversity.DEFAULT_MODEL, tmp_path)
    emb = e.embed(["The cat sat on the mat.", "A cat was sitting on the mat.", "The cat sat on the mat.",
                   "Stock markets fell sharply on Monday."])
    assert emb.shape == (4, 384)  # all-MiniLM-L6-v2
    np.testing.assert_array_equal(emb[0], emb[2])
    assert diversity.pairwise_diversity(emb[[0, 2]]) == pytest.approx(0.0, abs=1e-6)
    assert diversity.pairwise_diversity(emb[[0, 1]]) < diversity.pairwise_diversity(emb[[0, 3]])


def test_cache_keys_survive_digests_that_end_in_zero_bytes(fake_model, tmp_path):
    # a fixed-width bytes array drops trailing zero bytes; such a text must still be found on disk
    text = next(f"a{i}" for i in range(10_000) if diversity.hashlib.sha256(f"a{i}".encode()).digest()[-1] == 0)
    diversity.Embedder("fake", tmp_path).embed([text])
    again = diversity.Embedder("fake", tmp_path)
    again.embed([text])
    assert again.stats["computed"] == 0 and fake_model.encoded == 1


def test_embedding_subset_caps_the_embedded_problems_only(fake_model, tmp_path):
    spec = {f"p{i}": [(f"{chr(97 + i)} x", True), (f"{chr(98 + i)} y", True)] for i in range(6)}
    div = diversity.problem_diversity(_samples(spec), 2, "arith", diversity.Embedder("fake", tmp_path),
                                      embedding_problems=2)
    embedded = div["embedding_diversity:correct"].dropna()
    assert list(embedded.index) == diversity.embedding_subset(list(spec), 2) and len(embedded) == 2
    assert div["distinct_n:correct"].notna().all()  # the cheap metrics keep every problem
    assert fake_model.encoded == 4
