"""The run summary: counts, tokens, drops and throughput per stage, and judge statistics.

Figures come from the per-shard counters stored in the manifests, so a resumed run's
summary covers all of its shards, not only those computed in the last attempt.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table

from fspo_data.core import storage
from fspo_data.core.config import JudgeConfig
from fspo_data.core.model_config import ModelConfig
from fspo_data.core.roles_config import ModelRoster
from fspo_data.core.shards import (
    Manifest,
    atomic_write_bytes,
    committed_entries,
    scan_committed,
)
from fspo_data.core.storage import Location
from fspo_data.pipeline.consistency import Consistency, consistency_by_domain
from fspo_data.pipeline.cost import RunDollars, counter_dollars, model_counters, shard_dollars, usd
from fspo_data.pipeline.gold import LEGEND as GOLD_LEGEND
from fspo_data.pipeline.gold import GoldFigures
from fspo_data.pipeline.verdicts import RICH_STYLES, Check


class StageSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: str
    shards_planned: int
    shards_committed: int
    shards_run_now: int
    rows: int
    wall_seconds: float
    counters: dict[str, int] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    dollars: float | None = Field(
        default=None, description="Its counters at `model.prices` (pipeline.cost); null: none."
    )

    @classmethod
    def from_manifest(
        cls,
        stage: str,
        manifest: Manifest,
        planned: int,
        ran: int,
        seconds: float,
        notes: list[str],
        models: Mapping[str, ModelConfig],
    ) -> StageSummary:
        totals: Counter[str] = Counter()
        for entry in manifest.shards.values():
            totals.update(entry.counters)
        return cls(
            stage=stage,
            shards_planned=planned,
            shards_committed=len(manifest.shards),
            shards_run_now=ran,
            rows=manifest.rows,
            wall_seconds=seconds,
            counters=dict(totals),
            notes=notes,
            dollars=shard_dollars(models, totals),
        )

    @property
    def dropped(self) -> int:
        return sum(v for k, v in self.counters.items() if "dropped" in k or k.endswith("_failed"))

    @property
    def rows_per_second(self) -> float | None:
        """Rows per wall second; None unless every committed shard ran in this attempt (the
        rows of a resumed stage were not all made in its wall time)."""
        if not self.shards_run_now or self.shards_run_now != self.shards_committed:
            return None
        return self.rows / self.wall_seconds if self.wall_seconds else None

    @property
    def cached_fraction(self) -> float | None:
        """Share of the stage's prompt tokens the engine served from its prefix cache (vLLM's
        counts); None without prompt tokens. `fspo-data plan` estimates the same figure."""
        prompt = self.counters.get("prompt_tokens", 0)
        return self.counters.get("cached_prompt_tokens", 0) / prompt if prompt else None

    @property
    def engine_seconds(self) -> float:
        """Time inside the model backend, summed over the shards (`engine_ms` counters);
        engine replicas run side by side, so divide by them to compare with wall time."""
        return self.counters.get("engine_ms", 0) / 1000


class ModelSummary(BaseModel):
    """One model's work over every committed shard of the run (its `model/<name>/...` counters)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="Its name under `models:` (one `model:`: its served name).")
    roles: list[str] = Field(description="The roles it serves in the config.")
    requests: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    engine_seconds: float = Field(
        default=0.0, description="Time in its backend, summed over shards (replicas overlap)."
    )
    dollars: float | None = Field(
        default=None, description="Its counters at its own `prices`; null: none given."
    )

    @property
    def gen_tokens_per_engine_second(self) -> float | None:
        """Generated tokens per second of engine time; None before any engine time."""
        return self.completion_tokens / self.engine_seconds if self.engine_seconds else None


def model_summaries(roster: ModelRoster, stages: list[StageSummary]) -> list[ModelSummary]:
    """Each model's calls, tokens, retries, engine time and dollars, summed over the stages'
    counters; every model of the roster, in its order, then any other model that wrote (a
    shard committed under an earlier config)."""
    totals: dict[str, Counter[str]] = {name: Counter() for name in roster.models}
    for stage in stages:
        for name, counts in model_counters(roster.models, stage.counters).items():
            totals.setdefault(name, Counter()).update(counts)
    out = []
    for name, c in totals.items():
        model = roster.models.get(name)
        out.append(
            ModelSummary(
                model=name,
                roles=roster.roles_of(name),
                requests=c["requests"],
                prompt_tokens=c["prompt_tokens"],
                cached_prompt_tokens=c["cached_prompt_tokens"],
                completion_tokens=c["completion_tokens"],
                retries=c["retries"],
                engine_seconds=c["engine_ms"] / 1000,
                dollars=None if model is None else counter_dollars(model.prices, c),
            )
        )
    return out


class RunSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run_dir: str
    config_fingerprint: str
    wall_seconds: float
    stages: list[StageSummary]
    consistency: dict[str, Consistency] = Field(
        default_factory=dict, description="Label statistics per domain, and 'overall'."
    )
    diversity: dict[str, float | None] = Field(
        default_factory=dict, description="Headline figures of the diversity report."
    )
    gold: dict[str, GoldFigures] = Field(
        default_factory=dict, description="Gold accuracy of the judge per domain, and 'overall'."
    )
    verdicts: list[Check] = Field(
        default_factory=list,
        description="One line per check, in order (`pipeline.verdicts`); the summary ends with "
        "them, the report opens with them.",
    )
    dollars: RunDollars | None = Field(
        default=None, description="Total and per kept label at `model.prices`; null: none."
    )
    models: list[ModelSummary] = Field(
        default_factory=list, description="Each model's work (`model_summaries`)."
    )
    candidate_similarity_by_model: dict[str, float | None] = Field(
        default_factory=dict,
        description="The diversity report's candidate similarity among each model's own "
        "candidates (`diversity.candidate_similarity` is the ensemble's: all pairs); null: "
        "the model never wrote two candidates for one question.",
    )


def write_summary(run_dir: Location, summary: RunSummary) -> None:
    path = storage.location(run_dir) / "summary.json"
    atomic_write_bytes(path, summary.model_dump_json(indent=1).encode())


def summarize_judgments(run_dir: Location, settings: JudgeConfig) -> dict[str, Consistency]:
    """Label statistics from a streaming scan of the committed judge shards (no texts read)."""
    entries = committed_entries(run_dir, "judge")
    if not any(entry.rows for entry in entries.values()):
        return {}
    no_verdict: Counter[str] = Counter()
    for name, entry in entries.items():
        no_verdict[name.rsplit("-", 1)[0]] += entry.counters.get("pairs_dropped_no_verdict", 0)
    return consistency_by_domain(scan_committed(run_dir, "judge"), dict(no_verdict), settings)


def render(summary: RunSummary, console: Console | None = None) -> None:
    # A pipe gets 80 columns by default, too narrow for the table in a CI log.
    console = console or Console(width=max(Console().width, 144))
    table = Table(title=f"fspo-data run: {summary.run_dir}")
    for column in (
        "stage",
        "shards",
        "rows",
        "prompt tok",
        "gen tok",
        "cached tok",
        "cached",
        "dropped",
        "retries",
        "wall s",
        "engine s",
        "rows/s",
        "gen tok/s",
        "$",
    ):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for s in summary.stages:
        c = s.counters
        rate = c.get("completion_tokens", 0) / s.wall_seconds if s.shards_run_now else 0.0
        table.add_row(
            s.stage,
            f"{s.shards_committed}/{s.shards_planned}",
            str(s.rows),
            str(c.get("prompt_tokens", 0)),
            str(c.get("completion_tokens", 0)),
            str(c.get("cached_prompt_tokens", 0)),
            "-" if s.cached_fraction is None else f"{s.cached_fraction:.0%}",
            str(s.dropped),
            str(c.get("retries", 0)),
            f"{s.wall_seconds:.1f}",
            f"{s.engine_seconds:.1f}",
            f"{s.rows_per_second:.0f}" if s.rows_per_second else "-",
            f"{rate:.1f}" if rate else "-",
            usd(s.dollars),
        )
    console.print(table)
    render_models(summary.models, console)
    if summary.dollars is not None:
        console.print(summary.dollars.describe())
    render_consistency(summary.consistency, console)
    render_gold(summary.gold, console)
    if summary.diversity:
        figures = ", ".join(f"{k} {_fmt(v, '.3f')}" for k, v in summary.diversity.items())
        by_model = summary.candidate_similarity_by_model
        if by_model:
            each = ", ".join(f"{name} {_fmt(v, '.3f')}" for name, v in by_model.items())
            figures += f", candidate_similarity_by_model {each}"
        console.print(f"diversity: {figures}")
    for s in summary.stages:
        for note in s.notes:
            console.print(f"[yellow]resume:[/] {note}")
    console.print(f"wall time {summary.wall_seconds:.1f} s")
    render_verdicts(summary.verdicts, console)


def render_models(models: list[ModelSummary], console: Console) -> None:
    """The per-model table: what each model did, whichever stages it served."""
    if not models:
        return
    table = Table(title="per model")
    columns = ("model", "roles", "calls", "prompt tok", "cached tok", "gen tok", "retries",
               "engine s", "gen tok/engine s", "$")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "roles") else "right")
    for m in models:
        rate = m.gen_tokens_per_engine_second
        table.add_row(
            m.model,
            ", ".join(m.roles) or "-",
            str(m.requests),
            str(m.prompt_tokens),
            str(m.cached_prompt_tokens),
            str(m.completion_tokens),
            str(m.retries),
            f"{m.engine_seconds:.1f}",
            "-" if rate is None else f"{rate:.1f}",
            usd(m.dollars),
        )
    console.print(table)


def render_verdicts(checks: list[Check], console: Console) -> None:
    """One line per check, coloured by its status, never wrapped (CI logs are grepped)."""
    for check in checks:
        style = RICH_STYLES[check.status]
        console.print(check.line(), style=style, markup=False, highlight=False, soft_wrap=True)


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def render_gold(gold: dict[str, GoldFigures], console: Console) -> None:
    if not gold:
        return
    console.print(f"gold accuracy ({GOLD_LEGEND}):")
    width = max(len(domain) for domain in gold)
    for domain, figures in gold.items():
        console.print(f"  {domain:<{width}}  {figures.describe()}")


def render_consistency(stats: dict[str, Consistency], console: Console) -> None:
    if not stats:
        return
    table = Table(title="label consistency (both orders; entropy in nats, paper 0.64 -> 0.13)")
    for column in (
        "domain",
        "judged",
        "kept",
        "flip rate",
        "slot A wins",
        "bias nats",
        "entropy before",
        "entropy after",
        "refined users",
        "easy/hard kept",
        "flagged users",
    ):
        table.add_column(column, justify="left" if column == "domain" else "right")
    for domain, c in stats.items():
        easy_hard = "/".join(str(c.difficulty.get(k, {}).get("kept", 0)) for k in ("easy", "hard"))
        table.add_row(
            domain,
            str(c.pairs_judged),
            f"{c.pairs_kept} ({_fmt(c.kept_rate, '.0%')})",
            _fmt(c.flip_rate, ".1%"),
            _fmt(c.first_slot_win_rate, ".1%"),
            _fmt(c.position_bias_nats, "+.2f"),
            _fmt(c.label_entropy_before, ".3f"),
            _fmt(c.label_entropy_after, ".3f"),
            str(c.users_refined),
            easy_hard if c.difficulty else "-",
            str(len(c.flagged_users)),
        )
    console.print(table)
