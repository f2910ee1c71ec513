"""CPU-seconds of one shard of each non-LLM stage, in one process, with Ray and load noise out.

Reads a run kept by `bench/scale.py --keep RUN`, copies it to a scratch folder and runs
`execute_shard` (read the inputs, compute, write the shard) of one shard of gold, judge and
episodes with the instant double, and the run's label statistics (`report`), several rounds
in turn; prints the minimum and median process CPU time of each. `--profile STAGE` prints
cProfile's view of that stage instead.

    python bench/scale.py --records 100000 --keep /tmp/scale-100k
    python bench/shard_cpu.py /tmp/scale-100k
    python bench/shard_cpu.py /tmp/scale-100k --profile judge
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from fspo_data.backends.instant import InstantBenchmarkDouble
from fspo_data.core.config import JobConfig, load_config
from fspo_data.core.shards import load_manifest
from fspo_data.pipeline.summary import summarize_judgments
from fspo_data.pipeline.workers import execute_shard
from fspo_data.stages.base import ShardSpec, StageContext

STAGES = ("gold", "judge", "episodes", "report")


def shard_runner(config: JobConfig, shard: str) -> dict[str, object]:
    """stage -> a function computing (and writing) its shard `shard` once."""
    ctx = StageContext(config=config, backend=InstantBenchmarkDouble(config.model))

    def stage_shard(stage: str) -> object:
        entry = load_manifest(config.run_dir / stage).shards[shard]
        domain, index = shard.rsplit("-", 1)
        spec = ShardSpec(
            stage=stage, domain=domain, index=int(index), start=entry.start, stop=entry.stop
        )
        return lambda: execute_shard(spec, ctx)

    runners: dict[str, object] = {s: stage_shard(s) for s in STAGES if s != "report"}
    runners["report"] = lambda: summarize_judgments(config.run_dir, config.stages.judge)
    return runners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run kept by bench/scale.py --keep")
    parser.add_argument("--shard", default="roleplay-00001")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--profile", choices=STAGES)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="fspo-shard-cpu-")) / "run"
    shutil.copytree(args.run, scratch)
    try:
        config = load_config(scratch / "config.yaml").model_copy(update={"run_dir": scratch})
        runners = shard_runner(config, args.shard)
        for stage in STAGES:
            runners[stage]()  # warm: imports, caches
        if args.profile:
            profile = cProfile.Profile()
            profile.runcall(lambda: [runners[args.profile]() for _ in range(3)])
            pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
            return
        times: dict[str, list[float]] = {stage: [] for stage in STAGES}
        for _ in range(args.rounds):
            for stage in STAGES:
                started = time.process_time()
                runners[stage]()
                times[stage].append(time.process_time() - started)
        for stage, seconds in times.items():
            print(
                f"{stage:10} min {min(seconds):.4f}  median {statistics.median(seconds):.4f} "
                f"CPU-s ({args.rounds} rounds)"
            )
    finally:
        shutil.rmtree(scratch.parent)


if __name__ == "__main__":
    main()
