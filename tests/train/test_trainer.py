"""The trainer and the evaluation end to end: a tiny Llama built from a config (fast), and
the embedded SmolLM2-135M (marked model and slow)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from fspo_data.backends.embedded import ensure_embedded_model
from fspo_data.core.records import Episode, to_table
from fspo_data.train.config import TrainConfig
from fspo_data.train.data import load_episodes, prepare_episodes
from fspo_data.train.evaluate import (
    completion_logps,
    encode_completion,
    extract_answer,
    ranking_accuracy,
    run_eval,
    win_rate,
)
from fspo_data.train.loss import dpo_loss, ipo_loss, sequence_logps
from fspo_data.train.trainer import (
    LOSS_PLOT,
    SUMMARY_FILE,
    SummedIPOTrainer,
    TrainSummary,
    make_fspo_trainer,
    run_train,
)
from tests.train.test_data import make_episode


def write_run(run_dir: Path, episodes: list[Episode]) -> Path:
    (run_dir / "episodes").mkdir(parents=True)
    pq.write_table(to_table(episodes, Episode), run_dir / "episodes" / "part-00000.parquet")
    return run_dir


def small_episodes() -> list[Episode]:
    """Two train episodes (one fixed batch of 2 to overfit) and two per held-out split."""
    return [
        make_episode(0, shots=2, words=2),
        make_episode(1, shots=2, words=2),
        make_episode(10, "test_users", shots=2, words=2),
        make_episode(11, "test_users", shots=2, words=2),
        make_episode(20, "test_questions", shots=2, words=2),
        make_episode(21, "test_questions", shots=2, words=2),
    ]


def config_for(model: str, output_dir: Path, **overrides: Any) -> TrainConfig:
    """A few fp32 CPU steps; a raised learning rate so a handful of steps move the loss."""
    stage = {"batch_size": 2, "warmup_steps": 0, "learning_rate": 1e-4}
    raw: dict[str, Any] = {
        "model": model,
        "output_dir": str(output_dir),
        "use_gpu": False,
        "precision": "fp32",
        "gradient_checkpointing": False,
        "max_prompt_tokens": 256,
        "sft": {**stage, "max_steps": 1, "save_steps": 1},
        "fspo": {**stage, "max_steps": 4, "save_steps": 2},
    }
    for key, value in overrides.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    return TrainConfig.model_validate(raw)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded_model())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("run"), small_episodes())


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: str, run_dir: Path
) -> tuple[TrainConfig, TrainSummary]:
    config = config_for(tiny_model, tmp_path_factory.mktemp("train"))
    return config, run_train(str(run_dir), config)


def test_run_train_writes_models_checkpoints_summary_and_plot(
    trained: tuple[TrainConfig, TrainSummary],
) -> None:
    config, summary = trained
    out = config.output_dir
    assert summary.sft is not None and summary.sft.steps == 1
    assert summary.fspo.steps == 4 and len(summary.fspo.loss_curve) == 4
    assert summary.reference_dir == str(out / "sft" / "final")
    assert summary.data.kept == 2
    assert summary.fspo.tokens_seen > 0 and summary.fspo.tokens_per_second > 0
    # IPO starts at (0 - 1/(2 beta))^2 = 2500: policy and reference are the same SFT model.
    assert summary.fspo.first_loss == pytest.approx(2500.0, rel=1e-4)
    assert (out / LOSS_PLOT).read_bytes().startswith(b"\x89PNG")
    assert TrainSummary.model_validate_json((out / SUMMARY_FILE).read_text()) == summary
    assert (out / "config.yaml").is_file()
    assert sorted(p.name for p in (out / "fspo").glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
    ]


def test_ipo_loss_falls_on_a_batch_it_can_overfit(
    trained: tuple[TrainConfig, TrainSummary],
) -> None:
    _, summary = trained
    losses = [loss for _, loss in summary.fspo.loss_curve]
    assert losses[-1] < losses[0] - 1.0, losses


def test_last_checkpoint_reloads_as_the_final_model(
    trained: tuple[TrainConfig, TrainSummary],
) -> None:
    config, summary = trained
    final = AutoModelForCausalLM.from_pretrained(summary.fspo.model_dir)
    checkpoint = AutoModelForCausalLM.from_pretrained(config.output_dir / "fspo" / "checkpoint-4")
    sft = AutoModelForCausalLM.from_pretrained(summary.reference_dir)
    for (name, a), b in zip(
        final.state_dict().items(), checkpoint.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    moved = zip(final.parameters(), sft.parameters(), strict=True)
    assert any(not torch.equal(a, b) for a, b in moved)


def test_rerun_resumes_from_the_last_checkpoint(
    tmp_path: Path, trained: tuple[TrainConfig, TrainSummary], run_dir: Path
) -> None:
    config, first = trained
    shutil.copytree(config.output_dir, tmp_path / "out")
    more = config_for(config.model, tmp_path / "out", fspo={"max_steps": 5})
    summary = run_train(str(run_dir), more)
    assert summary.sft is not None and summary.sft.resumed_from is not None
    assert summary.sft.resumed_from.endswith("sft/checkpoint-1") and summary.sft.steps == 1
    assert summary.fspo.resumed_from is not None
    assert summary.fspo.resumed_from.endswith("fspo/checkpoint-4")
    assert summary.fspo.steps == 5
    assert summary.fspo.loss_curve[:4] == first.fspo.loss_curve


@pytest.mark.parametrize(
    ("loss", "ipo_margin"), [("dpo", "summed"), ("ipo", "summed"), ("ipo", "token_mean")]
)
def test_trl_loss_on_a_batch_matches_the_reference_functions(
    tmp_path: Path, tiny_model: str, run_dir: Path, loss: str, ipo_margin: str
) -> None:
    config = config_for(tiny_model, tmp_path, fspo={"loss": loss, "ipo_margin": ipo_margin})
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    episodes, _ = prepare_episodes(load_episodes(str(run_dir), "train"), tokenizer, 256, False)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model)
    reference = copy.deepcopy(policy)
    torch.manual_seed(1)
    with torch.no_grad():  # a reference unlike the policy, so log-ratios are not zero
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trainer = make_fspo_trainer(policy, reference, tokenizer, episodes, config, tmp_path)
    assert isinstance(trainer, SummedIPOTrainer) == (loss == "ipo" and ipo_margin == "summed")
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    with torch.no_grad():
        got = trainer.compute_loss(trainer.model, batch).item()
        ids, mask = batch["input_ids"], batch["attention_mask"]
        completion = batch["completion_mask"]
        logps = [
            sequence_logps(model(input_ids=ids, attention_mask=mask).logits, ids, completion)
            for model in (policy, reference)
        ]
    if ipo_margin == "token_mean":  # TRL's IPO: each log-prob over its completion's tokens
        logps = [lp / completion.sum(dim=1) for lp in logps]
    (policy_chosen, policy_rejected), (ref_chosen, ref_rejected) = (lp.chunk(2) for lp in logps)
    reference_loss = {"dpo": dpo_loss, "ipo": ipo_loss}[loss]
    want = reference_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, 0.01).mean()
    assert got == pytest.approx(want.item(), rel=1e-4)


def test_eval_log_probs_match_the_trainers(tiny_model: str, run_dir: Path, tmp_path: Path) -> None:
    # Evaluation left-pads and keeps only the completion's logits; TRL right-pads. The chosen
    # and rejected completions differ in length, so both pad.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    episodes, _ = prepare_episodes(load_episodes(str(run_dir), "test_users"), tokenizer, 256, False)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model)
    config = config_for(tiny_model, tmp_path, fspo={"loss": "dpo"})
    trainer = make_fspo_trainer(
        policy, copy.deepcopy(policy), tokenizer, episodes, config, tmp_path
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    with torch.no_grad():
        logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    trl = sequence_logps(logits, batch["input_ids"], batch["completion_mask"])
    encoded = [
        encode_completion(tokenizer, row["prompt"], row[column])
        for column in ("chosen", "rejected")
        for row in episodes.select(range(2))
    ]
    ours = completion_logps(policy, encoded, tokenizer.pad_token_id, batch_size=4)
    assert ours.tolist() == pytest.approx(trl.tolist(), rel=1e-4)


def test_run_eval_scores_splits_and_judges_answers(
    trained: tuple[TrainConfig, TrainSummary], run_dir: Path
) -> None:
    config, _ = trained
    calls: list[tuple[list[str], ...]] = []

    def judge(personas: list[str], questions: list[str], a: list[str], b: list[str]) -> list[float]:
        calls.append((personas, questions, a, b))
        return [1.0, -1.0]

    summary = run_eval(str(run_dir), config, judge, max_new_tokens=4, batch_size=2)
    assert [s.split for s in summary.splits] == ["test_users", "test_questions"]
    for split in summary.splits:
        assert split.episodes == 2
        assert split.win_rate == 0.5 and split.mean_judge_margin == 0.0
        for accuracy in (
            split.reward_accuracy,
            split.reward_accuracy_vs_base,
            split.policy_likelihood_accuracy,
            split.base_likelihood_accuracy,
        ):
            assert 0.0 <= accuracy <= 1.0
    personas, questions, _, _ = calls[0]
    assert sorted(questions) == ["Query question 10?", "Query question 11?"]
    assert sorted(personas) == ["User 10 likes brief answers.", "User 11 likes brief answers."]
    rows = (config.output_dir / "eval_answers.jsonl").read_text().splitlines()
    assert len(rows) == 4 and {"trained", "base", "margin"} <= json.loads(rows[0]).keys()


def test_ranking_accuracy_counts_ties_as_half() -> None:
    chosen, rejected = torch.tensor([1.0, 0.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0, -2.0])
    assert ranking_accuracy(chosen, rejected) == 2.5 / 4


def test_win_rate_counts_ties_as_half() -> None:
    assert win_rate([0.3, -0.1, 0.0, 2.0]) == 2.5 / 4


def test_extract_answer_takes_the_response_section() -> None:
    assert extract_answer("## Preferred Response \nTea, hot.\n# Example 2\nmore") == "Tea, hot."
    rat = "## User Description\nlikes tea\n## Preferred Response \nTea.\n## Question \nx"
    assert extract_answer(rat) == "Tea."
    assert extract_answer("Just an answer\nover two lines") == "Just an answer\nover two lines"


@pytest.mark.slow
def test_two_ray_train_workers_train_data_parallel(
    tmp_path: Path, tiny_model: str, run_dir: Path
) -> None:
    import ray

    started_here = not ray.is_initialized()
    config = config_for(tiny_model, tmp_path / "out", num_workers=2, fspo={"max_steps": 2})
    try:
        summary = run_train(str(run_dir), config)
    finally:
        if started_here:
            ray.shutdown()
    assert summary.num_workers == 2
    assert summary.sft is not None and summary.sft.steps == 1
    assert summary.fspo.steps == 2 and summary.fspo.first_loss == pytest.approx(2500.0, rel=1e-4)
    assert (tmp_path / "out" / SUMMARY_FILE).is_file()
    assert (tmp_path / "out" / "fspo" / "final" / "model.safetensors").is_file()


@pytest.mark.model
@pytest.mark.slow
def test_sft_then_ipo_on_the_embedded_model(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", small_episodes()[:2])
    config = config_for(
        "embedded:SmolLM2-135M-Instruct",
        tmp_path / "out",
        sft={"learning_rate": 1e-5},
        fspo={"learning_rate": 3e-6, "max_steps": 3, "save_steps": 3},
    )
    summary = run_train(str(run), config)
    assert summary.sft is not None and summary.sft.steps == 1
    losses = [loss for _, loss in summary.fspo.loss_curve]
    assert losses[0] == pytest.approx(2500.0, rel=1e-3)
    assert losses[-1] < losses[0], losses
    checkpoint = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "fspo" / "checkpoint-3")
    final = AutoModelForCausalLM.from_pretrained(summary.model_dir)
    assert all(
        torch.equal(a, b) for a, b in zip(checkpoint.parameters(), final.parameters(), strict=True)
    )
