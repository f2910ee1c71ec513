"""Record ids and seeds hash `id_key`'s bytes: they must never change."""

from __future__ import annotations

import pyarrow as pa

from fspo_data.core.records import derived_seed, id_key, id_key_column, stable_id
from fspo_data.stages.pairs import CandidatePair


def test_id_key_is_each_parts_repr_encoded_and_joined():
    pair = CandidatePair("q", "x", "y")
    parts = ("judge", "0123456789abcdef", 3, (1, "a"), "é ✓", "\ud800", pair)
    for cut in range(len(parts) + 1):
        expected = b"".join(repr(p).encode() + b"\x1f" for p in parts[:cut])
        assert id_key(*parts[:cut]) == expected
    # Pinned: the ids and seeds earlier runs wrote.
    assert stable_id("judgment", "u1", "x", "y") == "f9b55ce297ff4716"
    assert derived_seed("judge", "u1") == 1701721166


def test_id_key_column_is_id_key_of_each_string():
    hex_ids = [stable_id(i) for i in range(20)] + [""]
    # Strings whose repr is not the string quoted take the row-by-row path.
    odd = ["a'b", 'a"b', "x\\y", "é", "a\nb", "\x7f", 'it\'s "x"']
    for texts in (hex_ids, hex_ids + odd, odd[:1], []):
        column = id_key_column(pa.chunked_array([pa.array(texts, pa.string())]))
        assert column.type == pa.binary()
        assert column.to_pylist() == [id_key(text) for text in texts]
