"""The checks `fspo-data run` makes before anything starts: what each backend can take, and
whether the engine pool fits the Ray it will run on."""

from __future__ import annotations

from pathlib import Path

import pytest

from fspo_data.backends.vllm_engine import MAX_LOGPROBS
from fspo_data.core.config import JobConfig, JudgeConfig
from fspo_data.core.config_files import ConfigError
from fspo_data.pipeline.validate import (
    job_problems,
    load_job,
    local_ray_resources,
    resource_problems,
)

OPENAI = {"backend": "openai", "openai": {"base_url": "http://127.0.0.1:8000/v1", "model": "m"}}


def job(**sections: object) -> JobConfig:
    return JobConfig.model_validate({"run_dir": "r"} | sections)


def with_judge(config: JobConfig, **judge: object) -> JobConfig:
    """`config` with judge settings its own field bounds would refuse (a later, looser bound)."""
    stages = config.stages.model_copy(update={"judge": JudgeConfig().model_copy(update=judge)})
    return config.model_copy(update={"stages": stages})


def model_folder(tmp_path: Path, with_config: bool = True) -> str:
    folder = tmp_path / "model"
    folder.mkdir()
    if with_config:
        (folder / "config.json").write_text("{}")
    return str(folder)


def test_the_defaults_and_the_shipped_configs_pass() -> None:
    assert job_problems(job()) == []
    for backend in ("vllm", "instant-benchmark-double"):
        assert job_problems(job(model={"backend": backend})) == []
    assert job_problems(job(model=OPENAI)) == []
    root = Path(__file__).parents[2]
    for name in ("demo", "three_domains", "million", "openai_endpoint"):
        load_job(root / "configs" / f"{name}.yaml")


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ({"dtype": "float7"}, "model.dtype: 'float7' is not one of auto, half, float16, bfloat16"),
        ({"dtype": "BFloat16"}, "model.dtype: 'BFloat16' is not one of"),
        ({"model": "embedded:Nope"}, "model.model: unknown embedded model 'Nope'; the one shipped"),
        ({"model": "/no/such/folder"}, "model.model: /no/such/folder is not a folder"),
        ({"max_model_len": 80}, "stages.personas.max_tokens: 80 leaves no room for the prompt in "),
    ],
)
def test_vllm_refuses_what_its_engine_would_refuse(model: dict, expected: str) -> None:
    problems = job_problems(job(model=model))
    assert problems and problems[0].startswith(expected), problems


def test_vllm_wants_a_hugging_face_folder_but_looks_only_on_a_local_ray(tmp_path: Path) -> None:
    without_config = model_folder(tmp_path, with_config=False)
    assert job_problems(job(model={"model": without_config})) == [
        f"model.model: {without_config} has no config.json, so it is not a Hugging Face model "
        "folder"
    ]
    (tmp_path / "model" / "config.json").write_text("{}")
    assert job_problems(job(model={"model": without_config})) == []
    # A cluster's engines load from their nodes' disks, which this machine cannot see.
    cluster = {"address": "auto"}
    assert job_problems(job(model={"model": "/only/on/the/nodes"}, ray=cluster)) == []
    assert job_problems(job(model={"model": "embedded:Nope"}, ray=cluster)) != []


def test_every_stage_s_max_tokens_must_leave_room_for_a_prompt() -> None:
    stages = {name: {"max_tokens": 100} for name in ("personas", "questions", "views")}
    rationales = {"rationales": {"sampling": {"max_tokens": 99}}}
    config = job(stages=stages | rationales, model={"max_model_len": 100})
    fields = [p.split(":")[0] for p in job_problems(config)]
    assert fields == [f"stages.{n}.max_tokens" for n in ("personas", "questions", "views")]


@pytest.mark.parametrize("backend", ["vllm", "openai"])
def test_temperatures_and_logprobs_above_what_the_backend_takes_are_refused(backend: str) -> None:
    model = OPENAI if backend == "openai" else {}
    hot = job(model=model, stages={"responses": {"temperature": 2.5}})
    assert job_problems(hot) == [
        f"stages.responses.temperature: 2.5 is above 2, the most {backend} accepts"
    ]
    assert job_problems(job(model=model, stages={"views": {"temperature": 2.0}})) == []
    sampled = job(model=model, stages={"judge": {"sample_temperature": float("inf")}})
    assert job_problems(sampled) == [
        f"stages.judge.sample_temperature: inf is above 2, the most {backend} accepts"
    ]
    too_many = with_judge(job(model=model), top_logprobs=MAX_LOGPROBS + 1)
    assert job_problems(too_many) == [
        f"stages.judge.top_logprobs: {MAX_LOGPROBS + 1} is above 20, the most {backend} returns"
    ]


def test_the_instant_double_takes_any_setting() -> None:
    config = job(
        model={"backend": "instant-benchmark-double", "dtype": "float7", "model": "/nowhere"},
        stages={"responses": {"temperature": 9.0, "max_tokens": 5000}},
    )
    assert job_problems(with_judge(config, top_logprobs=99)) == []


def test_several_problems_are_counted_in_the_one_line(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("run_dir: r\nmodel: {dtype: float7, model: 'embedded:Nope'}\n")
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert str(info.value) == f"{path}: model.dtype: 'float7' is not one of auto, half, " + (
        "float16, bfloat16, float, float32 (+1 more)"
    )


@pytest.mark.parametrize(
    ("model", "resources", "expected"),
    [
        ({"cpus_per_replica": 3}, {"CPU": 2.0}, ["model.cpus_per_replica: 1 replica(s) x 3 CPU "]),
        ({"replicas": 3, "cpus_per_replica": 1}, {"CPU": 2.0}, ["model.cpus_per_replica: 3 "]),
        ({"replicas": 4, "cpus_per_replica": 0.5}, {"CPU": 2.0}, []),
        ({"use_gpu": True, "tensor_parallel_size": 2}, {"CPU": 8, "GPU": 1}, ["model.tensor_"]),
        ({"use_gpu": True}, {"CPU": 8}, ["model.tensor_parallel_size: 1 replica(s) x 1 GPU need"]),
        ({"use_gpu": True, "replicas": 2}, {"CPU": 8, "GPU": 2}, []),
        ({"use_gpu": False}, {"CPU": 1}, []),  # GPUs are asked only with use_gpu
        (
            {"use_gpu": True, "replicas": 2, "cpus_per_replica": 8},
            {"CPU": 8.0, "GPU": 1.0},
            ["model.cpus_per_replica: 2 replica(s) x 8 CPU", "model.tensor_parallel_size: 2 "],
        ),
    ],
)
def test_a_pool_ray_cannot_place_is_refused(
    model: dict, resources: dict[str, float], expected: list[str]
) -> None:
    problems = resource_problems(job(model=model), resources)
    assert len(problems) == len(expected), problems
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start), problem
        assert "but Ray has" in problem


def test_a_local_ray_s_cpus_are_known_before_it_starts() -> None:
    assert local_ray_resources(job(ray={"num_cpus": 3})) == {"CPU": 3.0}
    assert local_ray_resources(job())["CPU"] >= 1
    assert local_ray_resources(job(ray={"address": "auto"})) is None
    assert local_ray_resources(job(model={"use_gpu": True})) is None
