"""Source formats: how the lines of each raw file split into fields, and what each field is.

Data only; jobs/readers.py parses lines by these descriptions and jobs/ingest.py picks
the format of a config's `source.format` (its file roles: jobs.lake.config.SOURCE_FORMATS).

The formats:
    movielens-100k  u.data `user \\t item \\t rating \\t unix s`; u.user, u.item (`|`)
    movielens-dat   ML-1M/10M ratings.dat `user::item::rating::unix s`; users.dat,
                    movies.dat (ML-1M's are latin-1)
    movielens-csv   ML-20M/25M/latest ratings.csv (header); movies.csv, RFC 4180 quotes
    lastfm-360k     `user sha1 \\t artist MBID \\t artist name \\t plays`; no time: ts null
    lastfm-1k       one listen a line: `user \\t ISO time \\t artist MBID \\t artist name
                    \\t track MBID \\t track name`; the item is the artist, value 1
    lastfm-2k       user_artists.dat `userID \\t artistID \\t weight` (header, CRLF),
                    no time: ts null; artists.dat names, tags as item genres
    ncf-presplit    the NCF paper's <name>.train.rating / .test.rating
                    `user \\t item \\t rating \\t unix s` and .test.negative
                    `(user,item) \\t neg1 \\t ... \\t neg99`

Format `events` (a growing log with a column mapping in the config) is read by
jobs/events.py instead.

Ids: MovieLens, HetRec 2K and the NCF files number their users and items (from 1, the
NCF files from 0): `first_id` says so, and a line whose id is no such number is rejected
(`bad_id`). last.fm 360K/1K ids are text (sha1 hashes, `user_000001`, MBIDs).
"""

from __future__ import annotations

import dataclasses

from jobs.lake.config import PRESPLIT_FORMAT


@dataclasses.dataclass(frozen=True)
class LineFormat:
    """How a file's lines split into fields."""

    sep: str
    n_fields: int  # exactly this many (at least, with at_least)
    expected: str  # for error messages: what a line should look like
    header: str | None = None  # the header line's text, dropped wherever it appears
    quoted: bool = False  # RFC 4180 quotes around fields holding the separator
    at_least: bool = False


@dataclasses.dataclass(frozen=True)
class InteractionsFormat:
    """Which fields of a ratings/plays/listens line are the user, item, value and time."""

    line: LineFormat
    user: int
    item: int
    value: int | None  # None: each line is one event of value 1 (a listen)
    ts: int | None  # None: the source has no time, ts is null
    iso_ts: bool = False  # ISO-8601 text, else unix seconds
    item_name: int | None = None  # the artist name: the item when the MBID is empty
    # Ids are whole numbers from first_id up, at most MAX_ID_DIGITS digits, written plainly
    # (no sign, no leading zero: "007" and "7" would be two users); None: ids are text.
    first_id: int | None = None


MAX_ID_DIGITS = 18  # every such id fits a bigint (19 digits would not all fit)


@dataclasses.dataclass(frozen=True)
class UsersFormat:
    line: LineFormat
    user: int
    age: int | None = None
    age_coded: bool = False  # MovieLens 1M age codes, else years
    gender: int | None = None
    occupation: int | None = None
    occupation_coded: bool = False  # MovieLens 1M occupation codes, else names
    country: int | None = None


@dataclasses.dataclass(frozen=True)
class ItemsFormat:
    line: LineFormat
    item: int
    title: int
    genres: int | None = None  # `|`-separated genres
    genre_flags: int | None = None  # first of u.item's 19 0/1 genre flags


@dataclasses.dataclass(frozen=True)
class SourceFormat:
    """The readers of one source format, by file role, and how duplicates combine."""

    interactions: dict[str, InteractionsFormat]
    combine: str  # "max" (ratings) or "sum" (play counts, listens)
    users: UsersFormat | None = None
    items: ItemsFormat | None = None


def _tsv(n: int, expected: str, header: str | None = None) -> LineFormat:
    return LineFormat("\t", n, expected, header=header)


_ML_RATINGS = "user id, item id, rating, unix seconds"
_ML_DAT = LineFormat("::", 4, f"4 '::'-separated fields: {_ML_RATINGS}")
_ML_MOVIES_DAT = ItemsFormat(LineFormat("::", 3, "3 '::'-separated fields: movie id, title, "
                                                 "'|'-separated genres"), 0, 1, genres=2)
_LASTFM_PROFILE = "user id, gender, age, country, signup date"
_PRESPLIT_RATINGS = InteractionsFormat(
    _tsv(4, f"4 tab-separated fields: {_ML_RATINGS} (ids from 0)"), 0, 1, 2, 3, first_id=0)

FORMATS: dict[str, SourceFormat] = {
    "movielens-100k": SourceFormat(
        interactions={"ratings": InteractionsFormat(
            _tsv(4, f"4 tab-separated fields per line, no header: {_ML_RATINGS}"), 0, 1, 2, 3,
            first_id=1)},
        combine="max",
        users=UsersFormat(LineFormat("|", 5, "5 '|'-separated fields: user id, age, gender, "
                                             "occupation, zip code"),
                          0, age=1, gender=2, occupation=3),
        items=ItemsFormat(LineFormat("|", 24, "24 '|'-separated fields: movie id, title, "
                                              "release date, video release date, IMDb URL, "
                                              "19 genre flags"),
                          0, 1, genre_flags=5),
    ),
    "movielens-dat": SourceFormat(
        interactions={"ratings": InteractionsFormat(_ML_DAT, 0, 1, 2, 3, first_id=1)},
        combine="max",
        users=UsersFormat(LineFormat("::", 5, "5 '::'-separated fields: user id, gender, "
                                              "age code, occupation code, zip code"),
                          0, age=2, age_coded=True, gender=1, occupation=3,
                          occupation_coded=True),
        items=_ML_MOVIES_DAT,
    ),
    "movielens-csv": SourceFormat(
        interactions={"ratings": InteractionsFormat(
            LineFormat(",", 4, f"a header and 4 comma-separated fields: {_ML_RATINGS}",
                       header="userId,movieId,rating,timestamp"), 0, 1, 2, 3, first_id=1)},
        combine="max",
        items=ItemsFormat(LineFormat(",", 3, "a header and 3 comma-separated fields (titles "
                                             "quoted): movie id, title, '|'-separated genres",
                                     header="movieId,title,genres", quoted=True),
                          0, 1, genres=2),
    ),
    "lastfm-360k": SourceFormat(
        interactions={"ratings": InteractionsFormat(
            _tsv(4, "4 tab-separated fields: user sha1, artist MBID, artist name, plays"),
            0, 1, 3, None, item_name=2)},
        combine="sum",
        users=UsersFormat(_tsv(5, f"5 tab-separated fields: {_LASTFM_PROFILE}"),
                          0, age=2, gender=1, country=3),
    ),
    "lastfm-1k": SourceFormat(
        interactions={"ratings": InteractionsFormat(
            _tsv(6, "6 tab-separated fields: user id, ISO-8601 time, artist MBID, artist name, "
                    "track MBID, track name"), 0, 2, None, 1, iso_ts=True, item_name=3)},
        combine="sum",
        users=UsersFormat(_tsv(5, f"a header and 5 tab-separated fields: {_LASTFM_PROFILE}",
                               header="#id\tgender\tage\tcountry\tregistered"),
                          0, age=2, gender=1, country=3),
    ),
    "lastfm-2k": SourceFormat(
        interactions={"ratings": InteractionsFormat(
            _tsv(3, "a header and 3 tab-separated fields: user id, artist id, listening count",
                 header="userID\tartistID\tweight"), 0, 1, 2, None, first_id=1)},
        combine="sum",
        items=ItemsFormat(_tsv(4, "a header and 4 tab-separated fields: artist id, name, url, "
                                  "picture url", header="id\tname\turl\tpictureURL"), 0, 1),
    ),
    PRESPLIT_FORMAT: SourceFormat(
        interactions={"train": _PRESPLIT_RATINGS, "test": _PRESPLIT_RATINGS},
        combine="max",
    ),
}
TAGS_LINE = _tsv(2, "a header and 2 tab-separated fields: tag id, tag", header="tagID\ttagValue")
TAG_ASSIGNMENTS_LINE = _tsv(6, "a header and 6 tab-separated fields: user id, artist id, tag id, "
                               "day, month, year",
                            header="userID\tartistID\ttagID\tday\tmonth\tyear")
TEST_NEGATIVES_LINE = LineFormat("\t", 2, "tab-separated fields: (user,item) then the sampled "
                                          "negative item ids", at_least=True)
