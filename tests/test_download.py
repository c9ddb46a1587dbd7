"""download(): resumable, retried, checksummed HTTP downloads against a real server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from http_fixtures import HttpTestServer

from anime_dcgan.data.http import CHUNK_BYTES, DownloadError, cached_file_path, download

FAST = {"progress": False, "backoff_s": 0.01}


def _payload(n_bytes: int = 200_000) -> bytes:
    # incompressible, position-dependent bytes: a resume at the wrong offset cannot go unnoticed
    return os.urandom(n_bytes)


def _serve(server: HttpTestServer, name: str, content: bytes) -> str:
    (server.root / name).write_bytes(content)
    return server.url(name)


def _gets(server: HttpTestServer, name: str) -> list:
    return [request for request in server.requests_for(name) if request.method == "GET"]


def _part_of(url: str, cache: Path) -> Path:
    target = cached_file_path(url, cache)
    return target.with_name(target.name + ".part")


@contextmanager
def _trickling_server(content: bytes, piece_bytes: int, pause_s: float,
                      cut_first_after: int) -> Iterator[tuple[str, list[str]]]:
    """Serves `content` (with Range) `piece_bytes` at a time, `pause_s` apart: a slow link that never
    goes quiet for long. The first GET hangs up after `cut_first_after` body bytes. Yields the URL and
    the Range header of each GET ("" for none)."""
    ranges: list[str] = []

    class Trickle(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            ranges.append(self.headers.get("Range", ""))
            start = int(ranges[-1].removeprefix("bytes=").removesuffix("-") or 0)
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(content) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
            self.end_headers()
            end = start + cut_first_after if len(ranges) == 1 else len(content)
            for offset in range(start, end, piece_bytes):
                self.wfile.write(content[offset:min(offset + piece_bytes, end)])
                self.wfile.flush()
                time.sleep(pause_s)
            self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/faces.zip", ranges
    finally:
        server.shutdown()
        server.server_close()


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


def test_a_server_that_never_answers_is_given_up_on_at_the_stall_bound(tmp_path):
    stall_s, timeout_s, retries = 2.0, 0.8, 5
    with socket.socket() as silent:  # accepts connections (the kernel does) but never sends a byte
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/faces.zip"
        started = time.monotonic()
        with pytest.raises(DownloadError) as error:
            download(url, tmp_path / "cache", retries=retries, timeout_s=timeout_s, stall_timeout_s=stall_s,
                     **FAST)
        elapsed = time.monotonic() - started
        silent.setblocking(False)
        attempts = 0
        while True:  # every attempt left one connection in the queue
            try:
                silent.accept()[0].close()
            except BlockingIOError:
                break
            attempts += 1

    # before: each attempt waited its whole timeout, (retries + 1) x timeout_s: 4.8 s here, 6.5 min by default
    assert stall_s - 0.05 <= elapsed < stall_s + 1.0 < (retries + 1) * timeout_s
    message = str(error.value)
    assert re.search(rf"^{re.escape(url)}: no new data for 2\.\d s over {attempts} attempts \(last: nothing "
                     r"received for 0\.\d s\)\. Check the network connection and the URL, then run again: "
                     r"the next run starts the download again\.$", message), message
    assert attempts == 3  # 0.8 s, 0.8 s, then the 0.4 s left
    assert "Traceback" not in message and "\n" not in message
    assert not _part_of(url, tmp_path / "cache").exists()


def test_a_slow_download_that_keeps_moving_is_not_cut_by_the_stall_bound(tmp_path):
    stall_s = 1.0
    content = _payload(4 * CHUNK_BYTES)
    # a chunk reaches the disk every 0.6 s; the first GET is cut after three of them (1.8 s)
    with _trickling_server(content, piece_bytes=CHUNK_BYTES // 4, pause_s=0.15,
                           cut_first_after=3 * CHUNK_BYTES) as (url, ranges):
        started = time.monotonic()
        path = download(url, tmp_path / "cache", timeout_s=stall_s, stall_timeout_s=stall_s, **FAST)
        elapsed = time.monotonic() - started

    assert path.read_bytes() == content
    assert ranges == ["", f"bytes={3 * CHUNK_BYTES}-"]  # resumed once, after the cut
    assert elapsed > 2 * stall_s  # far longer than the bound in all, never that long without new data


@pytest.mark.parametrize("bytes_on_disk", [0, 12_345], ids=["no-part-file", "part-file-with-bytes"])
def test_the_give_up_message_says_resume_only_when_bytes_are_on_disk(http_server, tmp_path, bytes_on_disk):
    content = _payload(50_000)
    url = _serve(http_server, "faces.zip", content)
    http_server.fail_first("/faces.zip", count=100, status=503)
    cache = tmp_path / "cache"
    cache.mkdir()
    part = _part_of(url, cache)
    if bytes_on_disk:
        part.write_bytes(content[:bytes_on_disk])

    with pytest.raises(DownloadError) as error:
        download(url, cache, retries=1, **FAST)

    message = str(error.value)
    assert message.startswith(f"{url}: failed 2 times in a row (last: HTTP 503 ")
    if bytes_on_disk:
        assert message.endswith(f"run again: the download resumes from the 12,345 bytes already in {part}.")
    else:
        assert message.endswith("run again: the next run starts the download again.")
        assert "resume" not in message and not part.exists()
