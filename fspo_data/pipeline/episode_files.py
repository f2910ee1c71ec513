"""Where a run's final episodes are: the RAT stage's output when it ran, else `episodes/`.

Export and the trainer read through here, so both see the same committed shards.
"""

from __future__ import annotations

from pathlib import Path

from fspo_data.pipeline.io import load_manifest

STAGES_NEWEST_FIRST = ("rationales", "episodes")


def final_episode_files(run_dir: Path, require_manifest: bool = True) -> list[Path]:
    """Committed shards of the newest episode stage, in name order; [] if there are none.

    Only the shards a manifest lists count (a killed run may leave others). Without
    `require_manifest`, a folder with no manifest (a hand-made one) gives every visible
    Parquet file.
    """
    for stage in STAGES_NEWEST_FIRST:
        stage_dir = Path(run_dir) / stage
        manifest = load_manifest(stage_dir) if stage_dir.is_dir() else None
        if manifest is not None and manifest.shards:
            return [stage_dir / entry.file for _, entry in sorted(manifest.shards.items())]
        if manifest is None and stage_dir.is_dir() and not require_manifest:
            files = sorted(stage_dir.glob("[!.]*.parquet"))
            if files:
                return files
    return []
