"""jobs.sources: raw folder, download cache, or a zip / tar.gz served over HTTP on 127.0.0.1;
compressed raw files read to their end."""

from __future__ import annotations

import bz2
import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import socket
import tarfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobs.lake.config import SHA256_TODO, SourceConfig, SourceFile
from jobs.lake.layout import ENV_RAW_DIR
from jobs.sources import (
    CorruptFileError,
    RawDataError,
    RawFile,
    check_decompresses,
    find_raw_files,
    resolve_raw_files,
)

RAW = b"1\t10\t4\t881250949\n2\t20\t3\t891717742\n"
MEMBER = "ml-100k/u.data"
USERS = b"1|24|M|technician|85711\n"
USERS_MEMBER = "ml-100k/u.user"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _source(url: str | None, sha256: str = _sha(RAW), member: str | None = MEMBER) -> SourceConfig:
    return SourceConfig(format="movielens-100k", path=MEMBER, sha256=sha256, url=url,
                        archive_member=member)


def resolve_raw_file(source: SourceConfig, **kwargs: object) -> Path:
    """The one file of a one-file source."""
    return resolve_raw_files(source, **kwargs)["ratings"]  # type: ignore[arg-type]


def _two_files(url: str | None, users_sha: str = _sha(USERS)) -> SourceConfig:
    return SourceConfig(format="movielens-100k", url=url, files={
        "ratings": SourceFile(path=MEMBER, sha256=_sha(RAW)),
        "users": SourceFile(path="users/u.user", archive_member=USERS_MEMBER,
                            sha256=users_sha)})


class _Server:
    """A static file server on a free port of 127.0.0.1 that counts its requests."""

    def __init__(self, folder: Path) -> None:
        self.requests = 0
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                outer.requests += 1
                super().do_GET()

            def log_message(self, *_args: object) -> None:
                pass

        handler = functools.partial(Handler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[_Server]:
    folder = tmp_path / "www"
    folder.mkdir()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(MEMBER, RAW)
        archive.writestr(USERS_MEMBER, USERS)
        archive.writestr("ml-100k/README", b"not the data")
    (folder / "ml-100k.zip").write_bytes(buffer.getvalue())
    with tarfile.open(folder / "ml-100k.tar.gz", "w:gz") as archive:
        for name, data in ((MEMBER, RAW), (USERS_MEMBER, USERS)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    (folder / "u.data").write_bytes(RAW)
    served = _Server(folder)
    served.thread.start()
    yield served
    served.httpd.shutdown()
    served.httpd.server_close()


def test_download_unpacks_verifies_then_cache_is_used(server: _Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    source = _source(server.url("ml-100k.zip"))

    first = resolve_raw_file(source, raw_dir=None, cache_dir=cache)
    assert first == cache / MEMBER
    assert first.read_bytes() == RAW
    assert server.requests == 1
    assert sorted(p.name for p in cache.rglob("*")) == ["ml-100k", "u.data"]  # no temp left

    second = resolve_raw_file(source, raw_dir=None, cache_dir=cache)
    assert second == first
    assert server.requests == 1  # served from the cache, no network


def test_a_plain_file_url_is_the_raw_file(server: _Server, tmp_path: Path) -> None:
    got = resolve_raw_file(_source(server.url("u.data"), member=None), raw_dir=None,
                           cache_dir=tmp_path / "cache")
    assert got.read_bytes() == RAW


def test_downloaded_checksum_mismatch_names_file_and_both_sums(server: _Server,
                                                               tmp_path: Path) -> None:
    wrong = "0" * 64
    with pytest.raises(RawDataError) as error:
        resolve_raw_file(_source(server.url("ml-100k.zip"), sha256=wrong), raw_dir=None,
                         cache_dir=tmp_path / "cache")
    message = str(error.value)
    assert MEMBER in message and wrong in message and _sha(RAW) in message
    assert not (tmp_path / "cache" / MEMBER).exists()  # a bad file never enters the cache


def test_cached_checksum_mismatch(tmp_path: Path) -> None:
    cached = tmp_path / "cache" / MEMBER
    cached.parent.mkdir(parents=True)
    cached.write_bytes(RAW + b"3\t30\t5\t891717743\n")
    with pytest.raises(RawDataError, match="does not match") as error:
        resolve_raw_file(_source(None), raw_dir=None, cache_dir=tmp_path / "cache")
    assert str(cached) in str(error.value)


def test_unreachable_url_says_to_set_the_raw_dir(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nobody listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/ml-100k.zip"
    with pytest.raises(RawDataError) as error:
        resolve_raw_file(_source(url), raw_dir=None, cache_dir=tmp_path / "cache", timeout=5)
    assert url in str(error.value)
    assert ENV_RAW_DIR in str(error.value)
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_http_error_is_a_raw_data_error(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(RawDataError, match="404"):
        resolve_raw_file(_source(server.url("missing.zip")), raw_dir=None,
                         cache_dir=tmp_path / "cache")


def test_raw_dir_is_preferred_over_cache(server: _Server, tmp_path: Path) -> None:
    raw = tmp_path / "raw" / MEMBER
    raw.parent.mkdir(parents=True)
    raw.write_bytes(RAW)
    cached = tmp_path / "cache" / MEMBER
    cached.parent.mkdir(parents=True)
    cached.write_bytes(RAW)
    got = resolve_raw_file(_source(server.url("ml-100k.zip")), raw_dir=tmp_path / "raw",
                           cache_dir=tmp_path / "cache")
    assert got == raw
    assert server.requests == 0


def test_no_url_and_no_file_names_the_paths_looked_at(tmp_path: Path) -> None:
    with pytest.raises(RawDataError) as error:
        resolve_raw_file(_source(None), raw_dir=tmp_path / "raw", cache_dir=tmp_path / "cache")
    message = str(error.value)
    assert str(tmp_path / "raw" / MEMBER) in message
    assert str(tmp_path / "cache" / MEMBER) in message
    assert ENV_RAW_DIR in message


@pytest.mark.parametrize("archive", ["ml-100k.zip", "ml-100k.tar.gz"])
def test_one_download_unpacks_every_file_of_an_archive(server: _Server, tmp_path: Path,
                                                       archive: str) -> None:
    cache = tmp_path / "cache"
    got = resolve_raw_files(_two_files(server.url(archive)), raw_dir=None, cache_dir=cache)
    assert got == {"ratings": cache / MEMBER, "users": cache / "users" / "u.user"}
    assert (got["ratings"].read_bytes(), got["users"].read_bytes()) == (RAW, USERS)
    assert server.requests == 1


def test_files_found_locally_are_not_downloaded(server: _Server, tmp_path: Path) -> None:
    raw = tmp_path / "raw" / MEMBER
    raw.parent.mkdir(parents=True)
    raw.write_bytes(RAW)
    got = resolve_raw_files(_two_files(server.url("ml-100k.zip")), raw_dir=tmp_path / "raw",
                            cache_dir=tmp_path / "cache")
    assert got["ratings"] == raw and got["users"].read_bytes() == USERS
    assert server.requests == 1  # for u.user only


def test_a_file_may_have_its_own_url(server: _Server, tmp_path: Path) -> None:
    source = SourceConfig(format="movielens-100k", files={
        "ratings": SourceFile(path=MEMBER, sha256=_sha(RAW), url=server.url("u.data"))})
    assert resolve_raw_files(source, raw_dir=None,
                             cache_dir=tmp_path / "cache")["ratings"].read_bytes() == RAW


def test_unknown_checksum_fails_when_strict_and_tells_the_one_found(
        server: _Server, tmp_path: Path) -> None:
    for strict in ({"strict_checksums": True}, {}):
        source = _two_files(server.url("ml-100k.zip"), users_sha=SHA256_TODO)
        if not strict:  # the config's key, not the argument
            source = dataclasses.replace(source, strict_checksums=True)
        with pytest.raises(RawDataError) as error:
            resolve_raw_files(source, raw_dir=None, cache_dir=tmp_path / "cache", **strict)
        message = str(error.value)
        assert f"{USERS_MEMBER} in {server.url('ml-100k.zip')}" in message
        assert "source.files.users.sha256" in message and _sha(USERS) in message
        assert not (tmp_path / "cache" / "users" / "u.user").exists()  # not cached


def test_unknown_checksum_is_a_warning_and_recorded_by_default(
        server: _Server, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = _two_files(server.url("ml-100k.zip"), users_sha=SHA256_TODO)
    found = find_raw_files(source, raw_dir=None, cache_dir=tmp_path / "cache")
    assert found["users"] == RawFile(tmp_path / "cache" / "users" / "u.user", _sha(USERS),
                                     verified=False)
    assert found["ratings"].verified and found["ratings"].sha256 == _sha(RAW)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and _sha(USERS) in warnings[0]
    assert "source.files.users.sha256" in warnings[0] and "--strict-checksums" in warnings[0]
    # Found again in the cache: still lenient, still not verified.
    again = find_raw_files(source, raw_dir=None, cache_dir=tmp_path / "cache")
    assert again["users"].path.read_bytes() == USERS and not again["users"].verified
    assert server.requests == 1
    # A known checksum that does not match fails, lenient or not.
    wrong = _two_files(server.url("ml-100k.zip"), users_sha="0" * 64)
    with pytest.raises(RawDataError, match="does not match the expected 0000"):
        find_raw_files(wrong, raw_dir=None, cache_dir=tmp_path / "cache", strict_checksums=False)


def test_whole_compressed_files_and_plain_files_pass(tmp_path: Path) -> None:
    many = RAW * 500
    for name, data in (("u.data.gz", gzip.compress(many) + gzip.compress(RAW)),  # 2 members
                       ("u.data.bz2", bz2.compress(many)), ("u.data", RAW[:7])):
        (tmp_path / name).write_bytes(data)
        check_decompresses(tmp_path / name)  # no error


@pytest.mark.parametrize(("name", "compress"), [("u.data.gz", gzip.compress),
                                                ("u.data.bz2", bz2.compress)])
def test_truncated_or_corrupt_compressed_files_name_the_file(
        tmp_path: Path, name: str, compress: Callable[[bytes], bytes]) -> None:
    data = compress(RAW * 500)
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError) as error:
        check_decompresses(path)
    assert str(error.value).startswith(f"{path} is truncated")
    assert "\n" not in str(error.value)
    path.write_bytes(data[:20] + bytes(b ^ 0xFF for b in data[20:40]) + data[40:])
    with pytest.raises(CorruptFileError, match="corrupt") as error:
        check_decompresses(path)
    assert str(error.value).startswith(f"{path} is corrupt")
