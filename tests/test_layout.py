"""jobs.lake.layout: schemas, atomic folder swap, manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from jobs.lake import layout


def test_layout_imports_no_pyspark_or_torch() -> None:
    assert layout.ddl(layout.PAIRS_SCHEMA) == "user_idx int, item_idx int, label tinyint"
    # The module must stay importable from every side of the pipeline.
    source = Path(layout.__file__).read_text()
    assert "import pyspark" not in source and "import torch" not in source


def test_arrow_schema_matches_the_spark_types() -> None:
    schema = layout.arrow_schema(layout.TOPK_SCHEMA)
    assert schema.names == layout.columns(layout.TOPK_SCHEMA)
    assert [schema.field(n).type for n in schema.names] == [pa.int32(), pa.int32(), pa.int32(),
                                                           pa.float32(), pa.string()]
    assert layout.arrow_schema(layout.PAIRS_SCHEMA).field(layout.LABEL).type == pa.int8()
    features = layout.arrow_schema(layout.ITEM_FEATURES_SCHEMA)
    assert features.field(layout.GENRES).type == pa.list_(pa.string())


def test_staged_dir_swaps_in_on_success(tmp_path: Path) -> None:
    final = tmp_path / "topk"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with layout.staged_dir(final) as tmp:
        assert not tmp.exists() and tmp.parent == tmp_path
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["topk"]  # no temp folders left


def test_staged_dir_keeps_the_old_folder_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "topk"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), layout.staged_dir(final) as tmp:
        tmp.mkdir()
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert sorted(p.name for p in final.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["topk"]


def test_staged_dir_that_was_never_written_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="never written"), \
            layout.staged_dir(tmp_path / "x"):
        pass
    assert not (tmp_path / "x").exists()


def test_manifest_keeps_one_entry_per_stage(tmp_path: Path) -> None:
    paths = layout.LakePaths(tmp_path, "ml-100k", "2026-11-23")
    layout.update_manifest(paths, "ingest", {"kept": 3})
    layout.update_manifest(paths, "prepare", {"n_users": 2})
    layout.update_manifest(paths, "ingest", {"kept": 4})  # a re-run replaces its entry
    manifest = json.loads(paths.manifest.read_text())
    assert manifest["dataset"] == "ml-100k" and manifest["logical_date"] == "2026-11-23"
    assert manifest["ingest"]["kept"] == 4 and manifest["prepare"]["n_users"] == 2
    assert "written_at" in manifest["ingest"]
    assert paths.manifest == tmp_path / "ml-100k" / "2026-11-23" / "_manifest.json"


def test_checksums(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "part-0.parquet").write_bytes(b"abc")
    (tmp_path / "a" / "_SUCCESS").write_bytes(b"")
    assert layout.sha256_file(tmp_path / "a" / "part-0.parquet") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    before = layout.sha256_dir(tmp_path / "a")
    (tmp_path / "a" / ".part-0.parquet.crc").write_bytes(b"ignored")
    assert layout.sha256_dir(tmp_path / "a") == before
    (tmp_path / "a" / "part-0.parquet").write_bytes(b"abd")
    assert layout.sha256_dir(tmp_path / "a") != before


def test_read_lake_table_missing_empty_and_written(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    with pytest.raises(layout.LakeReadError, match="does not exist"):
        layout.read_lake_table(tmp_path / "users", layout.USERS_SCHEMA)
    folder = tmp_path / "users"
    folder.mkdir()
    (folder / "_SUCCESS").write_bytes(b"")
    empty = layout.read_lake_table(folder, layout.USERS_SCHEMA)
    assert empty.num_rows == 0 and empty.schema == layout.arrow_schema(layout.USERS_SCHEMA)
    table = pa.table({layout.USER_ID: ["u1", "u2"], layout.USER_IDX: pa.array([0, 1], pa.int32()),
                      "extra": [1, 2]})
    pq.write_table(table, folder / "part-00000.parquet")
    read = layout.read_lake_table(folder, layout.USERS_SCHEMA)
    assert read.column_names == [layout.USER_ID, layout.USER_IDX]  # only the contract's columns
    assert read.column(layout.USER_ID).to_pylist() == ["u1", "u2"]
    (folder / "part-00001.parquet").write_bytes(b"not parquet")
    with pytest.raises(layout.LakeReadError, match="not a readable Parquet folder"):
        layout.read_lake_table(folder, layout.USERS_SCHEMA)


def _write_entries(root: str, stage: str, n: int) -> None:
    paths = layout.LakePaths(Path(root), "ml-100k", "2026-11-23")
    for i in range(n):
        layout.update_manifest(paths, f"{stage}-{i}", {"i": i, "pad": "x" * 2000})


def test_parallel_stages_never_drop_each_others_manifest_entries(tmp_path: Path) -> None:
    """Four processes (as parallel Airflow tasks) each write 25 entries at once: all 100
    are there. Without the lock, read-modify-write races drop entries."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_entries, args=(str(tmp_path), f"s{w}", 25))
               for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    manifest = layout.read_manifest(layout.LakePaths(tmp_path, "ml-100k", "2026-11-23"))
    assert {key for key in manifest if key.startswith("s")} == {
        f"s{w}-{i}" for w in range(4) for i in range(25)}
    # No lock file, no leftovers: the folder holds the manifest alone.
    assert [p.name for p in (tmp_path / "ml-100k" / "2026-11-23").iterdir()] == [
        layout.MANIFEST]
