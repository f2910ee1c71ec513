"""Hub export: re-shard a run's episodes per domain and split, write a dataset card, upload.

The folder is laid out so `datasets.load_dataset(folder_or_repo, domain)` needs no arguments:
`data/{domain}/{split}-00000-of-0000N.parquet` plus a README whose `configs:` names them.
The Hub token is read by `huggingface_hub` from the environment (HF_TOKEN); nothing here
writes or prints it, and values of secret-looking environment variables are scrubbed from
the card.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from pathlib import Path
from string import Template
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from fspo_data.core.config import JobConfig, load_config
from fspo_data.core.records import Episode
from fspo_data.core.shards import Manifest, final_episode_files, load_manifest
from fspo_data.domains import load_domain
from fspo_data.pipeline.summary import StageSummary
from fspo_data.stages import STAGES
from fspo_data.stages.base import require_columns

log = logging.getLogger(__name__)

CARD_TEMPLATE = Path(__file__).with_name("dataset_card.md.tmpl")
SPLIT_ORDER = ("train", "test_users", "test_questions")
RATIONALE_COLUMNS = ("rationale", "rat_prompt", "rat_chosen", "rat_rejected")
SECRET_SUFFIXES = ("_KEY", "_TOKEN", "_SECRET", "_PASSWORD")
# Shorter values (flags, "1") would scrub ordinary words out of the card.
MIN_SECRET_CHARS = 8
# Row groups are cut from in-memory Arrow bytes; Parquet compresses text a few times over,
# so this keeps row groups well under the Hub viewer's limits, and one buffer per
# (domain, split) bounds memory.
ROW_GROUP_BYTES = 32_000_000
READ_BATCH_ROWS = 1024
# Names become paths and Hub split names (`\w+`), so nothing else is accepted from the data.
_NAME = re.compile(r"^\w+$")
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


class ExportError(ValueError):
    """The run cannot be exported as asked; the message says what to change."""


class HubApi(Protocol):
    """What the export needs from `huggingface_hub.HfApi` (tests pass a recording double)."""

    def create_repo(
        self, *, repo_id: str, repo_type: str, private: bool, exist_ok: bool
    ) -> Any: ...

    def upload_folder(
        self,
        *,
        repo_id: str,
        folder_path: str | Path,
        repo_type: str,
        delete_patterns: list[str],
        commit_message: str,
    ) -> Any: ...


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    files: list[tuple[str, int]]  # (path inside the folder, bytes), as uploaded
    rows: dict[str, dict[str, int]]  # config (domain) -> split -> rows
    redacted: list[str] = field(default_factory=list)  # env vars whose values left the card
    uploaded: bool = False

    def listing(self) -> str:
        """One line per file with its size, then the total: what a dry run shows."""
        lines = [f"{size / 1e6:10.2f} MB  {name}" for name, size in self.files]
        total = sum(size for _, size in self.files)
        return "\n".join([*lines, f"{total / 1e6:10.2f} MB  total, {len(self.files)} files"])


def export_run(
    run_dir: Path,
    repo_id: str,
    out_dir: Path | None = None,
    private: bool = False,
    dry_run: bool = False,
    max_shard_bytes: int = 300_000_000,
    license: str = "apache-2.0",
    pretty_name: str | None = None,
    api: HubApi | None = None,
) -> ExportResult:
    """Write the Hub folder (default RUN_DIR/export) and, unless `dry_run`, upload it.

    A dry run writes the folder and lists it (`ExportResult.listing()`) without touching the Hub.
    """
    result = write_export(run_dir, repo_id, out_dir, max_shard_bytes, license, pretty_name)
    if dry_run:
        return result
    upload_export(result.folder, repo_id, private=private, api=api)
    return replace(result, uploaded=True)


def write_export(
    run_dir: Path,
    repo_id: str,
    out_dir: Path | None = None,
    max_shard_bytes: int = 300_000_000,
    license: str = "apache-2.0",
    pretty_name: str | None = None,
) -> ExportResult:
    folder = out_dir or run_dir / "export"
    _prepare_folder(folder)
    sources = _committed_episodes(run_dir)
    schema = _episode_schema(sources)
    rows = _write_shards(sources, schema, folder / "data", max_shard_bytes)
    front = _front_matter(rows, license, pretty_name or _default_pretty_name(rows))
    card, redacted = redact(render_card(run_dir, repo_id, front, rows, schema), os.environ)
    if redacted:
        log.warning("removed the values of %s from the dataset card", ", ".join(redacted))
    (folder / "README.md").write_text(card)
    return ExportResult(folder, _list_files(folder), rows, redacted)


def upload_export(
    folder: Path, repo_id: str, private: bool = False, api: HubApi | None = None
) -> None:
    """Create the dataset repo if needed and upload `folder` in resumable commits.

    `upload_folder` of huggingface_hub >= 2 (with hf_xet) commits large folders in several
    batches and resumes when re-run; shards that a previous export left under `data/` are
    deleted so the `configs:` globs match only this export.
    """
    hub = api or _default_api()
    hub.create_repo(repo_id=repo_id, repo_type="dataset", private=private, exist_ok=True)
    hub.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type="dataset",
        delete_patterns=["data/*"],
        commit_message="Upload FSPO episodes with fspo-data",
    )


def _default_api() -> HubApi:
    from huggingface_hub import HfApi, get_token

    if get_token() is None:
        raise ExportError("no Hugging Face token: set HF_TOKEN (or run `hf auth login`)")
    return HfApi()


def _prepare_folder(folder: Path) -> None:
    """Empty the export's own outputs; refuse a folder holding anything else.

    `.cache/` is kept: huggingface_hub stores upload state there.
    """
    ours = {"data", "README.md", ".cache"}
    if folder.exists():
        foreign = sorted(p.name for p in folder.iterdir() if p.name not in ours)
        if foreign:
            raise ExportError(f"{folder} holds files this export did not write: {foreign}")
        shutil.rmtree(folder / "data", ignore_errors=True)
    (folder / "data").mkdir(parents=True, exist_ok=True)


def _committed_episodes(run_dir: Path) -> list[Path]:
    files = final_episode_files(run_dir)
    if not files:
        raise ExportError(f"{run_dir / 'episodes'}: no committed episodes; run the pipeline first")
    return files


def _episode_schema(sources: list[Path]) -> pa.Schema:
    schema = pq.read_schema(sources[0])
    require_columns("export", str(sources[0]), schema.empty_table(), Episode)
    for path in sources[1:]:
        if not pq.read_schema(path).equals(schema, check_metadata=False):
            raise ExportError(f"{path} has other columns than {sources[0]}: episodes of two runs?")
    return schema


def _write_shards(
    sources: list[Path], schema: pa.Schema, data_dir: Path, max_shard_bytes: int
) -> dict[str, dict[str, int]]:
    """Stream every episode file once, routing rows to one rolling writer per (domain, split)."""
    writers: dict[tuple[str, str], _ShardWriter] = {}
    for batch in _batches(sources):
        for key, rows in _partition(batch):
            if key not in writers:
                domain, split = key
                writers[key] = _ShardWriter(data_dir / domain, split, schema, max_shard_bytes)
            writers[key].add(rows)
    counts: dict[str, dict[str, int]] = {}
    for domain, split in sorted(writers, key=_config_split_order):
        counts.setdefault(domain, {})[split] = writers[domain, split].close()
    if not counts:
        raise ExportError("the episode files hold no rows")
    return counts


def _config_split_order(key: tuple[str, str]) -> tuple[str, int, str]:
    domain, split = key
    rank = SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER)
    return domain, rank, split


def _batches(sources: list[Path]) -> Iterator[pa.RecordBatch]:
    for path in sources:
        yield from pq.ParquetFile(path).iter_batches(batch_size=READ_BATCH_ROWS)


def _partition(batch: pa.RecordBatch) -> Iterator[tuple[tuple[str, str], pa.RecordBatch]]:
    table = pa.Table.from_batches([batch])
    keys = table.group_by(["domain", "split"]).aggregate([]).to_pylist()
    for key in keys:
        domain, split = key["domain"], key["split"]
        for name in (domain, split):
            if not _NAME.match(name or ""):
                raise ExportError(f"domain/split {name!r} is not a word (letters, digits, _)")
        mask = pc.and_(pc.equal(batch["domain"], domain), pc.equal(batch["split"], split))
        yield (domain, split), batch.filter(mask)


class _ShardWriter:
    """Writes one (domain, split) as Parquet files named `{split}-i-of-n` once n is known.

    A file is closed after the row group that takes it past `max_bytes`, so it overshoots by
    at most one row group (ROW_GROUP_BYTES of Arrow data, less once compressed).
    """

    def __init__(self, folder: Path, split: str, schema: pa.Schema, max_bytes: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.split, self.schema, self.max_bytes = folder, split, schema, max_bytes
        self.row_group_bytes = min(max_bytes, ROW_GROUP_BYTES)
        self.buffer: list[pa.RecordBatch] = []
        self.buffered_bytes = 0
        self.rows = 0
        self.parts: list[Path] = []
        self.sink: pa.NativeFile | None = None
        self.writer: pq.ParquetWriter | None = None

    def add(self, batch: pa.RecordBatch) -> None:
        self.buffer.append(batch)
        self.buffered_bytes += batch.nbytes
        self.rows += batch.num_rows
        if self.buffered_bytes >= self.row_group_bytes:
            self._flush()

    def close(self) -> int:
        """Finish the last file, give every file its `-of-` name; return the rows written."""
        self._flush()
        self._end_part()
        total = len(self.parts)
        for index, part in enumerate(self.parts):
            part.rename(self.folder / f"{self.split}-{index:05d}-of-{total:05d}.parquet")
        return self.rows

    def _flush(self) -> None:
        if not self.buffer:
            return
        table = pa.Table.from_batches(self.buffer, schema=self.schema)
        self.buffer, self.buffered_bytes = [], 0
        if self.writer is None:
            path = self.folder / f".{self.split}-{len(self.parts):05d}.partial"
            self.parts.append(path)
            self.sink = pa.OSFile(str(path), "wb")
            self.writer = pq.ParquetWriter(self.sink, self.schema)
        self.writer.write_table(table, row_group_size=table.num_rows)
        if self.sink is not None and self.sink.tell() >= self.max_bytes:
            self._end_part()

    def _end_part(self) -> None:
        if self.writer is not None and self.sink is not None:
            self.writer.close()
            self.sink.close()
        self.writer, self.sink = None, None


def _list_files(folder: Path) -> list[tuple[str, int]]:
    files = [p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts]
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in files)


def size_category(rows: int) -> str:
    """The Hub's `size_categories` label for a row count."""
    for bound, label in _SIZE_CATEGORIES:
        if rows < bound:
            return label
    return "n>1T"


def _default_pretty_name(rows: Mapping[str, Mapping[str, int]]) -> str:
    return f"FSPO synthetic preferences ({', '.join(rows)})"


def _front_matter(
    rows: Mapping[str, Mapping[str, int]], license: str, pretty_name: str
) -> dict[str, Any]:
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
        "pretty_name": pretty_name,
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
    run_dir: Path,
    repo_id: str,
    front_matter: dict[str, Any],
    rows: Mapping[str, Mapping[str, int]],
    schema: pa.Schema,
) -> str:
    """The dataset card, from the template and whatever the run recorded."""
    config_path = run_dir / "config.yaml"
    config = load_config(config_path) if config_path.is_file() else None
    manifests = _read_manifests(run_dir)
    has_rationale = any(name in schema.names for name in RATIONALE_COLUMNS)
    return Template(CARD_TEMPLATE.read_text()).substitute(
        front_matter=yaml.safe_dump(front_matter, sort_keys=False, allow_unicode=True),
        pretty_name=front_matter["pretty_name"],
        fspo_data_version=version("fspo-data"),
        repo_id=repo_id,
        default_config=next(iter(rows)),
        splits_table=_splits_table(rows),
        shots=_shots(config) if config else "not recorded",
        rationale_note=_RATIONALE_NOTE if has_rationale else "",
        provenance=_provenance(config, manifests),
        stages_table=_stages_table(manifests),
        summary=_summary(_read_json(run_dir / "summary.json")),
        diversity_table=_diversity_table(_read_json(run_dir / "report" / "diversity.json")),
        limitations=_limitations(config),
    )


_RATIONALE_NOTE = """
With rationalization (RAT), `rat_prompt` asks first for a description of the user, and
`rat_chosen`/`rat_rejected` are
`## User Description\\n{description}\\n## Preferred Response \\n{y}`;
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


def _read_json(path: Path) -> dict[str, Any] | None:
    # Raw JSON, not the pydantic models: their NaN figures are written as null and do not
    # validate back.
    return json.loads(path.read_text()) if path.is_file() else None


def _read_manifests(run_dir: Path) -> dict[str, Manifest]:
    """Stage name -> its manifest, in pipeline order, for the stages that committed any."""
    found = {stage.name: load_manifest(run_dir / stage.name) for stage in STAGES}
    return {name: manifest for name, manifest in found.items() if manifest is not None}


def _provenance(config: JobConfig | None, manifests: Mapping[str, Manifest]) -> str:
    if config is None:
        lines = ["- The run's config.yaml was not found: model and settings not recorded."]
    else:
        lines = [
            f"- Model: `{config.model.model}` (dtype {config.model.dtype}); it wrote the "
            "personas, questions, viewpoints and responses, and judged every pair in both orders.",
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


def _summary(summary: Mapping[str, Any] | None) -> str:
    """Per-stage work and the judge's statistics from summary.json."""
    if summary is None:
        return "not computed"
    lines = [
        "| stage | prompt tokens | completion tokens | dropped | retries | wall s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for stage in (StageSummary.model_validate(s) for s in summary["stages"]):
        c = stage.counters
        lines.append(
            f"| {stage.stage} | {c.get('prompt_tokens', 0)} | {c.get('completion_tokens', 0)} "
            f"| {stage.dropped} | {c.get('retries', 0)} | {stage.wall_seconds:.1f} |"
        )
    lines += [
        "",
        "Label consistency per domain (every pair judged in both orders):",
        "",
        _figures_table(summary.get("consistency", {})),
    ]
    lines += ["", f"Total wall time {summary['wall_seconds']:.1f} s."]
    return "\n".join(lines)


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
    if config is not None and config.model.model.startswith("embedded:"):
        items.append(
            "Generated by the embedded 135M-parameter SmolLM2 model: short, often generic "
            "responses and a weak judge. Demo-scale data, not a substitute for the paper's."
        )
    return "\n".join(f"- {item}" for item in items)
