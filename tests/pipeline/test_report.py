import json
import math
import zlib
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow.parquet as pq
import pytest

from fspo_data.core.config import JudgeConfig
from fspo_data.core.records import Judgment, Persona, Question, Record, Response, to_table
from fspo_data.domains import load_domain
from fspo_data.personas.taxonomy import load_taxonomy, sample_traits
from fspo_data.pipeline.report import ReportResult, build_report, headline_figures
from tests.conftest import write_stage

R = TypeVar("R", bound=Record)
FLAGS = JudgeConfig()  # the job config's defaults: agreement above 0.95 on at least 5 pairs
_EMPTY: dict[object, object] = {str: "", int: 0, float: 0.0, bool: False}


def make(record_type: type[R], **fields: object) -> R:
    """A record with `fields` set and every other field empty: the report reads few columns."""
    rest = {
        name: _EMPTY.get(field.annotation, [])
        for name, field in record_type.model_fields.items()
        if name not in fields
    }
    return record_type(**fields, **rest)


class HashEmbedder:
    """Bag of words hashed into 64 buckets: deterministic, instant, and alike texts are close."""

    name = "hash-bow-64"

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                vectors[row, zlib.crc32(word.encode()) % 64] += 1.0
        vectors[vectors.sum(axis=1) == 0, 0] = 1.0
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


DESCRIPTIONS = [
    "a retired farmer who loves gardening",
    "a retired farmer who loves gardening",
    "a student of physics fond of video games",
    "a chef who travels for street food",
]
N_QUESTIONS = 10


def personas() -> list[Persona]:
    taxonomy = load_taxonomy(load_domain("roleplay"))
    return [
        make(
            Persona,
            persona_uuid=f"p{i}",
            domain="roleplay",
            traits=sample_traits(taxonomy, seed=0, index=i),
            persona_description=text,
        )
        for i, text in enumerate(DESCRIPTIONS)
    ]


def questions() -> list[Question]:
    return [
        make(
            Question, question_uuid=f"q{i}", domain="roleplay", question=f"question {i} on {i * 7}"
        )
        for i in range(N_QUESTIONS)
    ]


def responses() -> list[Response]:
    texts = {0: ["same answer", "same answer"]}  # question 0's candidates are identical
    return [
        make(
            Response,
            response_uuid=f"q{q}r{r}",
            question_uuid=f"q{q}",
            domain="roleplay",
            response=texts.get(q, [f"cheap plan {q}", f"lavish plan {q}"])[r],
        )
        for q in range(N_QUESTIONS)
        for r in range(2)
    ]


def judgment(user: str, q: int, chosen_r: int, kept: bool = True, swap: bool = False) -> Judgment:
    x, y = (f"q{q}r1", f"q{q}r0") if swap else (f"q{q}r0", f"q{q}r1")
    return make(
        Judgment,
        judgment_uuid=f"{user}-{q}",
        persona_uuid=user,
        question_uuid=f"q{q}",
        domain="roleplay",
        response_x_uuid=x,
        response_y_uuid=y,
        kept=kept,
        chosen_uuid=f"q{q}r{chosen_r}",
        rejected_uuid=f"q{q}r{1 - chosen_r}",
    )


def judgments() -> list[Judgment]:
    # u0 and u1 choose r0 on all ten pairs (u1 sees them in the other order); u2 differs on
    # question 9 only; a dropped judgment must count for nothing.
    out = [judgment("u0", q, 0) for q in range(N_QUESTIONS)]
    out += [judgment("u1", q, 0, swap=True) for q in range(N_QUESTIONS)]
    out += [judgment("u2", q, 1 if q == 9 else 0) for q in range(N_QUESTIONS)]
    return out + [judgment("u3", 9, 1, kept=False)]


# The judge writes all of a user's judgments into one shard.
USERS_IN_FIRST_JUDGE_SHARD = 2


def write_parts(run_dir: Path, stage: str, records: list[Record], half: int | None = None) -> None:
    (run_dir / stage).mkdir(parents=True)
    half = len(records) // 2 if half is None else half  # two shards, read together
    for i, part in enumerate((records[:half], records[half:])):
        table = to_table(part, type(records[0]))
        pq.write_table(table, run_dir / stage / f"part-{i:05d}.parquet")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> ReportResult:
    """A run with every stage, reported once for the module (plotting takes about a second)."""
    run_dir = tmp_path_factory.mktemp("run")
    write_parts(run_dir, "personas", personas())
    write_parts(run_dir, "questions", questions())
    write_parts(run_dir, "responses", responses())
    write_parts(run_dir, "judge", judgments(), half=USERS_IN_FIRST_JUDGE_SHARD * N_QUESTIONS)
    return build_report(
        run_dir, embedder=HashEmbedder(), sample_size=100, seed=0, flag_settings=FLAGS
    )


def test_report_figures_on_a_tiny_run(full_run: ReportResult) -> None:
    report = full_run.report
    assert report.notes == []
    assert report.personas.count == 4
    # Two of four personas are identical, the others share at most a word or two.
    assert report.personas.near_duplicate_rate == pytest.approx(0.5)
    assert report.personas.neighbour_sample_size == 4
    vectors = HashEmbedder().embed(DESCRIPTIONS)
    sims = vectors @ vectors.T
    assert report.personas.mean_cosine == pytest.approx(sims[~np.eye(4, dtype=bool)].mean())

    taxonomy = load_taxonomy(load_domain("roleplay"))
    assert [t.attribute for t in report.traits] == list(taxonomy.attributes)
    ages = [t.value for p in personas() for t in p.traits if t.name == "age_band"]
    age = report.traits[0]
    assert age.values_seen == len(set(ages)) and age.values_total == 6
    assert age.off_taxonomy == 0

    # Question 0's candidates are identical (1.0); the others share no word.
    candidates = HashEmbedder().embed([r.response for r in responses()])
    per_question = [float(candidates[2 * q] @ candidates[2 * q + 1]) for q in range(N_QUESTIONS)]
    assert report.candidates.questions == N_QUESTIONS
    assert report.candidates.mean_similarity == pytest.approx(np.mean(per_question))
    assert per_question[0] == pytest.approx(1.0)

    j = report.judgments
    assert (j.judgments, j.kept, j.users, j.users_sampled) == (31, 30, 3, 3)
    assert j.shared_items == N_QUESTIONS
    # Agreement: u0-u1 10/10, u0-u2 and u1-u2 9/10; off-diagonal mean of the 6 cells.
    assert j.mean_agreement == pytest.approx((1.0 + 0.9 + 0.9) / 3)
    assert j.near_duplicate_labellers == ["u0", "u1"]
    # Nine pairs all agree (entropy 0); question 9 splits 2 to 1.
    h_third = -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))
    assert j.multi_labelled_pairs == N_QUESTIONS
    assert j.cross_user_label_entropy == pytest.approx(h_third / N_QUESTIONS)


def test_report_writes_json_and_self_contained_html(full_run: ReportResult) -> None:
    assert full_run.json_path == Path(full_run.report.run_dir) / "report" / "diversity.json"
    figures = json.loads(full_run.json_path.read_text())
    assert figures["embedder"] == "hash-bow-64"
    assert figures["personas"]["vendi"] == pytest.approx(full_run.report.personas.vendi)
    assert {"read", "embed.personas", "judgments.agreement"} <= set(figures["timings_s"])
    page = full_run.html_path.read_text()
    assert page.count('src="data:image/png;base64,') == 5
    assert page.count("How to read this.") == 7  # questions and per-model similarity: tables only
    assert "http" not in page  # nothing fetched from elsewhere


def test_headline_figures(full_run: ReportResult) -> None:
    headline = headline_figures(full_run)
    assert headline["persona_near_duplicate_rate"] == pytest.approx(0.5)
    assert headline["near_duplicate_labellers"] == 2.0
    assert headline["persona_vendi"] == full_run.report.personas.vendi
    assert headline["mean_agreement"] == full_run.report.judgments.mean_agreement
    assert 4 <= len(headline) <= 7


def test_missing_stages_are_skipped_and_no_embedder_is_loaded(tmp_path: Path) -> None:
    write_parts(tmp_path, "judge", judgments(), half=USERS_IN_FIRST_JUDGE_SHARD * N_QUESTIONS)
    result = build_report(
        tmp_path, flag_settings=FLAGS
    )  # no text stage, so the default embedder is never built
    assert result.report.embedder == ""
    assert result.report.personas is None and result.report.candidates is None
    assert len(result.report.notes) == 3
    headline = headline_figures(result)
    assert math.isnan(headline["persona_vendi"])
    assert headline["cross_user_label_entropy"] > 0
    assert result.html_path.exists()


def test_a_judge_stage_with_nothing_kept_is_skipped(tmp_path: Path) -> None:
    write_parts(tmp_path, "judge", [j.model_copy(update={"kept": False}) for j in judgments()])
    report = build_report(tmp_path, flag_settings=FLAGS).report
    assert report.judgments is None
    assert "judge: no kept judgments; agreement and label entropy skipped" in report.notes


def test_only_shards_the_manifest_lists_are_read(tmp_path: Path) -> None:
    write_stage(tmp_path, "personas", "roleplay-00000", personas()[:3])
    stray = to_table(personas()[3:], Persona)
    pq.write_table(stray, tmp_path / "personas" / "roleplay-00001.parquet")  # not committed
    result = build_report(tmp_path, embedder=HashEmbedder(), flag_settings=FLAGS)
    assert result.report.personas.count == 3


@pytest.mark.slow
def test_report_with_the_real_minilm_embedder(tmp_path: Path) -> None:
    from fspo_data.personas.embeddings import make_embedder

    embedder = make_embedder("minilm")
    assert embedder.embed([]).shape == (0, 384)
    write_parts(tmp_path, "personas", personas())
    report = build_report(tmp_path, embedder=embedder, flag_settings=FLAGS).report
    assert report.embedder == "all-MiniLM-L6-v2"
    # The two identical descriptions are near-duplicates; the other two are not.
    assert report.personas.near_duplicate_rate == pytest.approx(0.5)
    assert 1.5 < report.personas.vendi < 4.0


@pytest.mark.slow
def test_run_command_prints_the_headline_diversity_figures(tmp_path: Path) -> None:
    """`fspo-data run` on the instant backend, with the report on as by default: the summary
    table ends with the report's headline figures, also stored in summary.json."""
    from tests.reliability.conftest import instant_config, kill_session, start_job, write_config

    config = instant_config(tmp_path / "run", report={"after_run": True})
    job = start_job(["run", str(write_config(tmp_path / "job.yaml", config))])
    try:
        out, err = job.communicate(timeout=300)
    finally:
        kill_session(job)  # Ray's agents outlive the driver
    assert job.returncode == 0, err
    assert "diversity: persona_vendi" in out
    # The summary ends with one verdict line per check, as stored in summary.json.
    verdicts = json.loads((config.run_dir / "summary.json").read_text())["verdicts"]
    ending = out.rstrip("\n").splitlines()[-len(verdicts) :]
    assert [line.split(":")[0].split()[1] for line in ending[:2]] == ["personalization", "gold"]
    assert len(verdicts) == 6 and verdicts[0]["value"] is not None  # the report's agreement
    stored = json.loads((config.run_dir / "summary.json").read_text())["diversity"]
    assert stored["persona_vendi"] > 1.0
    assert 0.0 <= stored["candidate_similarity"] <= 1.0
    assert (config.run_dir / "report" / "diversity.html").exists()
