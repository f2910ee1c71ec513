import numpy as np
import pytest

from fspo_data.personas.dedup import Drop, deduplicate, normalise

BASE = (
    "A retired farmer from Kenya who loves gardening, distrusts novelty and wants short, "
    "practical answers that respect tradition and save money."
)


def test_normalise_ignores_case_punctuation_and_spacing() -> None:
    assert normalise("  Hello,   WORLD!\n") == normalise("hello world") == "hello world"


def test_exact_duplicates_keep_the_first() -> None:
    result = deduplicate(["Alpha beta gamma.", "ALPHA  beta, gamma", "delta epsilon zeta"])
    assert result.keep == [0, 2]
    assert result.dropped == [Drop(index=1, reason="exact", duplicate_of=0)]
    assert result.reason_counts == {"exact": 1}


def test_minhash_drops_a_one_word_edit_of_a_long_text() -> None:
    edited = BASE.replace("short", "brief")
    other = "A young software developer in Berlin who loves science fiction and poetry."
    result = deduplicate([BASE, other, edited], minhash_threshold=0.5)
    assert result.keep == [0, 1]
    assert result.dropped == [Drop(index=2, reason="minhash", duplicate_of=0)]


def test_minhash_threshold_is_configurable() -> None:
    edited = BASE.replace("short", "brief")
    assert deduplicate([BASE, edited], minhash_threshold=0.95).keep == [0, 1]


def test_embedding_pass_drops_close_rows_and_names_the_kept_one() -> None:
    texts = ["one thing entirely", "another topic here", "a third unrelated line", "fourth"]
    vectors = np.array([[1, 0, 0], [0, 1, 0], [0.99, 0.141, 0], [0, 0.95, 0.312]], np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    result = deduplicate(texts, vectors)
    assert result.keep == [0, 1]
    assert result.dropped == [
        Drop(index=2, reason="embedding", duplicate_of=0),
        Drop(index=3, reason="embedding", duplicate_of=1),
    ]
    assert deduplicate(texts, vectors, embedding_threshold=0.999).keep == [0, 1, 2, 3]


def test_embedding_pass_compares_across_blocks_and_within_one() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(600, 32)).astype(np.float32)
    vectors = np.concatenate([base, base[:3], base[598:]])  # copies after the first block
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = [f"text number {i}" for i in range(len(vectors))]
    result = deduplicate(texts, vectors)
    assert result.keep == list(range(600))
    assert [d.duplicate_of for d in result.dropped] == [0, 1, 2, 598, 599]
    assert result.reason_counts == {"embedding": 5}


def test_each_item_gets_the_first_pass_that_drops_it() -> None:
    texts = [BASE, BASE.upper(), BASE.replace("short", "brief"), "unrelated words only"]
    vectors = np.repeat(np.eye(1, 4, dtype=np.float32), 4, axis=0)  # all identical
    result = deduplicate(texts, vectors, minhash_threshold=0.5)
    assert result.keep == [0]
    assert result.reason_counts == {"exact": 1, "minhash": 1, "embedding": 1}


def test_embeddings_must_align_with_texts() -> None:
    with pytest.raises(ValueError, match="2 embeddings for 3 texts"):
        deduplicate(["a", "b", "c"], np.eye(2, dtype=np.float32))
