import pyarrow as pa
import pyarrow.parquet as pq

from fspo_data.core.shards import (
    Manifest,
    committed_entries,
    committed_files,
    load_manifest,
    reconcile_with_disk,
    save_manifest,
    scan_committed,
    write_shard,
)


def _manifest() -> Manifest:
    return Manifest(stage="s", schema="x", config_fingerprint="f", package_versions={})


def test_write_shard_is_whole_and_described(tmp_path):
    table = pa.table({"a": [1, 2, 3]})
    entry = write_shard(tmp_path, "d-00000", table)
    assert entry.rows == 3 and entry.file == "d-00000.parquet"
    assert pq.read_table(tmp_path / entry.file).equals(table)
    assert not list(tmp_path.glob(".*tmp*"))


def test_manifest_round_trip_and_disk_check(tmp_path):
    manifest = _manifest()
    manifest.shards["d-00000"] = write_shard(tmp_path, "d-00000", pa.table({"a": [1]}))
    manifest.shards["d-00001"] = write_shard(tmp_path, "d-00001", pa.table({"a": [2]}))
    save_manifest(tmp_path, manifest)
    # A shard written after the last manifest save (killed before commit), a partial temp file,
    # and a committed shard that was altered on disk.
    write_shard(tmp_path, "d-00002", pa.table({"a": [3]}))
    (tmp_path / ".d-00003.parquet.tmp-1").write_bytes(b"partial")
    pq.write_table(pa.table({"a": [9, 9]}), tmp_path / "d-00001.parquet")
    loaded = load_manifest(tmp_path)
    notes = reconcile_with_disk(tmp_path, loaded)
    assert set(loaded.shards) == {"d-00000"}
    assert sorted(p.name for p in tmp_path.glob("*.parquet")) == ["d-00000.parquet"]
    assert not list(tmp_path.glob(".*tmp*"))
    assert len(notes) == 3  # the altered shard is both dropped from the manifest and deleted


def test_committed_files_are_the_manifest_shards_in_name_order(tmp_path):
    manifest = _manifest()
    for name in ("r-00001", "r-00000"):
        manifest.shards[name] = write_shard(tmp_path / "s", name, pa.table({"a": [name]}))
    save_manifest(tmp_path / "s", manifest)
    write_shard(tmp_path / "s", "r-00002", pa.table({"a": ["stray"]}))  # never committed
    files = committed_files(tmp_path, "s")
    assert [f.name for f in files] == ["r-00000.parquet", "r-00001.parquet"]
    assert [scan.collect().item() for scan in scan_committed(tmp_path, "s")] == [
        "r-00000",
        "r-00001",
    ]
    assert list(committed_entries(tmp_path, "s")) == ["r-00000", "r-00001"]
    # A hand-made folder with no manifest counts only where the caller allows it.
    write_shard(tmp_path / "hand", "x", pa.table({"a": [1]}))
    assert committed_files(tmp_path, "hand") == []
    assert committed_files(tmp_path, "hand", require_manifest=False) == [
        tmp_path / "hand/x.parquet"
    ]
    assert committed_files(tmp_path, "missing") == [] and committed_entries(tmp_path, "x") == {}
