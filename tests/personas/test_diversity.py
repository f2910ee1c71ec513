import math

import numpy as np
import pytest

from fspo_data.personas import diversity as dv


def unit(rows: list[list[float]]) -> np.ndarray:
    x = np.array(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


IDENTICAL = unit([[1, 2, 3]] * 5)
ORTHOGONAL = np.eye(4, dtype=np.float32)


def test_sample_indices_is_seeded_sorted_and_capped() -> None:
    a = dv.sample_indices(100, 10, seed=3)
    assert len(a) == 10 and list(a) == sorted(set(a))
    assert np.array_equal(a, dv.sample_indices(100, 10, seed=3))
    assert np.array_equal(dv.sample_indices(5, 10, seed=3), np.arange(5))


def test_vendi_of_identical_rows_is_one_and_of_orthogonal_rows_is_n() -> None:
    assert dv.vendi_score(IDENTICAL) == pytest.approx(1.0, abs=1e-5)
    assert dv.vendi_score(ORTHOGONAL) == pytest.approx(4.0)
    # Two clusters of equal size: K/n has eigenvalues 1/2, 1/2 -> exp(ln 2) = 2.
    assert dv.vendi_score(np.repeat(ORTHOGONAL[:2], 3, axis=0)) == pytest.approx(2.0)


def direct_vendi(x: np.ndarray) -> float:
    """The definition itself: eigenvalues of the (n, n) kernel K / n."""
    x = x.astype(np.float64)
    lam = np.linalg.eigvalsh(x @ x.T / len(x))
    lam = lam[lam > 1e-12]
    return math.exp(-np.sum(lam * np.log(lam)))


@pytest.mark.parametrize("n, d", [(50, 8), (6, 40)])
def test_vendi_matches_the_definition_whichever_gram_it_uses(n: int, d: int) -> None:
    x = unit(np.random.default_rng(n).normal(size=(n, d)).tolist())
    assert dv.vendi_score(x) == pytest.approx(direct_vendi(x), rel=1e-4)


def test_metrics_refuse_rows_that_are_not_unit() -> None:
    with pytest.raises(ValueError, match="unit-normalised"):
        dv.vendi_score(np.ones((3, 2), dtype=np.float32))


def test_mean_pairwise_cosine() -> None:
    assert dv.mean_pairwise_cosine(IDENTICAL) == pytest.approx(1.0)
    assert dv.mean_pairwise_cosine(ORTHOGONAL) == pytest.approx(0.0)
    # Pairs: (a,b)=0.6, (a,c)=0, (b,c)=0.8 -> mean 1.4 / 3.
    x = unit([[1, 0], [0.6, 0.8], [0, 1]])
    assert dv.mean_pairwise_cosine(x) == pytest.approx(1.4 / 3)
    assert math.isnan(dv.mean_pairwise_cosine(x[:1]))


def test_neighbour_stats_on_identical_orthogonal_and_mixed_rows() -> None:
    same = dv.neighbour_stats(IDENTICAL)
    assert (same.mean_nn_cosine, same.near_duplicate_rate) == pytest.approx((1.0, 1.0))
    apart = dv.neighbour_stats(ORTHOGONAL)
    assert (apart.mean_nn_cosine, apart.near_duplicate_rate) == (0.0, 0.0)
    # Rows 0 and 1 are near-duplicates (cos 0.95); row 2 is orthogonal to both.
    x = unit([[1, 0, 0], [0.95, math.sqrt(1 - 0.95**2), 0], [0, 0, 1]])
    stats = dv.neighbour_stats(x, threshold=0.9)
    assert stats.near_duplicate_rate == pytest.approx(2 / 3)
    assert stats.mean_nn_cosine == pytest.approx((0.95 + 0.95 + 0.0) / 3, abs=1e-6)
    assert stats.sample_size == 3


def test_neighbour_stats_reports_the_sample_it_used() -> None:
    x = unit(np.random.default_rng(0).normal(size=(40, 5)).tolist())
    stats = dv.neighbour_stats(x, sample_size=10, seed=1)
    assert stats.sample_size == 10
    assert stats == dv.neighbour_stats(x, sample_size=10, seed=1)


def test_distinct_n() -> None:
    texts = ["the cat sat", "The cat ran!"]
    # unigrams: the cat sat the cat ran -> 4 distinct of 6; bigrams: 3 distinct of 4.
    assert dv.distinct_n(texts, (1, 2)) == pytest.approx({1: 4 / 6, 2: 3 / 4})
    assert dv.distinct_n(texts, (3,)) == pytest.approx({3: 2 / 2})
    assert math.isnan(dv.distinct_n(["one"], (2,))[2])


def test_trait_stats_coverage_entropy_and_kl() -> None:
    weights = {"a": 0.5, "b": 0.25, "c": 0.25}
    stats = dv.trait_stats({"a": 3, "b": 1, "zzz": 2}, weights)
    assert stats.coverage == pytest.approx(2 / 3)
    assert (stats.values_seen, stats.values_total, stats.off_taxonomy) == (2, 3, 2)
    assert stats.shares == pytest.approx({"a": 0.75, "b": 0.25, "c": 0.0})
    assert stats.entropy == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert stats.reference_entropy == pytest.approx(1.5 * math.log(2))
    assert stats.kl == pytest.approx(0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(1.0))
    assert stats.kl_sampling_noise == pytest.approx((3 - 1) / (2 * 4))


def test_trait_stats_of_a_perfect_match_has_zero_kl() -> None:
    stats = dv.trait_stats({"x": 2, "y": 2}, {"x": 0.5, "y": 0.5})
    assert (stats.coverage, stats.kl) == (1.0, pytest.approx(0.0))
    assert stats.entropy == pytest.approx(math.log(2))


def test_candidate_similarity_per_question() -> None:
    x = unit([[1, 0], [0.6, 0.8], [0, 1], [1, 0], [1, 0]])
    groups = np.array([0, 0, 0, 1, 2])
    sims = dv.candidate_similarity(x, groups)
    assert sims[0] == pytest.approx(1.4 / 3)
    assert np.isnan(sims[1]) and np.isnan(sims[2])


def test_writer_similarity_splits_each_questions_pairs_by_who_wrote_them() -> None:
    # Question 0: a wrote rows 0, 1, 2, b wrote row 3; question 1: a and b one row each;
    # question 2: b alone, two rows. Every figure against the pairs listed by hand.
    x = unit([[1, 0], [0.6, 0.8], [0, 1], [0.8, 0.6], [1, 0], [0, 1], [1, 1], [1, 0]])
    groups = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    writers = np.array(["a", "a", "a", "b", "a", "b", "b", "b"])
    split = dv.writer_similarity(x, groups, writers)

    def mean(pairs: list[tuple[int, int]]) -> float:
        return float(np.mean([x[i] @ x[j] for i, j in pairs]))

    assert split.within["a"][0] == pytest.approx(mean([(0, 1), (0, 2), (1, 2)]))
    assert split.cross[0] == pytest.approx(mean([(0, 3), (1, 3), (2, 3)]))
    assert np.isnan(split.within["a"][1]) and np.isnan(split.within["b"][1])
    assert split.cross[1] == pytest.approx(0.0)
    assert split.within["b"][2] == pytest.approx(mean([(6, 7)]))
    assert np.isnan(split.cross[2]) and np.isnan(split.within["a"][2])
    assert np.isnan(split.within["b"][0])  # b wrote one candidate of question 0
    # One writer: its figure is the all-pairs one, and there is no cross pair.
    alone = dv.writer_similarity(x, groups, np.array(["m"] * 8))
    np.testing.assert_allclose(alone.within["m"], dv.candidate_similarity(x, groups))
    assert np.isnan(alone.cross).all()


def test_agreement_matrix_by_hand() -> None:
    # Items 0..2; user 0: A A A; user 1: A A B; user 2: B only on item 2; user 3: no labels.
    user = np.array([0, 0, 0, 1, 1, 1, 2])
    item = np.array([0, 1, 2, 0, 1, 2, 2])
    chose = np.array([1, 1, 1, 1, 1, 0, 0], dtype=bool)
    result = dv.agreement_matrix(user, item, chose, n_users=4)
    expected = np.array(
        [
            [1.0, 2 / 3, 0.0, np.nan],
            [2 / 3, 1.0, 1.0, np.nan],
            [0.0, 1.0, 1.0, np.nan],
            [np.nan, np.nan, np.nan, np.nan],
        ]
    )
    np.testing.assert_allclose(result.agreement, expected)
    np.testing.assert_array_equal(
        result.shared, [[3, 3, 1, 0], [3, 3, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
    )


def test_agreement_matrix_refuses_two_labels_for_one_user_item() -> None:
    with pytest.raises(ValueError, match="more than one label"):
        dv.agreement_matrix(np.array([0, 0]), np.array([1, 1]), np.array([True, False]), 1)


def test_cross_user_label_entropy() -> None:
    entropy = dv.cross_user_label_entropy(np.array([1, 3, 0, 1]), np.array([2, 3, 4, 4]))
    h_quarter = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    np.testing.assert_allclose(entropy, [math.log(2), 0.0, 0.0, h_quarter])


def test_pca_2d_finds_the_spread_directions() -> None:
    x = np.array([[-2, 0, 0.1], [2, 0, -0.1], [0, -1, 0], [0, 1, 0]], dtype=np.float32)
    xy = dv.pca_2d(x)
    assert xy.shape == (4, 2)
    np.testing.assert_allclose(np.abs(xy[:2, 0]), [2.0, 2.0], atol=0.01)
    np.testing.assert_allclose(np.abs(xy[2:, 1]), [1.0, 1.0], atol=0.01)
