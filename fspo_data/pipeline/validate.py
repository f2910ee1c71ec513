"""Checks of a job config that need more than its own fields: taxonomies, backends, Ray.

`fspo_data.core.config` validates each field on its own; what depends on the data files, the
engines and the machines above the core layer is checked here, before a run folder exists.
Every problem is a `ConfigError` of one line naming the file and the field.
"""

from __future__ import annotations

from pathlib import Path

from fspo_data.backends import backend_problems
from fspo_data.core.config import ConfigError, JobConfig, load_config
from fspo_data.personas.taxonomy import load_taxonomy


def job_problems(config: JobConfig) -> list[str]:
    """`field: what is wrong` for each cross-file problem of `config`; [] when it is sound."""
    problems = []
    # An attribute may belong to some domains only (education: elix); one in none is a typo
    # that would otherwise leave sampling independent without a word.
    known = {a for d in config.domains for a in load_taxonomy(d).attributes}
    unknown = [a for a in config.personas.stratify if a not in known]
    if unknown:
        problems.append(
            f"personas.stratify: {', '.join(map(repr, unknown))} is in no taxonomy of "
            f"{', '.join(config.domains)} (attributes: {', '.join(sorted(known))})"
        )
    return problems + backend_problems(config)


def _raise_first(problems: list[str], source: Path | str) -> None:
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(f"{source}: {problems[0]}{more}")


def validate_job(config: JobConfig, source: Path | str = "config") -> JobConfig:
    """`config` if it passes every check; else a `ConfigError` naming `source` and the field."""
    _raise_first(job_problems(config), source)
    return config


def load_job(path: Path | str) -> JobConfig:
    """A job config read, validated field by field, then checked against the data files and
    its backend."""
    return validate_job(load_config(path), path)
