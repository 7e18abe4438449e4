"""jobs.ingest: main() into a tmp lake for one- and multi-file sources, the reconciliation
input_rows == kept + rejected + duplicates_collapsed, unusable files (a truncated .gz),
ids that are no numbers, events from the future, and prepare on what ingest wrote for the
NCF paper's pre-split files and for a source without timestamps."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from jobs import ingest, prepare, split
from jobs.ingest import IngestError, main
from jobs.lake import layout
from jobs.lake.config import SHA256_TODO
from jobs.sources import CorruptFileError, RawDataError
from tests.tiny_data import write_tiny_config, write_tiny_u_data

pytestmark = pytest.mark.spark

DATE = "2026-11-23"
NO_BAD_LINES = {reason: 0 for reason in ingest.REASONS}


def _seconds(interactions: DataFrame) -> DataFrame:
    return interactions.withColumn(layout.TS, F.unix_seconds(layout.TS))


def _run(config: Path, lake: Path, raw_dir: Path, tmp_path: Path) -> int:
    return main(["--config", str(config), "--logical-date", DATE,
                 "--lake-root", str(lake), "--raw-dir", str(raw_dir),
                 "--cache-dir", str(tmp_path / "cache")])


def _write_source(tmp_path: Path, dataset: str, fmt: str, files: dict[str, bytes],
                  encodings: dict[str, str] | None = None, *,
                  names: dict[str, str] | None = None, **ingest_cfg: Any) -> Path:
    """Raw files under tmp_path/raw/<dataset>/ (named by role, or `names`) and
    configs/<dataset>.yaml naming them."""
    raw = tmp_path / "raw" / dataset
    raw.mkdir(parents=True, exist_ok=True)
    entries = {}
    encodings = encodings or {}
    for role, data in files.items():
        name = (names or {}).get(role, role)
        (raw / name).write_bytes(data)
        entries[role] = {"path": f"{dataset}/{name}", "sha256": hashlib.sha256(data).hexdigest(),
                         **({"encoding": encodings[role]} if role in encodings else {})}
    config = tmp_path / "configs" / f"{dataset}.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump({
        "dataset": dataset, "source": {"format": fmt, "files": entries}, "ingest": ingest_cfg,
        "prepare": {"n_negatives": 1, "n_eval_negatives": 3, "seed": 5}}))
    return config


def _manifest(lake: Path, dataset: str) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads(
        layout.LakePaths(lake, dataset, DATE).manifest.read_text())["ingest"]
    return entry


def test_main_writes_interactions_rejects_and_manifest(spark: SparkSession,
                                                       tmp_path: Path) -> None:
    raw_dir = tmp_path / "raw"
    raw_file = raw_dir / "ml-100k" / "u.data"
    rows = write_tiny_u_data(raw_file, n_users=6,
                             bad_lines=("1\t2\tthree\t880000000", "garbage", "1\t2\t9\t5"))
    config = write_tiny_config(tmp_path / "configs", raw_file)
    lake = tmp_path / "lake"

    assert _run(config, lake, raw_dir, tmp_path) == 0

    paths = layout.LakePaths(lake, "tiny", DATE)
    interactions = spark.read.parquet(str(paths.path(layout.INTERACTIONS)))
    assertDataFrameEqual(
        _seconds(interactions),
        spark.createDataFrame([(u, i, t, float(r)) for u, i, r, t in rows],
                              "user_id string, item_id string, ts long, value double"))
    rejects = spark.read.parquet(str(paths.path(layout.REJECTS)))
    assert sorted(r[layout.REASON] for r in rejects.collect()) == [
        layout.REASON_NOT_NUMERIC, layout.REASON_OUT_OF_RANGE, layout.REASON_FIELD_COUNT]
    assert {r[layout.SOURCE_FILE] for r in rejects.collect()} == {str(raw_file)}

    entry = _manifest(lake, "tiny")
    assert (entry["input_rows"], entry["kept"], entry["rejected"],
            entry["duplicates_collapsed"]) == (len(rows) + 3, len(rows), 3, 0)
    assert entry["rejected_by_reason"] == {
        **NO_BAD_LINES, layout.REASON_FIELD_COUNT: 1, layout.REASON_NOT_NUMERIC: 1,
        layout.REASON_OUT_OF_RANGE: 1}
    assert entry["format"] == "movielens-100k"
    assert entry["files"] == {"ratings": {
        "path": str(raw_file), "sha256": layout.sha256_file(raw_file), "sha256_verified": True,
        "input_rows": len(rows) + 3, "rejected": 3}}
    assert entry["params"] == {"min_value": 1.0, "max_value": 5.0, "output_partitions": 1}
    assert layout.USER_FEATURES not in entry  # a one-file source has no side features
    # Part files are named without a job id, so re-runs give the same checksum.
    assert [p.name for p in paths.path(layout.INTERACTIONS).glob("part-*")] == [
        "part-00000.snappy.parquet"]


U_USER = b"1|24|M|technician|85711\n2|53|F|other|94043\n3|x|M|writer|1\n1|25|M|writer|2\n"
U_ITEM = "|".join(["10", "Misérables, Les (1995)", "", "", "", *["0"] * 8, "1", *["0"] * 10])


def test_duplicates_collapse_and_every_folder_reconciles(spark: SparkSession,
                                                         tmp_path: Path) -> None:
    ratings = (b"1\t10\t3\t100\n1\t10\t5\t100\n1\t10\t4\t200\n2\t10\t1\t100\n"
               b"2\t10\t1\t100\n2\t11\t9\t100\n2\t11\t1\n")
    config = _write_source(tmp_path, "dups", "movielens-100k",
                           {"ratings": ratings, "users": U_USER,
                            "items": (U_ITEM + "\n").encode("latin-1")},
                           encodings={"items": "latin-1"}, min_value=1, max_value=5)
    lake = tmp_path / "lake"
    assert _run(config, lake, tmp_path / "raw", tmp_path) == 0
    entry = _manifest(lake, "dups")
    assert (entry["input_rows"], entry["kept"], entry["rejected"],
            entry["duplicates_collapsed"]) == (7, 3, 2, 2)
    for name in (layout.INTERACTIONS, layout.USER_FEATURES, layout.ITEM_FEATURES):
        counts = entry if name == layout.INTERACTIONS else entry[name]
        assert counts["input_rows"] == (counts["kept"] + counts["rejected"]
                                        + counts["duplicates_collapsed"]), name
    assert (entry[layout.USER_FEATURES]["kept"], entry[layout.USER_FEATURES]["rejected"],
            entry[layout.USER_FEATURES]["duplicates_collapsed"]) == (2, 1, 1)
    base = layout.LakePaths(lake, "dups", DATE).base
    interactions = spark.read.parquet(str(base / layout.INTERACTIONS))
    assert sorted((r[0], r[1], r[2]) for r in _seconds(interactions).select(
        layout.USER_ID, layout.TS, layout.VALUE).collect()) == [
        ("1", 100, 5.0), ("1", 200, 4.0), ("2", 100, 1.0)]  # ratings keep the highest
    items = spark.read.parquet(str(base / layout.ITEM_FEATURES)).collect()
    assert [(r[layout.TITLE], list(r[layout.GENRES])) for r in items] == [
        ("Misérables, Les (1995)", ["Drama"])]
    users = spark.read.parquet(str(base / layout.USER_FEATURES))
    assert users.where("user_id = '1'").first()[layout.OCCUPATION] == "writer"  # type: ignore[index]


def test_reconciliation_failure_is_loud() -> None:
    reading = ingest._Reading(None, {"ratings": Path("r")}, None,  # type: ignore[arg-type]
                              input_rows={"ratings": 10})
    with pytest.raises(IngestError, match=r"10 lines read .* but 6 kept \+ 3 rejected \+ 0 "):
        ingest._reconcile(layout.INTERACTIONS, reading, ("ratings",),
                          {"r": {layout.REASON_EMPTY_ID: 3}}, events=6, kept=6)


LASTFM_2K = {
    "ratings": b"userID\tartistID\tweight\r\n2\t51\t13883\r\n2\t52\t11690\r\n3\t51\t1\r\n"
               b"3\t51\t2\r\n3\t\t5\r\n",
    "items": b"id\tname\turl\tpictureURL\n51\tDuran Duran\thttp://a\thttp://b\n"
             b"52\tMorcheeba\thttp://c\thttp://d\n",
    "tags": "tagID\ttagValue\r\n1\tmetal\r\n2\tnew wave\r\n3\tcafé\r\n".encode("latin-1"),
    "item_tags": b"userID\tartistID\ttagID\tday\tmonth\tyear\n2\t51\t2\t1\t4\t2009\n"
                 b"3\t51\t2\t1\t4\t2009\n2\t52\t3\t1\t4\t2009\n2\t51\t1\t1\t13\t2009\n",
}


def test_lastfm_2k_multi_file_crlf_headers_latin1_tags(spark: SparkSession,
                                                               tmp_path: Path) -> None:
    config = _write_source(tmp_path, "hetrec", "lastfm-2k", LASTFM_2K,
                           encodings={"tags": "latin-1"}, min_value=1)
    lake = tmp_path / "lake"
    assert _run(config, lake, tmp_path / "raw", tmp_path) == 0
    entry = _manifest(lake, "hetrec")
    assert (entry["input_rows"], entry["kept"], entry["rejected"],
            entry["duplicates_collapsed"]) == (5, 3, 1, 1)  # headers are no input rows
    assert {role: (f["input_rows"], f["rejected"]) for role, f in entry["files"].items()} == {
        "ratings": (5, 1), "items": (2, 0), "tags": (3, 0), "item_tags": (4, 1)}
    base = layout.LakePaths(lake, "hetrec", DATE).base
    got = {r[layout.ITEM_ID]: (r[layout.TITLE], list(r[layout.GENRES]))
           for r in spark.read.parquet(str(base / layout.ITEM_FEATURES)).collect()}
    assert got == {"51": ("Duran Duran", ["new wave"]), "52": ("Morcheeba", ["café"])}
    interactions = spark.read.parquet(str(base / layout.INTERACTIONS))
    assert sorted((r[0], r[1], r[2], r[3]) for r in interactions.collect()) == [
        ("2", "51", None, 13883.0), ("2", "52", None, 11690.0), ("3", "51", None, 3.0)]


def test_null_ts_hold_out_is_seeded_random(spark: SparkSession) -> None:
    """All-null ts are all ties: the seeded hash alone picks the held-out items."""
    rows = [(u, i, None) for u in range(40) for i in range(6)]
    positives = spark.createDataFrame(rows, "user_idx int, item_idx int, ts timestamp")

    def held_out(seed: int) -> list[tuple[int, int]]:
        _, validation, test = split.split_leave_one_out(positives, seed=seed)
        return sorted(map(tuple, test.union(validation).collect()))

    first = held_out(1)
    assert len(first) == 80 and held_out(1) == first
    assert held_out(2) != first
    test_items = [item for _, item in sorted(map(tuple, split.split_leave_one_out(
        positives, seed=1)[2].collect()))]
    assert len(set(test_items)) > 3  # not always the same (highest) item


TRAIN = b"0\t1\t5\t100\n0\t2\t4\t200\n0\t3\t3\t300\n1\t1\t4\t100\n1\t4\t2\t150\n1\t2\t5\t160\n"
TEST = b"0\t4\t4\t400\n1\t3\t5\t500\n"
NEGATIVES = b"(0,4)\t5\t6\t7\n(1,3)\t0\t5\t6\n"


def test_presplit_ingest_then_prepare_keeps_the_papers_test(spark: SparkSession,
                                                            tmp_path: Path) -> None:
    config = _write_source(tmp_path, "ncf", "ncf-presplit",
                           {"train": TRAIN, "test": TEST, "test_negatives": NEGATIVES},
                           min_value=1, max_value=5)
    lake = tmp_path / "lake"
    assert _run(config, lake, tmp_path / "raw", tmp_path) == 0
    entry = _manifest(lake, "ncf")
    assert (entry["input_rows"], entry["kept"]) == (8, 8)
    assert entry[layout.PRESPLIT_TEST] == {
        "input_rows": 2, "kept": 2, "rejected": 0, "rows": 8,
        "rejected_by_reason": NO_BAD_LINES}

    assert prepare.main(["--config", str(config), "--logical-date", DATE,
                         "--lake-root", str(lake)]) == 0
    base = layout.LakePaths(lake, "ncf", DATE).base
    users = {r[0]: r[1] for r in spark.read.parquet(str(base / layout.USERS)).collect()}
    items = {r[0]: r[1] for r in spark.read.parquet(str(base / layout.ITEMS)).collect()}
    assert sorted(items) == [str(i) for i in range(8)]  # negative-only items 5, 6, 7 indexed

    def pairs(name: str) -> list[tuple[str, str, int]]:
        by_user = {v: k for k, v in users.items()}
        by_item = {v: k for k, v in items.items()}
        return sorted((by_user[r[0]], by_item[r[1]], r[2])
                      for r in spark.read.parquet(str(base / name)).collect())

    assert pairs(layout.TEST) == [("0", "4", 1), ("0", "5", 0), ("0", "6", 0), ("0", "7", 0),
                                  ("1", "0", 0), ("1", "3", 1), ("1", "5", 0), ("1", "6", 0)]
    validation = [(u, i) for u, i, label in pairs(layout.VALIDATION) if label == 1]
    assert validation == [("0", "3"), ("1", "2")]  # latest remaining train rating per user
    train = [(u, i) for u, i, label in pairs(layout.TRAIN) if label == 1]
    assert train == [("0", "1"), ("0", "2"), ("1", "1"), ("1", "4")]


def test_unusable_file_raises_and_publishes_nothing(spark: SparkSession,
                                                    tmp_path: Path) -> None:
    raw_dir = tmp_path / "raw"
    raw_file = raw_dir / "ml-100k" / "u.data"
    write_tiny_u_data(raw_file, n_users=4)
    lake = tmp_path / "lake"
    assert _run(write_tiny_config(tmp_path / "configs", raw_file), lake, raw_dir, tmp_path) == 0
    base = layout.LakePaths(lake, "tiny", DATE).base
    before = {name: layout.sha256_dir(base / name)
              for name in (layout.INTERACTIONS, layout.REJECTS)}

    raw_file.write_text("")
    with pytest.raises(IngestError, match="is empty") as error:
        _run(write_tiny_config(tmp_path / "configs", raw_file), lake, raw_dir, tmp_path)
    assert str(raw_file) in str(error.value) and "tab-separated" in str(error.value)

    raw_file.write_text("1,10,4,881250949\n2,20,3,891717742\n")  # wrong separator
    with pytest.raises(IngestError, match="none of its 2 lines parses") as error:
        _run(write_tiny_config(tmp_path / "configs", raw_file), lake, raw_dir, tmp_path)
    assert str(raw_file) in str(error.value) and "tab-separated" in str(error.value)

    after = {name: layout.sha256_dir(base / name) for name in before}
    assert after == before
    assert sorted(p.name for p in base.iterdir()) == [
        layout.MANIFEST, layout.INTERACTIONS, layout.REJECTS]  # no staged leftovers


def test_side_file_errors_name_the_file_and_the_format(spark: SparkSession,
                                                       tmp_path: Path) -> None:
    ratings = b"1\t10\t3\t100\n"
    config = _write_source(tmp_path, "side", "movielens-100k",
                           {"ratings": ratings, "users": U_USER.replace(b"|", b",")})
    with pytest.raises(IngestError, match=r"side/users \(users\): none of its 4 lines parses"
                       r".*5 '\|'-separated fields"):
        _run(config, tmp_path / "lake", tmp_path / "raw", tmp_path)

    config = _write_source(tmp_path, "csv", "movielens-csv",
                           {"ratings": b"userId,movieId,rating,timestamp\r\n"})
    with pytest.raises(IngestError, match=r"csv/ratings \(ratings\) holds only its header; "
                                          "expected a header and 4 comma-separated"):
        _run(config, tmp_path / "lake", tmp_path / "raw", tmp_path)

    config = _write_source(tmp_path, "gone", "movielens-100k",
                           {"ratings": ratings, "users": U_USER})
    (tmp_path / "raw" / "gone" / "users").unlink()
    with pytest.raises(RawDataError, match=r"'gone/users' \(users\) not found"):
        _run(config, tmp_path / "lake", tmp_path / "raw", tmp_path)


def _unix(when: str) -> int:
    """Unix seconds of an ISO date/time in UTC."""
    return int(datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp())


def test_bad_ids_and_future_events_are_rejected_and_counted(spark: SparkSession,
                                                            tmp_path: Path) -> None:
    bad_ids = ["-3\t10\t4\t100", "99999999999999999999\t10\t4\t100", "1\tx\t4\t100"]
    future = [f"1\t12\t4\t{_unix('2286-11-20')}",
              f"1\t13\t4\t{_unix('2026-11-24')}"]  # the cut: 00:00 UTC the next day
    on_the_day = f"2\t10\t4\t{_unix('2026-11-23T23:59:59')}"
    config = _write_source(tmp_path, "bad", "movielens-100k", {"ratings": "\n".join(
        ["1\t10\t4\t100", on_the_day, *bad_ids, *future, ""]).encode()})
    lake = tmp_path / "lake"
    assert _run(config, lake, tmp_path / "raw", tmp_path) == 0

    base = layout.LakePaths(lake, "bad", DATE).base
    rejects = spark.read.parquet(str(base / layout.REJECTS))
    assert sorted((r[layout.LINE], r[layout.REASON]) for r in rejects.collect()) == sorted(
        [(line, layout.REASON_BAD_ID) for line in bad_ids]
        + [(line, layout.REASON_FUTURE_TS) for line in future])
    entry = _manifest(lake, "bad")
    assert entry["rejected_by_reason"] == {**NO_BAD_LINES, layout.REASON_BAD_ID: 3,
                                           layout.REASON_FUTURE_TS: 2}
    assert (entry["input_rows"], entry["kept"], entry["rejected"]) == (7, 2, 5)
    interactions = _seconds(spark.read.parquet(str(base / layout.INTERACTIONS)))
    assert sorted((r[0], r[2]) for r in interactions.collect()) == [
        ("1", 100), ("2", _unix("2026-11-23T23:59:59"))]


def test_last_fm_1k_text_ids_stay_valid(spark: SparkSession, tmp_path: Path) -> None:
    ids = ["-3", "99999999999999999999", "x"]
    listens = "".join(f"{user}\t2009-05-04T23:08:57Z\tmbid-{n}\tArtist {n}\t\tTrack\n"
                      for n, user in enumerate(ids))
    config = _write_source(tmp_path, "lfm", "lastfm-1k", {"ratings": listens.encode()})
    lake = tmp_path / "lake"
    assert _run(config, lake, tmp_path / "raw", tmp_path) == 0
    entry = _manifest(lake, "lfm")
    assert (entry["kept"], entry["rejected"]) == (3, 0)
    interactions = spark.read.parquet(str(layout.LakePaths(lake, "lfm", DATE).base
                                          / layout.INTERACTIONS))
    assert sorted(r[layout.USER_ID] for r in interactions.collect()) == sorted(ids)


def test_truncated_gzip_fails_naming_the_file_and_publishes_nothing(
        spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    u_data = tmp_path / "u.data"
    write_tiny_u_data(u_data, n_users=6)
    whole = gzip.compress(u_data.read_bytes())
    config = _write_source(tmp_path, "cut", "movielens-100k",
                           {"ratings": whole[: len(whole) // 2]}, names={"ratings": "u.data.gz"})
    raw_file = tmp_path / "raw" / "cut" / "u.data.gz"
    lake = tmp_path / "lake"
    base = layout.LakePaths(lake, "cut", DATE).base

    with pytest.raises(CorruptFileError) as error:  # found before Spark reads the file
        _run(config, lake, tmp_path / "raw", tmp_path)
    assert str(error.value).startswith(f"{raw_file} is truncated")
    assert "\n" not in str(error.value)
    assert not base.exists()

    # Spark's own read error, should a file get past that check: the same one clear line.
    monkeypatch.setattr(ingest, "check_decompresses", lambda path: None)
    with pytest.raises(CorruptFileError, match="^" + re.escape(
            f"{raw_file}: Spark could not read it to its end (java.io.EOFException")) as error:
        _run(config, lake, tmp_path / "raw", tmp_path)
    assert "\n" not in str(error.value) and "truncated or corrupt" in str(error.value)
    assert not base.exists()  # no interactions/, no staged leftovers


def test_unknown_checksum_is_recorded_unless_strict(spark: SparkSession,
                                                     tmp_path: Path) -> None:
    """A public archive's sha256 not known yet: the run warns and records the one found;
    --strict-checksums (or source.strict_checksums) fails before reading anything."""
    ratings = b"1\t10\t4\t100\n2\t10\t3\t200\n"
    config = _write_source(tmp_path, "todo", "movielens-100k", {"ratings": ratings})
    payload = yaml.safe_load(config.read_text())
    payload["source"]["files"]["ratings"]["sha256"] = SHA256_TODO
    config.write_text(yaml.safe_dump(payload))
    lake = tmp_path / "lake"
    base = layout.LakePaths(lake, "todo", DATE).base
    with pytest.raises(RawDataError, match="does not know this file's sha256 yet"):
        main(["--config", str(config), "--logical-date", DATE, "--lake-root", str(lake),
              "--raw-dir", str(tmp_path / "raw"), "--strict-checksums"])
    assert not base.exists()

    assert _run(config, lake, tmp_path / "raw", tmp_path) == 0
    assert _manifest(lake, "todo")["files"]["ratings"] == {
        "path": str(tmp_path / "raw" / "todo" / "ratings"),
        "sha256": hashlib.sha256(ratings).hexdigest(), "sha256_verified": False,
        "input_rows": 2, "rejected": 0}

    payload["source"]["strict_checksums"] = True
    config.write_text(yaml.safe_dump(payload))
    with pytest.raises(RawDataError, match=r"\(strict checksums: nothing read\)"):
        _run(config, lake, tmp_path / "raw", tmp_path)


def test_logical_date_must_be_yyyy_mm_dd(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(tmp_path / "c.yaml"), "--logical-date", "2026-11-3"])
    assert exit_info.value.code == 2
