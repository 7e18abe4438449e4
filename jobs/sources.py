"""Find the raw input files of a dataset: a local raw folder, the download cache, or a URL.

Pure standard library (no Spark), so a DAG task or a test can fetch the data alone.
Whichever way a file is found, its sha256 must equal the config's before any stage
reads it: a changed upstream file is an error to look at, not a silent new dataset.
A file whose checksum the config does not know yet (`sha256: fill-in-on-first-download`,
a public archive never downloaded here) is read with a warning giving the sha256 of the
copy found, which ingest records in the manifest, to be checked against the publisher's
checksum and written into the config; with `source.strict_checksums` (ingest's
--strict-checksums) it is an error instead.

    files = resolve_raw_files(cfg.source, raw_dir=Path(os.environ["NCF_RAW_DIR"]), cache_dir=...)
    files["ratings"], files.get("items"), ...
    found = find_raw_files(cfg.source, ...)  # RawFile(path, sha256, verified) by role

Each file is looked for at raw_dir/<path>, then cache_dir/<path>; the files still
missing are fetched, one download per URL (an archive holding several of them is
fetched once). Downloads go to a temporary file inside the cache folder and each
member is moved into place (`os.replace`) only once unpacked and verified, so a
killed download leaves nothing that a later run could mistake for a raw file.

`check_decompresses` reads a .gz or .bz2 raw file to its end, so that a truncated copy
fails naming the file before Spark reads it (Spark's own error is a Java stack trace).
"""

from __future__ import annotations

import bz2
import contextlib
import dataclasses
import gzip
import http.client
import io
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

from jobs.lake.config import SHA256_TODO, SourceConfig, SourceFile
from jobs.lake.layout import ENV_RAW_DIR, sha256_file

log = logging.getLogger(__name__)


class RawDataError(RuntimeError):
    """A raw file is missing, cannot be downloaded, or does not match its checksum."""


class CorruptFileError(RawDataError):
    """A compressed raw file is truncated or corrupt; the message starts with its path."""


@dataclasses.dataclass(frozen=True)
class RawFile:
    """A raw file found: where, its sha256, and whether the config's sha256 vouched for it
    (False: the config does not know it yet, and the run was lenient)."""

    path: Path
    sha256: str
    verified: bool


def resolve_raw_files(
    source: SourceConfig,
    *,
    raw_dir: Path | None,
    cache_dir: Path,
    timeout: float = 60,
    strict_checksums: bool | None = None,
) -> dict[str, Path]:
    """The raw file of every role of `source.files`, by role (`find_raw_files`' paths)."""
    return {role: found.path for role, found in find_raw_files(
        source, raw_dir=raw_dir, cache_dir=cache_dir, timeout=timeout,
        strict_checksums=strict_checksums).items()}


def find_raw_files(
    source: SourceConfig,
    *,
    raw_dir: Path | None,
    cache_dir: Path,
    timeout: float = 60,
    strict_checksums: bool | None = None,
) -> dict[str, RawFile]:
    """The checked raw file of every role of `source.files`, by role.

    strict_checksums: None takes `source.strict_checksums`. Raises RawDataError when a
    file is nowhere to be found or fetched, when its sha256 differs from the config's,
    or (strict only) when the config does not know its sha256 yet; lenient, such a file
    is logged as a warning with the sha256 found.
    """
    strict = source.strict_checksums if strict_checksums is None else strict_checksums
    found: dict[str, RawFile] = {}
    to_fetch: dict[str, dict[str, SourceFile]] = {}  # url -> {role: file}
    for role, file in source.files.items():
        candidates = ([Path(raw_dir) / file.path] if raw_dir is not None else []) + [
            Path(cache_dir) / file.path]
        local = next((path for path in candidates if path.is_file()), None)
        if local is not None:
            log.info("raw file %s: %s", role, local)
            found[role] = _checked(local, file, role, strict=strict)
            continue
        url = file.url or source.url
        if url is None:
            raise RawDataError(
                f"raw file {file.path!r} ({role}) not found (looked at "
                f"{', '.join(map(str, candidates))}) and the config has no source.url to "
                f"download it from; set {ENV_RAW_DIR} (or --raw-dir) to a folder holding "
                f"{file.path}")
        to_fetch.setdefault(url, {})[role] = file
    for url, files in to_fetch.items():
        found.update(_download(url, files, Path(cache_dir), timeout=timeout, strict=strict))
    return {role: found[role] for role in source.files}


def _checked(path: Path, file: SourceFile, role: str, *, strict: bool,
             name: str | None = None) -> RawFile:
    actual = sha256_file(path)
    if not file.sha256_known:
        unknown = (f"{name or path}: the config does not know this file's sha256 yet "
                   f"(source.files.{role}.sha256: {SHA256_TODO}); this copy's sha256 is "
                   f"{actual}. Check the file against its publisher's checksum (GroupLens "
                   "and last.fm publish md5 sums), then write that sha256 into the config")
        if strict:
            raise RawDataError(unknown + " (strict checksums: nothing read)")
        log.warning("%s; read anyway and recorded in the manifest (source.strict_checksums "
                    "or --strict-checksums would fail here)", unknown)
        return RawFile(Path(path), actual, verified=False)
    if actual != file.sha256:
        raise RawDataError(
            f"{name or path}: sha256 {actual} does not match the expected {file.sha256} "
            f"(source.files.{role}.sha256 in the config); the file is corrupt or a "
            "different version")
    return RawFile(Path(path), actual, verified=True)


def _download(url: str, files: Mapping[str, SourceFile], cache_dir: Path, *,
              timeout: float, strict: bool) -> dict[str, RawFile]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s into %s", url, cache_dir)
    fd, name = tempfile.mkstemp(dir=cache_dir, prefix=".download-")
    download = Path(name)
    wanted = ", ".join(file.path for file in files.values())
    try:
        try:
            with os.fdopen(fd, "wb") as out, \
                    urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, out)
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError,
                ConnectionError) as exc:
            raise RawDataError(
                f"could not download {url}: {exc}. Offline? Set {ENV_RAW_DIR} "
                f"(or --raw-dir) to a folder holding {wanted}") from exc
        placed = {}
        for role, file in files.items():
            target = cache_dir / file.path
            target.parent.mkdir(parents=True, exist_ok=True)
            with _member(download, url, file) as (data, label):
                fd_out, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
                unpacked = Path(tmp_name)
                try:
                    with os.fdopen(fd_out, "wb") as out:
                        shutil.copyfileobj(data, out)
                    checked = _checked(unpacked, file, role, strict=strict, name=label)
                    os.replace(unpacked, target)
                finally:
                    unpacked.unlink(missing_ok=True)
            log.info("raw file %s: %s (downloaded, sha256 %s)", role, target,
                     "verified" if checked.verified else "not in the config yet")
            placed[role] = dataclasses.replace(checked, path=target)
    finally:
        download.unlink(missing_ok=True)
    return placed


@contextlib.contextmanager
def _member(download: Path, url: str, file: SourceFile) -> Iterator[tuple[IO[bytes], str]]:
    """The bytes of `file` in the download: an archive member (zip, tar[.gz]) or the file."""
    member = file.archive_member or file.path
    if zipfile.is_zipfile(download):
        with zipfile.ZipFile(download) as zipped:
            if member not in zipped.namelist():
                raise RawDataError(
                    f"{url}: the archive has no member {member!r} (archive_member of "
                    f"{file.path}); it holds {sorted(zipped.namelist())[:20]}")
            with zipped.open(member) as data:
                yield data, f"{member} in {url}"
    elif tarfile.is_tarfile(download):
        with tarfile.open(download) as archive:
            try:
                extracted = archive.extractfile(member)
            except KeyError:
                extracted = None
            if extracted is None:
                raise RawDataError(
                    f"{url}: the archive has no file {member!r} (archive_member of "
                    f"{file.path}); it holds {sorted(archive.getnames())[:20]}")
            with extracted:
                yield extracted, f"{member} in {url}"
    else:
        with open(download, "rb") as data:
            yield data, f"{url} (downloaded)"


def _open_compressed(path: Path) -> io.BufferedIOBase | None:
    """A decompressing reader of `path`, for the extensions Spark (Hadoop) decompresses
    and Python can too; None for any other file."""
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".bz2":
        return bz2.open(path, "rb")
    return None


def check_decompresses(path: Path, *, chunk: int = 1 << 20) -> None:
    """Read a .gz/.bz2 file to the end of its compressed stream (other files: no-op).

    Raises CorruptFileError, its message starting with the path, when the stream ends
    early (a cut download) or does not decompress.
    """
    path = Path(path)
    stream = _open_compressed(path)
    if stream is None:
        return
    try:
        with stream:
            while stream.read(chunk):
                pass
    except EOFError as exc:
        raise CorruptFileError(f"{path} is truncated: its {path.suffix} stream ends before "
                               f"its end marker ({exc}); fetch the file again") from exc
    except (OSError, zlib.error) as exc:
        raise CorruptFileError(f"{path} is corrupt: not a readable {path.suffix} stream "
                               f"({exc}); fetch the file again") from exc
