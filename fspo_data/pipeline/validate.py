"""Checks of a job config that need more than its own fields: taxonomies, backends, Ray.

`fspo_data.core.config` validates each field on its own; what depends on the data files, the
engines and the machines above the core layer is checked here, before a run folder exists.
Every problem is a `ConfigError` of one line naming the file and the field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from fspo_data.backends import backend_problems
from fspo_data.core.config import JobConfig, load_config
from fspo_data.core.config_files import ConfigError
from fspo_data.core.model_config import RESOURCE_SLACK, pools_resources
from fspo_data.core.storage import Location
from fspo_data.domains import load_domain
from fspo_data.personas.taxonomy import load_taxonomy
from fspo_data.pipeline.plan import domain_counts
from fspo_data.stages import STAGES


def job_problems(config: JobConfig) -> list[str]:
    """`field: what is wrong` for each cross-file problem of `config`; [] when it is sound."""
    return gate_problems(config) + domain_problems(config)


def gate_problems(config: JobConfig) -> list[str]:
    """A gate that could never be checked would stop every run once the gold stage ends."""
    judge = config.stages.judge
    most = config.counts.users * judge.gold_pairs_per_user
    if judge.gate.min_accuracy is None or judge.gate.min_pairs <= most:
        return []
    return [
        f"stages.judge.gate.min_pairs: {judge.gate.min_pairs} gold pairs per domain is more than "
        f"counts.users x stages.judge.gold_pairs_per_user ({most}) can give"
    ]


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
    problems += block_problems(config)
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
    return problems + backend_problems(config)


def block_problems(config: JobConfig) -> list[str]:
    """Pair blocks that would leave a block without users, or a user short of pairs."""
    counts = config.counts
    if counts.pair_blocks == 1:
        return []
    if counts.pair_blocks > counts.users:
        return [
            f"counts.pair_blocks: {counts.pair_blocks} blocks of counts.users ({counts.users}) "
            "would leave a block with no user"
        ]
    problems = []
    for name in config.domains:
        pool = domain_counts(config, name).pool_pairs
        if pool // counts.pair_blocks < counts.pairs_per_user:
            problems.append(
                f"counts.pair_blocks: {counts.pair_blocks} blocks of {name}'s pool of {pool} pairs "
                f"hold {pool // counts.pair_blocks} pairs each, fewer than counts.pairs_per_user "
                f"({counts.pairs_per_user}) a user draws from its block"
            )
    return problems


def resource_problems(config: JobConfig, resources: Mapping[str, float]) -> list[str]:
    """`field: what is wrong` when an engine pool, or the pools one stage needs at once, cannot
    be placed on `resources`.

    `resources` is Ray's total by resource name, as `ray.cluster_resources()` gives it (a
    name it lacks is none). Every replica must be placed: shards are dealt to all of them, so
    one replica left waiting for room would hold the run forever. Pools of different stages
    need not fit together: one is let go before the next starts (pipeline/workers.py).
    """
    roster = config.roster()
    problems = []
    for name, model in roster.models.items():
        path = f"models.{name}" if roster.named else "model"
        fields = {"CPU": f"{path}.cpus_per_replica", "GPU": f"{path}.tensor_parallel_size"}
        for kind, each in model.replica_resources().items():
            have = resources.get(kind, 0.0)
            if model.replicas * each > have + RESOURCE_SLACK:
                problems.append(
                    f"{fields[kind]}: {model.replicas} replica(s) x {each:g} {kind} need "
                    f"{model.replicas * each:g} {kind}, but Ray has {have:g}; the pool would "
                    "wait forever for the rest"
                )
    if problems:  # a pool that cannot be placed alone says more than a stage's sum
        return problems
    for stage in STAGES:
        names = roster.names_of(stage.roles)
        if len(names) < 2 or not stage.enabled(config):
            continue
        wanted = pools_resources([roster.models[n] for n in names])
        for kind, n in wanted.items():
            if n > resources.get(kind, 0.0) + RESOURCE_SLACK:
                problems.append(
                    f"roles: the {stage.name} stage needs the pools of {', '.join(names)} at "
                    f"once, {n:g} {kind} in all, but Ray has {resources.get(kind, 0.0):g}"
                )
    return problems


def local_ray_resources(config: JobConfig) -> dict[str, float] | None:
    """What a local Ray will have, known before it starts; None where only Ray can tell (a
    cluster, or GPUs, which a local Ray counts as it starts)."""
    if config.ray.address is not None or any(m.use_gpu for m in config.roster().models.values()):
        return None
    return {"CPU": float(config.ray.num_cpus or os.cpu_count() or 1)}


def _raise_first(problems: list[str], source: Path | str) -> None:
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(f"{source}: {problems[0]}{more}")


def validate_job(config: JobConfig, source: Path | str = "config") -> JobConfig:
    """`config` if it passes every check; else a `ConfigError` naming `source` and the field."""
    _raise_first(job_problems(config), source)
    return config


def validate_placement(config: JobConfig, source: Path | str = "config") -> None:
    """Once Ray is up, before the run folder: can the engine pool be placed on its totals?"""
    import ray

    _raise_first(resource_problems(config, ray.cluster_resources()), source)


def load_job(path: Location | str, *, to_run_here: bool = False) -> JobConfig:
    """A job config read, validated field by field, then checked against the data files and
    its backend; `to_run_here` (`fspo-data run`) also checks its engine pool against a local
    Ray, before Ray starts (`validate_placement` checks the rest once it is up)."""
    config = validate_job(load_config(path), path)
    resources = local_ray_resources(config) if to_run_here else None
    if resources is not None:
        _raise_first(resource_problems(config, resources), path)
    return config
