"""Scale of everything around the engine: N judged pairs through Ray, with flat memory.

Runs a whole job (`run_job`, what `fspo-data run` calls) on a generated config whose model is
the instant benchmark double: every stage runs through Ray exactly as in a real run (engine
actors, CPU tasks, atomic Parquet shards, manifests, the run summary) while the "engine"
answers at once. N records = users x pairs_per_user judged pairs (one domain, roleplay),
each judged in both orders, with one round of persona refinement.

Rows, wall time and engine time per stage come from the run summary (`StageSummary`, i.e.
the per-shard counters of the manifests; `engine_ms` = time inside the backend), the figures
a real run reports. The sampler adds what a summary cannot know: CPU-seconds of this run's
processes per stage (so a figure taken while other work shared the cores can be judged),
and peak RSS (VmHWM) of the driver and each Ray worker; Ray's own daemons are listed apart.

    python bench/scale.py --records 100000
    python bench/scale.py --records 1000000 --out scale-1m.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import tempfile
import threading
import time
from datetime import date
from importlib import metadata
from pathlib import Path

import numpy as np
import psutil

from fspo_data.core.config import JobConfig
from fspo_data.pipeline.orchestrator import init_ray, run_job

# Everything a record passes after the generating stages: the gold pairs the gate reads, the
# judge, episodes and the run's label statistics. persona_duplicates (one MinHash pass per
# domain over its users, not its records) is printed with the stages but not counted.
NON_LLM = ("gold", "judge", "episodes", "report")
POLL_S = 0.2
CORES = os.cpu_count() or 1


def bench_config(
    records: int, pairs_per_user: int, users_per_shard: int, run_dir: Path
) -> JobConfig:
    """N = users x pairs_per_user judgments: 250 questions x 4 candidates give a pool of 1,500
    pairs, so every user gets `pairs_per_user` distinct pairs and users share pairs."""
    return JobConfig.model_validate(
        {
            "run_dir": run_dir,
            "seed": 0,
            "domains": ["roleplay"],
            "counts": {
                "users": math.ceil(records / pairs_per_user),
                "questions": 250,
                "candidates_per_question": 4,
                "pairs_per_user": pairs_per_user,
                "shots": {"roleplay": 8},
            },
            "sharding": {"users_per_shard": users_per_shard, "questions_per_shard": 50},
            "model": {"backend": "instant-benchmark-double", "replicas": 2, "cpus_per_replica": 1},
            "stages": {"judge": {"mode": "calibrated", "min_margin": 0.05, "refine_rounds": 1}},
            "ray": {"num_cpus": 2},
        }
    )


def _status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _machine_busy_s() -> float:
    """CPU-seconds the whole machine has spent busy (every process, every container)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class ProcessSampler:
    """Polls the driver's process tree every POLL_S: CPU time (this run's, and the machine's),
    per-process peak RSS, and the peak summed RSS of driver + Ray workers."""

    def __init__(self) -> None:
        self.driver = psutil.Process()
        self.kind: dict[int, str] = {}
        self.hwm_kib: dict[int, int] = {}
        self.cpu_s: dict[
            int, float
        ] = {}  # last seen: a process ending between polls loses <= POLL_S
        self.timeline: list[tuple[float, float, float]] = []  # (time, this run's CPU, machine's)
        self.peak_total_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessSampler:
        self._poll()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            self._poll()

    def _poll(self) -> None:
        total = _status_kib(self.driver.pid, "VmRSS:")
        for child in self.driver.children(recursive=True):
            try:
                title = " ".join(child.cmdline())
                times = child.cpu_times()
            except psutil.Error:
                continue
            pid = child.pid
            # A worker is titled `ray::...` once started, default_worker.py until then.
            is_worker = title.startswith("ray::") or "default_worker.py" in title
            self.kind[pid] = "worker" if is_worker else "ray daemon"
            self.cpu_s[pid] = times.user + times.system
            self.hwm_kib[pid] = max(self.hwm_kib.get(pid, 0), _status_kib(pid, "VmHWM:"))
            if self.kind[pid] == "worker":
                total += _status_kib(pid, "VmRSS:")
        self.peak_total_kib = max(self.peak_total_kib, total)
        own = self.driver.cpu_times()
        ours = own.user + own.system + sum(self.cpu_s.values())
        self.timeline.append((time.perf_counter(), ours, _machine_busy_s()))

    def cpu_between(self, start: float, stop: float) -> tuple[float, float]:
        """(this run's, other work's) CPU-seconds in [start, stop], interpolated."""
        t, ours, busy = (np.array(column) for column in zip(*self.timeline, strict=True))
        mine = float(np.interp(stop, t, ours) - np.interp(start, t, ours))
        machine = float(np.interp(stop, t, busy) - np.interp(start, t, busy))
        return mine, max(machine - mine, 0.0)

    def memory(self) -> dict[str, float]:
        workers = [kib for pid, kib in self.hwm_kib.items() if self.kind[pid] == "worker"]
        daemons = [kib for pid, kib in self.hwm_kib.items() if self.kind[pid] == "ray daemon"]
        return {
            "driver_peak_mib": _status_kib(self.driver.pid, "VmHWM:") / 1024,
            "largest_worker_peak_mib": max(workers, default=0) / 1024,
            "workers_seen": len(workers),
            "driver_plus_workers_peak_mib": self.peak_total_kib / 1024,
            "ray_daemons_peak_mib": sum(daemons) / 1024,
        }


def machine() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), "")
    return {
        "date": date.today().isoformat(),
        "cpu": cpu,
        "cores": str(CORES),
        "python": platform.python_version(),
        **{name: metadata.version(name) for name in ("ray", "polars", "pyarrow")},
    }


def run(args: argparse.Namespace) -> dict:
    run_dir = args.keep or Path(tempfile.mkdtemp(prefix="fspo-scale-"))
    config = bench_config(args.records, args.pairs_per_user, args.users_per_shard, run_dir)
    with ProcessSampler() as sampler:
        started = time.perf_counter()
        init_ray(config)
        job_started = time.perf_counter()
        summary = run_job(config, progress=False)
        job_stopped = time.perf_counter()
    if args.keep is None:
        shutil.rmtree(run_dir)
    # Stages run one after another from job_started; run_job's wall time stops before the
    # label statistics of the run summary, the "report" here.
    windows = np.cumsum([job_started] + [s.wall_seconds for s in summary.stages])
    stages = []
    for s, start, stop in zip(summary.stages, windows[:-1], windows[1:], strict=True):
        cpu, other = sampler.cpu_between(start, stop)
        stages.append(
            {
                "stage": s.stage,
                "shards": s.shards_committed,
                "rows": s.rows,
                "wall_s": s.wall_seconds,
                "rows_per_s": s.rows_per_second,
                "engine_cpu_s": s.engine_seconds,
                "cpu_s": cpu,
                "other_work_cpu_s": other,
            }
        )
    cpu, other = sampler.cpu_between(windows[-1], job_stopped)
    stages.append(
        {
            "stage": "report",
            "rows": 0,
            "wall_s": job_stopped - windows[-1],
            "cpu_s": cpu,
            "other_work_cpu_s": other,
            "engine_cpu_s": 0.0,
        }  # fmt: skip
    )
    counts = config.counts
    return {
        "records": counts.users * counts.pairs_per_user,
        "config": (
            f"roleplay, {counts.users} users x {counts.pairs_per_user} pairs = "
            f"{counts.users * counts.pairs_per_user} judged pairs (pool of 1500 pairs: 250 "
            f"questions x 4 candidates), shards of {config.sharding.users_per_shard} users, "
            f"{config.model.replicas} engine actors, Ray num_cpus 2, 8 shots, calibrated judge, "
            "1 refinement round"
        ),
        "stages": stages,
        "replicas": config.model.replicas,
        "ray_init_s": job_started - started,
        "run_wall_s": job_stopped - job_started,
        "memory": sampler.memory(),
        "machine": machine(),
    }


def non_llm(result: dict) -> dict[str, float]:
    """Gold, judge, episodes and report, end to end: wall-clock rate, and the CPU-bound rate
    (N over their CPU-seconds spread on all cores), with and without the benchmark double's
    own time (engine replicas run side by side, so wall time loses engine CPU / replicas)."""
    parts = [s for s in result["stages"] if s["stage"] in NON_LLM]
    wall = sum(s["wall_s"] for s in parts)
    cpu = sum(s["cpu_s"] for s in parts)
    engine = sum(s["engine_cpu_s"] for s in parts)
    n = result["records"]
    return {
        "wall_s": wall,
        "rows_per_s": n / wall,
        "rows_per_s_without_engine": n / (wall - engine / result["replicas"]),
        "cpu_s": cpu,
        "other_work_cpu_s": sum(s["other_work_cpu_s"] for s in parts),
        "cpu_bound_rows_per_s": n / (cpu / CORES),
        "cpu_bound_rows_per_s_without_engine": n / ((cpu - engine) / CORES),
    }


def render(result: dict) -> str:
    lines = [f"config: {result['config']}", ""]
    header = ("stage", "shards", "rows", "wall s", "rows/s", "engine s", "cpu s", "other cpu s")
    lines.append(f"{header[0]:10}" + "".join(f"{h:>12}" for h in header[1:]))
    for s in result["stages"]:
        rate = s.get("rows_per_s")
        lines.append(
            f"{s['stage']:10}{s.get('shards', ''):>12}{s['rows'] or '':>12}{s['wall_s']:>12.1f}"
            f"{format(rate, '.0f') if rate else '':>12}{s['engine_cpu_s']:>12.1f}"
            f"{s['cpu_s']:>12.1f}{s['other_work_cpu_s']:>12.1f}"
        )
    path = non_llm(result)
    m = result["memory"]
    lines += [
        "",
        f"ray.init {result['ray_init_s']:.1f} s; run_job {result['run_wall_s']:.1f} s",
        f"non-LLM path (gold + judge + episodes + report): {path['wall_s']:.1f} s wall, "
        f"{path['rows_per_s']:,.0f} records/s ({path['rows_per_s_without_engine']:,.0f} without "
        f"the double's engine time); other work took {path['other_work_cpu_s']:.0f} of the "
        f"{path['wall_s'] * CORES:.0f} core-seconds",
        f"CPU-bound rate on {CORES} cores: {path['cpu_bound_rows_per_s']:,.0f} records/s "
        f"({path['cpu_bound_rows_per_s_without_engine']:,.0f} without the double), from "
        f"{path['cpu_s']:.0f} CPU-s",
        f"peak RSS: driver {m['driver_peak_mib']:.0f} MiB, largest worker "
        f"{m['largest_worker_peak_mib']:.0f} MiB ({m['workers_seen']} workers), driver + workers "
        f"{m['driver_plus_workers_peak_mib']:.0f} MiB at once; Ray daemons "
        f"{m['ray_daemons_peak_mib']:.0f} MiB",
        "machine: " + ", ".join(f"{k} {v}" for k, v in result["machine"].items()),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="judged pairs N")
    parser.add_argument("--pairs-per-user", type=int, default=20)
    parser.add_argument("--users-per-shard", type=int, default=500)
    parser.add_argument("--keep", type=Path, help="write the run here and keep it")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    result = run(args)
    print(render(result))
    if args.out:
        args.out.write_text(json.dumps({**result, "non_llm": non_llm(result)}, indent=1))


if __name__ == "__main__":
    main()
