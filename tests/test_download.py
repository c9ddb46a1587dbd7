"""download(): resumable, retried, checksummed HTTP downloads against a real server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from http_fixtures import HttpTestServer

from anime_dcgan.data.http import DownloadError, cached_file_path, download

FAST = {"progress": False, "backoff_s": 0.01}


def _payload(n_bytes: int = 200_000) -> bytes:
    # incompressible, position-dependent bytes: a resume at the wrong offset cannot go unnoticed
    return os.urandom(n_bytes)


def _serve(server: HttpTestServer, name: str, content: bytes) -> str:
    (server.root / name).write_bytes(content)
    return server.url(name)


def _gets(server: HttpTestServer, name: str) -> list:
    return [request for request in server.requests_for(name) if request.method == "GET"]


def test_downloads_into_the_cache_and_reuses_the_file_without_network(http_server, tmp_path):
    content = _payload()
    url = _serve(http_server, "faces.zip", content)
    cache = tmp_path / "cache"

    path = download(url, cache, **FAST)

    assert path == cached_file_path(url, cache)
    assert path.name.endswith("-faces.zip")
    assert path.read_bytes() == content
    assert not path.with_name(path.name + ".part").exists()
    http_server.stop()  # offline from here on
    assert download(url, cache, sha256=hashlib.sha256(content).hexdigest(), **FAST) == path
    assert len(_gets(http_server, "faces.zip")) == 1


def test_a_transfer_cut_midway_resumes_with_a_range_request(http_server, tmp_path):
    content = _payload()
    url = _serve(http_server, "faces.zip", content)
    http_server.cut_after("/faces.zip", 70_000)

    path = download(url, tmp_path / "cache", sha256=hashlib.sha256(content).hexdigest(), **FAST)

    assert path.read_bytes() == content
    gets = _gets(http_server, "faces.zip")
    assert len(gets) == 2
    assert "Range" not in gets[0].headers
    # whole chunks reached the disk before the cut; the retry asks only for the rest
    resumed_from = int(gets[1].headers["Range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_from <= 70_000


def test_a_partial_file_left_by_an_interrupted_run_is_resumed(http_server, tmp_path):
    content = _payload()
    url = _serve(http_server, "faces.zip", content)
    cache = tmp_path / "cache"
    cache.mkdir()
    part = cached_file_path(url, cache).with_name(cached_file_path(url, cache).name + ".part")
    part.write_bytes(content[:12_345])

    path = download(url, cache, **FAST)

    assert path.read_bytes() == content
    assert _gets(http_server, "faces.zip")[0].headers["Range"] == "bytes=12345-"
    assert not part.exists()


def test_a_server_that_ignores_range_makes_the_download_start_over(http_server, tmp_path):
    content = _payload()
    url = _serve(http_server, "faces.zip", content)
    http_server.ignore_range_for("/faces.zip")
    cache = tmp_path / "cache"
    cache.mkdir()
    part = cached_file_path(url, cache).with_name(cached_file_path(url, cache).name + ".part")
    part.write_bytes(b"stale bytes that must not stay in front of the file")

    path = download(url, cache, **FAST)

    assert _gets(http_server, "faces.zip")[0].headers["Range"].startswith("bytes=")
    assert path.read_bytes() == content


def test_a_complete_partial_file_is_verified_and_finished_after_416(http_server, tmp_path):
    content = _payload(5_000)
    url = _serve(http_server, "faces.zip", content)
    cache = tmp_path / "cache"
    cache.mkdir()
    part = cached_file_path(url, cache).with_name(cached_file_path(url, cache).name + ".part")
    part.write_bytes(content)

    path = download(url, cache, sha256=hashlib.sha256(content).hexdigest(), **FAST)

    assert path.read_bytes() == content
    assert _gets(http_server, "faces.zip")[0].headers["Range"] == "bytes=5000-"


def test_503_answers_are_retried_until_the_server_recovers(http_server, tmp_path):
    content = _payload(10_000)
    url = _serve(http_server, "faces.zip", content)
    http_server.fail_first("/faces.zip", count=2, status=503)

    path = download(url, tmp_path / "cache", retries=3, **FAST)

    assert path.read_bytes() == content
    assert len(_gets(http_server, "faces.zip")) == 3


def test_a_server_that_stays_down_gives_up_after_the_retries(http_server, tmp_path):
    url = _serve(http_server, "faces.zip", _payload(1_000))
    http_server.fail_first("/faces.zip", count=100, status=503)

    with pytest.raises(DownloadError) as error:
        download(url, tmp_path / "cache", retries=2, **FAST)

    assert url in str(error.value) and "3 times in a row" in str(error.value)
    assert "503" in str(error.value)
    assert len(_gets(http_server, "faces.zip")) == 3
    assert not cached_file_path(url, tmp_path / "cache").exists()


def test_a_missing_file_fails_at_once_with_the_url_and_status(http_server, tmp_path):
    url = http_server.url("nothing-here.zip")

    with pytest.raises(DownloadError) as error:
        download(url, tmp_path / "cache", retries=5, **FAST)

    assert error.value.status == 404
    assert url in str(error.value) and "404" in str(error.value) and "data.source" in str(error.value)
    assert len(_gets(http_server, "nothing-here.zip")) == 1  # not retried
    assert not any(path.suffix in (".zip", ".part") for path in (tmp_path / "cache").iterdir())


def test_access_denied_stops_at_once_with_a_hint(http_server, tmp_path):
    http_server.add_hf_dataset("owner/private", {"data.zip": b"zip bytes"})
    http_server.required_token = "secret"
    url = f"{http_server.base_url}/datasets/owner/private/resolve/main/data.zip"

    with pytest.raises(DownloadError) as error:
        download(url, tmp_path / "cache", **FAST)
    assert error.value.status == 401
    assert "Access denied" in str(error.value) and url in str(error.value)
    assert len(http_server.requests) == 1  # not retried


def test_a_checksum_mismatch_deletes_the_file_and_names_both_digests(http_server, tmp_path):
    content = _payload(10_000)
    url = _serve(http_server, "faces.zip", content)
    wrong = "0" * 64

    with pytest.raises(DownloadError) as error:
        download(url, tmp_path / "cache", sha256=wrong, **FAST)

    message = str(error.value)
    assert url in message and wrong in message and hashlib.sha256(content).hexdigest() in message
    assert "data.sha256" in message
    assert not [path for path in (tmp_path / "cache").iterdir() if not path.name.endswith(".lock")]


def test_a_cached_file_with_other_content_than_the_checksum_is_fetched_again(http_server, tmp_path):
    content = _payload(10_000)
    url = _serve(http_server, "faces.zip", content)
    cache = tmp_path / "cache"
    cache.mkdir()
    cached_file_path(url, cache).write_bytes(b"an older version of the file")

    path = download(url, cache, sha256=hashlib.sha256(content).hexdigest(), **FAST)

    assert path.read_bytes() == content
    assert len(_gets(http_server, "faces.zip")) == 1


def test_cache_names_are_distinct_per_url_and_safe(tmp_path: Path):
    first = cached_file_path("https://a.example/x/data.zip?download=1", tmp_path)
    second = cached_file_path("https://b.example/x/data.zip", tmp_path)
    odd = cached_file_path("https://a.example/", tmp_path)

    assert first.name.endswith("-data.zip") and second.name.endswith("-data.zip")
    assert first != second
    assert odd.name.endswith("-download") and odd.parent == tmp_path
