"""ray_cluster.yaml launches as shipped: Ray's own cluster-config checks pass offline (what
`ray up` runs before it calls the cloud), its image matches the installed Ray and Python 3.11
with CUDA 12, nothing is left to fill in by hand, and configs/million.yaml writes to the same
bucket the recipe copies the model from."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from fspo_data.pipeline.validate import load_job

ROOT = Path(__file__).parents[1]
RECIPE = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def test_ray_validates_the_recipe() -> None:
    # `ray up` does the same (commands._bootstrap_config) before the provider's own bootstrap,
    # which is the first step that needs AWS credentials.
    prepared = prepare_config(RECIPE)
    validate_config(prepared)
    nodes = prepared["available_node_types"]
    head = nodes[prepared["head_node_type"]]
    assert "GPU" not in head["resources"]
    gpu_groups = [n for n in nodes.values() if n["resources"].get("GPU", 0) > 0]
    assert gpu_groups and all(n["min_workers"] >= 1 for n in gpu_groups)
    assert prepared["provider"]["type"] == "aws"


def test_the_image_is_pinned_to_this_ray_python_311_and_cuda_12() -> None:
    image = RECIPE["docker"]["image"]
    assert re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py311-cu12\d", image), image
    assert image.split(":")[1].split("-")[0] == ray.__version__
    pinned = re.search(r'"ray\[data\]==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pinned and pinned.group(1) == ray.__version__


def test_nothing_is_left_to_fill_in() -> None:
    text = (ROOT / "ray_cluster.yaml").read_text()
    for placeholder in ("REPO_URL", "NFS_SERVER", "/mnt/fspo", "git clone", "<", "TODO"):
        assert placeholder not in text, placeholder
    for node in RECIPE["available_node_types"].values():
        assert node["node_config"]["ImageId"].startswith("resolve:ssm:/aws/service/deeplearning/")


def test_the_checkout_travels_to_where_setup_installs_it() -> None:
    assert RECIPE["file_mounts"] == {"~/fspo-data": "."}
    assert ".gitignore" in RECIPE["rsync_filter"]  # not .venv or runs/
    commands = RECIPE["setup_commands"] + RECIPE["head_start_ray_commands"]
    assert any("cd ~/fspo-data && FSPO_ENGINE=gpu" in c and "scripts/setup.sh" in c
               for c in commands)  # fmt: skip
    starts = RECIPE["head_start_ray_commands"] + RECIPE["worker_start_ray_commands"]
    assert all("~/fspo-data/.venv/bin/ray " in c for c in starts)


def test_million_runs_on_the_recipes_bucket_with_the_model_it_copies() -> None:
    config = yaml.safe_load((ROOT / "configs" / "million.yaml").read_text())
    bucket = re.fullmatch(r"s3://([a-z0-9.-]+)/million", config["run_dir"])
    assert bucket, config["run_dir"]
    (copy,) = RECIPE["worker_setup_commands"]
    source, target = re.findall(r"'([^']+)'", copy)[:2]
    assert source == f"s3://{bucket.group(1)}/models/{Path(target).name}"
    assert config["model"]["model"] == target
    assert shlex.split(copy)[:2] == ["test", "-f"]
    assert config["ray"]["address"] == "auto"
    load_job(ROOT / "configs" / "million.yaml")
