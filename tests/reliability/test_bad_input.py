"""Malformed job configs through the CLI: exit code 2, one stderr line naming file and field.

tests/pipeline/test_config.py checks `load_config`'s messages on a few cases; this is the
suite a data engineer meets at the command line. Every mistake must end `fspo-data run` before
Ray or a model starts, with exit code 2 and a single line (no traceback) that says which file
and which field to fix, and never repeats a value that may be a secret.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import ray

from fspo_data import cli
from fspo_data.core.config_files import ConfigError
from fspo_data.pipeline.orchestrator import run_job
from tests.reliability.conftest import instant_config, run_cli

PASTED_KEY = "sk-fspo-pasted-0123456789abcdef"


def openai_config(setting: str) -> str:
    """A config on the openai backend, valid but for `setting` in its `openai:` section."""
    endpoint = "base_url: 'http://127.0.0.1:8000/v1', model: m"
    return f"run_dir: r\nmodel: {{backend: openai, openai: {{{endpoint}, {setting}}}}}\n"


# (config text, what the one line must contain: the field, or where the YAML broke)
MALFORMED = {
    "seed_not_int": ("run_dir: r\nseed: seven\n", "seed: Input should be a valid integer"),
    "domains_scalar": ("run_dir: r\ndomains: roleplay\n", "domains: Input should be a valid list"),
    "section_scalar": ("run_dir: r\ncounts: 12\n", "counts: Input should be a valid dictionary"),
    "fractional_count": ("run_dir: r\nsharding: {users_per_shard: 2.5}\n", "users_per_shard:"),
    "bool_not_bool": ("run_dir: r\nmodel: {use_gpu: sometimes}\n", "model.use_gpu:"),
    "infinite_count": ("run_dir: r\ncounts: {users: .inf}\n", "counts.users: Input should be"),
    "top_level_typo": ("run_dir: r\nsed: 3\n", "sed: unknown field"),
    "nested_unknown": ("run_dir: r\nmodel: {backend: vllm, gpus: 2}\n", "model.gpus: unknown"),
    "deep_unknown": (
        "run_dir: r\nstages: {judge: {mode: strict, temperature: 0}}\n",
        "stages.judge.temperature: unknown field",
    ),
    "negative_count": ("run_dir: r\ncounts: {questions: -5}\n", "counts.questions: Input should"),
    "zero_shard_size": ("run_dir: r\nsharding: {questions_per_shard: 0}\n", "questions_per_shard"),
    "zero_shots": ("run_dir: r\ncounts: {shots: {elix: 0}}\n", "counts.shots.elix:"),
    "one_candidate": (
        "run_dir: r\ncounts: {candidates_per_question: 1}\n",
        "counts.candidates_per_question:",
    ),
    "yaml_boolean_count": (
        "run_dir: r\ncounts: {users: yes}\n",
        "counts.users: expected a number, got true (a YAML boolean)",
    ),
    "stratify_typo": (
        "run_dir: r\npersonas: {stratify: [gendr]}\n",
        "personas.stratify: 'gendr' is in no taxonomy of roleplay",
    ),
    "shots_exceed_pairs": (
        "run_dir: r\ndomains: [review]\ncounts: {pairs_per_user: 4, shots: {review: 4}}\n",
        "counts.shots.review + 1 (5) exceeds counts.pairs_per_user (4)",
    ),
    "pair_blocks_exceed_users": (
        "run_dir: r\ncounts: {users: 4, pair_blocks: 5}\n",
        "counts.pair_blocks: 5 blocks of counts.users (4) would leave a block with no user",
    ),
    "pair_blocks_leave_too_few_pairs": (
        "run_dir: r\ncounts: {users: 40, questions: 10, pair_blocks: 4}\n",
        "counts.pair_blocks: 4 blocks of roleplay's pool of 30 pairs hold 7 pairs each, fewer "
        "than counts.pairs_per_user (20)",
    ),
    "backend_missing": ("run_dir: r\nmodel: {backend: }\n", "model.backend: Input should be"),
    "model_section_empty": ("run_dir: r\nmodel:\n", "model: Input should be a valid dictionary"),
    "backend_unknown": ("run_dir: r\nmodel: {backend: llama.cpp}\n", "model.backend:"),
    "domain_unknown": (
        "run_dir: r\ndomains: [roleplay, Poetry]\n",
        "domains.1: unknown domain 'Poetry' (known: elix, review, roleplay)",
    ),
    "shots_domain_not_in_job": (
        "run_dir: r\ncounts: {shots: {elix: 2}}\n",
        "counts.shots.elix: 'elix' is not in domains (roleplay)",
    ),
    "shots_not_a_number": ("run_dir: r\ncounts: {shots: {roleplay: yes}}\n", "shots.roleplay:"),
    "run_dir_scheme": (
        "run_dir: ftp://host/run\n",
        "run_dir: unsupported scheme ftp:// (use s3://, gs:// or a local path)",
    ),
    "run_dir_no_bucket": ("run_dir: s3:///run\n", "run_dir: s3:///run: no bucket"),
    "domains_dir_missing": (
        "run_dir: r\ndomains_dir: no_such_folder\n",
        "domains_dir: no_such_folder is not a folder",
    ),
    "domains_dir_empty": ('run_dir: r\ndomains_dir: ""\n', "domains_dir: must not be empty"),
    "domains_empty": ("run_dir: r\ndomains: []\n", "domains: List should have at least 1"),
    "domain_twice": ("run_dir: r\ndomains: [elix, elix]\n", "domains: a domain is listed more"),
    "temperature_negative": (
        "run_dir: r\nstages: {responses: {temperature: -0.5}}\n",
        "stages.responses.temperature: Input should be greater than or equal to 0",
    ),
    "top_p_above_one": (
        "run_dir: r\nstages: {views: {top_p: 1.5}}\n",
        "stages.views.top_p: Input should be less than or equal to 1",
    ),
    "nested_sampling_zero": (
        "run_dir: r\nstages: {rationales: {sampling: {max_tokens: 0}}}\n",
        "stages.rationales.sampling.max_tokens:",
    ),
    "top_logprobs_too_many": ("run_dir: r\nstages: {judge: {top_logprobs: 50}}\n", "top_logprobs"),
    "dtype_unknown": (
        "run_dir: r\nmodel: {dtype: float7}\n",
        "model.dtype: 'float7' is not one of auto, half, float16, bfloat16, float, float32",
    ),
    "temperature_above_vllm": (
        "run_dir: r\nstages: {questions: {temperature: 2.5}}\n",
        "stages.questions.temperature: 2.5 is above 2, the most vllm accepts",
    ),
    "temperature_above_openai": (
        openai_config("max_retries: 1") + "stages: {judge: {sample_temperature: 4}}\n",
        "stages.judge.sample_temperature: 4 is above 2, the most openai accepts",
    ),
    "embedded_model_unknown": (
        "run_dir: r\nmodel: {model: 'embedded:Nope'}\n",
        "model.model: unknown embedded model 'Nope'",
    ),
    "model_folder_missing": (
        "run_dir: r\nmodel: {model: ./models/llama}\n",
        "model.model: ./models/llama is not a folder",
    ),
    "max_tokens_fill_context": (
        "run_dir: r\nmodel: {max_model_len: 512}\nstages: {responses: {max_tokens: 512}}\n",
        "stages.responses.max_tokens: 512 leaves no room for the prompt in model.max_model_len",
    ),
    "key_twice_top_level": (
        "run_dir: r\nseed: 1\nseed: 2\n",
        "seed: key given twice (lines 2 and 3)",
    ),
    "key_twice_nested": (
        "run_dir: r\nmodel:\n  replicas: 1\n  replicas: 2\n",
        "model.replicas: key given twice (lines 3 and 4)",
    ),
    "pool_too_large": (
        "run_dir: r\nray: {num_cpus: 1}\nmodel: {cpus_per_replica: 2}\n",
        "model.cpus_per_replica: 1 replica(s) x 2 CPU need 2 CPU, but Ray has 1",
    ),
    "openai_without_section": ("run_dir: r\nmodel: {backend: openai}\n", "model: backend 'openai'"),
    "openai_without_base_url": (
        "run_dir: r\nmodel: {backend: openai, openai: {model: m}}\n",
        "model.openai.base_url: Field required",
    ),
    "openai_base_url_no_scheme": (
        "run_dir: r\nmodel: {backend: openai, openai: {base_url: '127.0.0.1:8000/v1', model: m}}\n",
        "model.openai.base_url: must start with http:// or https://",
    ),
    "openai_key_env_empty": (openai_config('api_key_env: ""'), "openai.api_key_env:"),
    "openai_key_pasted_as_env_name": (
        openai_config(f"api_key_env: {PASTED_KEY}"),
        "model.openai.api_key_env: must be the NAME of an environment variable",
    ),
    "openai_key_as_field": (
        openai_config(f"api_key: {PASTED_KEY}"),
        "model.openai.api_key: unknown field",
    ),
    "ray_address_int": ("run_dir: r\nray: {address: 6379}\n", "ray.address: Input should be a"),
    "ray_no_cpus": ("run_dir: r\nray: {num_cpus: 0}\n", "ray.num_cpus:"),
    "run_dir_missing": ("seed: 1\ndomains: [elix]\n", "run_dir: Field required"),
    "run_dir_empty": ('run_dir: ""\n', "run_dir: must not be empty"),
    "split_everything": ("run_dir: r\nsplits: {test_user_fraction: 1.0}\n", "test_user_fraction"),
    "yaml_unclosed_quote": ('run_dir: "r\nseed: 1\n', "not valid YAML at line"),
    "yaml_tab_indent": ("run_dir: r\ncounts:\n\tusers: 3\n", "not valid YAML at line 3"),
    "yaml_python_tag": ("run_dir: !!python/object/apply:os.system [ls]\n", "not valid YAML at"),
    "empty_file": ("", "(top level): expected a mapping"),
    "comments_only": ("# run_dir: r\n", "(top level): expected a mapping"),
    "top_level_list": ("- run_dir: r\n", "(top level): expected a mapping"),
    "top_level_scalar": ("roleplay\n", "(top level): expected a mapping"),
}


def _missing(path: Path) -> None:
    """Nothing is written: the path names no file."""


def _directory(path: Path) -> None:
    path.mkdir()


def _not_utf8(path: Path) -> None:
    path.write_bytes(b"run_dir: r\nseed: \xff\xfe\n")


def _unreadable(path: Path) -> None:
    path.write_text("run_dir: r\n")
    path.chmod(0)


NOT_A_CONFIG: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing": (_missing, "cannot read config: No such file or directory"),
    "directory": (_directory, "cannot read config: Is a directory"),
    "not_utf8": (_not_utf8, "not UTF-8 text (byte offset 17)"),
    "unreadable": (_unreadable, "cannot read config: Permission denied"),
}


def assert_one_line_error(code: int, err: str, path: Path, expected: str) -> None:
    """Exit code 2 and exactly one stderr line: `error: FILE: FIELD: what is wrong`."""
    assert code == 2, err
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"error: {path}: "), err
    assert expected in err, err
    assert PASTED_KEY not in err


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, so a relative run_dir would show up in it if created."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(("text", "expected"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_config_stops_the_run_with_one_line(
    workdir: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = workdir / "job.yaml"
    path.write_text(text)
    code = cli.main(["run", str(path)])
    out, err = capsys.readouterr()
    assert_one_line_error(code, err, path, expected)
    assert out == ""
    assert [p.name for p in workdir.iterdir()] == ["job.yaml"]  # no run folder begun
    assert not ray.is_initialized()


@pytest.mark.parametrize(("make", "expected"), NOT_A_CONFIG.values(), ids=NOT_A_CONFIG.keys())
def test_a_path_that_is_not_a_config_file_stops_the_run_with_one_line(
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[Path], None],
    expected: str,
) -> None:
    if make is _unreadable and os.geteuid() == 0:
        pytest.skip("root reads a file whatever its mode")
    path = workdir / "job.yaml"
    make(path)
    assert_one_line_error(cli.main(["run", str(path)]), capsys.readouterr().err, path, expected)


def test_the_console_script_exits_2_without_traceback(tmp_path: Path) -> None:
    """The installed `fspo-data`, as a shell or scheduler runs it: the real exit status.

    `status` reads the config saved in a run folder, which a person may have edited.
    """
    run_folder = tmp_path / "run"
    run_folder.mkdir()
    config = tmp_path / "job.yaml"
    config.write_text(MALFORMED["openai_key_pasted_as_env_name"][0])
    saved = run_folder / "config.yaml"
    saved.write_text(MALFORMED["shots_exceed_pairs"][0])
    binary = tmp_path / "binary.yaml"
    _not_utf8(binary)
    cases = [
        (("run", str(config)), config, MALFORMED["openai_key_pasted_as_env_name"][1]),
        (("status", str(run_folder)), saved, MALFORMED["shots_exceed_pairs"][1]),
        (("run", "--quiet", str(binary)), binary, NOT_A_CONFIG["not_utf8"][1]),
    ]
    for argv, path, expected in cases:
        code, err = run_cli(*argv, timeout=60)
        assert_one_line_error(code, err, path, expected)


@pytest.mark.slow
def test_a_pool_only_ray_can_size_is_refused_before_the_run_folder(tmp_path: Path) -> None:
    """A local Ray counts its GPUs as it starts (a cluster, all its resources): `run_job` checks
    the pool against Ray's totals once it is up, and before the run folder is made."""
    model = {"backend": "instant-benchmark-double", "use_gpu": True, "tensor_parallel_size": 64}
    config = instant_config(tmp_path / "run", model=model)
    source = tmp_path / "job.yaml"
    try:
        with pytest.raises(ConfigError) as info:
            run_job(config, progress=False, source=source)
    finally:
        ray.shutdown()
    assert str(info.value).startswith(
        f"{source}: model.tensor_parallel_size: 1 replica(s) x 64 GPU need 64 GPU, but Ray has"
    )
    assert not config.run_dir.exists()
