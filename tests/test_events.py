"""The `events` source (jobs/events.py, jobs/event_files.py, jobs/ingest_events.py) through
`python -m jobs.ingest`: each file type with a column mapping and an event-type filter,
the time units, missing days, incremental ingest equal to a full rebuild byte for byte,
and a replayed dataset (jobs/replay.py) that ingests to the same interactions as its
original file."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs import event_files, events, replay
from jobs.event_files import MissingPartitionError, plan_days
from jobs.ingest import main
from jobs.lake import layout
from jobs.lake.config import load_data_config
from jobs.lake.eventlog import resolve_location
from tests.tiny_data import write_tiny_config, write_tiny_u_data

D1, D2, D3 = "2026-11-21", "2026-11-22", "2026-11-23"
COLUMNS = ("who", "what", "when", "score", "kind", "note")
MAPPING = {"user": "who", "item": "what", "timestamp": "when", "value": "score",
           "event_type": "kind"}


def _unix(when: str) -> int:
    return int(datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp())


def _config(tmp_path: Path, dataset: str, location: Path | str, *,
            ingest: dict[str, Any] | None = None, **events_cfg: Any) -> Path:
    config = tmp_path / "configs" / f"{dataset}.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump({
        "dataset": dataset,
        "source": {"format": "events", "events": {"location": str(location), **events_cfg}},
        "ingest": ingest if ingest is not None else {"min_value": 1, "max_value": 5}}))
    return config


def _ingest(config: Path, lake: Path, date: str, *extra: str) -> int:
    return main(["--config", str(config), "--logical-date", date, "--lake-root", str(lake),
                 *extra])


def _entry(lake: Path, dataset: str, date: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        layout.LakePaths(lake, dataset, date).manifest.read_text())["ingest"]
    return loaded


def _rows(spark: SparkSession, lake: Path, dataset: str, date: str,
          name: str = layout.INTERACTIONS) -> list[tuple[Any, ...]]:
    frame = spark.read.parquet(str(layout.LakePaths(lake, dataset, date).path(name)))
    if name == layout.INTERACTIONS:
        frame = frame.withColumn(layout.TS, F.unix_seconds(layout.TS))
    return sorted(tuple(row) for row in frame.collect())


def _write(path: Path, file_type: str, rows: list[tuple[Any, ...]],
           malformed: str | None = None) -> None:
    """Rows of COLUMNS as one file of `file_type`, a malformed line last (text types)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if file_type == "parquet":
        columns = list(zip(*rows, strict=True))
        pq.write_table(pa.table({name: pa.array(values, type=pa.string())
                                 for name, values in zip(COLUMNS, columns, strict=True)}), path)
        return
    if file_type == "jsonl":
        lines = [json.dumps(dict(zip(COLUMNS, row, strict=True))) for row in rows]
    else:
        sep = "," if file_type == "csv" else "\t"
        quote = (lambda v: f'"{v}"' if "," in str(v) else str(v)) if sep == "," else str
        lines = [sep.join(COLUMNS)] + [sep.join(quote(v) for v in row) for row in rows]
    path.write_text("\n".join([*lines, *([malformed] if malformed else [])]) + "\n")


# Two days of a log: what each row should become.
DAY_1 = [
    ("u1", "i1", str(_unix(f"{D2}T10:00:00")), "4", "rate", "a, b"),  # kept (then collapsed)
    ("u2", "i1", str(_unix(f"{D2}T11:00:00")), "1", "buy", ""),  # kept
    ("u1", "i2", str(_unix(f"{D2}T12:00:00")), "3", "view", ""),  # filtered out
    ("", "i3", str(_unix(f"{D2}T12:00:00")), "3", "rate", ""),  # empty_id
    ("u3", "i3", "later", "2", "rate", ""),  # not_numeric
    ("u3", "i4", str(_unix(f"{D3}T01:00:00")), "2", "rate", ""),  # future_ts: after its day
    ("u4", "i1", str(_unix(f"{D2}T13:00:00")), "9", "rate", ""),  # out_of_range
]
DAY_2 = [
    ("u1", "i1", str(_unix(f"{D2}T10:00:00")), "5", "rate", ""),  # same event: max 5
    ("u3", "i3", str(_unix(f"{D3}T09:00:00")), "3.5", "buy", ""),  # kept
]
MALFORMED = {"csv": "u9,i9", "tsv": "u9\ti9", "jsonl": "not json"}


@pytest.mark.spark
@pytest.mark.parametrize("file_type", ["csv", "tsv", "jsonl", "parquet"])
def test_each_file_type_with_a_column_mapping_and_a_type_filter(
        spark: SparkSession, tmp_path: Path, file_type: str) -> None:
    log = tmp_path / "log"
    suffix = "tsv" if file_type == "tsv" else file_type
    _write(log / f"dt={D2}" / f"part-0.{suffix}", file_type, DAY_1, MALFORMED.get(file_type))
    _write(log / f"dt={D3}" / f"part-0.{suffix}", file_type, DAY_2)
    (log / f"dt={D3}" / "_SUCCESS").touch()  # no data: skipped
    config = _config(tmp_path, "ev", log, file_type=file_type, columns=MAPPING,
                     event_types=["rate", "buy"], ts_unit="seconds")
    lake = tmp_path / "lake"
    assert _ingest(config, lake, D3) == 0

    assert _rows(spark, lake, "ev", D3) == [
        ("u1", "i1", _unix(f"{D2}T10:00:00"), 5.0), ("u2", "i1", _unix(f"{D2}T11:00:00"), 1.0),
        ("u3", "i3", _unix(f"{D3}T09:00:00"), 3.5)]
    reasons = sorted(row[2] for row in _rows(spark, lake, "ev", D3, layout.REJECTS))
    wrong = [layout.REASON_FIELD_COUNT] if file_type in MALFORMED else []
    assert reasons == sorted([layout.REASON_EMPTY_ID, layout.REASON_NOT_NUMERIC,
                              layout.REASON_FUTURE_TS, layout.REASON_OUT_OF_RANGE, *wrong])
    entry = _entry(lake, "ev", D3)
    n_input = len(DAY_1) + len(DAY_2) + len(wrong)
    assert (entry["input_rows"], entry["kept"], entry["rejected"], entry["duplicates_collapsed"],
            entry[events.FILTERED]) == (n_input, 3, 4 + len(wrong), 1, 1)
    assert entry["incremental"] is False and entry["partitions"] == [D2, D3]
    files = entry["files"]
    assert sorted(f["partition"] for f in files.values()) == [D2, D3]
    day_1 = next(uri for uri, f in files.items() if f["partition"] == D2)
    path = log / f"dt={D2}" / f"part-0.{suffix}"
    assert day_1 == f"file:{path}" and files[day_1]["size"] == path.stat().st_size
    assert files[day_1]["input_rows"] == len(DAY_1) + len(wrong)
    assert datetime.fromisoformat(files[day_1]["mtime"]).timestamp() == pytest.approx(
        path.stat().st_mtime, abs=1)
    if file_type == "parquet":  # the footer's row count stands for the content
        assert files[day_1]["parquet_rows"] == len(DAY_1) and "sha256" not in files[day_1]
    else:
        assert files[day_1]["sha256"] == layout.sha256_file(path)
    assert {row[0] for row in _rows(spark, lake, "ev", D3, layout.REJECTS)} == {day_1}


def _classified(spark: SparkSession, folder: Path, **events_cfg: Any) -> list[tuple[Any, ...]]:
    """(line, reason, ts in micros) of every row of a flat log, through read_events."""
    config = load_data_config(_config(folder, "units", folder / "log", partitioning="flat",
                                      **events_cfg))
    files = event_files.list_files(spark, str(folder / "log"), day=None)
    classified, _ = events.read_events(spark, files, config.source, min_value=None,
                                       max_value=None,
                                       ts_before=datetime(2100, 1, 1, tzinfo=UTC))
    return sorted(tuple(row) for row in classified.select(
        layout.LINE, layout.REASON, F.unix_micros(layout.TS)).collect())


@pytest.mark.spark
def test_timestamp_units(spark: SparkSession, tmp_path: Path) -> None:
    columns = {"user": "u", "item": "i", "timestamp": "t"}
    cases = {
        "seconds": [("1700000000", None, 1_700_000_000_000_000),
                    ("1700000000.25", None, 1_700_000_000_250_000),
                    ("abc", layout.REASON_NOT_NUMERIC, None),
                    ("-5", layout.REASON_BAD_TIMESTAMP, None),
                    ("99999999999999", layout.REASON_BAD_TIMESTAMP, None)],
        "milliseconds": [("1700000000123", None, 1_700_000_000_123_000),
                         ("1.5", layout.REASON_BAD_TIMESTAMP, None),
                         ("x", layout.REASON_NOT_NUMERIC, None)],
        "iso8601": [("2023-11-14T22:13:20Z", None, 1_700_000_000_000_000),
                    ("2023-11-15T00:13:20.5+02:00", None, 1_700_000_000_500_000),
                    ("2023-11-15 00:13:20+0200", None, 1_700_000_000_000_000),
                    ("2023-11-14T22:13:20", layout.REASON_BAD_TIMESTAMP, None),  # no zone
                    ("2023-13-01T00:00:00Z", layout.REASON_BAD_TIMESTAMP, None)],
    }
    for unit, expected in cases.items():
        folder = tmp_path / unit
        lines = [json.dumps({"u": "a", "i": "b", "t": text}) for text, _, _ in expected]
        (folder / "log").mkdir(parents=True)
        (folder / "log" / "events.jsonl").write_text("\n".join(lines) + "\n")
        got = _classified(spark, folder, file_type="jsonl", columns=columns, ts_unit=unit)
        assert got == sorted((line, reason, micros) for line, (_, reason, micros)
                             in zip(lines, expected, strict=True)), unit
    # A Parquet timestamp column is a time already, whatever ts_unit says.
    folder = tmp_path / "native"
    (folder / "log").mkdir(parents=True)
    when = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    pq.write_table(pa.table({"u": ["a"], "i": [7], "t": pa.array([when], pa.timestamp("us",
                                                                                      "UTC"))}),
                   folder / "log" / "part.parquet")
    got = _classified(spark, folder, file_type="parquet", columns=columns)
    assert [(reason, micros) for _, reason, micros in got] == [(None, 1_700_000_000_000_000)]


def test_plan_days_reads_what_is_new_and_names_a_missing_day() -> None:
    found = [D1, D2, D3, "2026-11-24"]
    full = plan_days(found, logical_date=D3, ingested=None, allow_missing=False, location="L")
    assert (full.read, full.days) == ((D1, D2, D3), (D1, D2, D3))
    step = plan_days(found, logical_date=D3, ingested=[D1, D2], allow_missing=False,
                     location="L")
    assert (step.read, step.days) == ((D3,), (D1, D2, D3))
    with pytest.raises(MissingPartitionError, match=f"^L: partition dt={D2} is missing; "):
        plan_days([D1, D3], logical_date=D3, ingested=None, allow_missing=False, location="L")
    with pytest.raises(MissingPartitionError, match=f"dt={D3} is missing;.*from {D3}"):
        plan_days([D1, D2], logical_date=D3, ingested=[D1, D2], allow_missing=False,
                  location="L")
    with pytest.raises(MissingPartitionError, match=f"dt={D2} is missing \\(and 1 more"):
        plan_days([D1], logical_date=D3, ingested=[D1], allow_missing=False, location="L")
    with pytest.raises(MissingPartitionError, match=f"no partition .* on or before {D1}"):
        plan_days([D2], logical_date=D1, ingested=None, allow_missing=False, location="L")
    allowed = plan_days([D1, D3], logical_date=D3, ingested=None, allow_missing=True,
                        location="L")
    assert (allowed.read, allowed.missing) == ((D1, D3), (D2,))
    late = plan_days([D1, D2, D3], logical_date=D3, ingested=[D1, D3], allow_missing=False,
                     location="L")  # a day that landed late is read when it comes
    assert late.read == (D2,)


@pytest.mark.spark
def test_missing_partition_fails_in_one_line_and_publishes_nothing(
        spark: SparkSession, tmp_path: Path) -> None:
    log = tmp_path / "log"
    for day in (D1, D3):
        _write(log / f"dt={day}" / "part-0.csv", "csv",
               [("u1", "i1", str(_unix(f"{day}T10:00:00")), "5", "rate", "")])
    config = _config(tmp_path, "gap", log, columns=MAPPING)
    lake = tmp_path / "lake"
    with pytest.raises(MissingPartitionError) as error:
        _ingest(config, lake, D3)
    assert str(error.value) == (
        f"{log}: partition dt={D2} is missing; the run for {D3} needs every day from {D1}. "
        "Not landed yet: retry later; a day without events: write its folder empty, or set "
        "source.events.allow_missing_days")
    assert not layout.LakePaths(lake, "gap", D3).base.exists()
    allowed = _config(tmp_path, "gap", log, columns=MAPPING, allow_missing_days=True)
    assert _ingest(allowed, lake, D3) == 0
    assert _entry(lake, "gap", D3)["missing_days_allowed"] == [D2]


@pytest.mark.spark
def test_a_truncated_compressed_file_fails_in_one_line(spark: SparkSession,
                                                       tmp_path: Path) -> None:
    log = tmp_path / "log"
    plain = tmp_path / "day.csv"
    _write(plain, "csv", [(f"u{n}", "i1", str(_unix(f"{D3}T10:00:00")), "4", "rate", "")
                          for n in range(3000)])
    whole = gzip.compress(plain.read_bytes())
    (log / f"dt={D3}").mkdir(parents=True)
    (log / f"dt={D3}" / "part-0.csv.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(events.EventsError) as error:
        _ingest(_config(tmp_path, "cut", log, columns=MAPPING), tmp_path / "lake", D3)
    message = str(error.value)
    assert message.startswith(f"file:{log}/dt={D3}/part-0.csv.gz: Spark could not read it")
    assert "\n" not in message and "truncated or corrupt" in message
    assert not layout.LakePaths(tmp_path / "lake", "cut", D3).base.exists()


def _growing_log(log: Path) -> None:
    """Three days; play counts summed; a late event, a repeat across days, rejects."""
    rows = {
        D1: [("1", "10", str(_unix(f"{D1}T08:00:00")), "2", "play", ""),
             ("2", "10", str(_unix(f"{D1}T09:00:00")), "1", "play", ""),
             ("x", "10", str(_unix(f"{D1}T09:00:00")), "1", "play", "")],  # bad_id
        D2: [("1", "11", str(_unix(f"{D2}T08:00:00")), "1", "play", ""),
             ("3", "12", str(_unix(f"{D3}T08:00:00")), "1", "play", "")],  # future in D2
        D3: [("1", "10", str(_unix(f"{D1}T08:00:00")), "3", "play", ""),  # late repeat: 2 + 3
             ("3", "12", str(_unix(f"{D3}T08:00:00")), "1", "play", ""),
             ("4", "13", str(_unix(f"{D3}T10:00:00")), "1", "skip", "")],  # filtered
    }
    for day, day_rows in rows.items():
        _write(log / f"dt={day}" / "part-0.csv", "csv", day_rows, "1,2")


@pytest.mark.spark
def test_incremental_ingest_equals_a_full_rebuild_byte_for_byte(
        spark: SparkSession, tmp_path: Path) -> None:
    log = tmp_path / "log"
    _growing_log(log)
    settings = {"columns": MAPPING, "event_types": ["play"], "integer_ids": True,
                "combine": "sum"}
    config = _config(tmp_path, "grow", log, ingest={"output_partitions": 2}, **settings)
    nightly, rebuilt, gap = tmp_path / "nightly", tmp_path / "rebuilt", tmp_path / "gap"
    for day in (D1, D2, D3):
        assert _ingest(config, nightly, day) == 0
    assert _ingest(config, rebuilt, D3) == 0
    # A night missed (D2): D3 builds on the last night that ran and reads both new days.
    for day in (D1, D3):
        assert _ingest(config, gap, day) == 0
    after_gap = _entry(gap, "grow", D3)
    assert (after_gap["incremental"], after_gap["previous"],
            after_gap["partitions_read"]) == (True, D1, [D2, D3])

    step, full = _entry(nightly, "grow", D3), _entry(rebuilt, "grow", D3)
    assert (step["incremental"], step["previous"], step["partitions_read"]) == (True, D2, [D3])
    assert (full["incremental"], full["partitions_read"]) == (False, [D1, D2, D3])
    assert full["rebuild_reason"] == f"no ingest output before {D3}"
    assert step["partitions"] == full["partitions"] == [D1, D2, D3]
    assert list(step["files"]) == [f"file:{log}/dt={D3}/part-0.csv"]
    # This run's files reconcile: 4 rows = 1 added + 1 rejected + 1 collapsed + 1 filtered.
    assert (step["input_rows"], step["kept"], step["rejected"], step["duplicates_collapsed"],
            step[events.FILTERED], step["previous_rows"], step["rows"]) == (4, 1, 1, 1, 1, 3, 4)
    for name in (layout.INTERACTIONS, layout.REJECTS):
        ours = layout.LakePaths(nightly, "grow", D3).path(name)
        theirs = layout.LakePaths(rebuilt, "grow", D3).path(name)
        assert sorted(p.name for p in ours.glob("*.parquet")) == [
            "part-00000.snappy.parquet", "part-00001.snappy.parquet"]
        assert layout.sha256_dir(ours) == layout.sha256_dir(theirs), name
        assert layout.sha256_dir(layout.LakePaths(gap, "grow", D3).path(name)) == \
            layout.sha256_dir(theirs), name
    assert _rows(spark, nightly, "grow", D3)[0] == ("1", "10", _unix(f"{D1}T08:00:00"), 5.0)

    before = layout.sha256_dir(layout.LakePaths(nightly, "grow", D3).path(layout.INTERACTIONS))
    assert _ingest(config, nightly, D3) == 0  # a re-run: the same bytes
    assert layout.sha256_dir(layout.LakePaths(nightly, "grow", D3).path(
        layout.INTERACTIONS)) == before
    # Other settings than the day before's: a full rebuild, said so.
    other = _config(tmp_path, "grow", log, ingest={"output_partitions": 2, "max_value": 2},
                    **settings)
    assert _ingest(other, nightly, D3) == 0
    assert _entry(nightly, "grow", D3)["rebuild_reason"] == (
        f"{D2} was ingested with other source/ingest settings")


@pytest.mark.spark
def test_replayed_dataset_ingests_to_the_same_interactions(spark: SparkSession,
                                                           tmp_path: Path) -> None:
    raw_dir = tmp_path / "raw"
    raw_file = raw_dir / "ml-100k" / "u.data"
    rows = write_tiny_u_data(raw_file, n_users=6, bad_lines=("1\t2\tthree\t880000000",))
    original = write_tiny_config(tmp_path / "configs", raw_file)
    events_root = tmp_path / "events"
    args = ["--config", str(original), "--raw-dir", str(raw_dir), "--events-root",
            str(events_root)]
    assert replay.main(args) == 0
    log = events_root / "tiny"
    days = sorted(p.name for p in log.iterdir())
    first = datetime.fromtimestamp(min(t for *_, t in rows), UTC).date().isoformat()
    last = datetime.fromtimestamp(max(t for *_, t in rows), UTC).date().isoformat()
    assert days[0] == f"dt={first}" and days[-1] == f"dt={last}"
    assert len(days) == (datetime.fromisoformat(last) - datetime.fromisoformat(first)).days + 1
    part = log / days[0] / replay.PART_FILE
    assert part.read_text().splitlines()[0] == "user_id,item_id,ts,value"
    replayed = layout.sha256_dir(log)
    assert replay.main(args) == 0 and layout.sha256_dir(log) == replayed  # deterministic
    # Moved to end on a given day: every event by the same whole number of days.
    moved = tmp_path / "moved"
    assert replay.main([*args[:-1], str(moved), "--last-day", D3]) == 0
    shift = (datetime.fromisoformat(D3) - datetime.fromisoformat(last)).days
    moved_days = sorted(p.name for p in (moved / "tiny").iterdir())
    assert len(moved_days) == len(days) and moved_days[-1] == f"dt={D3}"
    first_row = (moved / "tiny" / moved_days[0] / replay.PART_FILE).read_text().splitlines()[1]
    assert first_row.split(",")[2] == str(int(part.read_text().splitlines()[1].split(",")[2])
                                          + shift * 86_400)

    lake = tmp_path / "lake"
    assert main(["--config", str(original), "--logical-date", last, "--lake-root", str(lake),
                 "--raw-dir", str(raw_dir)]) == 0
    shipped = yaml.safe_load((Path(__file__).parents[1] / "configs" /
                              "ml-100k-events.yaml").read_text())["source"]["events"]
    config = _config(tmp_path, "tiny-events", "tiny",
                     **{k: v for k, v in shipped.items() if k != "location"})
    assert _ingest(config, lake, last, "--events-root", str(events_root)) == 0
    entry = _entry(lake, "tiny-events", last)
    assert (entry["input_rows"], entry["kept"], entry["rejected"]) == (len(rows), len(rows), 0)
    assert layout.sha256_dir(layout.LakePaths(lake, "tiny", last).path(
        layout.INTERACTIONS)) == layout.sha256_dir(layout.LakePaths(
            lake, "tiny-events", last).path(layout.INTERACTIONS))


def test_a_relative_location_lies_under_the_events_root() -> None:
    assert resolve_location("ml-100k", "/data/events/") == "/data/events/ml-100k"
    assert resolve_location("s3a://bucket/logs/", "/data/events") == "s3a://bucket/logs"
    assert resolve_location("/abs/log", "s3a://b") == "/abs/log"
    assert resolve_location("clicks", "gs://b/events") == "gs://b/events/clicks"
