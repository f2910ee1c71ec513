"""`fspo-data`: run the pipeline, inspect a run, report on it, export it, train on it."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fspo_data.core import storage
from fspo_data.core.config import JobConfig, load_config
from fspo_data.core.config_files import ConfigError, load_yaml_model
from fspo_data.core.model_config import EMBEDDED_MODEL
from fspo_data.pipeline.plan_command import add_plan_command
from fspo_data.pipeline.validate import load_job

EXIT_USAGE = 2


def run_location(value: str) -> storage.Location:
    """A run folder or `s3://BUCKET/PREFIX`, `gs://BUCKET/PREFIX` given on the command line."""
    try:
        return storage.location(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_run(args: argparse.Namespace) -> int:
    from fspo_data.pipeline.lock import RunDirBusy
    from fspo_data.pipeline.orchestrator import RunStopped, run_job
    from fspo_data.pipeline.resume import RunConfigMismatch
    from fspo_data.pipeline.summary import RunSummary, render

    config = load_job(args.config, to_run_here=True)
    if args.run_dir:
        config = config.model_copy(update={"run_dir": args.run_dir})
    after = None
    if config.report.after_run:
        from fspo_data.pipeline.report import add_diversity_to_summary

        def after(summary: RunSummary) -> RunSummary:  # writes into the run folder: locked
            return add_diversity_to_summary(summary, config)

    try:
        summary = run_job(
            config,
            progress=not args.quiet,
            force_new_config=args.force_new_config,
            source=args.config,
            after=after,
        )
    except (RunConfigMismatch, RunDirBusy) as exc:  # refused before changing anything
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RunStopped as exc:
        # Quoted, so that the hint can be pasted as is whatever the paths hold.
        run_dir = ["--run-dir", str(args.run_dir)] if args.run_dir else []
        again = shlex.join(["fspo-data", "run", str(args.config), *run_dir])
        print(f"error: {exc}; committed shards are kept, run `{again}` to resume", file=sys.stderr)
        return 1  # not EXIT_USAGE: nothing is wrong with the command, it can resume later
    render(summary)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from fspo_data.backends.openai_batch import BatchJournal
    from fspo_data.core.shards import load_manifest
    from fspo_data.pipeline.workers import BATCH_JOURNAL
    from fspo_data.stages import STAGES, plan_shards

    config = load_job(args.run_dir / "config.yaml")
    table = Table(title=f"{args.run_dir} (config {config.fingerprint()})")
    for column in ("stage", "committed shards", "rows", "state"):
        table.add_column(column)
    for stage in STAGES:
        planned = len(plan_shards(stage, config))
        manifest = load_manifest(args.run_dir / stage.name)
        done = len(manifest.shards) if manifest else 0
        rows = manifest.rows if manifest else 0
        state = "done" if done == planned else ("not started" if done == 0 else "partial")
        table.add_row(stage.name, f"{done}/{planned}", str(rows), state)
    Console().print(table)
    for line in BatchJournal(args.run_dir / BATCH_JOURNAL).in_flight():
        print(line)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fspo_data.pipeline.lock import RunDirBusy, holding, run_lock

    config = load_config(args.run_dir / "config.yaml")
    # It writes RUN_DIR/report/ and summary.json, which a run writes too: one writer at a time.
    try:
        with holding(run_lock(args.run_dir)):
            return write_report(args, config)
    except RunDirBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def write_report(args: argparse.Namespace, config: JobConfig) -> int:
    from fspo_data.personas.embeddings import make_embedder
    from fspo_data.pipeline.report import build_report, headline_figures
    from fspo_data.pipeline.summary import RunSummary, render_verdicts, write_summary

    # The summary-side figures of the verdicts (gold, judge statistics, truncation) come from
    # the run's summary.json; a run that has not finished has none, and those checks are grey.
    # JSON is YAML: a summary of another version fails in one line naming the file and field.
    summary_path = args.run_dir / "summary.json"
    summary = load_yaml_model(summary_path, RunSummary) if storage.is_file(summary_path) else None
    embedder = make_embedder(args.embedder or config.stages.persona_checks.embedder, args.device)
    result = build_report(
        args.run_dir,
        embedder,
        sample_size=args.sample_size,
        seed=config.seed,
        flag_settings=config.stages.judge,
        domains_dir=config.domains_dir,
        summary=summary,
        checks=config.checks,
    )
    for name, value in headline_figures(result).items():
        print(f"{name:>32}  {value:.4g}")
    render_verdicts(result.summary.verdicts, Console())
    print(f"wrote {result.html_path} and {result.json_path}")
    if summary is not None:  # keep summary.json's diversity figures and verdicts the report's
        write_summary(args.run_dir, result.summary)
        print(f"updated {summary_path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fspo_data.pipeline.export import ExportError, export_run

    try:
        result = export_run(
            args.run_dir,
            args.repo_id,
            out_dir=args.out_dir,
            private=args.private,
            dry_run=args.dry_run,
            license=args.license,
        )
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(result.listing())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from fspo_data.train import load_train_config
    from fspo_data.train.trainer import run_train

    summary = run_train(str(args.source), load_train_config(args.config))
    for stage in (summary.sft, summary.fspo):
        if stage is not None:
            print(
                f"{stage.stage:>5}: {stage.steps} steps, loss {stage.first_loss} -> "
                f"{stage.last_loss} (min {stage.min_loss}), {stage.tokens_per_second:.1f} tok/s, "
                f"model in {stage.model_dir}"
            )
    print(f"truncation: {summary.data.model_dump()}")
    print(f"loss plot: {summary.loss_plot}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from fspo_data.train import load_train_config
    from fspo_data.train.evaluate import run_eval

    judge = None
    if not args.no_judge:
        from fspo_data.train.judging import pipeline_judge

        job_config = load_job(args.judge_config or storage.location(args.source) / "config.yaml")
        judge = pipeline_judge(job_config)
    summary = run_eval(
        str(args.source),
        load_train_config(args.config),
        judge=judge,
        max_episodes=args.max_episodes,
        max_new_tokens=args.max_new_tokens,
    )
    print(summary.model_dump_json(indent=1))
    return 0


def cmd_model_path(args: argparse.Namespace) -> int:
    from fspo_data.backends.embedded import resolve_model_path

    try:
        print(resolve_model_path(args.model))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fspo-data",
        description="Synthetic personalized preference data (FSPO) on Ray, and a trainer for it.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run (or resume) every stage of a job config",
        description="Run every stage of CONFIG on Ray. Re-running resumes: committed shards "
        "are kept; after a config change, exactly the shards the change reaches are recomputed "
        "(one line per stage says which and why). Only a changed seed needs a new run_dir.",
    )
    run.add_argument("config", type=Path, help="job config YAML (see configs/demo.yaml)")
    run.add_argument("--run-dir", type=run_location, help="override the config's run_dir")
    run.add_argument(
        "--force-new-config",
        action="store_true",
        help="reuse a run_dir that holds a run of another seed (everything is recomputed)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(handler=cmd_run)

    status = commands.add_parser(
        "status",
        help="show which shards of a run are committed",
        description="Compare a run's manifests with what its config plans.",
    )
    status.add_argument(
        "run_dir", type=run_location, help="a run folder or s3://, gs:// URI (holds config.yaml)"
    )
    status.set_defaults(handler=cmd_status)

    report = commands.add_parser(
        "report",
        help="write the diversity report (HTML + JSON) of a run",
        description="Persona, question and candidate diversity, trait coverage, user agreement "
        "and label entropy, as RUN_DIR/report/diversity.html and diversity.json.",
    )
    report.add_argument(
        "run_dir", type=run_location, help="a run folder or s3://, gs:// URI (holds config.yaml)"
    )
    report.add_argument(
        "--sample-size",
        type=int,
        default=2000,
        help="items sampled for the quadratic figures (default 2000)",
    )
    report.add_argument("--embedder", help="embedding model (default: the config's, 'minilm')")
    report.add_argument("--device", default="cpu", help="device of the embedding model")
    report.set_defaults(handler=cmd_report)

    export = commands.add_parser(
        "export",
        help="write a Hub-ready dataset folder and upload it",
        description="Re-shard the run's episodes per domain and split, write a dataset card, and "
        "upload with resumable multi-commit upload. The token comes from HF_TOKEN.",
    )
    export.add_argument("run_dir", type=run_location, help="a finished run (folder or URI)")
    export.add_argument("--repo-id", required=True, help="ORG/NAME of the Hub dataset")
    export.add_argument(
        "--out-dir",
        type=Path,
        help="local export folder (default RUN_DIR/export; for a run on object storage, "
        "./NAME-export, NAME the run's last path segment)",
    )
    export.add_argument("--private", action="store_true", help="create the Hub repo as private")
    export.add_argument(
        "--dry-run",
        action="store_true",
        help="write the folder and list what would be uploaded; upload nothing",
    )
    export.add_argument("--license", default="apache-2.0", help="license in the dataset card")
    export.set_defaults(handler=cmd_export)

    train = commands.add_parser(
        "train",
        help="train an FSPO model on a run's episodes (SFT, then IPO/DPO with TRL)",
        description="Stage 1 SFT on preferred completions, stage 2 FSPO (IPO or DPO against a "
        "frozen SFT reference). Rerunning resumes from the last checkpoints.",
    )
    train.add_argument("source", help="a run folder or s3://, gs:// URI, or a Hub dataset id")
    train.add_argument("--config", type=Path, required=True, help="train YAML (configs/train.yaml)")
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser(
        "eval",
        help="evaluate a trained model on test_users and test_questions",
        description="Implicit-reward accuracy against the reference and the base model, and a "
        "personalized win rate judged by the run's judge in both orders.",
    )
    evaluate.add_argument("source", help="a run folder or s3://, gs:// URI, or a Hub dataset id")
    evaluate.add_argument("--config", type=Path, required=True, help="the train YAML used")
    evaluate.add_argument(
        "--judge-config",
        type=Path,
        help="job config whose model judges (default: SOURCE/config.yaml)",
    )
    evaluate.add_argument("--no-judge", action="store_true", help="skip the win rate")
    evaluate.add_argument("--max-episodes", type=int, help="episodes per split (default: all)")
    evaluate.add_argument(
        "--max-new-tokens",
        type=int,
        default=48,
        help="length of generated answers for the win rate",
    )
    evaluate.set_defaults(handler=cmd_eval)

    model_path = commands.add_parser(
        "model-path",
        help="print the folder an engine loads for a model (the embedded one converted once)",
        description="Print the Hugging Face folder vLLM loads for MODEL; for the embedded "
        "model, its GGUF converted once under ~/.cache/fspo-data. For `vllm serve` of the "
        'embedded weights: --model "$(fspo-data model-path)".',
    )
    model_path.add_argument("model", nargs="?", default=EMBEDDED_MODEL, help="default: %(default)s")
    model_path.set_defaults(handler=cmd_model_path)

    add_plan_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
