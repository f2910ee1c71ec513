"""Persona deduplication in three passes, cheapest first: exact, MinHash LSH, embedding cosine.

Items are visited in input order and the first of a group of duplicates is kept, so the result
is deterministic and a resumed run drops the same items. Each dropped item records the pass
that dropped it and the kept item it duplicates.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

import numpy as np
from datasketch import MinHash, MinHashLSH

from fspo_data.personas.diversity import NEAR_DUPLICATE_COSINE

_NON_WORD = re.compile(r"\W+")
# Embedding rows compared per block against the kept set; bounds the (block, kept) matrix.
_BLOCK_ROWS = 512


@dataclass(frozen=True)
class Drop:
    index: int
    reason: str  # "exact", "minhash" or "embedding"
    duplicate_of: int


@dataclass(frozen=True)
class DedupResult:
    keep: list[int]
    dropped: list[Drop]

    @property
    def reason_counts(self) -> dict[str, int]:
        return dict(Counter(drop.reason for drop in self.dropped))


def normalise(text: str) -> str:
    """Case-folded words separated by single spaces: what exact dedup compares."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _shingles(text: str, size: int) -> list[bytes]:
    words = normalise(text).split()
    # A text shorter than one shingle is its own single shingle, so it can still match.
    count = max(1, len(words) - size + 1)
    return [" ".join(words[i : i + size]).encode() for i in range(count)]


def _exact(texts: list[str], candidates: list[int]) -> tuple[list[int], list[Drop]]:
    first: dict[str, int] = {}
    keep, dropped = [], []
    for i in candidates:
        key = normalise(texts[i])
        if key in first:
            dropped.append(Drop(i, "exact", first[key]))
        else:
            first[key] = i
            keep.append(i)
    return keep, dropped


def _minhash(
    texts: list[str], candidates: list[int], threshold: float, num_perm: int, shingle_size: int
) -> tuple[list[int], list[Drop]]:
    signatures = MinHash.bulk(
        [_shingles(texts[i], shingle_size) for i in candidates], num_perm=num_perm
    )
    index = MinHashLSH(threshold=threshold, num_perm=num_perm)
    kept_signatures: dict[int, MinHash] = {}
    keep, dropped = [], []
    for i, signature in zip(candidates, signatures, strict=True):
        # LSH returns likely matches; the estimated Jaccard confirms them (LSH has false positives).
        matches = [
            j for j in index.query(signature) if kept_signatures[j].jaccard(signature) >= threshold
        ]
        if matches:
            dropped.append(Drop(i, "minhash", min(matches)))
        else:
            index.insert(i, signature)
            kept_signatures[i] = signature
            keep.append(i)
    return keep, dropped


def _embedding(
    embeddings: np.ndarray, candidates: list[int], threshold: float
) -> tuple[list[int], list[Drop]]:
    kept_rows = np.empty((len(candidates), embeddings.shape[1]), dtype=embeddings.dtype)
    keep: list[int] = []
    dropped: list[Drop] = []
    for start in range(0, len(candidates), _BLOCK_ROWS):
        block = candidates[start : start + _BLOCK_ROWS]
        vectors = embeddings[block]
        against_kept = vectors @ kept_rows[: len(keep)].T
        within = vectors @ vectors.T
        accepted: list[int] = []  # rows of `block` kept so far
        for row, i in enumerate(block):
            # Greedy in input order: compare with all items kept before, earlier blocks first.
            sims = np.concatenate([against_kept[row], within[row, accepted]])
            if len(sims) and sims.max() >= threshold:
                best = int(sims.argmax())
                earlier = keep[best] if best < len(keep) else block[accepted[best - len(keep)]]
                dropped.append(Drop(i, "embedding", earlier))
            else:
                accepted.append(row)
        for row in accepted:
            kept_rows[len(keep)] = vectors[row]
            keep.append(block[row])
    return keep, dropped


def deduplicate(
    texts: list[str],
    embeddings: np.ndarray | None = None,
    *,
    minhash_threshold: float = 0.8,
    num_perm: int = 128,
    shingle_size: int = 3,
    embedding_threshold: float = NEAR_DUPLICATE_COSINE,
) -> DedupResult:
    """Indices of `texts` to keep, and why each other one was dropped.

    texts: (n,) strings; embeddings: optional (n, d) unit rows aligned with texts. Passes:
    - exact: the same `normalise`d text;
    - MinHash LSH: estimated Jaccard of word `shingle_size`-grams >= minhash_threshold
      (datasketch refuses thresholds above ~0.97 unless num_perm grows);
    - embedding: cosine >= embedding_threshold, skipped without embeddings; O(n k d) for k kept.
    """
    if embeddings is not None and len(embeddings) != len(texts):
        raise ValueError(f"deduplicate: {len(embeddings)} embeddings for {len(texts)} texts")
    keep, dropped = _exact(texts, list(range(len(texts))))
    keep, near = _minhash(texts, keep, minhash_threshold, num_perm, shingle_size)
    dropped += near
    if embeddings is not None:
        keep, close = _embedding(embeddings, keep, embedding_threshold)
        dropped += close
    return DedupResult(keep=sorted(keep), dropped=sorted(dropped, key=lambda d: d.index))
