"""What a re-run keeps, and why it recomputes the rest: per-shard recipes and input digests.

Each committed shard records its *recipe*: the leaves of its stage's config slice, the hashes
of the prompt templates and domain spec it used and, for an LLM stage, the model settings
that change what the model writes; and the digest of every group of upstream shards it read.
On a re-run a committed shard is kept only if it is still planned, over the same item range,
with the same recipe and the same input digests. A change to one stage's settings recomputes
that stage's shards; stages downstream recompute only where the new shards' content differs
from what they read (a persona shard re-made byte for byte leaves its judge shard alone).

The one change a run folder refuses is `seed`: every record id derives from it, so nothing
would be kept, and a different seed in an existing folder is most likely the wrong folder.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import yaml

from fspo_data.core import storage
from fspo_data.core.config import JobConfig
from fspo_data.core.config_files import dump_config
from fspo_data.core.shards import (
    CorruptManifest,
    Manifest,
    ShardEntry,
    atomic_write_bytes,
    inputs_digest,
    load_manifest,
    make_dir,
    package_versions,
    reconcile_with_disk,
    remove,
)
from fspo_data.core.storage import Location
from fspo_data.domains import DomainSpec, load_domain
from fspo_data.prompts import PROMPT_DIR, file_hash
from fspo_data.stages.base import ShardSpec, Stage


class RunConfigMismatch(ValueError):
    """The run folder holds a run of another seed."""


def template_hashes(stage: Stage, domain: DomainSpec) -> dict[str, str]:
    """Content hash of each template `stage` renders for `domain`, by name; a template of the
    domain's own folder as `domain/name`."""
    hashes = {}
    for name in stage.prompts(domain):
        path = domain.template_path(name)
        hashes[name if path.parent == PROMPT_DIR else f"{domain.name}/{name}"] = file_hash(path)
    return hashes


def stage_prompts(stage: Stage, config: JobConfig) -> dict[str, str]:
    """`template_hashes` of `stage` over the job's domains (the dataset card lists them)."""
    hashes: dict[str, str] = {}
    for name in config.domains:
        hashes |= template_hashes(stage, load_domain(name, config.domains_dir))
    return dict(sorted(hashes.items()))


def model_recipe(stage: Stage, config: JobConfig) -> dict[str, Any]:
    """The models a stage's records depend on: with one `model:`, its identity (the keys a
    one-model run folder always had); with named models, which serves each of the stage's
    roles and each one's identity. So changing one role's model recomputes only the stages
    that role serves, and, through their content, what reads them."""
    roster = config.roster()
    if not roster.named:
        return {f"model.{k}": v for k, v in config.model.identity().items()} if stage.roles else {}
    recipe: dict[str, Any] = {f"roles.{role}": list(roster.roles[role]) for role in stage.roles}
    if "candidates" in stage.roles and len(roster.roles["candidates"]) > 1:
        recipe["roles.candidates.assign"] = roster.assign
    for name in roster.names_of(stage.roles):
        recipe |= {f"models.{name}.{k}": v for k, v in roster.models[name].identity().items()}
    return recipe


def shard_recipe(stage: Stage, domain: str, config: JobConfig) -> dict[str, str]:
    """What a shard of `stage` in `domain` is made from, as `key -> JSON value or hash`."""
    recipe: dict[str, Any] = dict(stage.settings(config))
    recipe |= model_recipe(stage, config)
    spec = load_domain(domain, config.domains_dir)
    recipe |= {f"prompt:{key}": digest for key, digest in template_hashes(stage, spec).items()}
    taxonomy = spec.taxonomy_path.read_bytes()
    recipe["domain:" + domain] = hashlib.sha256(
        spec.model_dump_json().encode() + taxonomy
    ).hexdigest()[:12]
    return {key: json.dumps(value, sort_keys=True) for key, value in sorted(recipe.items())}


def recipe_changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Readable differences between two recipes: `stages.judge.min_margin 0.05 -> 0.1`."""
    changes = []
    for key in sorted(old.keys() | new.keys()):
        before, after = old.get(key, "(unset)"), new.get(key, "(unset)")
        if before == after:
            continue
        kind, _, name = key.partition(":")
        if kind == "prompt":
            changes.append(f"prompt template {name} changed")
        elif kind == "domain":
            changes.append(f"domain spec {name} changed")
        else:
            changes.append(f"{key} {before} -> {after}")
    return changes


def upstream_digests(run_dir: Location) -> Callable[[str], str | None]:
    """`{stage}/{prefix}` -> digest of those committed shards now; each manifest read once."""
    manifests: dict[str, Manifest | None] = {}

    def digest(source: str) -> str | None:
        stage, prefix = source.split("/", 1)
        if stage not in manifests:
            manifests[stage] = load_manifest(run_dir / stage)
        manifest = manifests[stage]
        return None if manifest is None else inputs_digest(manifest, prefix)

    return digest


def stale_reason(
    entry: ShardEntry,
    spec: ShardSpec | None,
    recipe: dict[str, str],
    digest: Callable[[str], str | None],
) -> str | None:
    """Why a committed shard no longer fits the plan, its recipe or its inputs; None if it does."""
    if spec is None:
        return "no longer planned, discarded"
    if (entry.start, entry.stop) != (spec.start, spec.stop):
        return f"planned range is now [{spec.start}, {spec.stop})"
    if not entry.recipe:
        return "committed before shards recorded their recipe"
    if changes := recipe_changes(entry.recipe, recipe):
        return ", ".join(changes)
    changed = sorted(s.split("/")[0] for s, d in entry.inputs.items() if digest(s) != d)
    if changed:
        return f"its input {', '.join(dict.fromkeys(changed))} changed"
    return None


def drop_stale(
    config: JobConfig,
    stage: Stage,
    manifest: Manifest,
    specs: list[ShardSpec],
    recipes: dict[str, dict[str, str]],
) -> list[str]:
    """Remove committed shards that no longer fit; one line per stage and reason, e.g.
    `judge: stages.judge.min_margin 0.05 -> 0.1, 3 of 3 shards recomputed`."""
    planned = {spec.name: spec for spec in specs}
    digest = upstream_digests(config.run_dir)
    reasons: Counter[str] = Counter()
    for name, entry in list(manifest.shards.items()):
        spec = planned.get(name)
        recipe = recipes[spec.domain] if spec is not None else {}
        reason = stale_reason(entry, spec, recipe, digest)
        if reason is not None:
            reasons[reason] += 1
            del manifest.shards[name]
            remove(config.run_dir / stage.name / entry.file)
    lines = []
    for reason, count in reasons.items():
        if reason.startswith("no longer planned"):
            lines.append(f"{stage.name}: {count} shard(s) {reason}")
        else:
            lines.append(f"{stage.name}: {reason}, {count} of {len(specs)} shards recomputed")
    return lines


def open_manifest(config: JobConfig, stage: Stage) -> tuple[Manifest, list[str]]:
    """The stage's manifest checked against its files (a new one if there is none)."""
    stage_dir = config.run_dir / stage.name
    notes = []
    try:
        manifest = load_manifest(stage_dir)
    except CorruptManifest as exc:
        manifest = None
        notes.append(f"{exc}: the stage starts over")
    manifest = manifest or Manifest(
        stage=stage.name,
        schema=str(stage.record_type.arrow_schema()),
        config_fingerprint=config.fingerprint(),
        package_versions=package_versions(),
    )
    notes += reconcile_with_disk(stage_dir, manifest)
    manifest.config_fingerprint = config.fingerprint()
    manifest.prompt_hashes = stage_prompts(stage, config)
    return manifest, notes


def saved_seed(run_dir: Location) -> int | None:
    """The seed of the run a folder holds; None for a new folder or an unreadable config."""
    try:
        saved = yaml.safe_load(storage.read_text(run_dir / "config.yaml"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return saved.get("seed") if isinstance(saved, dict) else None


def prepare_run_dir(config: JobConfig, force_new_config: bool) -> None:
    """Refuse a folder holding another seed's run (unless forced), then save the config."""
    run_dir = config.run_dir
    previous = saved_seed(run_dir)
    if previous is not None and previous != config.seed and not force_new_config:
        raise RunConfigMismatch(
            f"{run_dir}: holds a run of another seed (seed: {previous} -> {config.seed}), which "
            "changes every record id; use a new run_dir, or --force-new-config to recompute "
            "everything in this one"
        )
    make_dir(run_dir)
    atomic_write_bytes(run_dir / "fingerprint", config.fingerprint().encode())
    atomic_write_bytes(run_dir / "config.yaml", dump_config(config).encode())
