"""Checks of a job config that need more than its own fields: taxonomies, domains, backends.

`fspo_data.core.config` validates each field on its own; what depends on the data files and
the engines above the core layer is checked here, before a run folder or Ray exists. Every
problem is a `ConfigError` of one line naming the file and the field.
"""

from __future__ import annotations

from pathlib import Path

from fspo_data.core.config import ConfigError, JobConfig, load_config
from fspo_data.domains import load_domain
from fspo_data.personas.taxonomy import load_taxonomy


def job_problems(config: JobConfig) -> list[str]:
    """`field: what is wrong` for each cross-file problem of `config`; [] when it is sound."""
    return domain_problems(config)


def domain_problems(config: JobConfig) -> list[str]:
    """What the domains' files say against `config`: unknown or broken domains, shots."""
    if config.domains_dir is not None and not config.domains_dir.is_dir():
        return [f"domains_dir: {config.domains_dir} is not a folder"]
    problems, domains, attributes = [], [], set()
    for i, name in enumerate(config.domains):
        try:
            domain = load_domain(name, config.domains_dir)
            attributes |= set(load_taxonomy(domain).attributes)
            domains.append(domain)
        except ValueError as exc:
            problems.append(f"domains.{i}: {exc}")
    problems += [
        f"counts.shots.{name}: {name!r} is not in domains ({', '.join(config.domains)})"
        for name in config.counts.shots
        if name not in config.domains
    ]
    if problems:
        return problems
    for domain in domains:
        shots = domain.shots(config.counts)
        if shots + 1 > config.counts.pairs_per_user:
            problems.append(
                f"counts.shots.{domain.name} + 1 ({shots + 1}) exceeds counts.pairs_per_user "
                f"({config.counts.pairs_per_user})"
            )
    # An attribute may belong to some domains only (education: elix); one in none is a typo
    # that would otherwise leave sampling independent without a word.
    unknown = [a for a in config.personas.stratify if a not in attributes]
    if unknown:
        problems.append(
            f"personas.stratify: {', '.join(map(repr, unknown))} is in no taxonomy of "
            f"{', '.join(config.domains)} (attributes: {', '.join(sorted(attributes))})"
        )
    return problems


def validate_job(config: JobConfig, source: Path | str = "config") -> JobConfig:
    """`config` if it passes every check; else a `ConfigError` naming `source` and the field."""
    problems = job_problems(config)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(f"{source}: {problems[0]}{more}")
    return config


def load_job(path: Path | str) -> JobConfig:
    """A job config read, validated field by field, then checked against the data files."""
    return validate_job(load_config(path), path)
