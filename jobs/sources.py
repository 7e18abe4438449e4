"""Find the raw input file of a dataset: a local raw folder, the download cache, or its URL.

Pure standard library (no Spark), so a DAG task or a test can fetch the data alone.
Whichever way the file is found, its sha256 must equal the config's before any stage
reads it: a changed upstream file is an error to look at, not a silent new dataset.

    resolve_raw_file(cfg.source, raw_dir=Path(os.environ["NCF_RAW_DIR"]), cache_dir=...)

Downloads go to a temporary file inside the cache folder and are moved into place
(`os.replace`) only once unpacked and verified, so a killed download leaves nothing
that a later run could mistake for the raw file.
"""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from jobs.config import SourceConfig
from jobs.layout import ENV_RAW_DIR, sha256_file

log = logging.getLogger(__name__)


class RawDataError(RuntimeError):
    """The raw file is missing, cannot be downloaded, or does not match its checksum."""


def resolve_raw_file(
    source: SourceConfig,
    *,
    raw_dir: Path | None,
    cache_dir: Path,
    timeout: float = 60,
) -> Path:
    """The verified raw file of `source`: raw_dir/path, else cache_dir/path, else downloaded.

    Raises RawDataError when the file is nowhere to be found or fetched, or when its
    sha256 differs from `source.sha256`.
    """
    looked_at = []
    if raw_dir is not None:
        candidate = Path(raw_dir) / source.path
        looked_at.append(candidate)
        if candidate.is_file():
            log.info("raw file %s (from the raw folder)", candidate)
            return _verified(candidate, source.sha256)
    cached = Path(cache_dir) / source.path
    looked_at.append(cached)
    if cached.is_file():
        log.info("raw file %s (from the download cache)", cached)
        return _verified(cached, source.sha256)
    if source.url is None:
        raise RawDataError(
            f"raw file {source.path!r} not found (looked at {', '.join(map(str, looked_at))}) "
            f"and the config has no source.url to download it from; "
            f"set {ENV_RAW_DIR} (or --raw-dir) to a folder holding {source.path}")
    return _download(source.url, source, Path(cache_dir), timeout=timeout)


def _verified(path: Path, expected: str, *, name: str | None = None) -> Path:
    actual = sha256_file(path)
    if actual != expected:
        raise RawDataError(
            f"{name or path}: sha256 {actual} does not match the expected {expected} "
            "(source.sha256 in the config); the file is corrupt or a different version")
    return path


def _download(url: str, source: SourceConfig, cache_dir: Path, *, timeout: float) -> Path:
    target = cache_dir / source.path
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s into %s", url, cache_dir)
    fd, name = tempfile.mkstemp(dir=cache_dir, prefix=".download-")
    download = Path(name)
    try:
        try:
            with os.fdopen(fd, "wb") as out, \
                    urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, out)
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError,
                ConnectionError) as exc:
            raise RawDataError(
                f"could not download {url}: {exc}. Offline? Set {ENV_RAW_DIR} "
                f"(or --raw-dir) to a folder holding {source.path}") from exc
        if zipfile.is_zipfile(download):
            _unpack_member(download, url, source, target)
        else:
            _verified(download, source.sha256, name=f"{url} (downloaded)")
            os.replace(download, target)
    finally:
        download.unlink(missing_ok=True)
    log.info("raw file %s (downloaded, sha256 verified)", target)
    return target


def _unpack_member(archive: Path, url: str, source: SourceConfig, target: Path) -> None:
    """Extract the archive member to a temporary file beside `target`, verify, move in."""
    member = source.archive_member or source.path
    with zipfile.ZipFile(archive) as zipped:
        if member not in zipped.namelist():
            raise RawDataError(
                f"{url}: the archive has no member {member!r} "
                f"(source.archive_member); it holds {sorted(zipped.namelist())[:20]}")
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
        unpacked = Path(name)
        try:
            with os.fdopen(fd, "wb") as out, zipped.open(member) as data:
                shutil.copyfileobj(data, out)
            _verified(unpacked, source.sha256, name=f"{member} in {url}")
            os.replace(unpacked, target)
        finally:
            unpacked.unlink(missing_ok=True)
