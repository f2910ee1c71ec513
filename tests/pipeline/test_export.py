"""The Hub export on a hand-built run: what `datasets` and TRL read, the card, the upload calls."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from fspo_data.core.config import JobConfig
from fspo_data.core.config_files import dump_config
from fspo_data.core.fspo_format import format_completion, format_prompt
from fspo_data.core.model_config import ModelConfig
from fspo_data.core.records import Episode, Persona, Shot, Trait
from fspo_data.core.shards import load_manifest, save_manifest
from fspo_data.pipeline.consistency import Consistency
from fspo_data.pipeline.dataset_card import flatten, size_category
from fspo_data.pipeline.export import ExportError, export_run, upload_export, write_export
from fspo_data.pipeline.report import CandidateFigures, DiversityReport, Histogram, TextFigures
from fspo_data.pipeline.summary import RunSummary, StageSummary
from tests.conftest import write_stage

HF_SECRET = "hf_SECRETSECRET"
OPENAI_SECRET = "sk-LEAKLEAKLEAK"
# Two episode shards so rows of one (domain, split) come from both; counts are per split.
ROWS = {
    "roleplay": {"train": 7, "test_users": 3, "test_questions": 2},
    "review": {"train": 5, "test_users": 2, "test_questions": 4},
}
ROLEPLAY_CONSISTENCY = Consistency(
    pairs_judged=410,
    pairs_kept=388,
    kept_rate=388 / 410,
    flip_rate=0.12,
    drop_reasons={"order_flip": 5, "low_margin": 17},
    first_slot_win_rate=0.91,
    position_bias_nats=1.8734,
    label_entropy_before=0.64,
    label_entropy_after=0.13,
    users_refined=7,
    margin_histogram_counts=[0] * 12,
    difficulty={},
    flagged_users=[],
)
CONSISTENCY = {"roleplay": ROLEPLAY_CONSISTENCY, "overall": ROLEPLAY_CONSISTENCY}
JUDGE = {domain: c.model_dump() for domain, c in CONSISTENCY.items()}
JUDGE_STAGE = StageSummary(
    stage="judge",
    shards_planned=2,
    shards_committed=2,
    shards_run_now=2,
    rows=410,
    wall_seconds=8.5,
    counters={"prompt_tokens": 123456, "completion_tokens": 7890, "pairs_dropped_flip": 5},
)
RESPONSES = TextFigures(
    count=9,
    vendi=2.5,
    mean_cosine=0.8,
    mean_nn_cosine=0.9,
    near_duplicate_rate=0.1,
    near_duplicate_threshold=0.95,
    neighbour_sample_size=9,
    distinct_1=0.5,
    distinct_2=0.7,
)


def episode(domain: str, split: str, index: int) -> Episode:
    user = f"{domain}-user-{index % 3}"
    shots = [
        Shot(
            judgment_uuid=f"{user}-j{k}",
            question=f"Which {domain} pick suits a quiet weekend, case {k}?",
            chosen=f"A slow walk by the river and a short novel, option {k}, " * 3,
            rejected=f"A loud festival with a crowd of thousands, option {k}, " * 3,
        )
        for k in range(2)
    ]
    query = f"What should I cook tonight ({domain} {split} {index})?"
    chosen, rejected = "A warm lentil soup with bread.", "A twelve-course tasting menu."
    return Episode(
        episode_uuid=f"{domain}-{split}-{index:03d}",
        persona_uuid=user,
        domain=domain,
        split=split,
        persona_description=f"A calm person who likes simple things ({user}).",
        traits=[Trait(name="age", value="34"), Trait(name="continent", value="Europe")],
        shots=shots,
        query_judgment_uuid=f"{user}-q{index}",
        query_question_uuid=f"q{index}",
        query_question=query,
        query_chosen=chosen,
        query_rejected=rejected,
        confidence=0.25,
        prompt=format_prompt(shots, query),
        chosen=format_completion(chosen),
        rejected=format_completion(rejected),
    )


def persona(index: int) -> Persona:
    return Persona(
        persona_uuid=f"p{index}",
        domain="roleplay",
        index=index,
        traits=[],
        persona_description="A calm person.",
    )


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    episodes = [
        episode(domain, split, i)
        for domain, splits in ROWS.items()
        for split, count in splits.items()
        for i in range(count)
    ]
    write_stage(run, "personas", "roleplay-00000", [persona(i) for i in range(6)])
    for part in range(2):
        write_stage(run, "episodes", f"mixed-{part:05d}", episodes[part::2])
    manifest = load_manifest(run / "episodes")
    assert manifest is not None
    manifest.package_versions = {"vllm": "0.32.0", "fspo-data": "0.1.0"}
    manifest.prompt_hashes = {"judge": "a1b2c3d4e5f6"}
    save_manifest(run / "episodes", manifest)
    (run / "config.yaml").write_text(dump_config(JobConfig(run_dir=run)))
    summary = RunSummary(
        run_dir=str(run),
        config_fingerprint="test",
        wall_seconds=12.5,
        stages=[JUDGE_STAGE],
        consistency=CONSISTENCY,
    )
    (run / "summary.json").write_text(summary.model_dump_json())
    report = DiversityReport(
        run_dir=str(run),
        embedder="test-embedder",
        sample_size=10,
        seed=0,
        candidates=CandidateFigures(
            questions=3,
            mean_similarity=0.8123,
            histogram=Histogram(edges=[0.0, 1.0], counts=[3]),
            responses=RESPONSES,
        ),
        timings_s={"embed": 1.5},
    )
    (run / "report").mkdir()
    (run / "report" / "diversity.json").write_text(report.model_dump_json())
    return run


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", HF_SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_SECRET)


@pytest.fixture
def datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Keeps `load_dataset` calls argument-free while its cache stays out of the home folder.
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")


class RecordingApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def create_repo(self, **kwargs: Any) -> None:
        self.calls.append(("create_repo", kwargs))

    def upload_folder(self, **kwargs: Any) -> None:
        self.calls.append(("upload_folder", kwargs))


def split_card(card: str) -> tuple[dict[str, Any], str]:
    _, front, body = card.split("---\n", 2)
    return yaml.safe_load(front), body


def table_figures(body: str, heading: str) -> dict[str, str]:
    section = body.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([^`]+)` \| (.*) \|$", section, flags=re.M))


@pytest.mark.usefixtures("datasets_cache")
def test_datasets_loads_every_config_and_split(run_dir: Path) -> None:
    import datasets

    result = write_export(run_dir, "org/fspo-demo", max_shard_bytes=4_000)
    assert result.rows == ROWS
    shards = sorted(p.name for p in (result.folder / "data" / "roleplay").iterdir())
    train = [name for name in shards if name.startswith("train-")]
    assert len(train) > 1, "a small max_shard_bytes must cut several shards"
    assert train == [f"train-{i:05d}-of-{len(train):05d}.parquet" for i in range(len(train))]
    parts = sorted((run_dir / "episodes").glob("mixed-*.parquet"))
    sources = [row for part in parts for row in pq.read_table(part).to_pylist()]
    for domain, splits in ROWS.items():
        loaded = datasets.load_dataset(str(result.folder), domain)
        assert {name: len(split) for name, split in loaded.items()} == splits
        # Rows keep the order of the episode files.
        assert list(loaded["train"]["episode_uuid"]) == [
            r["episode_uuid"] for r in sources if (r["domain"], r["split"]) == (domain, "train")
        ]
    default = datasets.load_dataset(str(result.folder))
    assert default["train"][0]["domain"] == "review"


def test_card_front_matter_and_figures(run_dir: Path) -> None:
    result = write_export(run_dir, "org/fspo-demo")
    front, body = split_card((result.folder / "README.md").read_text())
    assert front["size_categories"] == ["n<1K"]
    assert front["license"] and front["task_categories"] and front["pretty_name"]
    configs = {c["config_name"]: c for c in front["configs"]}
    assert [c["config_name"] for c in front["configs"]] == ["review", "roleplay"]
    assert front["configs"][0]["default"] is True and "default" not in configs["roleplay"]
    assert configs["roleplay"]["data_files"] == [
        {"split": split, "path": f"data/roleplay/{split}-*.parquet"} for split in ROWS["roleplay"]
    ]
    judge = table_figures(body, "Run summary")
    assert judge.keys() == {key for key, _ in flatten(JUDGE)}
    for key, value in flatten(JUDGE):
        assert float(judge[key]) == pytest.approx(value, rel=1e-3), key
    assert "| judge | 123456 | 7890 | 5 | 0 | 8.5 |" in body
    assert "Total wall time 12.5 s." in body
    diversity = table_figures(body, "Diversity")
    assert float(diversity["candidates.mean_similarity"]) == pytest.approx(0.8123)
    for key, value in RESPONSES.model_dump().items():
        assert float(diversity[f"candidates.responses.{key}"]) == pytest.approx(value, rel=1e-3)
    assert not {"run_dir", "timings_s.embed", "candidates.histogram.edges"} & diversity.keys()
    assert str(run_dir) not in body, "local paths say nothing about the data"
    assert "| personas | 1 | 6 |" in body and "| episodes | 2 | 23 |" in body
    assert "`judge` a1b2c3d4e5f6" in body and "vllm 0.32.0" in body
    assert "| roleplay | test_users | 3 |" in body and "N = roleplay 8" in body


def test_card_shows_unmeasured_figures_as_na(run_dir: Path) -> None:
    summary = RunSummary(
        run_dir=str(run_dir),
        config_fingerprint="t",
        wall_seconds=1.0,
        stages=[],
        consistency={
            "overall": ROLEPLAY_CONSISTENCY.model_copy(update={"position_bias_nats": None})
        },
    )
    (run_dir / "summary.json").write_text(summary.model_dump_json())
    _, body = split_card((write_export(run_dir, "org/x").folder / "README.md").read_text())
    assert table_figures(body, "Run summary")["overall.position_bias_nats"] == "n/a"


def test_card_says_not_computed_without_run_jsons(run_dir: Path) -> None:
    (run_dir / "summary.json").unlink()
    (run_dir / "report" / "diversity.json").unlink()
    _, body = split_card((write_export(run_dir, "org/x").folder / "README.md").read_text())
    assert table_figures(body, "Run summary") == {}
    assert body.count("not computed") == 3  # verdicts, run summary, diversity


def test_no_secret_reaches_a_written_file(run_dir: Path) -> None:
    leaky = JobConfig(run_dir=run_dir, model=ModelConfig(model=f"/models/{OPENAI_SECRET}/llama"))
    (run_dir / "config.yaml").write_text(dump_config(leaky))
    result = write_export(run_dir, "org/fspo-demo")
    assert result.redacted == ["OPENAI_API_KEY"]
    for path in result.folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert HF_SECRET.encode() not in data and OPENAI_SECRET.encode() not in data, path


def test_dry_run_touches_no_hub(run_dir: Path) -> None:
    api = RecordingApi()
    result = export_run(run_dir, "org/fspo-demo", dry_run=True, api=api)
    assert api.calls == [] and not result.uploaded
    listing = result.listing()
    assert "README.md" in listing and "data/review/test_questions-00000-of-00001.parquet" in listing


def test_upload_creates_dataset_repo_and_uploads_the_folder(run_dir: Path) -> None:
    api = RecordingApi()
    result = export_run(run_dir, "org/fspo-demo", private=True, api=api)
    assert result.uploaded
    (create, create_kwargs), (upload, upload_kwargs) = api.calls
    assert create == "create_repo" and upload == "upload_folder"
    assert create_kwargs == {
        "repo_id": "org/fspo-demo",
        "repo_type": "dataset",
        "private": True,
        "exist_ok": True,
    }
    assert upload_kwargs["repo_id"] == "org/fspo-demo"
    assert upload_kwargs["repo_type"] == "dataset"
    assert Path(upload_kwargs["folder_path"]) == run_dir / "export"


def test_upload_without_token_fails_before_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ExportError, match="HF_TOKEN"):
        upload_export(tmp_path, "org/fspo-demo")


def test_reexport_replaces_old_shards_and_refuses_foreign_files(run_dir: Path) -> None:
    folder = write_export(run_dir, "org/x", max_shard_bytes=4_000).folder
    write_export(run_dir, "org/x")
    assert sorted(p.name for p in (folder / "data" / "review").iterdir()) == [
        "test_questions-00000-of-00001.parquet",
        "test_users-00000-of-00001.parquet",
        "train-00000-of-00001.parquet",
    ]
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="notes.txt"):
        write_export(run_dir, "org/x")


def test_only_committed_episode_shards_are_exported(run_dir: Path) -> None:
    stray = run_dir / "episodes" / "killed-00000.parquet"
    stray.write_bytes((run_dir / "episodes" / "mixed-00000.parquet").read_bytes())
    assert write_export(run_dir, "org/x").rows == ROWS
    (run_dir / "episodes" / "manifest.json").unlink()
    with pytest.raises(ExportError, match="no committed episodes"):
        write_export(run_dir, "org/x")


def add_rationale(path: Path) -> None:
    table = pq.read_table(path)
    for name in ("rationale", "rat_prompt", "rat_chosen", "rat_rejected"):
        table = table.append_column(name, pa.array([f"{name} text"] * table.num_rows))
    pq.write_table(table, path)


def test_later_columns_are_kept_and_documented(run_dir: Path) -> None:
    for part in (run_dir / "episodes").glob("mixed-*.parquet"):
        add_rationale(part)
    result = write_export(run_dir, "org/x")
    shard = result.folder / "data" / "roleplay" / "train-00000-of-00001.parquet"
    assert pq.read_table(shard)["rat_prompt"][0].as_py() == "rat_prompt text"
    assert "`rat_prompt` asks first" in (result.folder / "README.md").read_text()


def test_episode_files_of_two_versions_are_refused(run_dir: Path) -> None:
    add_rationale(run_dir / "episodes" / "mixed-00001.parquet")
    with pytest.raises(ExportError, match="mixed-00001.parquet has other columns"):
        write_export(run_dir, "org/x")


@pytest.mark.parametrize(
    ("rows", "label"), [(0, "n<1K"), (999, "n<1K"), (1_000, "1K<n<10K"), (2_500_000, "1M<n<10M")]
)
def test_size_category(rows: int, label: str) -> None:
    assert size_category(rows) == label


@pytest.mark.slow
@pytest.mark.usefixtures("datasets_cache")
def test_trl_dpo_trainer_takes_the_train_split_as_is(run_dir: Path, tmp_path: Path) -> None:
    import copy

    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    transformers = pytest.importorskip("transformers")
    from fspo_data.backends.embedded import ensure_embedded_model

    folder = write_export(run_dir, "org/fspo-demo").folder
    train = datasets.load_dataset(str(folder), "roleplay", split="train")
    tokenizer = transformers.AutoTokenizer.from_pretrained(ensure_embedded_model())
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = transformers.LlamaForCausalLM(config)
    args = trl.DPOConfig(
        output_dir=str(tmp_path / "dpo"),
        loss_type=["ipo"],
        beta=0.01,
        use_cpu=True,
        max_steps=1,
        per_device_train_batch_size=2,
        max_length=384,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
    )
    trainer = trl.DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
    )
    assert len(trainer.train_dataset) == ROWS["roleplay"]["train"], "no row may be dropped"
    output = trainer.train()
    # Policy == reference at step 1, so h = 0 and the IPO loss is (0 - 1 / (2 * beta))^2.
    assert output.training_loss == pytest.approx((1 / (2 * 0.01)) ** 2, rel=1e-3)
