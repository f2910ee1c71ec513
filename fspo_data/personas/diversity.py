"""Diversity and agreement metrics: pure numpy functions on embeddings, texts, traits and labels.

Embeddings are unit-normalised rows, so a dot product is a cosine similarity. Metrics whose
exact cost is quadratic in the number of items look at a seeded sample (`sample_size`, `seed`)
and say how many items they used; the others are computed exactly on every item.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

NEAR_DUPLICATE_COSINE = 0.9
# Bytes a float32 similarity block may take; keeps chunked matmuls within a few hundred MB.
_BLOCK_BYTES = 2**28
_WORD = re.compile(r"\w+")


def sample_indices(n: int, sample_size: int, seed: int) -> np.ndarray:
    """(m,) sorted indices of a seeded sample without replacement; m = min(n, sample_size)."""
    if n <= sample_size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=sample_size, replace=False))


def _check_unit_rows(embeddings: np.ndarray) -> None:
    # Every cosine formula below assumes unit rows; a wrong input would give plausible nonsense.
    probe = embeddings[sample_indices(len(embeddings), 256, 0)]
    norms = np.linalg.norm(probe, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise ValueError("embeddings: rows must be unit-normalised (cosine similarity)")


def entropy(probabilities: np.ndarray) -> float:
    """Shannon entropy in nats of a (k,) probability vector, with 0 log 0 = 0."""
    p = probabilities[probabilities > 0]
    return float(-np.sum(p * np.log(p)))


def vendi_score(embeddings: np.ndarray) -> float:
    """Vendi score with the cosine kernel (Friedman & Dieng 2023, "The Vendi Score", eq. 1).

    embeddings: (n, d) unit rows. VS = exp(-sum_i l_i log l_i), l = eigenvalues of K/n with
    K = X X^T (n, n). The nonzero eigenvalues of X X^T / n equal those of X^T X / n (d, d), so
    this costs O(n d^2 + d^3) instead of O(n^3). 1 for identical rows, n for orthogonal rows.
    """
    n, d = embeddings.shape
    if n == 0:
        return float("nan")
    _check_unit_rows(embeddings)
    gram = embeddings.T @ embeddings if n > d else embeddings @ embeddings.T
    eigenvalues = np.linalg.eigvalsh(gram.astype(np.float64) / n)
    # trace(K / n) = 1 for unit rows: renormalising removes float32 rounding and tiny negatives.
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    return float(np.exp(entropy(eigenvalues / eigenvalues.sum())))


def mean_pairwise_cosine(embeddings: np.ndarray) -> float:
    """Mean cosine similarity over ordered pairs i != j of (n, d) unit rows; NaN if n < 2.

    sum_{i != j} x_i . x_j = |sum_i x_i|^2 - sum_i |x_i|^2, so the cost is O(n d), not O(n^2 d).
    """
    n = len(embeddings)
    if n < 2:
        return float("nan")
    _check_unit_rows(embeddings)
    total = embeddings.sum(axis=0, dtype=np.float64)
    squares = float(np.einsum("ij,ij->", embeddings, embeddings, dtype=np.float64))
    return float((total @ total - squares) / (n * (n - 1)))


@dataclass(frozen=True)
class NeighbourStats:
    mean_nn_cosine: float
    near_duplicate_rate: float
    threshold: float
    sample_size: int


def neighbour_stats(
    embeddings: np.ndarray,
    threshold: float = NEAR_DUPLICATE_COSINE,
    sample_size: int = 2000,
    seed: int = 0,
) -> NeighbourStats:
    """Mean nearest-neighbour cosine and near-duplicate rate of (n, d) unit rows.

    For a seeded sample of m = min(n, sample_size) query rows, take the cosine to the nearest
    *other* row among all n. The mean of those is the mean nearest-neighbour cosine; the share
    at or above `threshold` is the near-duplicate rate (fraction of items that have another item
    at cosine >= threshold). Both are unbiased estimates of the full-set figures; O(m n d).
    """
    n = len(embeddings)
    if n < 2:
        return NeighbourStats(float("nan"), float("nan"), threshold, 0)
    _check_unit_rows(embeddings)
    queries = sample_indices(n, sample_size, seed)
    nearest = np.empty(len(queries))
    rows_per_block = max(1, _BLOCK_BYTES // (4 * n))
    for start in range(0, len(queries), rows_per_block):
        rows = queries[start : start + rows_per_block]
        sims = embeddings[rows] @ embeddings.T
        sims[np.arange(len(rows)), rows] = -np.inf
        nearest[start : start + len(rows)] = sims.max(axis=1)
    return NeighbourStats(
        mean_nn_cosine=float(nearest.mean()),
        near_duplicate_rate=float(np.mean(nearest >= threshold)),
        threshold=threshold,
        sample_size=len(queries),
    )


def distinct_n(texts: Sequence[str], ns: Sequence[int] = (1, 2)) -> dict[int, float]:
    """Distinct n-grams / total n-grams over all texts, for each n in `ns` (Li et al. 2016).

    Tokens are lower-cased runs of word characters, found once for every n. NaN for an n that
    no text is long enough to have.
    """
    seen: dict[int, set[tuple[str, ...]]] = {n: set() for n in ns}
    total = dict.fromkeys(ns, 0)
    for text in texts:
        tokens = _WORD.findall(text.lower())
        for n in ns:
            total[n] += max(0, len(tokens) - n + 1)
            seen[n].update(zip(*(tokens[i:] for i in range(n)), strict=False))
    return {n: len(seen[n]) / total[n] if total[n] else float("nan") for n in ns}


@dataclass(frozen=True)
class TraitStats:
    """How one attribute's observed values cover its taxonomy; entropies and KL in nats.

    kl_sampling_noise is the KL that sampling alone gives on average, (k - 1) / (2 n) for k
    values and n personas (2 n KL is approximately chi-square with k - 1 degrees of freedom).
    """

    coverage: float
    values_seen: int
    values_total: int
    entropy: float
    reference_entropy: float
    kl: float
    kl_sampling_noise: float
    shares: dict[str, float]
    off_taxonomy: int


def trait_stats(counts: Mapping[str, int], weights: Mapping[str, float]) -> TraitStats:
    """Coverage, entropy and KL(observed || weights) of one attribute.

    counts: value -> personas with that value; weights: taxonomy value -> weight (sums to 1).
    Observed shares are taken over taxonomy values; values outside the taxonomy are counted in
    `off_taxonomy` (they would make the KL infinite) rather than hidden.
    """
    values = list(weights)
    observed = np.array([counts.get(v, 0) for v in values], dtype=np.float64)
    reference = np.array([weights[v] for v in values], dtype=np.float64)
    off_taxonomy = int(sum(c for v, c in counts.items() if v not in weights))
    seen = int(np.count_nonzero(observed))
    n = observed.sum()
    if n == 0:
        share = np.full(len(values), np.nan)
        observed_entropy = kl = float("nan")
    else:
        share = observed / n
        present = share > 0
        observed_entropy = entropy(share)
        kl = float(np.sum(share[present] * np.log(share[present] / reference[present])))
    return TraitStats(
        coverage=seen / len(values) if values else float("nan"),
        values_seen=seen,
        values_total=len(values),
        entropy=observed_entropy,
        reference_entropy=entropy(reference),
        kl=kl,
        kl_sampling_noise=(len(values) - 1) / (2 * n) if n else float("nan"),
        shares=dict(zip(values, share.tolist(), strict=True)),
        off_taxonomy=off_taxonomy,
    )


def _pair_sums(
    embeddings: np.ndarray, groups: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per group in [0, n_groups): the sum of cosines over ordered pairs of two of its rows,
    and the number of such pairs. With s = sum of a group's k rows: |s|^2 - sum |x|^2 and
    k (k - 1), as in `mean_pairwise_cosine`."""
    sums = np.zeros((n_groups, embeddings.shape[1]))
    np.add.at(sums, groups, embeddings)
    squares = np.bincount(
        groups, weights=np.einsum("ij,ij->i", embeddings, embeddings), minlength=n_groups
    )
    k = np.bincount(groups, minlength=n_groups).astype(np.float64)
    return np.einsum("ij,ij->i", sums, sums) - squares, k * (k - 1)


def _means(total: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pairs > 0, total / pairs, np.nan)


def candidate_similarity(embeddings: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Mean pairwise cosine among each question's candidate responses (the FSPO paper's measure).

    embeddings: (r, d) unit rows; groups: (r,) question index in [0, q). Returns (q,), NaN for a
    question with fewer than two candidates.
    """
    _check_unit_rows(embeddings)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    return _means(*_pair_sums(embeddings, groups, n_groups))


@dataclass(frozen=True)
class WriterSimilarity:
    """Per question (q,), NaN where it has no such pair: `within[w]`, the mean cosine over
    pairs of its candidates both written by w; `cross`, over pairs written by two writers."""

    within: dict[str, np.ndarray]
    cross: np.ndarray


def writer_similarity(
    embeddings: np.ndarray, groups: np.ndarray, writers: np.ndarray
) -> WriterSimilarity:
    """`candidate_similarity` split by who wrote the two candidates of a pair (an ensemble).

    embeddings, groups as in `candidate_similarity`; writers: (r,) the model of each row.
    A question's pairs are its pairs within each writer plus its cross pairs, so the cross
    sums are the question's all-pairs sums less its within-writer ones.
    """
    _check_unit_rows(embeddings)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    names, code = np.unique(writers, return_inverse=True)
    n = len(names)
    # One group per (question, writer).
    total, pairs = _pair_sums(embeddings, groups * n + code, n_groups * n)
    total, pairs = total.reshape(n_groups, n), pairs.reshape(n_groups, n)
    all_total, all_pairs = _pair_sums(embeddings, groups, n_groups)
    return WriterSimilarity(
        within={str(name): _means(total[:, w], pairs[:, w]) for w, name in enumerate(names)},
        cross=_means(all_total - total.sum(axis=1), all_pairs - pairs.sum(axis=1)),
    )


@dataclass(frozen=True)
class Agreement:
    """agreement: (u, u) share of shared items labelled the same, NaN where none is shared
    (the diagonal is 1 for any user with a label); shared: (u, u) count of shared items."""

    agreement: np.ndarray
    shared: np.ndarray


def agreement_matrix(
    user: np.ndarray, item: np.ndarray, chose_first: np.ndarray, n_users: int
) -> Agreement:
    """User-by-user agreement on shared (question, response pair) items.

    user, item, chose_first: (j,) one label per (user, item); chose_first says whether the user
    preferred the pair's first response (in a fixed canonical order). With C (u, items) holding
    +1 / -1 for a label and 0 for none, C C^T = agreements - disagreements and |C| |C|^T =
    shared items, so agreement = (C C^T + |C||C|^T) / (2 |C||C|^T). Cost O(u^2 items), in blocks
    of items so memory stays O(u^2).
    """
    n_items = int(item.max()) + 1 if len(item) else 0
    if len(np.unique(user.astype(np.int64) * max(n_items, 1) + item)) != len(user):
        raise ValueError("agreement_matrix: more than one label for a (user, item)")
    signed = np.where(chose_first, 1.0, -1.0).astype(np.float32)
    dot = np.zeros((n_users, n_users))
    shared = np.zeros((n_users, n_users))
    order = np.argsort(item, kind="stable")
    sorted_items = item[order]
    items_per_block = max(1, _BLOCK_BYTES // (4 * max(n_users, 1)) // 4)
    for start in range(0, n_items, items_per_block):
        lo, hi = np.searchsorted(sorted_items, [start, start + items_per_block])
        rows = order[lo:hi]
        block = np.zeros((n_users, min(items_per_block, n_items - start)), dtype=np.float32)
        block[user[rows], item[rows] - start] = signed[rows]
        mask = (block != 0).astype(np.float32)
        # float32 sums of +-1 are exact below 2**24 items per block; accumulate in float64.
        dot += block @ block.T
        shared += mask @ mask.T
    with np.errstate(divide="ignore", invalid="ignore"):
        agreement = np.where(shared > 0, (dot + shared) / (2 * shared), np.nan)
    return Agreement(agreement=agreement, shared=shared.astype(np.int64))


def cross_user_label_entropy(n_chose_first: np.ndarray, n_labels: np.ndarray) -> np.ndarray:
    """Binary entropy in nats of the share of users choosing a pair's first response.

    n_chose_first, n_labels: (p,) per pair. 0 when all users agree, ln 2 for a 50/50 split.
    How much users disagree about a pair; not the judge's uncertainty about one label
    (`judging.verdict_entropy`, the run summary's label entropy).
    """
    share = n_chose_first / n_labels
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = -(share * np.log(share) + (1 - share) * np.log(1 - share))
    return np.where((share > 0) & (share < 1), terms, 0.0)


def pca_2d(embeddings: np.ndarray) -> np.ndarray:
    """(n, 2) projection of (n, d) rows on their two leading principal axes.

    The axes are the top eigenvectors of the (d, d) covariance, so the cost is O(n d^2); each
    axis's sign is fixed (largest component positive) so the map is reproducible.
    """
    centred = embeddings - embeddings.mean(axis=0)
    covariance = (centred.T @ centred).astype(np.float64)
    _, vectors = np.linalg.eigh(covariance)
    axes = vectors[:, ::-1][:, :2]
    axes *= np.sign(axes[np.abs(axes).argmax(axis=0), [0, 1]])
    return centred @ axes.astype(embeddings.dtype)
