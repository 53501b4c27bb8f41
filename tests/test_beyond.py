"""beyond.py against brute force and hand computation: pass@k curves by enumerating k-subsets, the crossover,
the paired pass@n interval, the support ledger, cover@tau at its boundaries, the guessing baseline, answer
entropy, token entropy, and log-likelihoods, entropies and KL of two tiny in-process bigram transformers."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from selfimprove import beyond


def _counts(c, n=8, level=None) -> pd.DataFrame:
    ids = [f"p{i}" for i in range(len(c))]
    out = pd.DataFrame({"n": n, "c": list(c)}, index=pd.Index(ids, name="problem_id"))
    if level is not None:
        out["level"] = list(level)
    return out


# ---------------------------------------------------------------------------------------------------------
# 1. pass@k curves and the crossover

def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of the k-subsets of n responses (c correct) that hold a correct one."""
    labels = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(labels[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_curve_matches_enumeration_of_k_subsets(n):
    rng = np.random.default_rng(n)
    c = rng.integers(0, n + 1, size=6)
    curve = beyond.pass_at_k_curve([n] * 6, c)
    assert list(curve) == beyond.k_grid(n) and list(curve)[-1] == n
    for k, v in curve.items():
        assert v == pytest.approx(np.mean([_brute_pass_at_k(n, int(ci), k) for ci in c]), abs=1e-12)


def test_pass_at_k_curve_with_unequal_n_stops_at_the_smallest():
    curve = beyond.pass_at_k_curve([3, 8], [1, 2])
    assert list(curve) == [1, 2, 3]
    assert curve[3] == pytest.approx((1 + _brute_pass_at_k(8, 2, 3)) / 2)


def test_k_grid_ends_at_n():
    assert beyond.k_grid(128) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert beyond.k_grid(6) == [1, 2, 4, 6]


def test_crossover_on_constructed_curves():
    # M1 spreads its success: 1 correct of 8 on every problem, pass@k = k/8.
    # M_t is sharp: 8 of 8 on half the problems, 0 on the rest, pass@k = 1/2 for every k.
    m1, mt = _counts([1] * 10), _counts([8] * 5 + [0] * 5)
    r = beyond.compare_pass_at_k(m1, mt, n_boot=0)
    curves = r["curves"].set_index("k")
    assert curves["before"].to_dict() == pytest.approx({1: 1 / 8, 2: 2 / 8, 4: 4 / 8, 8: 1.0})
    assert curves["after"].to_dict() == pytest.approx({1: 0.5, 2: 0.5, 4: 0.5, 8: 0.5})
    assert r["crossover_k"] == 4  # equal at k = 4: "at or above"
    assert r["pass@n"]["k"] == 8 and r["pass@n"]["diff"] == pytest.approx(-0.5)
    # no crossover: M_t above M1 at every k (pass@8: 0.5 against 0.6)
    assert beyond.compare_pass_at_k(_counts([1] * 5 + [0] * 5), _counts([8] * 6 + [0] * 4),
                                    n_boot=0)["crossover_k"] is None
    # a tolerance counts a near tie as crossed
    assert beyond.crossover_k({1: 0.30, 2: 0.59}, {1: 0.5, 2: 0.6}) is None
    assert beyond.crossover_k({1: 0.30, 2: 0.59}, {1: 0.5, 2: 0.6}, tol=0.02) == 2


def test_paired_pass_at_n_interval_contains_the_true_difference():
    # 400 problems, n = 8: M1 solves each sample with p = 0.3; M_t with 0.6 on half the problems and 0 on the rest.
    rng = np.random.default_rng(7)
    n, half = 8, 200
    c1 = rng.binomial(n, 0.3, size=2 * half)
    ct = np.concatenate([rng.binomial(n, 0.6, size=half), np.zeros(half, dtype=int)])
    true = 0.5 * (1 - 0.4 ** n) - (1 - 0.7 ** n)  # -0.4427
    r = beyond.compare_pass_at_k(_counts(c1), _counts(ct), n_boot=2000, seed=1)
    lo, hi = r["pass@n"]["ci"]
    assert lo <= true <= hi and hi - lo < 0.15
    assert r["pass@n"]["diff"] == pytest.approx((ct > 0).mean() - (c1 > 0).mean())
    # the same model against itself: a difference of exactly 0
    same = beyond.compare_pass_at_k(_counts(c1), _counts(c1), n_boot=200)
    assert same["pass@n"]["diff"] == 0 and same["pass@n"]["ci"] == (0.0, 0.0)


def test_problems_without_samples_are_left_out():
    m1, mt = _counts([1, 2, 0], n=4), _counts([4, 0, 0], n=4)
    m1.loc["p2", ["n", "c"]] = 0  # no sampled response for p2 (metrics.per_problem_table writes 0 / 0)
    curves = beyond.pass_at_k_curves(m1, mt, n_boot=0)
    assert curves["k"].tolist() == [1, 2, 4] and (curves["n"] == 2).all()
    assert beyond.cover_at_tau(m1, taus=(0.1,), n_boot=0)[["value", "n"]].iloc[0].tolist() == [1.0, 2]


def test_problem_counts_from_a_sample_table():
    pc = beyond.problem_counts(_samples().assign(level=1))
    assert pc[["n", "c"]].to_dict("index") == {"p1": {"n": 4, "c": 3}, "p2": {"n": 4, "c": 0}, "p3": {"n": 4, "c": 2}}
    assert beyond.problem_counts(_samples().assign(level=1), "greedy")["c"].tolist() == [1, 0, 0]


def test_paired_comparison_needs_the_same_problems():
    with pytest.raises(ValueError, match="same problems"):
        beyond.pass_at_k_curves(_counts([1, 2]), _counts([1, 2, 3]))


# ---------------------------------------------------------------------------------------------------------
# 2. The support ledger

def test_support_ledger_on_a_hand_made_table():
    m1 = _counts([3, 1, 0, 0, 2, 0], level=[1, 1, 1, 2, 2, 2])
    mt = _counts([8, 0, 1, 0, 0, 0], level=[1, 1, 1, 2, 2, 2])
    cls = beyond.support_classes(m1, mt)
    assert cls.tolist() == ["preserved", "lost", "gained", "never", "lost", "never"]
    t = beyond.support_table(cls, m1["level"], n_boot=0).set_index(["subset", "support"])
    assert t.loc["all", "count"].to_dict() == {"preserved": 1, "lost": 2, "gained": 1, "never": 2}
    assert t.loc[("all", "lost"), "value"] == pytest.approx(2 / 6) and t.loc[("all", "lost"), "n"] == 6
    assert t.loc["L1", "count"].to_dict() == {"preserved": 1, "lost": 1, "gained": 1, "never": 0}
    assert t.loc["L2", "count"].to_dict() == {"preserved": 0, "lost": 1, "gained": 0, "never": 2}
    # a stricter support (at least 2 correct): problem p2 (1 correct) is out of M1's support
    assert beyond.support_classes(m1, mt, min_correct=2).tolist() == [
        "preserved", "never", "never", "never", "lost", "never"]


def test_support_ledger_on_greedy_correctness():
    m1 = _counts([1, 1, 0, 0], n=1)
    mt = _counts([1, 0, 1, 0], n=1)
    assert beyond.support_classes(m1, mt).tolist() == ["preserved", "lost", "gained", "never"]


def test_support_shares_have_intervals_and_unequal_n_is_refused():
    cls = pd.Series(["lost"] * 30 + ["preserved"] * 70)
    row = beyond.support_table(cls, n_boot=500).set_index("support").loc["lost"]
    assert row["value"] == pytest.approx(0.3) and row["ci_low"] < 0.3 < row["ci_high"]
    with pytest.raises(ValueError, match="same number of responses"):
        beyond.support_classes(_counts([1, 1], n=8), _counts([1, 1], n=4))


# ---------------------------------------------------------------------------------------------------------
# 3. cover@tau and the guessing baseline

def test_cover_at_tau_boundaries_are_included():
    # n = 10: c = 1 is exactly tau 0.1, c = 9 exactly 0.9; n = 4: c = 1, 2, 3 exactly 0.25, 0.5, 0.75
    for n, c, tau in [(10, 1, 0.1), (10, 9, 0.9), (4, 1, 0.25), (4, 2, 0.5), (4, 3, 0.75), (20, 5, 0.25)]:
        got = beyond.cover_at_tau(_counts([c], n=n), taus=(tau,), n_boot=0)["value"].iloc[0]
        below = beyond.cover_at_tau(_counts([c - 1], n=n), taus=(tau,), n_boot=0)["value"].iloc[0]
        assert (got, below) == (1.0, 0.0), (n, c, tau)


def test_cover_at_tau_shares_by_hand():
    t = beyond.cover_at_tau(_counts([0, 1, 3, 5, 8, 10], n=10), n_boot=0)
    # c/n = 0, .1, .3, .5, .8, 1.0
    assert t["tau"].tolist() == [0.1, 0.25, 0.5, 0.75, 0.9]
    assert t["value"].tolist() == pytest.approx([5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    assert (t["n"] == 6).all()


@pytest.mark.parametrize("m,k", [(2, 1), (2, 3), (5, 1), (5, 2), (5, 4), (4, 3)])
def test_guess_pass_at_k_matches_enumeration(m, k):
    hits = sum(0 in seq for seq in itertools.product(range(m), repeat=k))  # option 0 is the right one
    assert beyond.guess_pass_at_k(k, m) == pytest.approx(hits / m ** k)


def test_guessing_baseline_on_commonsenseqa_and_the_flag():
    g16 = beyond.guess_pass_at_k(16, 5)
    assert g16 == pytest.approx(1 - 0.8 ** 16) and 0.97 < g16 < 0.972
    flags = beyond.guess_flags({1: 0.26, 4: 0.70, 16: 0.99}, n_options=5).set_index("k")
    # guess: 0.2, 0.5904, 0.9719
    assert flags["uninformative"].to_dict() == {1: False, 4: False, 16: True}
    assert beyond.guess_flags({1: 0.26}, 5, margin=0.1)["uninformative"].tolist() == [True]


# ---------------------------------------------------------------------------------------------------------
# 4. Answer-level diversity

def test_answer_entropy_by_hand():
    assert beyond.answer_entropy(["a", "a", "b", "b"]) == (2, pytest.approx(math.log(2)))
    assert beyond.answer_entropy(["a", "b", "c", "d"]) == (4, pytest.approx(math.log(4)))
    assert beyond.answer_entropy(["x"] * 5) == (1, 0.0)
    p = np.array([3, 1]) / 4
    assert beyond.answer_entropy(["1", "1", " 1", "2"])[1] == pytest.approx(-(p * np.log(p)).sum())
    # missing answers: one category, dropped, or each its own
    answers = ["a", "a", None, float("nan")]
    assert beyond.answer_entropy(answers) == (2, pytest.approx(math.log(2)))
    assert beyond.answer_entropy(answers, "drop") == (1, 0.0)
    d, h = beyond.answer_entropy(answers, "distinct")
    assert d == 3 and h == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    n, h = beyond.answer_entropy([None, ""], "drop")
    assert n == 0 and math.isnan(h)
    with pytest.raises(ValueError):
        beyond.answer_entropy(["a"], "skip")


def _samples() -> pd.DataFrame:
    rows = []
    spec = {"p1": (["4", "4", "4", "5"], [1, 1, 1, 0], 1), "p2": (["1", "2", "3", None], [0, 0, 0, 0], 0),
            "p3": (["7", "8", "7", "8"], [0, 1, 0, 1], 0)}
    for pid, (answers, correct, greedy) in spec.items():
        rows.append(dict(problem_id=pid, decoding="greedy", sample_idx=0, extracted=answers[0], correct=bool(greedy)))
        rows += [dict(problem_id=pid, decoding="sample", sample_idx=i, extracted=a, correct=bool(c))
                 for i, (a, c) in enumerate(zip(answers, correct))]
    return pd.DataFrame(rows)


def test_answer_diversity_per_problem_and_solved_rules():
    pp = beyond.answer_diversity(_samples())
    assert pp["distinct_answers"].to_dict() == {"p1": 2, "p2": 4, "p3": 2}
    assert pp.loc["p2", "answer_entropy"] == pytest.approx(math.log(4))
    assert pp.loc["p3", "answer_entropy"] == pytest.approx(math.log(2))
    assert pp["solved"].to_dict() == {"p1": True, "p2": False, "p3": True}
    greedy = beyond.answer_diversity(_samples(), solved="greedy")
    assert greedy["solved"].to_dict() == {"p1": True, "p2": False, "p3": False}
    s = beyond.answer_diversity_summary(greedy, n_boot=0).set_index(["metric", "subset"])
    assert s.loc[("distinct_answers", "unsolved"), "value"] == 3.0 and s.loc[("distinct_answers", "unsolved"), "n"] == 2
    assert s.loc[("distinct_answers", "solved"), "value"] == 2.0
    assert beyond.answer_diversity(_samples(), missing="drop").loc["p2", "distinct_answers"] == 3


# ---------------------------------------------------------------------------------------------------------
# 5. Token entropy, and 6. KL, on two tiny bigram transformers built in-process

WORDS = ["<pad>", "<eos>", "a", "b", "c", "d"]
V = len(WORDS)


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def _bigram_model(table: np.ndarray):
    """A one-layer Llama whose next-token logits depend only on the current token: logits = table[token].
    Attention and MLP write zeros (their output projections are zero), so the residual stream is the token's
    embedding sqrt(V) * e_token, which the final RMSNorm leaves as it is; the LM head reads column `token`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=V, hidden_size=V, intermediate_size=4, num_hidden_layers=1, num_attention_heads=1,
                      num_key_value_heads=1, max_position_embeddings=64, rms_norm_eps=1e-12,
                      tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.embed_tokens.weight.copy_(math.sqrt(V) * torch.eye(V))
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.copy_(torch.tensor(table.T / math.sqrt(V), dtype=torch.float32))
    return model


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _hand(table, prompt_ids, response_ids, temperature=1.0):
    logp = _log_softmax(table / temperature)
    prev = ([prompt_ids[-1]] + response_ids)[:len(response_ids)]
    lp = [logp[a, b] for a, b in zip(prev, response_ids)]
    h = [-(np.exp(logp[a]) * logp[a]).sum() for a in prev]
    return lp, h


@pytest.fixture(scope="module")
def bigrams():
    rng = np.random.default_rng(0)
    t_table, m1_table = rng.normal(0, 1.5, (V, V)), rng.normal(0, 1.5, (V, V))
    return _tokenizer(), (t_table, _bigram_model(t_table)), (m1_table, _bigram_model(m1_table))


def test_score_responses_matches_the_hand_computed_bigram(bigrams):
    tok, (table, model), _ = bigrams
    pairs = [("a b", "c d a"), ("d", "a"), ("c c b a", "b b d c a"), ("b", "")]
    ids = {w: i for i, w in enumerate(WORDS)}
    scores = beyond.score_responses(model, tok, [p for p, _ in pairs], [r for _, r in pairs], batch_size=3)
    for (prompt, response), row in zip(pairs, scores.itertuples()):
        lp, h = _hand(table, [ids[w] for w in prompt.split()], [ids[w] for w in response.split()])
        assert row.n_tokens == len(lp)
        assert row.token_logprob == pytest.approx(lp, abs=1e-5)
        assert row.token_entropy == pytest.approx(h, abs=1e-5)
        assert row.logprob == pytest.approx(sum(lp), abs=1e-4)
        if lp:
            assert row.mean_entropy == pytest.approx(np.mean(h), abs=1e-5)
    assert math.isnan(scores["mean_entropy"].iloc[-1])
    # padding does not change a score: one pair per batch gives the same numbers
    one = beyond.score_responses(model, tok, [p for p, _ in pairs], [r for _, r in pairs], batch_size=1)
    assert one["logprob"].to_numpy() == pytest.approx(scores["logprob"].to_numpy(), abs=1e-5)


def test_score_responses_eos_and_temperature(bigrams):
    tok, (table, model), _ = bigrams
    with_eos = beyond.score_responses(model, tok, ["a", "a"], ["b c", "b c"], add_eos=[True, False])
    lp, _ = _hand(table, [2], [3, 4, 1])
    assert with_eos["n_tokens"].tolist() == [3, 2]
    assert with_eos["logprob"].tolist() == pytest.approx([sum(lp), sum(lp[:2])], abs=1e-4)
    hot = beyond.score_responses(model, tok, ["a"], ["b c"], temperature=2.0)
    lp2, h2 = _hand(table, [2], [3, 4], temperature=2.0)
    assert hot["logprob"].iloc[0] == pytest.approx(sum(lp2), abs=1e-4)
    assert hot["token_entropy"].iloc[0] == pytest.approx(h2, abs=1e-5)
    with pytest.raises(ValueError, match="prompt token"):
        beyond.score_responses(model, tok, [""], ["a"])


def test_mean_token_entropy_by_hand():
    d = pd.DataFrame({"problem_id": ["a", "a", "b", "c"],
                      "token_entropy": [[1.0, 2.0], [3.0], [0.5, 0.5, 0.5, 0.5], []]})
    d = pd.concat([d, pd.DataFrame({"problem_id": ["c"], "token_entropy": [None]})], ignore_index=True)
    r = beyond.mean_token_entropy(d, n_boot=0)
    assert r["value"] == pytest.approx((2.0 + 0.5) / 2) and r["n"] == 2 and r["tokens"] == 7
    assert beyond.mean_token_entropy(d, weighting="response", n_boot=0)["value"] == pytest.approx((2.25 + 0.5) / 2)
    ci = beyond.mean_token_entropy(d, n_boot=200)
    assert ci["ci_low"] <= ci["value"] <= ci["ci_high"]


def _exact_sequence_kl(t_table, m1_table, last: int, length: int) -> float:
    """KL(p_t || p_1) over all responses of `length` tokens after a prompt ending in `last`, by enumeration."""
    lt, l1 = _log_softmax(t_table), _log_softmax(m1_table)
    kl = 0.0
    for seq in itertools.product(range(V), repeat=length):
        prev = (last,) + seq[:-1]
        a = sum(lt[p, s] for p, s in zip(prev, seq))
        b = sum(l1[p, s] for p, s in zip(prev, seq))
        kl += math.exp(a) * (a - b)
    return kl


def test_kl_estimate_on_two_bigram_transformers(bigrams):
    tok, (t_table, t_model), (m1_table, m1_model) = bigrams
    rng = np.random.default_rng(3)
    probs = np.exp(_log_softmax(t_table))
    length, prompts_by_problem = 3, {f"q{i}": WORDS[2 + i % 4] for i in range(24)}
    problem, prompts, responses = [], [], []
    for pid, prompt in prompts_by_problem.items():
        for _ in range(25):  # 25 responses sampled from M_t per problem
            prev, seq = WORDS.index(prompt), []
            for _ in range(length):
                prev = int(rng.choice(V, p=probs[prev]))
                seq.append(prev)
            problem.append(pid)
            prompts.append(prompt)
            responses.append(" ".join(WORDS[i] for i in seq))
    st = beyond.score_responses(t_model, tok, prompts, responses, batch_size=64)
    s1 = beyond.score_responses(m1_model, tok, prompts, responses, batch_size=64)
    assert (st["n_tokens"] == length).all()
    r = beyond.kl_estimate(problem, st["logprob"], s1["logprob"], st["n_tokens"], n_boot=1000, seed=0)
    exact = np.mean([_exact_sequence_kl(t_table, m1_table, WORDS.index(p), length)
                     for p in prompts_by_problem.values()])
    pr, pt = r["per_response"], r["per_token"]
    assert pr["ci_low"] <= exact <= pr["ci_high"] and pr["n"] == 24 and r["responses"] == 600
    assert pr["value"] == pytest.approx(exact, rel=0.15)
    # every response has `length` tokens, so per token is per response / length, interval too
    assert pt["value"] == pytest.approx(pr["value"] / length)
    assert pt["ci_low"] <= exact / length <= pt["ci_high"]
    # a model against itself: KL 0 exactly
    assert beyond.kl_estimate(problem, st["logprob"], st["logprob"], st["n_tokens"], 50)["per_response"]["value"] == 0


def test_kl_estimate_by_hand():
    r = beyond.kl_estimate(["a", "a", "b"], [-1.0, -2.0, -1.0], [-2.0, -2.0, -3.0], [2, 2, 4], n_boot=0)
    # log-ratios 1, 0 (problem a: mean 0.5) and 2 (problem b); per token (1 + 0 + 2) / 8
    assert r["per_response"]["value"] == pytest.approx(1.25) and r["per_token"]["value"] == pytest.approx(0.375)


def test_kl_ood_relation():
    kl = {1: 0.0, 2: 0.1, 3: 0.3, 4: 0.2, 5: 0.6}
    ood = {1: 0.50, 2: 0.48, 3: 0.40, 4: 0.45, 5: 0.30}
    r = beyond.kl_ood_relation(kl, ood)
    x, y = np.array([0.1, 0.3, 0.2, 0.6]), np.array([-0.02, -0.10, -0.05, -0.20])
    assert [p[0] for p in r["points"]] == [2, 3, 4, 5] and r["n_points"] == 4
    assert r["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert r["spearman"] == pytest.approx(-1.0)
    assert "anecdotal" in r["note"]
    few = beyond.kl_ood_relation({2: 0.1, 3: 0.2}, ood)
    assert few["pearson"] is None and few["spearman"] is None


def test_support_ledger_from_sample_tables():
    m1 = _samples().assign(level=[1] * 5 + [2] * 10)
    mt = m1.assign(correct=~m1["correct"])  # every verdict flipped
    classes, table = beyond.support_ledger(m1, mt, n_boot=0)
    # samples: p1 has 3/4 correct -> 1/4 after; p2 0/4 -> 4/4; p3 2/4 -> 2/4
    assert classes.to_dict() == {"p1": "preserved", "p2": "gained", "p3": "preserved"}
    assert table.set_index(["subset", "support"]).loc[("L2", "gained"), "value"] == 0.5
    greedy, _ = beyond.support_ledger(m1, mt, "greedy", n_boot=0)
    assert greedy.to_dict() == {"p1": "lost", "p2": "gained", "p3": "gained"}
