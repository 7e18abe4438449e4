"""One line per logical date of a dataset, read from the lake's manifests: what each night
did (standard library only).

    python -m jobs.ops.days --config configs/ml-100k-events.yaml [--from 2026-11-19]
        [--to 2026-11-23] [--lake-root data/lake]
    (make runs prints it under the table's publish history; make backfill after each date)

Per date, from `<lake>/<dataset>/<date>/_manifest.json`:
  events     ingest's `rows`: the interactions/ rows the run holds
  new        rows - previous_rows: what this run's days added to the earlier output
             (a full rebuild, marked `full`, counts every row)
  winner     the candidates' served family and its test HR@10 (after the refit on
             train + validation: the reported figure; test never chooses)
  gate       evaluate: `promoted vN`, or `kept vM` when version N was refused (the reason
             follows the line); `-` when evaluate has not run since candidates
  published  publish's rows and the version behind them; `-` when nothing was published
             after the gate (it skipped recommend and publish: the table kept its set)
An entry older than the stage before it (a re-run that stopped early) counts as absent.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jobs.lake import layout
from jobs.lake.cli import logical_date
from jobs.lake.loader import read_yaml

NONE = "-"
HEADER = (f"{'date':<10}  {'events':>9}  {'new':>8}  {'ingest':<11}  {'winner':<10}  "
          f"{'test HR@10':>10}  {'gate':<14}  {'published':<18}  gate's reason")


@dataclasses.dataclass(frozen=True)
class Day:
    """What one logical date's run recorded; None where its stage has not run (yet)."""

    logical_date: str
    events: int | None = None
    new_events: int | None = None
    incremental: bool | None = None
    family: str | None = None
    test_hr: float | None = None
    promoted: bool | None = None
    version: str | None = None  # the version evaluate registered
    champion: str | None = None  # the version serving after the gate
    reason: str | None = None
    published_rows: int | None = None
    published_version: str | None = None

    @property
    def gate(self) -> str:
        if self.promoted is None:
            return NONE
        return f"promoted v{self.version}" if self.promoted else f"kept v{self.champion}"

    def line(self) -> str:
        events = NONE if self.events is None else f"{self.events:,}"
        new = NONE if self.new_events is None else f"+{self.new_events:,}"
        ingest = NONE if self.incremental is None else (
            "incremental" if self.incremental else "full")
        hr = NONE if self.test_hr is None else f"{self.test_hr:.4f}"
        published = NONE if self.published_rows is None else (
            f"{self.published_rows:,} rows (v{self.published_version})")
        if self.promoted is None:
            reason = ""
        elif self.promoted:
            reason = self.reason or ""
        else:
            reason = f"v{self.version} refused: {self.reason}"
        return (f"{self.logical_date:<10}  {events:>9}  {new:>8}  {ingest:<11}  "
                f"{self.family or NONE:<10}  {hr:>10}  {self.gate:<14}  {published:<18}  "
                f"{reason}").rstrip()


def _after(entry: Mapping[str, Any] | None, before: Mapping[str, Any] | None) -> bool:
    """`entry` exists and was written no earlier than `before` (when there is one)."""
    if not entry:
        return False
    return before is None or str(entry.get("written_at", "")) >= str(
        before.get("written_at", ""))


def _test_hr(candidates: Mapping[str, Any], k: int) -> float | None:
    family = candidates.get("families", {}).get(candidates.get("served_family"), {})
    value = (family.get("test") or {}).get(f"test_hr_{k}")
    return None if value is None else float(value)


def summarize(manifest: Mapping[str, Any], logical_date: str, *, k: int = 10) -> Day:
    """The Day of one run's manifest."""
    ingest = manifest.get("ingest") or {}
    fields: dict[str, Any] = {}
    if ingest:
        rows = int(ingest["rows"]) if "rows" in ingest else int(ingest.get("kept", 0))
        fields |= {"events": rows, "new_events": rows - int(ingest.get("previous_rows") or 0),
                   "incremental": bool(ingest.get("incremental", False))}
    candidates = manifest.get("candidates") or {}
    evaluate = manifest.get("evaluate") or {}
    publish = manifest.get("publish") or {}
    if _after(candidates, manifest.get("prepare")):
        fields |= {"family": candidates.get("served_family"), "test_hr": _test_hr(candidates, k)}
        if _after(evaluate, candidates):
            fields |= {"promoted": bool(evaluate["promoted"]),
                       "version": str(evaluate["model_version"]),
                       "champion": str(evaluate.get("champion_version")),
                       "reason": evaluate.get("reason")}
            if _after(publish, evaluate):
                fields |= {"published_rows": int(publish["rows"]),
                           "published_version": str(publish.get("model_version"))}
    return Day(logical_date, **fields)


def days(lake_root: Path, dataset: str, dates: Iterable[str] | None = None) -> list[Day]:
    """A Day per date (default: every date in the lake), oldest first."""
    chosen = layout.lake_dates(lake_root, dataset) if dates is None else sorted(dates)
    return [summarize(layout.read_manifest(layout.LakePaths(Path(lake_root), dataset, day)),
                      day) for day in chosen]


def render(summary: Sequence[Day]) -> str:
    return "\n".join([HEADER, *(day.line() for day in summary)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path,
                        help="dataset config, e.g. configs/ml-100k-events.yaml")
    parser.add_argument("--from", dest="first", type=logical_date, default=None)
    parser.add_argument("--to", dest="last", type=logical_date, default=None)
    parser.add_argument("--lake-root", type=Path, default=None,
                        help=f"default ${layout.ENV_LAKE_ROOT}, else {layout.DEFAULT_LAKE_ROOT}")
    parser.add_argument("--json", action="store_true", help="one JSON object per date")
    args = parser.parse_args(argv)
    dataset = str(read_yaml(args.config)["dataset"])
    root = args.lake_root.resolve() if args.lake_root else layout.lake_root_from_env()
    chosen = [day for day in layout.lake_dates(root, dataset)
              if (args.first is None or day >= args.first)
              and (args.last is None or day <= args.last)]
    summary = days(root, dataset, chosen)
    if args.json:
        for day in summary:
            sys.stdout.write(json.dumps(dataclasses.asdict(day)) + "\n")
    elif not summary:
        sys.stdout.write(f"{dataset}: no run in {root / dataset}\n")
    else:
        sys.stdout.write(f"{dataset}: the nights in {root / dataset}\n{render(summary)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
