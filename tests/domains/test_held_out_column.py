"""`DomainSpec.held_out_users` (a traits column) is the held-out rule row by row."""

from __future__ import annotations

import pyarrow as pa

from fspo_data.core.records import Trait
from fspo_data.domains import DomainSpec, load_domain

TRAITS = pa.list_(pa.struct([("name", pa.string()), ("value", pa.string())]))


def is_held_out_user(domain: DomainSpec, traits: list[Trait]) -> bool:
    """The rule for one user: a trait whose value is held out under its name."""
    held = domain.persona.held_out_trait_values
    return any(t.value in held.get(t.name, ()) for t in traits)


def test_held_out_users_is_the_rule_of_each_row():
    review = load_domain("review")
    held = next(iter(review.persona.held_out_trait_values.items()))
    rows = [
        [],
        [{"name": held[0], "value": held[1][0]}],
        [{"name": "other", "value": held[1][0]}, {"name": held[0], "value": "not held"}],
        [{"name": "x", "value": "y"}, {"name": held[0], "value": held[1][-1]}],
    ]
    column = pa.array(rows, TRAITS)
    for traits in (column, column.slice(1)):
        expected = [
            is_held_out_user(review, [Trait(**t) for t in row]) for row in traits.to_pylist()
        ]
        assert review.held_out_users(traits).tolist() == expected
    assert review.held_out_users(column).tolist() == [False, True, False, True]
    assert not load_domain("roleplay").held_out_users(column).any()
