import math

import numpy as np
import polars as pl
import pytest

from fspo_data.core.config import JudgeConfig
from fspo_data.personas.diversity import Agreement, agreement_matrix
from fspo_data.pipeline import consistency as stats

SETTINGS = JudgeConfig(flag_agreement=0.9, flag_min_shared=4)


def random_labels(seed: int, users: int = 60, items: int = 40, per_user: int = 15):
    """(k,) user, item, chose_first; users 1-5 copy user 0's taste (near-duplicates)."""
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(users), per_user)
    item = np.concatenate([rng.choice(items, per_user, replace=False) for _ in range(users)])
    taste = rng.random(items) < 0.5
    chose_first = rng.random(len(user)) < 0.5
    copies = user <= 5
    chose_first[copies] = taste[item[copies]]
    return user, item, chose_first


def near_duplicates_in(agreement: Agreement, threshold: float, min_shared: int) -> np.ndarray:
    """The rule brute force, on the full (users x users) matrices: a reference for the test."""
    close = (agreement.shared >= min_shared) & (np.nan_to_num(agreement.agreement) > threshold)
    np.fill_diagonal(close, False)
    return np.flatnonzero(close.any(axis=1))


def judgments(user, item, chose_first, domain="roleplay", margin=None) -> pl.DataFrame:
    n = len(user)
    margin = np.linspace(-3, 3, n) if margin is None else np.asarray(margin, dtype=float)
    x = [f"{domain}-x{i}" for i in item]  # candidate pairs belong to one domain
    return pl.DataFrame(
        {
            "persona_uuid": [f"{domain[:2]}-u{u:03d}" for u in user],
            "domain": [domain] * n,
            "response_x_uuid": x,
            "response_y_uuid": [f"{xi}-y" for xi in x],
            "chosen_uuid": [xi if c else f"{xi}-y" for xi, c in zip(x, chose_first, strict=True)],
            "margin_first": margin + 1.0,
            "margin_second": -margin + 1.0,
            "debiased_margin": margin,
            "initial_debiased_margin": margin / 2,
            "refined": [u % 2 == 0 for u in user],
            "kept": np.abs(margin) >= 0.05,
            "drop_reason": np.where(np.abs(margin) >= 0.05, "", "low_margin").tolist(),
            "difficulty": ["easy" if i % 3 else "hard" for i in item],
        }
    )


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("counting", ["bincount", "sort"])
def test_flagged_users_agree_with_the_agreement_matrix(seed, counting, monkeypatch):
    if counting == "sort":  # the path of shards with many users
        monkeypatch.setattr(stats, "_BINCOUNT_LIMIT", 0)
    user, item, chose_first = random_labels(seed)
    expected = near_duplicates_in(
        agreement_matrix(user, item, chose_first, 60),
        SETTINGS.flag_agreement,
        SETTINGS.flag_min_shared,
    )
    frame = judgments(user, item, chose_first, margin=np.ones(len(user)))
    found = stats.consistency(frame, 0, SETTINGS).flagged_users
    assert len(expected) > 0 and found == [f"ro-u{u:03d}" for u in expected]
    # Split into shards by user, as the judge writes them: the same users are found.
    by_shard = frame.with_columns(shard=pl.col("persona_uuid").str.slice(-1))
    shards = [part.lazy() for part in by_shard.partition_by("shard", include_key=False)]
    assert stats.consistency(shards, 0, SETTINGS).flagged_users == found


def test_a_user_split_across_shards_is_refused():
    frame = judgments(*random_labels(0))
    with pytest.raises(ValueError, match="span two shards"):
        stats.consistency([frame[:450].lazy(), frame[440:].lazy()], 0, SETTINGS)


def test_flagged_users_on_a_seeded_sample_when_there_are_many(monkeypatch):
    frame = judgments(*random_labels(0), margin=np.ones(900))
    exact = stats.consistency(frame, 0, SETTINGS)
    assert exact.users_checked_for_duplicates == 60 and exact.flagged_users
    monkeypatch.setattr(stats, "FLAG_CHECK_USERS", 25)
    sampled = stats.consistency(frame, 0, SETTINGS)
    assert sampled.users_checked_for_duplicates == 25
    assert set(sampled.flagged_users) <= set(exact.flagged_users)
    assert stats.consistency(frame.reverse(), 0, SETTINGS).flagged_users == sampled.flagged_users


def test_histogram_matches_numpy_at_the_edges():
    edges = stats.HISTOGRAM_EDGES
    margins = [*edges, -3.0, 3.0, 0.03, -0.07, 1.5]
    frame = judgments(np.arange(len(margins)), np.arange(len(margins)), [True] * len(margins),
                      margin=margins)  # fmt: skip
    counts = stats.consistency(frame, 0, SETTINGS).margin_histogram_counts
    assert counts == np.histogram(np.clip(margins, -2, 2), edges)[0].tolist()


def test_overall_merges_the_domains():
    a = judgments(*random_labels(1), domain="roleplay")
    b = judgments(*random_labels(2, users=30), domain="review")
    both = pl.concat([a, b])
    by_domain = stats.consistency_by_domain(both.lazy(), {"review": 3}, SETTINGS)
    assert list(by_domain) == ["review", "roleplay", "overall"]
    whole = stats.consistency(both, 3, SETTINGS).model_dump()
    for key, value in by_domain["overall"].model_dump().items():
        if isinstance(value, float):
            assert math.isclose(value, whole[key], rel_tol=1e-12), key
        else:
            assert value == whole[key], key
    assert by_domain["review"].drop_reasons["no_verdict"] == 3
    assert by_domain["roleplay"].pairs_judged == a.height


def test_users_shown_a_pair_in_opposite_orders_share_it():
    user, item, chose_first = random_labels(3)
    frame = judgments(user, item, chose_first, margin=np.ones(len(user)))
    found = stats.consistency(frame, 0, SETTINGS).flagged_users
    # Every odd user sees each pair the other way round, with the same preference.
    odd = pl.col("persona_uuid").str.slice(-1).cast(pl.Int32) % 2 == 1
    x, y = pl.col("response_x_uuid"), pl.col("response_y_uuid")
    swapped = frame.with_columns(
        response_x_uuid=pl.when(odd).then(y).otherwise(x),
        response_y_uuid=pl.when(odd).then(x).otherwise(y),
    )
    assert found and stats.consistency(swapped, 0, SETTINGS).flagged_users == found
