"""The command-line arguments every Spark stage shares: config, logical date, lake root."""

from __future__ import annotations

import argparse
import logging
from datetime import date
from pathlib import Path

from jobs.lake import layout
from jobs.lake.config import DataConfig, load_data_config
from jobs.lake.loader import ConfigError


def logical_date(text: str) -> str:
    """argparse type: a calendar date written exactly YYYY-MM-DD (it names a lake folder)."""
    try:
        parsed: date | None = date.fromisoformat(text)
    except ValueError:
        parsed = None
    if parsed is None or parsed.isoformat() != text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date in the form YYYY-MM-DD")
    return text


def stage_parser(description: str | None) -> argparse.ArgumentParser:
    """--config, --logical-date and --lake-root (default $NCF_LAKE_ROOT, resolved later)."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path,
                        help="dataset config, e.g. configs/ml-100k.yaml")
    parser.add_argument("--logical-date", required=True, type=logical_date,
                        help="the run's date, YYYY-MM-DD (names the lake folder)")
    parser.add_argument("--lake-root", type=Path, default=None,
                        help=f"lake root (default ${layout.ENV_LAKE_ROOT}, "
                             f"else {layout.DEFAULT_LAKE_ROOT})")
    return parser


def lake_root(arg: Path | None) -> Path:
    """The --lake-root given, else the environment's (read here, in the entry point)."""
    return Path(arg).resolve() if arg is not None else layout.lake_root_from_env()


def configure_logging() -> None:
    """One format for the stages' log lines (a no-op where logging is already set up)."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def load_stage_config(path: Path) -> DataConfig:
    """The dataset config of a stage; a bad one ends it with exit code 2, the reason logged."""
    try:
        return load_data_config(path)
    except ConfigError as exc:
        logging.getLogger("jobs").error("%s", exc)
        raise SystemExit(2) from exc
