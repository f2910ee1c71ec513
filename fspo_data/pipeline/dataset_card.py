"""The dataset card of a Hub export: README.md front matter (`configs:` per domain and split)
and body, from the template and whatever the run recorded (config, manifests, summary.json,
the diversity report). Values of secret-looking environment variables are scrubbed from it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from importlib.metadata import version
from pathlib import Path
from string import Template
from typing import Any

import pyarrow as pa
import yaml

from fspo_data.core import storage
from fspo_data.core.config import JobConfig, load_config
from fspo_data.core.fspo_format import format_completion, format_prompt, format_rat_completion
from fspo_data.core.model_config import ModelConfig
from fspo_data.core.records import Shot
from fspo_data.core.roles_config import ModelRoster
from fspo_data.core.shards import Manifest, load_manifest
from fspo_data.core.storage import Location
from fspo_data.domains import load_domain
from fspo_data.pipeline.cost import RunDollars, usd
from fspo_data.pipeline.gold import LEGEND as GOLD_LEGEND
from fspo_data.pipeline.gold import GoldFigures
from fspo_data.pipeline.summary import ModelSummary, StageSummary
from fspo_data.pipeline.verdicts import Check
from fspo_data.stages import STAGES

CARD_TEMPLATE = Path(__file__).with_name("dataset_card.md.tmpl")
RATIONALE_COLUMNS = ("rationale", "rat_prompt", "rat_chosen", "rat_rejected")
SECRET_SUFFIXES = ("_KEY", "_TOKEN", "_SECRET", "_PASSWORD")
# Shorter values (flags, "1") would scrub ordinary words out of the card.
MIN_SECRET_CHARS = 8
_SIZE_CATEGORIES = (
    (10**3, "n<1K"),
    (10**4, "1K<n<10K"),
    (10**5, "10K<n<100K"),
    (10**6, "100K<n<1M"),
    (10**7, "1M<n<10M"),
    (10**8, "10M<n<100M"),
    (10**9, "100M<n<1B"),
    (10**10, "1B<n<10B"),
    (10**11, "10B<n<100B"),
    (10**12, "100B<n<1T"),
)


def size_category(rows: int) -> str:
    """The Hub's `size_categories` label for a row count."""
    for bound, label in _SIZE_CATEGORIES:
        if rows < bound:
            return label
    return "n>1T"


def front_matter(
    rows: Mapping[str, Mapping[str, int]], license: str, pretty_name: str | None = None
) -> dict[str, Any]:
    """The card's YAML header: Hub metadata and one `configs:` entry per domain, its splits'
    files by glob; `pretty_name` defaults to one naming the domains."""
    configs = [
        {
            "config_name": domain,
            **({"default": True} if index == 0 else {}),
            "data_files": [
                {"split": split, "path": f"data/{domain}/{split}-*.parquet"} for split in splits
            ],
        }
        for index, (domain, splits) in enumerate(rows.items())
    ]
    total = sum(sum(splits.values()) for splits in rows.values())
    return {
        "license": license,
        "language": ["en"],
        "task_categories": ["text-generation"],
        "tags": ["synthetic", "preference", "dpo", "personalization", "fspo"],
        "size_categories": [size_category(total)],
        "pretty_name": pretty_name or f"FSPO synthetic preferences ({', '.join(rows)})",
        "configs": configs,
    }


def _shots(config: JobConfig) -> str:
    try:
        return ", ".join(
            f"{d} {load_domain(d, config.domains_dir).shots(config.counts)}" for d in config.domains
        )
    except ValueError as exc:  # the run's domains_dir may not travel with its run folder
        return f"not recorded ({exc})"


def render_card(
    run_dir: Location,
    repo_id: str,
    header: dict[str, Any],
    rows: Mapping[str, Mapping[str, int]],
    schema: pa.Schema,
) -> str:
    """The dataset card, from the template and whatever the run recorded."""
    config_path = run_dir / "config.yaml"
    config = load_config(config_path) if storage.is_file(config_path) else None
    manifests = _read_manifests(run_dir)
    has_rationale = any(name in schema.names for name in RATIONALE_COLUMNS)
    summary = _read_json(run_dir / "summary.json")
    return Template(CARD_TEMPLATE.read_text()).substitute(
        front_matter=yaml.safe_dump(header, sort_keys=False, allow_unicode=True),
        pretty_name=header["pretty_name"],
        fspo_data_version=version("fspo-data"),
        repo_id=repo_id,
        default_config=next(iter(rows)),
        splits_table=_splits_table(rows),
        shots=_shots(config) if config else "not recorded",
        prompt_format=_prompt_outline(),
        completion_format=_one_line(format_completion("{response}")),
        rationale_note=_rationale_note() if has_rationale else "",
        provenance=_provenance(config, manifests),
        stages_table=_stages_table(manifests),
        verdicts=_verdicts(summary),
        summary=_summary(summary, config),
        diversity_table=_diversity_table(_read_json(run_dir / "report" / "diversity.json")),
        limitations=_limitations(config),
    )


def _prompt_outline() -> str:
    """`format_prompt` with placeholders: one example, an ellipsis for the others, the task."""
    shot = Shot(
        judgment_uuid="", question="{question}", chosen="{preferred}", rejected="{dispreferred}"
    )
    task = format_prompt([], "{query question}")
    return format_prompt([shot], "{query question}").removesuffix(task) + "...\n\n" + task


def _one_line(text: str) -> str:
    """A target as the card shows it inline: newlines written as `\\n`."""
    return text.replace("\n", "\\n")


def _rationale_note() -> str:
    target = _one_line(format_rat_completion("{description}", "{y}"))
    return f"""
With rationalization (RAT), `rat_prompt` asks first for a description of the user, and
`rat_chosen`/`rat_rejected` are
`{target}`;
`rationale` is the description alone.
"""


def redact(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """Drop the values of secret-looking environment variables; return the text and their names."""
    names = []
    for name, value in sorted(env.items()):
        secret = name.upper().endswith(SECRET_SUFFIXES) and len(value) >= MIN_SECRET_CHARS
        if secret and value in text:
            text = text.replace(value, "[redacted]")
            names.append(name)
    return text, names


def _read_json(path: Location) -> dict[str, Any] | None:
    # Raw JSON, not the pydantic models: their NaN figures are written as null and do not
    # validate back.
    return json.loads(storage.read_bytes(path)) if storage.is_file(path) else None


def _read_manifests(run_dir: Location) -> dict[str, Manifest]:
    """Stage name -> its manifest, in pipeline order, for the stages that committed any."""
    found = {stage.name: load_manifest(run_dir / stage.name) for stage in STAGES}
    return {name: manifest for name, manifest in found.items() if manifest is not None}


def _provenance(config: JobConfig | None, manifests: Mapping[str, Manifest]) -> str:
    if config is None:
        lines = ["- The run's config.yaml was not found: model and settings not recorded."]
    else:
        lines = [
            *_models_per_role(config.roster()),
            f"- Judge mode: {config.stages.judge.mode}; seed: {config.seed}.",
        ]
    fingerprints = sorted({m.config_fingerprint for m in manifests.values()})
    if fingerprints:
        lines.append(f"- Config fingerprint: {', '.join(f'`{f}`' for f in fingerprints)}.")
    hashes = {k: v for m in manifests.values() for k, v in m.prompt_hashes.items()}
    if hashes:
        listed = ", ".join(f"`{name}` {digest}" for name, digest in sorted(hashes.items()))
        lines.append(f"- Prompt templates (sha256, first 12 hex digits): {listed}.")
    if "episodes" in manifests and manifests["episodes"].package_versions:
        versions = sorted(manifests["episodes"].package_versions.items())
        lines.append(f"- Package versions: {', '.join(f'{n} {v}' for n, v in versions)}.")
    if config is not None:
        # Where the run lived and which cluster ran it say nothing about the data.
        shown = config.model_dump(mode="json", exclude={"run_dir", "ray"})
        dumped = yaml.safe_dump(shown, sort_keys=False).rstrip()
        lines.append(f"\nThe resolved job config:\n\n```yaml\n{dumped}\n```")
    return "\n".join(lines)


def _describe(model: ModelConfig) -> str:
    """What a model is: the weights an engine loads, or the name an endpoint serves."""
    if model.backend == "instant-benchmark-double":
        return "backend instant-benchmark-double (seeded stand-in text, no weights)"
    if model.backend == "openai":
        return f"backend openai, served name `{model.served_name}`"
    return f"backend {model.backend}, weights `{model.model}`, dtype {model.dtype}"


def _models_per_role(roster: ModelRoster) -> list[str]:
    """Which model served each role (the judge labelled every pair in both orders)."""
    if not roster.named:
        model = next(iter(roster.models.values()))
        return [
            f"- Model: {_describe(model)}; it wrote the personas, questions, viewpoints and "
            "responses, and judged every pair in both orders."
        ]
    lines = ["- Models per role:", "", "| role | model | what it is |", "|---|---|---|"]
    for role, names in roster.roles.items():
        shown = f"{role} ({roster.assign})" if role == "candidates" and len(names) > 1 else role
        lines += [f"| {shown} | `{n}` | {_describe(roster.models[n])} |" for n in names]
    return [*lines, ""]


def _tokens_per_model(summary: Mapping[str, Any]) -> list[str]:
    """The run summary's per-model line: each model's calls and tokens."""
    models = [ModelSummary.model_validate(m) for m in summary.get("models", [])]
    if not models:
        return []
    each = "; ".join(
        f"`{m.model}`: {m.requests:,} calls, {m.prompt_tokens:,} prompt tokens "
        f"({m.cached_prompt_tokens:,} cached), {m.completion_tokens:,} generated, "
        f"{usd(m.dollars)}"
        for m in models
    )
    return ["", f"Tokens per model: {each}."]


def _splits_table(rows: Mapping[str, Mapping[str, int]]) -> str:
    lines = ["| config | split | rows |", "|---|---|---:|"]
    for domain, splits in rows.items():
        lines += [f"| {domain} | {split} | {count} |" for split, count in splits.items()]
    return "\n".join(lines)


def _stages_table(manifests: Mapping[str, Manifest]) -> str:
    if not manifests:
        return "not computed"
    lines = ["| stage | committed shards | rows |", "|---|---:|---:|"]
    lines += [f"| {name} | {len(m.shards)} | {m.rows} |" for name, m in manifests.items()]
    return "\n".join(lines)


def _verdicts(summary: Mapping[str, Any] | None) -> str:
    """The run's verdict lines from summary.json, as the run summary printed them."""
    checks = [Check.model_validate(c) for c in (summary or {}).get("verdicts", [])]
    if not checks:
        return "not computed"
    return "\n".join(f"- **{c.status}** {c.text()}" for c in checks)


def _summary(summary: Mapping[str, Any] | None, config: JobConfig | None) -> str:
    """Per-stage work and the judge's statistics from summary.json."""
    if summary is None:
        return "not computed"
    lines = [
        "| stage | prompt tokens | completion tokens | dropped | retries | wall s | dollars |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for stage in (StageSummary.model_validate(s) for s in summary["stages"]):
        c = stage.counters
        lines.append(
            f"| {stage.stage} | {c.get('prompt_tokens', 0)} | {c.get('completion_tokens', 0)} "
            f"| {stage.dropped} | {c.get('retries', 0)} | {stage.wall_seconds:.1f} "
            f"| {usd(stage.dollars)} |"
        )
    lines += _tokens_per_model(summary)
    if summary.get("dollars") is not None:
        lines += ["", RunDollars.model_validate(summary["dollars"]).describe() + "."]
    lines += [
        "",
        "Label consistency per domain (every pair judged in both orders):",
        "",
        _figures_table(summary.get("consistency", {})),
    ]
    overall = summary.get("consistency", {}).get("overall")
    if overall is not None:
        lines += ["", _near_duplicates(len(overall["flagged_users"]), config)]
    lines += _gold(summary.get("gold", {}))
    lines += ["", f"Total wall time {summary['wall_seconds']:.1f} s."]
    return "\n".join(lines)


def _gold(gold: Mapping[str, Any]) -> list[str]:
    """Gold accuracy per domain: the judge on pairs whose right answer is known."""
    if not gold:
        return []
    lines = [
        "",
        f"Gold accuracy ({GOLD_LEGEND}). Gold pairs are in no episode:",
        "",
        "| domain | gold accuracy |",
        "|---|---|",
    ]
    lines += [
        f"| {domain} | {GoldFigures.model_validate(figures).describe()} |"
        for domain, figures in gold.items()
    ]
    return lines


def _near_duplicates(flagged: int, config: JobConfig | None) -> str:
    """The run summary's flagged-user count, with the thresholds of the one rule that found it
    (`pipeline.consistency.flagged_users`; the diversity report lists the same users)."""
    if config is None:
        rule = "thresholds not recorded (no config.yaml)"
    else:
        judge = config.stages.judge
        rule = (
            f"labels agreeing with another user's on more than {judge.flag_agreement:g} of at "
            f"least {judge.flag_min_shared} shared pairs"
        )
    return f"Near-duplicate labellers: {flagged} users ({rule})."


def _diversity_table(report: Mapping[str, Any] | None) -> str:
    if report is None:
        return "not computed"
    # The local path and the report's own timings say nothing about the data.
    return _figures_table({k: v for k, v in report.items() if k not in ("run_dir", "timings_s")})


def _figures_table(figures: Mapping[str, Any]) -> str:
    """Every scalar of a (nested) JSON object as `| dotted.key | value |`."""
    lines = ["| figure | value |", "|---|---:|"]
    lines += [f"| `{key}` | {_cell(value)} |" for key, value in flatten(figures)]
    return "\n".join(lines)


def flatten(figures: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for each scalar leaf; lists (histograms, matrices) are left out."""
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, f"{name}.")
        elif not isinstance(value, list):
            yield name, value


def _cell(value: Any) -> str:
    if value is None:  # pydantic writes NaN figures (nothing to measure) as null
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _limitations(config: JobConfig | None) -> str:
    items = [
        "Users and labels are synthetic: a language model judged each pair for a written "
        "persona; no person labelled anything.",
        "Episodes of one user reuse that user's labelled pairs as shots, so rows are not "
        "independent; split by `persona_uuid` before any further held-out evaluation.",
        "English only, with the biases of the generating model.",
    ]
    if config is not None and config.stages.judge.mode == "calibrated":
        items.append(
            "Judge mode `calibrated`: the judge's constant position bias is cancelled by "
            "averaging both orders and pairs are kept above a margin; the paper's `strict` rule "
            "(drop pairs whose verdict flips with the order) was not applied."
        )
    if config is not None:
        items += _embedded_note(config.roster())
    return "\n".join(f"- {item}" for item in items)


def _embedded_note(roster: ModelRoster) -> list[str]:
    """The demo model's caveat, naming the roles it served (a weak judge only if it judged)."""
    roles = [
        role
        for name, model in roster.models.items()
        # Only an in-process engine loads `model`; an endpoint serves what it serves.
        if model.backend == "vllm" and model.model.startswith("embedded:")
        for role in roster.roles_of(name)
    ]
    if not roles:
        return []
    weak = ["short, often generic texts"] + (["a weak judge"] if "judge" in roles else [])
    served = "every role" if not roster.named else ", ".join(dict.fromkeys(roles))
    return [
        f"Generated by the embedded 135M-parameter SmolLM2 model ({served}): "
        f"{' and '.join(weak)}. Demo-scale data, not a substitute for the paper's."
    ]
