"""Config files: YAML in (strict: a key given twice is refused), YAML out, one-line errors.

Any config (the job's, the trainer's) is read through `load_yaml_model`, so every problem is
a `ConfigError` whose message names the file and the field.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from fspo_data.core import storage
from fspo_data.core.storage import Location

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config problem, phrased as one line: `FILE: FIELD: what is wrong`."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: object, info: ValidationInfo) -> object:
        # YAML 1.1 reads yes/no/on/off as booleans, and pydantic would take True as 1.
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            types = set(get_args(annotation)) or {annotation}
            if types & {int, float} and bool not in types:
                raise ValueError(f"expected a number, got {str(value).lower()} (a YAML boolean)")
        return value


def config_leaves(config: BaseModel, paths: Iterable[str]) -> dict[str, Any]:
    """The values under each dotted path of `config`, flattened to dotted leaves.

    `config_leaves(job, ["stages.judge"])` -> {"stages.judge.mode": "calibrated", ...}; a path
    to a scalar gives that one leaf. Values are as the YAML holds them (JSON types).
    """
    tree = config.model_dump(mode="json")
    leaves: dict[str, Any] = {}
    for path in paths:
        value: Any = tree
        for key in path.split("."):
            value = value[key]
        leaves |= _flatten(value, path)
    return leaves


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        return {prefix: value}
    leaves: dict[str, Any] = {}
    for key, inner in value.items():
        leaves |= _flatten(inner, f"{prefix}.{key}")
    return leaves


def _one_line(path: Location, error: ValidationError) -> str:
    first = error.errors()[0]
    message = first["msg"].replace("Value error, ", "")
    field = ".".join(str(p) for p in first["loc"])
    if not field:
        # A check across fields (a model validator) has no location: its message may name it.
        named, _, rest = message.partition(": ")
        field, message = (named, rest) if rest and " " not in named else ("(top level)", message)
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    more = f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{path}: {field}: {message}{more}"


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping names one key twice; the message is `FIELD: key given twice (lines A and B)`."""

    def __init__(self, field: str, first_line: int, second_line: int) -> None:
        super().__init__(problem=f"{field}: key given twice (lines {first_line} and {second_line})")

    def __str__(self) -> str:
        return self.problem


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader (so `!!python` tags stay refused) that refuses a key given twice in one
    mapping: plain PyYAML keeps the last value without a word.

    A mapping is constructed before its children, so it records the dotted field of each
    child mapping for their own check to name.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._fields: dict[int, str] = {}

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        parent = self._fields.get(id(node), "")
        first_lines: dict[object, int] = {}
        for key_node, value_node in node.value:
            # Keys a `<<` merge brings in may be overridden here, as YAML intends.
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key = self.construct_object(key_node)
            field = f"{parent}.{key}" if parent else str(key)
            line = key_node.start_mark.line + 1
            if key in first_lines:
                raise DuplicateKeyError(field, first_lines[key], line)
            first_lines[key] = line
            self._fields[id(value_node)] = field
        return super().construct_mapping(node, deep)


def load_yaml_model(path: Location | str, model: type[M]) -> M:
    """Read a YAML config (a file, or an object of a run on object storage) into `model`; any
    problem is a `ConfigError` of one line naming the file and the field."""
    path = storage.location(path)
    try:
        raw = yaml.load(storage.read_text(path), Loader=_UniqueKeyLoader)
    except OSError as exc:
        reason = exc.strerror or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: cannot read config: {reason}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte offset {exc.start})") from None
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: (top level): expected a mapping of fields")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_one_line(path, exc)) from None


def dump_config(config: BaseModel) -> str:
    """A job or train config as the YAML its loader reads back."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
