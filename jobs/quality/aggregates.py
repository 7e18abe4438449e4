"""Exact answers to a suite's expectations from one streaming pass, and a seeded sample.

Sampled validation (`jobs.quality.sampled`) never holds a whole split in pandas: a table is
read as Parquet record batches, one file after the other in name order, and each batch
updates a tally per expectation and a bounded sample. The tallies answer exactly what a
run on every row would: row counts, null counts, values out of a range or a set, blank
strings, uniqueness (of one column or of a column list). Other expectations (the columns,
the dtypes) are answered by the suite run on the sample, which holds the table's columns
and dtypes. `Scan.exact` holds each exact answer as the `success` and `result` of a Great
Expectations result, so `jobs.quality.runner` puts it in place of the sample's.

The sample is `sample_rows` rows drawn uniformly without replacement: each row gets a
random key from `numpy.random.default_rng(seed)`, in batch order, and the rows with the
smallest keys are kept (memory: the sample and one batch). The same files, seed and
size give the same sample.

No Great Expectations import here: the expectations are read through their attributes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.lake import layout
from jobs.lake.layout import Schema
from jobs.quality.results import SAMPLE_SIZE, DataValidationError

BATCH_ROWS = 1 << 20
# Unexpected values whose counts a result gives: the first 20, as GX's SUMMARY format
# counts its partial_unexpected_list (the message quotes SAMPLE_SIZE of them).
PARTIAL_VALUES = 20

ROW_COUNT = ("expect_table_row_count_to_be_between", "expect_table_row_count_to_equal")
MAP = ("expect_column_values_to_not_be_null", "expect_column_values_to_be_null",
       "expect_column_values_to_be_between", "expect_column_values_to_be_in_set",
       "expect_column_values_to_not_match_regex")
UNIQUE = ("expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique")
EXACT = (*ROW_COUNT, *MAP, *UNIQUE)


def expectation_key(kind: str, kwargs: dict[str, Any]) -> str:
    """What identifies an expectation in its suite and in a GX result (batch_id aside)."""
    shown = {key: value for key, value in kwargs.items() if key != "batch_id"}
    return f"{kind} {json.dumps(shown, sort_keys=True, default=str)}"


# --- reading ----------------------------------------------------------------------------


def parquet_files(path: Path) -> list[Path]:
    """The data files of a lake folder in name order (Spark's `_SUCCESS`, `.crc` and staged
    `.tmp-*` entries skipped, as `layout.read_lake_table` does)."""
    if not path.is_dir():
        raise DataValidationError(f"{path} does not exist: the stage that writes {path.name}/ "
                                  "has not run (or failed) for this date")
    return sorted(p for p in path.rglob("*.parquet")
                  if not any(part.startswith((".", "_")) for part in p.relative_to(path).parts))


def count_rows(path: Path) -> int:
    """Rows of a lake folder from the Parquet footers (no data read)."""
    return sum(pq.ParquetFile(file).metadata.num_rows for file in parquet_files(path))


def lake_batches(path: Path, schema: Schema) -> Iterator[pa.RecordBatch]:
    """A lake folder's rows, `schema`'s columns, batch by batch in a fixed order."""
    names = layout.columns(schema)
    for file in parquet_files(path):
        try:
            yield from pq.ParquetFile(file).iter_batches(batch_size=BATCH_ROWS, columns=names)
        except (pa.ArrowException, OSError) as exc:
            raise DataValidationError(f"{path}: not a readable Parquet folder with columns "
                                      f"{names}: {exc}") from exc


# --- tallies ----------------------------------------------------------------------------


def _unexpected(kind: str, kwargs: dict[str, Any], values: pa.Array) -> pa.Array:
    """Per row: does it break the map expectation (GX's rule: nulls break only not_be_null
    and are ignored by the others)."""
    if kind == "expect_column_values_to_not_be_null":
        return pc.is_null(values)
    if kind == "expect_column_values_to_be_null":
        return pc.is_valid(values)
    if kind == "expect_column_values_to_be_between":
        bad = pa.array(np.zeros(len(values), dtype=bool))
        if kwargs.get("min_value") is not None:
            bad = pc.or_(bad, pc.less(values, kwargs["min_value"]))
        if kwargs.get("max_value") is not None:
            bad = pc.or_(bad, pc.greater(values, kwargs["max_value"]))
        return pc.fill_null(bad, False)
    if kind == "expect_column_values_to_be_in_set":
        allowed = pa.array(list(kwargs["value_set"])).cast(values.type)
        return pc.and_(pc.invert(pc.is_in(values, value_set=allowed)), pc.is_valid(values))
    if kind == "expect_column_values_to_not_match_regex":
        return pc.fill_null(pc.match_substring_regex(values, kwargs["regex"]), False)
    raise ValueError(f"no exact rule for {kind}")


@dataclass
class _Tally:
    """One expectation's exact answer, built batch by batch."""

    kind: str
    kwargs: dict[str, Any]
    index_columns: tuple[str, ...]
    rows: int = 0
    unexpected: int = 0
    index_rows: list[dict[str, Any]] = field(default_factory=list)
    values: Counter[Any] = field(default_factory=Counter)
    parts: list[pa.Table] = field(default_factory=list)  # uniqueness: the key columns

    @property
    def columns(self) -> list[str]:
        if self.kind == "expect_compound_columns_to_be_unique":
            return list(self.kwargs["column_list"])
        return [self.kwargs["column"]] if "column" in self.kwargs else []

    def add(self, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows
        if self.kind in UNIQUE:  # the key columns, and those that name a row in messages
            names = list(dict.fromkeys([*self.columns, *self.index_columns]))
            self.parts.append(pa.Table.from_batches([batch.select(names)]))
        elif self.kind in MAP:
            column = self.kwargs["column"]
            bad = _unexpected(self.kind, self.kwargs, batch.column(column))
            count = int(pc.sum(bad).as_py() or 0)
            if count:
                self.unexpected += count
                self._remember(batch.filter(bad), column)

    def _remember(self, rows: pa.RecordBatch, column: str) -> None:
        first = PARTIAL_VALUES - sum(self.values.values())
        if first > 0:
            self.values.update(rows.column(column).slice(0, first).to_pylist())
        need = SAMPLE_SIZE - len(self.index_rows)
        present = [name for name in (*self.index_columns, column) if name in rows.schema.names]
        if self.index_columns and need > 0:
            self.index_rows += rows.select(list(dict.fromkeys(present))).slice(
                0, need).to_pylist()

    def answer(self) -> dict[str, Any]:
        """`success` and `result` as a Great Expectations result holds them."""
        if self.kind in ROW_COUNT:
            if self.kind == "expect_table_row_count_to_equal":
                ok = self.rows == self.kwargs["value"]
            else:
                low, high = self.kwargs.get("min_value"), self.kwargs.get("max_value")
                ok = (low is None or self.rows >= low) and (high is None or self.rows <= high)
            return {"success": ok, "result": {"observed_value": self.rows}}
        if self.kind in UNIQUE:
            self._count_duplicates()
        counts = [{"value": value, "count": count}
                  for value, count in self.values.most_common(SAMPLE_SIZE)]
        return {"success": self.unexpected == 0, "result": {
            "element_count": self.rows, "unexpected_count": self.unexpected,
            "partial_unexpected_counts": counts,
            "partial_unexpected_index_list": self.index_rows}}

    def _count_duplicates(self) -> None:
        """Rows whose (non-null) value, or value tuple, appears more than once."""
        names = self.columns
        if not self.parts:
            return
        rows = pa.concat_tables(self.parts).combine_chunks()
        self.parts = []
        rows = rows.append_column(_ROW, pa.array(np.arange(rows.num_rows)))
        if len(names) == 1:  # GX ignores nulls in a single-column uniqueness check
            rows = rows.filter(pc.is_valid(rows.column(names[0])))
        grouped = rows.group_by(names).aggregate([([], "count_all")])
        repeated = grouped.filter(pc.greater(grouped.column("count_all"), 1))
        self.unexpected = int(pc.sum(repeated.column("count_all")).as_py() or 0)
        for row in repeated.slice(0, SAMPLE_SIZE).to_pylist():
            value = tuple(row[name] for name in names)
            self.values[value[0] if len(value) == 1 else value] = row["count_all"]
        if self.index_columns and self.unexpected:
            first = rows.join(repeated.select(names), keys=names, join_type="inner").sort_by(_ROW)
            self.index_rows = first.slice(0, SAMPLE_SIZE).select(
                list(dict.fromkeys([*self.index_columns, *names]))).to_pylist()


_ROW = "__row"


# --- sampling -------------------------------------------------------------------------


class Reservoir:
    """`size` rows drawn uniformly without replacement from batches, seeded: the rows with
    the smallest random keys, kept in their original order. The rows keep the dtypes of
    the first batch (as written: the dtype checks run on the sample); `schema` shapes an
    empty sample."""

    def __init__(self, size: int, seed: int, schema: pa.Schema) -> None:
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.keys = np.empty(0)
        self.rows = schema.empty_table()
        self.seen = 0

    def add(self, batch: pa.RecordBatch) -> None:
        if self.seen == 0:
            self.rows = batch.schema.empty_table()
        elif not batch.schema.equals(self.rows.schema):
            batch = batch.cast(self.rows.schema)  # another file's nullability or metadata
        keys = np.concatenate([self.keys, self.rng.random(batch.num_rows)])
        rows = pa.concat_tables([self.rows, pa.Table.from_batches([batch])])
        self.seen += batch.num_rows
        if len(keys) > self.size:
            keep = np.sort(np.argpartition(keys, self.size - 1)[:self.size])
            keys, rows = keys[keep], rows.take(pa.array(keep))
        self.keys, self.rows = keys, rows.combine_chunks()


@dataclass(frozen=True)
class Scan:
    """One pass over a table: its row count, a seeded sample, exact answers by key."""

    rows: int
    sample: pa.Table
    exact: dict[str, dict[str, Any]]


def scan(expectations: Sequence[Any], batches: Iterable[pa.RecordBatch], schema: pa.Schema, *,
         sample_rows: int, seed: int, index_columns: Sequence[str] = ()) -> Scan:
    """Tally every expectation of `expectations` (GX Expectation objects) that has an exact
    rule over `batches`, and draw the sample; `schema` is the batches' arrow schema."""
    tallies = {}
    for expectation in expectations:
        kind = expectation.expectation_type
        if kind in EXACT:
            kwargs = dict(expectation.configuration.kwargs)
            tallies[expectation_key(kind, kwargs)] = _Tally(kind, kwargs, tuple(index_columns))
    reservoir = Reservoir(sample_rows, seed, schema)
    for batch in batches:
        if batch.num_rows == 0:
            continue
        reservoir.add(batch)
        for tally in tallies.values():
            tally.add(batch)
    return Scan(reservoir.seen, reservoir.rows,
                {key: tally.answer() for key, tally in tallies.items()})
