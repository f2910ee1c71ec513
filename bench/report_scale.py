"""Time the diversity report at scale: 100k synthetic personas (1M with --million).

Writes a synthetic run (personas with taxonomy traits and templated descriptions, questions,
candidate responses, judgments) as Parquet, then runs `build_report` with an embedder that
looks up precomputed random 384-d vectors, and prints the report's own per-metric timings.
Embedding is set aside: on a real run it depends on the model and the device.

    python bench/report_scale.py                 # 100k personas
    python bench/report_scale.py --million       # 1M personas
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fspo_data.core.config import JudgeConfig
from fspo_data.core.records import Judgment, Persona, Question, Response
from fspo_data.domains import load_domain
from fspo_data.personas.taxonomy import load_taxonomy
from fspo_data.pipeline.report import build_report, headline_figures

DIM = 384
SHARDS = 16
CANDIDATES = 4
PAIRS_PER_QUESTION = CANDIDATES * (CANDIDATES - 1) // 2


class PrecomputedEmbedder:
    """Returns the vector stored for each text; stands in for a model at no cost."""

    name = "precomputed-random-384"

    def __init__(self) -> None:
        self.rows: dict[str, np.ndarray] = {}

    def add(self, texts: list[str], vectors: np.ndarray) -> None:
        self.rows.update(zip(texts, vectors, strict=True))

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.rows[t] for t in texts])


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write(
    run_dir: Path, stage: str, columns: dict[str, list | np.ndarray], schema: pa.Schema
) -> None:
    n = len(next(iter(columns.values())))
    # Columns the report does not read are left null, so new record fields need no edit here.
    arrays = {f.name: columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in schema}
    table = pa.table(arrays, schema=schema)
    (run_dir / stage).mkdir(parents=True)
    step = -(-table.num_rows // SHARDS)
    for i in range(SHARDS):
        pq.write_table(table.slice(i * step, step), run_dir / stage / f"roleplay-{i:05d}.parquet")


def personas(
    run_dir: Path, n: int, rng: np.random.Generator, embedder: PrecomputedEmbedder
) -> None:
    taxonomy = load_taxonomy(load_domain("roleplay"))
    picks = {
        name: np.array(list(w))[rng.choice(len(w), size=n, p=list(w.values()))]
        for name, w in taxonomy.attributes.items()
    }
    # Trait values plus Zipf-distributed filler words, so distinct-n sees a natural vocabulary.
    filler = np.array([f"w{i}" for i in range(5000)])[rng.zipf(1.3, size=(n, 25)) % 5000]
    texts = [
        ", ".join(picks[a][i] for a in picks) + "; " + " ".join(filler[i]) + f" #{i}"
        for i in range(n)
    ]
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    copies = rng.choice(n, size=n // 50, replace=False)  # 2% near-copies of another persona
    vectors[copies] = vectors[rng.choice(n, size=len(copies))] + 0.1 * vectors[copies]
    embedder.add(texts, unit(vectors))
    columns = {
        "persona_uuid": [f"p{i}" for i in range(n)],
        "domain": ["roleplay"] * n,
        "traits": [[{"name": a, "value": picks[a][i]} for a in picks] for i in range(n)],
        "persona_description": texts,
    }
    write(run_dir, "personas", columns, Persona.arrow_schema())


def questions_and_responses(
    run_dir: Path, q: int, rng: np.random.Generator, embedder: PrecomputedEmbedder
) -> None:
    texts = [f"question {i}: what would you recommend for topic {i % 97}?" for i in range(q)]
    embedder.add(texts, unit(rng.normal(size=(q, DIM))))
    columns = {"question_uuid": [f"q{i}" for i in range(q)], "question": texts}
    write(run_dir, "questions", columns, Question.arrow_schema())
    # Candidates share a per-question centre, so their similarity lands near the paper's range.
    r = q * CANDIDATES
    centres = np.repeat(rng.normal(size=(q, DIM)), CANDIDATES, axis=0)
    responses = [f"answer {i} to question {i // CANDIDATES}" for i in range(r)]
    embedder.add(responses, unit(centres + 0.8 * rng.normal(size=(r, DIM))))
    columns = {
        "response_uuid": [f"q{i // CANDIDATES}r{i % CANDIDATES}" for i in range(r)],
        "question_uuid": [f"q{i // CANDIDATES}" for i in range(r)],
        "response": responses,
    }
    write(run_dir, "responses", columns, Response.arrow_schema())


def judgments(run_dir: Path, n: int, q: int, per_user: int, rng: np.random.Generator) -> None:
    pool = q * PAIRS_PER_QUESTION
    # One draw per window of the pair pool: distinct pairs per user, as the judge assigns them.
    window = pool // per_user
    offsets = np.arange(per_user) * window + rng.integers(0, window, size=(n, per_user))
    item = ((rng.integers(0, pool, size=(n, 1)) + offsets) % (window * per_user)).ravel()
    user = np.repeat(np.arange(n), per_user)
    question, pair = np.divmod(item, PAIRS_PER_QUESTION)
    a, b = np.array([(a, b) for a in range(CANDIDATES) for b in range(a + 1, CANDIDATES)]).T
    prefix = np.char.add(np.char.add("q", question.astype(str)), "r")
    x, y = np.char.add(prefix, a[pair].astype(str)), np.char.add(prefix, b[pair].astype(str))
    # Users lean by a hidden taste bit, so agreement has structure rather than coin flips.
    first_wins = (user % 2 == pair % 2) ^ (rng.random(len(user)) < 0.2)
    columns = {
        "judgment_uuid": np.char.add("j", np.arange(len(user)).astype(str)),
        "persona_uuid": np.char.add("p", user.astype(str)),
        "domain": ["roleplay"] * len(user),
        "question_uuid": np.char.add("q", question.astype(str)),
        "response_x_uuid": x,
        "response_y_uuid": y,
        "chosen_uuid": np.where(first_wins, x, y),
        "kept": rng.random(len(user)) < 0.9,
    }
    write(run_dir, "judge", columns, Judgment.arrow_schema())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--personas", type=int, default=100_000)
    parser.add_argument("--million", action="store_true", help="1M personas")
    parser.add_argument("--judgments-per-user", type=int, default=10)
    parser.add_argument("--sample-size", type=int, default=2000)
    parser.add_argument("--keep", type=Path, help="write the run here and keep it")
    args = parser.parse_args()
    n = 1_000_000 if args.million else args.personas
    q = max(10, n // 50)
    run_dir = args.keep or Path(tempfile.mkdtemp(prefix="fspo-report-bench-"))
    rng = np.random.default_rng(0)
    embedder = PrecomputedEmbedder()
    start = time.perf_counter()
    personas(run_dir, n, rng, embedder)
    questions_and_responses(run_dir, q, rng, embedder)
    judgments(run_dir, n, q, args.judgments_per_user, rng)
    threads = {k: os.environ.get(k, "unset") for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    print(f"BLAS threads: {threads} (on a busy shared machine, 1 is often faster)")
    print(
        f"synthetic run: {n} personas, {q} questions, {q * CANDIDATES} responses, "
        f"{n * args.judgments_per_user} judgments in {time.perf_counter() - start:.1f} s"
    )
    try:
        start = time.perf_counter()
        result = build_report(
            run_dir, embedder=embedder, sample_size=args.sample_size, flag_settings=JudgeConfig()
        )
        total = time.perf_counter() - start
    finally:
        if args.keep is None:
            shutil.rmtree(run_dir)
    timings = result.report.timings_s
    for name, seconds in sorted(timings.items(), key=lambda kv: -kv[1]):
        print(f"  {name:28s} {seconds:8.2f} s")
    embedding = sum(s for name, s in timings.items() if name.startswith("embed."))
    print(f"total {total:.1f} s; without embedding lookups {total - embedding:.1f} s")
    for name, value in headline_figures(result).items():
        print(f"  {name:28s} {value:.4g}")


if __name__ == "__main__":
    main()
