"""The `source` section of a dataset config: the raw files ingest reads, by role, or the
event log it reads (format `events`, jobs/lake/eventlog.py). Re-exported by
jobs/lake/config.py, whose loader builds it; standard library only.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from jobs.lake.eventlog import EVENTS_FORMAT, EventLogConfig, check_events_source
from jobs.lake.loader import check_field

PRESPLIT_FORMAT = "ncf-presplit"  # test split given by the source; prepare keeps it as-is
# The raw formats jobs/readers.py reads: per format the file roles it needs, then the
# roles it may also read (side features). A one-file source (path/sha256) is "ratings".
SOURCE_FORMATS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "movielens-100k": (("ratings",), ("users", "items")),      # u.data, u.user, u.item
    "movielens-dat": (("ratings",), ("users", "items")),       # ML-1M/10M ratings.dat ...
    "movielens-csv": (("ratings",), ("items",)),               # ML-20M/25M/latest ratings.csv
    "lastfm-360k": (("ratings",), ("users",)),
    "lastfm-1k": (("ratings",), ("users",)),
    "lastfm-2k": (("ratings",), ("items", "tags", "item_tags")),
    PRESPLIT_FORMAT: (("train", "test", "test_negatives"), ()),  # the NCF paper's files
}
# Every source.format: the file formats above, and a growing event log (no fixed files).
ALL_FORMATS = (*SOURCE_FORMATS, EVENTS_FORMAT)
# Sources with no time per interaction: ts is null (expectations and prepare allow it).
FORMATS_WITHOUT_TIMESTAMPS = ("lastfm-360k", "lastfm-2k")
ENCODINGS = ("utf-8", "latin-1")
SHA256_TODO = "fill-in-on-first-download"


def _check_relative(path: str, field: str) -> None:
    check_field(not Path(path).is_absolute() and ".." not in Path(path).parts, field,
                "must be relative to the raw folder, without '..'")


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One raw file: where it lies, what its bytes hash to, how its text is encoded.

    sha256 is required. Where the project does not know it yet (a dataset never
    downloaded here) the config says SHA256_TODO: resolving the file then logs a
    warning with the sha256 of what it found, which ingest records in the manifest
    (to be checked against the publisher's checksum and written into the config);
    with `source.strict_checksums` (or ingest's --strict-checksums) it fails instead.
    A known sha256 that does not match always fails.
    """

    path: str  # relative to the raw folder (NCF_RAW_DIR / --raw-dir) or the download cache
    sha256: str
    archive_member: str | None = None  # its name inside the source's archive (default: path)
    url: str | None = None  # where to fetch this file (or its archive) if not the source's url
    encoding: str = "utf-8"  # latin-1 for the old MovieLens/HetRec files

    def __post_init__(self) -> None:
        _check_relative(self.path, "path")
        check_field(self.sha256 == SHA256_TODO or bool(re.fullmatch(r"[0-9a-f]{64}", self.sha256)),
                    "sha256", "must be 64 lower-case hex digits (sha256sum of the raw file), "
                    f"or {SHA256_TODO!r} until it is known")
        check_field(self.encoding in ENCODINGS, "encoding",
                    f"{self.encoding!r} is not one of {list(ENCODINGS)}")

    @property
    def sha256_known(self) -> bool:
        return self.sha256 != SHA256_TODO


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """The raw files of a dataset, by role (ratings, users, items, ...), and where to get them.

    A one-file source may give `path`/`sha256`/`archive_member` directly: that is the
    file of role "ratings". `files` then comes out filled, so readers only look there.
    Format `events` names no files: `events` says where the log lies and how to read it.
    """

    format: str
    url: str | None = None  # an archive (zip, tar.gz) holding the files, or the one file
    files: dict[str, SourceFile] = dataclasses.field(default_factory=dict)
    path: str | None = None
    sha256: str | None = None
    archive_member: str | None = None
    strict_checksums: bool = False  # true: a sha256 the config does not know yet fails
    events: EventLogConfig | None = None  # format events only

    def __post_init__(self) -> None:
        check_field(self.format in ALL_FORMATS, "format",
                    f"{self.format!r} is not one of {list(ALL_FORMATS)}")
        one_file = (self.path, self.sha256, self.archive_member)
        if check_events_source(self.format, self.events,
                               files_named=bool(self.files) or self.url is not None
                               or one_file != (None, None, None)):
            return
        if self.files:
            check_field(one_file == (None, None, None), "files",
                        "give either files: {role: {path, sha256}} or path/sha256, not both")
            required, optional = SOURCE_FORMATS[self.format]
            check_field(set(required) <= set(self.files), "files",
                        f"format {self.format} needs the roles {list(required)}")
            unknown = sorted(set(self.files) - set(required) - set(optional))
            check_field(not unknown, "files", f"unknown role(s) {unknown} for format "
                        f"{self.format}; known: {[*required, *optional]}")
            return
        check_field(self.path is not None, "path", "missing (or give files: {role: ...})")
        check_field(SOURCE_FORMATS[self.format][0] == ("ratings",), "path",
                    f"format {self.format} has several files: give files: {{role: {{path, "
                    f"sha256}}}} for {list(SOURCE_FORMATS[self.format][0])}")
        check_field(self.sha256 is not None, "sha256", "missing")
        ratings = SourceFile(path=str(self.path), sha256=str(self.sha256),
                             archive_member=self.archive_member)
        object.__setattr__(self, "files", {"ratings": ratings})
