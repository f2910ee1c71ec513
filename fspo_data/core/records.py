"""Record types written by the stages: one pydantic model and one Arrow schema each.

Every record id is a hash of the inputs that define the record, so a resumed run
regenerates exactly the ids it would have produced uninterrupted.
"""

from __future__ import annotations

import hashlib
import types
import typing
from collections.abc import Iterator, Sequence
from functools import cache
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, overload

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict


def id_key(*parts: object) -> bytes:
    """The bytes `stable_id` hashes for `parts`. Keys concatenate: `id_key(a) + id_key(b)` is
    `id_key(a, b)`, so a column of ids that share leading parts encodes them once."""
    # Encoded once: UTF-8 of a concatenation is the concatenation of each part's UTF-8, so
    # these are the bytes of each repr encoded and joined, at about half the cost a call.
    return "".join([repr(part) + "\x1f" for part in parts]).encode()


# Strings whose repr is the string in single quotes: printable ASCII but quote and backslash.
_PLAIN_REPR = r"^[\x20-\x26\x28-\x5b\x5d-\x7e]*$"


def id_key_column(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """(n,) binary: `id_key(text)` of each string, built in Arrow where every string's repr is
    the string quoted (ids, hex digests), else row by row; the same bytes either way."""
    texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    if texts.null_count == 0 and pc.all(pc.match_substring_regex(texts, _PLAIN_REPR)).as_py():
        return pc.cast(pc.binary_join_element_wise("'", texts, "'\x1f", ""), pa.binary())
    return pa.array([id_key(text) for text in texts.to_pylist()], pa.binary())


def id_of(key: bytes) -> str:
    """The `stable_id` of an `id_key`."""
    return hashlib.blake2b(key, digest_size=8).hexdigest()


def seed_of(key: bytes) -> int:
    """The `derived_seed` of an `id_key`."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % (2**31 - 1)


def stable_id(*parts: object) -> str:
    """A 16-hex-digit id from the parts that define a record (order matters)."""
    return id_of(id_key(*parts))


def derived_seed(*parts: object) -> int:
    """A 31-bit seed derived like `stable_id`, for per-record sampling."""
    return seed_of(id_key(*parts))


_SCALARS: dict[type, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
}


def _arrow_type(annotation: Any) -> pa.DataType:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        (inner,) = [a for a in get_args(annotation) if a is not type(None)]
        return _arrow_type(inner)
    if origin is Literal:
        return _arrow_type(type(get_args(annotation)[0]))
    if origin is list:
        return pa.list_(_arrow_type(get_args(annotation)[0]))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pa.struct(
            [
                pa.field(name, _arrow_type(f.annotation))
                for name, f in annotation.model_fields.items()
            ]
        )
    return _SCALARS[annotation]


class Record(BaseModel):
    """Base of every written record; `arrow_schema()` is derived from the fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id_field: ClassVar[str]

    @classmethod
    def arrow_schema(cls) -> pa.Schema:
        return _schema_of(cls)

    @property
    def record_id(self) -> str:
        return getattr(self, self.id_field)


@cache
def _schema_of(record_type: type[Record]) -> pa.Schema:
    hints = typing.get_type_hints(record_type)
    return pa.schema([pa.field(n, _arrow_type(hints[n])) for n in record_type.model_fields])


R = TypeVar("R", bound=Record)


class RecordTable(Sequence[R]):
    """Records held as one Arrow table, for stages that build their output column by column.

    `to_table` hands the table on as it is; indexing or iterating validates rows into
    `record_type` objects, for tests and small consumers. The table must have the record
    type's Arrow schema exactly, so it writes the same Parquet as a list of records would.
    """

    def __init__(self, table: pa.Table, record_type: type[R]) -> None:
        if not table.schema.equals(record_type.arrow_schema()):
            raise ValueError(
                f"RecordTable: table schema differs from {record_type.__name__}'s:\n{table.schema}"
            )
        self.table = table
        self.record_type = record_type

    def __len__(self) -> int:
        return self.table.num_rows

    @overload
    def __getitem__(self, index: int) -> R: ...
    @overload
    def __getitem__(self, index: slice) -> list[R]: ...
    def __getitem__(self, index: int | slice) -> R | list[R]:
        if isinstance(index, slice):
            return list(self)[index]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        row = self.table.slice(index % len(self), 1).to_pylist()[0]
        return self.record_type.model_validate(row)

    def __iter__(self) -> Iterator[R]:
        return (self.record_type.model_validate(row) for row in self.table.to_pylist())


def to_table(records: Sequence[Record], record_type: type[Record]) -> pa.Table:
    """(rows,) records -> an Arrow table with `record_type`'s schema; a `RecordTable` as is."""
    if isinstance(records, RecordTable):
        if records.record_type is not record_type:
            raise ValueError(f"to_table: {records.record_type.__name__} is not {record_type}")
        return records.table
    rows = [r.model_dump() for r in records]
    return pa.Table.from_pylist(rows, schema=record_type.arrow_schema())


class Trait(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    value: str


class Persona(Record):
    id_field: ClassVar[str] = "persona_uuid"
    persona_uuid: str
    domain: str
    index: int
    traits: list[Trait]
    persona_description: str


class PersonaDuplicate(Record):
    """A persona whose description near-duplicates an earlier user's of its domain that the
    per-shard dedup could not see (another shard); it gets no episodes."""

    id_field: ClassVar[str] = "persona_uuid"
    persona_uuid: str
    domain: str
    duplicate_of: str
    reason: str


class Question(Record):
    id_field: ClassVar[str] = "question_uuid"
    question_uuid: str
    domain: str
    index: int
    question: str
    selected_trait: str
    trait_varied: str
    question_type: str


class Response(Record):
    """One candidate answer to a question, steered by a viewpoint."""

    id_field: ClassVar[str] = "response_uuid"
    response_uuid: str
    question_uuid: str
    domain: str
    view: str
    response: str
    model: str
    completion_tokens: int


class Judgment(Record):
    """One user's verdict on one candidate pair, judged in both orders.

    `margin_first` is logp("A") - logp("B") with response_x in slot A;
    `margin_second` the same with response_y in slot A. The label follows
    `persona_description`, the user's description after refinement (stated preferences
    appended); `initial_debiased_margin` is the verdict before refinement.
    `difficulty` is "easy"/"hard" where the domain defines it (elix), else "".
    """

    id_field: ClassVar[str] = "judgment_uuid"
    judgment_uuid: str
    persona_uuid: str
    question_uuid: str
    domain: str
    response_x_uuid: str
    response_y_uuid: str
    margin_first: float
    margin_second: float
    debiased_margin: float
    initial_debiased_margin: float
    refined: bool
    difficulty: str
    kept: bool
    drop_reason: str
    chosen_uuid: str
    rejected_uuid: str
    confidence: float
    persona_description: str
    question: str
    chosen: str
    rejected: str
    chosen_view: str
    rejected_view: str


class GoldJudgment(Record):
    """A gold pair: a candidate pair whose right answer for the user is known by construction
    (the domain's gold rule), judged in both orders like any other pair, never put in an
    episode. `persona_description` is what the judge read (for the stated-preference rule,
    the user's description with the probe's stated preference appended); `answer_x` says x
    is the right answer; `score` is 1 for a kept right label, 0 for a kept wrong one and 0.5
    for a dropped pair (an abstention is worth a coin flip), so gold accuracy is its mean.
    """

    id_field: ClassVar[str] = "judgment_uuid"
    # The score of a dropped gold pair: an abstention is worth a coin flip.
    ABSTAINED: ClassVar[float] = 0.5
    judgment_uuid: str
    persona_uuid: str
    question_uuid: str
    domain: str
    rule: str
    persona_description: str
    response_x_uuid: str
    response_y_uuid: str
    view_x: str
    view_y: str
    answer_x: bool
    margin_first: float
    margin_second: float
    debiased_margin: float
    kept: bool
    drop_reason: str
    prefers_x: bool
    score: float


class Shot(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    judgment_uuid: str
    question: str
    chosen: str
    rejected: str


class Episode(Record):
    """N labelled shots of one user plus one held-out query pair, with FSPO strings."""

    id_field: ClassVar[str] = "episode_uuid"
    episode_uuid: str
    persona_uuid: str
    domain: str
    split: str
    persona_description: str
    traits: list[Trait]
    shots: list[Shot]
    query_judgment_uuid: str
    query_question_uuid: str
    query_question: str
    query_chosen: str
    query_rejected: str
    confidence: float
    prompt: str
    chosen: str
    rejected: str


class RatEpisode(Episode):
    """An episode with the RAT variant: a model-written user description from the shots."""

    rationale: str
    rat_prompt: str
    rat_chosen: str
    rat_rejected: str
