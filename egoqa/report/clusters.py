"""Queries grouped by meaning: TF-IDF (or sentence embeddings) + k-means, k by silhouette.

The rule for k: every k from 2 to min(K_MAX, distinct vectors, texts - 1) is tried and the one
with the highest mean silhouette (cosine) wins, ties to the smaller k; where that range is empty
everything is one cluster. K_MAX = 16 keeps the breakdown readable (NLQ has 13 templates) and
the search a few seconds on 4,548 queries. Each cluster is labelled with the words whose TF-IDF
weight in the cluster exceeds their weight over all queries the most. Texts are clustered once
each, in sorted order, so the result depends only on the set of texts and the seed.
scikit-learn (and sentence-transformers, for embeddings) are imported inside the functions.
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from egoqa.errors import EgoqaError

K_MAX = 16
LABEL_WORDS = 3
SILHOUETTE_SAMPLE = 2000  # silhouette is quadratic: score a fixed-seed sample of larger sets
TFIDF = "tfidf-kmeans"


class ClusteringError(EgoqaError):
    """Queries cannot be clustered as asked (no texts, or the embedding model is unavailable)."""


@dataclass(frozen=True)
class Clustering:
    """One cluster id per input text (same order), a label per cluster id, and how k was chosen."""

    method: str
    assignments: list[int]
    labels: dict[int, str]
    k: int
    silhouette: float | None


def _k_refused(k: int, distinct: int) -> str:
    if distinct == 1:
        return f"--k {k}: the run's queries are all the same text: one cluster holds them (--k 1)"
    return f"--k {k}: choose between 1 and {distinct} (the run's distinct query texts)"


def method_name(embeddings: Path | None) -> str:
    return TFIDF if embeddings is None else f"embeddings-kmeans:{Path(embeddings).name}"


def cluster_texts(
    texts: Sequence[str], *, seed: int = 0, k: int | None = None, embeddings: Path | None = None
) -> Clustering:
    """Cluster `texts` (k chosen by silhouette unless given); duplicates share a cluster."""
    check_embeddings(embeddings)
    distinct = sorted(set(texts))
    if not distinct:
        raise ClusteringError("the run has no query texts to cluster: enqueue queries first")
    if k is not None and not 1 <= k <= len(distinct):
        raise ClusteringError(_k_refused(k, len(distinct)))
    tfidf, terms = _tfidf(distinct)
    vectors = tfidf if embeddings is None else _embed(distinct, Path(embeddings))
    from threadpoolctl import threadpool_limits

    # One thread: k-means' OpenMP threads spin against each other on a busy machine (4,548
    # queries: 2.8 s on one thread, 21 s with two on a loaded 2-core machine).
    with threadpool_limits(1):
        chosen, silhouette = (k, None) if k is not None else _choose_k(vectors, seed)
        ids = _renumber(_kmeans(vectors, chosen, seed))
    labels = _labels(tfidf, terms, ids)
    by_text = dict(zip(distinct, ids, strict=True))
    return Clustering(
        method_name(embeddings), [by_text[t] for t in texts], labels, chosen, silhouette
    )


def _tfidf(texts: list[str]):
    from sklearn.feature_extraction.text import TfidfVectorizer

    # Unigrams and bigrams over English words: "where did i put" and "how many" carry the intent.
    vectorizer = TfidfVectorizer(
        stop_words=_stop_words(), ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"[a-z]{2,}"
    )
    try:
        matrix = vectorizer.fit_transform(texts)
    except ValueError:  # every word a stop word: cluster on the raw words instead
        vectorizer.set_params(stop_words=None)
        matrix = vectorizer.fit_transform(texts)
    return matrix, vectorizer.get_feature_names_out()


def _stop_words() -> list[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    # Question words and "i"/"my" decide what kind of question it is: keep them.
    keep = {"where", "what", "when", "who", "how", "many", "much", "before", "after", "put", "my"}
    return sorted(ENGLISH_STOP_WORDS - keep)


def check_embeddings(model_dir: Path | None) -> None:
    """Refuse --embeddings early when sentence-transformers or the model directory is missing."""
    if model_dir is None:
        return
    if not Path(model_dir).is_dir():  # said first: installing a library would not fix it
        raise ClusteringError(
            f"--embeddings {model_dir} is not a folder: pass the directory a "
            "sentence-transformers model was saved to, or cluster without --embeddings (TF-IDF)"
        )
    if importlib.util.find_spec("sentence_transformers") is None:
        raise ClusteringError(
            "--embeddings needs sentence-transformers: pip install 'egoqa[embeddings]', "
            "or cluster without --embeddings (TF-IDF)"
        )
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file() and not (model_dir / "modules.json").is_file():
        raise ClusteringError(
            f"{model_dir} is not a sentence-transformers model directory (no modules.json or "
            "config.json): pass the directory a model was saved to"
        )


def _embed(texts: list[str], model_dir: Path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    return model.encode(texts, normalize_embeddings=True, show_progress_bar=False)


def _choose_k(vectors, seed: int) -> tuple[int, float | None]:
    from sklearn.metrics import silhouette_score

    # k-means makes at most as many clusters as there are different vectors (texts differing
    # only in dropped words share one), and silhouette needs k < the number of points.
    rows = vectors.shape[0]
    limit = min(K_MAX, _distinct_rows(vectors), rows - 1)
    if limit < 2:
        return 1, None
    from sklearn.metrics import pairwise_distances

    # Distances of one fixed-seed sample, computed once for every k tried.
    sample = random.Random(seed).sample(range(rows), min(rows, SILHOUETTE_SAMPLE))
    distances = pairwise_distances(vectors[sorted(sample)], metric="cosine")
    best: tuple[float, int] | None = None
    for k in range(2, limit + 1):
        ids = _kmeans(vectors, k, seed)
        labels = [ids[i] for i in sorted(sample)]
        if len(set(labels)) < 2:
            continue
        value = float(silhouette_score(distances, labels, metric="precomputed"))
        if best is None or value > best[0] + 1e-9:
            best = (value, k)
    return (1, None) if best is None else (best[1], best[0])


def _distinct_rows(vectors) -> int:
    """How many different vectors there are (k-means cannot make more clusters than that)."""
    import numpy as np

    if hasattr(vectors, "tocsr"):  # sparse TF-IDF: compare rows by their non-zero entries
        csr = vectors.tocsr()
        rows = (csr.getrow(i) for i in range(csr.shape[0]))
        return len({(r.indices.tobytes(), np.round(r.data, 9).tobytes()) for r in rows})
    return len(np.unique(np.round(np.asarray(vectors), 9), axis=0))


def _kmeans(vectors, k: int, seed: int) -> list[int]:
    if k == 1:
        return [0] * vectors.shape[0]
    from sklearn.cluster import KMeans

    model = KMeans(n_clusters=k, n_init=4, random_state=seed)
    return [int(i) for i in model.fit_predict(vectors)]


def _renumber(ids: list[int]) -> list[int]:
    """Cluster 0 is the largest (then by first appearance): ids independent of k-means' order."""
    sizes: dict[int, int] = {}
    for i in ids:
        sizes[i] = sizes.get(i, 0) + 1
    first = {i: ids.index(i) for i in sizes}
    order = sorted(sizes, key=lambda i: (-sizes[i], first[i]))
    new = {old: n for n, old in enumerate(order)}
    return [new[i] for i in ids]


def _labels(tfidf, terms, ids: list[int]) -> dict[int, str]:
    import numpy as np

    overall = np.asarray(tfidf.mean(axis=0)).ravel()
    labels = {}
    for cluster in sorted(set(ids)):
        rows = [i for i, c in enumerate(ids) if c == cluster]
        inside = np.asarray(tfidf[rows].mean(axis=0)).ravel()
        order = np.argsort(-(inside - overall), kind="stable")
        words = [str(terms[i]) for i in order[: LABEL_WORDS * 3] if inside[i] > 0]
        labels[cluster] = " · ".join(_distinct_words(words)[:LABEL_WORDS]) or "(no words)"
    return labels


def _distinct_words(terms: list[str]) -> list[str]:
    """Skip a term whose words are all shown already ("put" after "did put")."""
    out: list[str] = []
    shown: set[str] = set()
    for term in terms:
        words = set(term.split())
        if not words <= shown:
            out.append(term)
            shown |= words
    return out


def cluster_run(
    db, run: str, *, seed: int = 0, k: int | None = None, embeddings: Path | None = None
) -> Clustering:
    """Cluster the run's query texts and store the assignment (replacing this method's last)."""
    from egoqa.store.clusters import query_texts, save_clusters
    from egoqa.store.read import run_exists

    run_exists(db, run)
    queries = query_texts(db, run)
    result = cluster_texts([t for _, t in queries], seed=seed, k=k, embeddings=embeddings)
    pairs = [(qid, c) for (qid, _), c in zip(queries, result.assignments, strict=True)]
    save_clusters(db, run, result.method, pairs, result.labels)
    return result
