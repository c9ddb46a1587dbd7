"""Resumable, checksummed HTTP downloads into a cache folder that survives DVC's output cleanup.

A download streams into ``<cache>/<hash>-<name>.part``; an interrupted transfer (Ctrl-C, a cut
connection, a server error) leaves that file behind and the next attempt asks only for the missing
bytes (``Range: bytes=<size>-``). The finished file appears under its final name only by an atomic
rename, after its checksum was verified, so a later step never reads a partial or wrong file, and a
finished file is reused without any network access.

Written here because no well-kept library does all three of resume, retry and verify: pooch
(1.8) retries and checks hashes but restarts an interrupted download from zero into a temporary
file; requests with urllib3's Retry retries requests but not a transfer cut halfway; fsspec's HTTP
filesystem does neither. Hugging Face sources go through huggingface_hub instead (readers/hub.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TypeVar

import requests
from filelock import FileLock
from tqdm import tqdm

from anime_dcgan import __version__
from anime_dcgan.errors import PipelineError, StorageError, storage_problem
from anime_dcgan.util.io import file_sha256

log = logging.getLogger(__name__)

# Worth retrying: the server is overloaded, rate-limiting or briefly broken, not refusing us.
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
CHUNK_BYTES = 1 << 16  # also the most a cut connection can cost: a partial chunk is lost
MAX_RETRY_AFTER_S = 60.0
# A server that accepts connections and then says nothing would otherwise cost each retry a full
# timeout (6 x 60 s): a download gives up once this long has passed without new data.
DEFAULT_STALL_TIMEOUT_S = 120.0
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_T = TypeVar("_T")


class DownloadError(PipelineError, RuntimeError):
    """A download failed for good; the message names the URL, what happened and what to do.

    `status` is the HTTP status when the server refused the request, None for network failures.
    """

    def __init__(self, message: str, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class _StallClock:
    """The time since a download last saved data to its .part file, across attempts and the waits between."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.last_byte_at = time.monotonic()

    def progressed(self) -> None:
        self.last_byte_at = time.monotonic()

    def waited_s(self) -> float:
        return time.monotonic() - self.last_byte_at

    def left_s(self) -> float:
        return self.limit_s - self.waited_s()


class _TransientError(Exception):
    """A failure that another attempt may not meet (network cut, timeout, 429/5xx)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def cached_file_path(url: str, cache_dir: Path) -> Path:
    """Where `download(url, cache_dir)` keeps the finished file: <short hash of url>-<basename>."""
    basename = PurePosixPath(requests.utils.urlparse(url).path).name or "download"
    # keep the name readable in a file browser but safe on every file system
    basename = re.sub(r"[^A-Za-z0-9._-]", "_", basename)[-100:]
    url_hash = hashlib.sha256(url.encode()).hexdigest()[:12]
    return Path(cache_dir) / f"{url_hash}-{basename}"


def download(url: str, cache_dir: Path, sha256: str | None = None,
             progress: bool = True, retries: int = 5, *, backoff_s: float = 1.0,
             timeout_s: float = 60.0, stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S) -> Path:
    """Download `url` into `cache_dir` (resuming a partial download) and return the finished file.

    sha256: the expected hex digest; a mismatch deletes the file and raises DownloadError.
    retries: how many failed attempts in a row (no new bytes) are retried before giving up; the
    wait doubles each time, from `backoff_s` seconds. A failure with new bytes resets the count.
    timeout_s: the longest one attempt waits to connect or for the next bytes.
    stall_timeout_s: the longest the whole download may go without new data, over all attempts and
    the waits between them. Each chunk saved to the .part file restarts it, and it only caps each
    attempt's timeout and stops further retries, so an attempt that keeps receiving data is never cut.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cached_file_path(url, cache_dir)
    part = target.with_name(target.name + ".part")
    expected = sha256.lower() if sha256 else None
    # Two pipeline runs at once (e.g. queued experiments) must not append to the same .part file.
    with FileLock(str(target) + ".lock"):
        if target.is_file():
            if expected is None or file_sha256(target) == expected:
                return target
            # cached under this URL but not the content now asked for: fetch it again
            target.unlink()
        request_headers = {"User-Agent": f"anime-dcgan/{__version__}",
                           # a compressed body would make byte offsets (Range) meaningless
                           "Accept-Encoding": "identity"}
        stall = _StallClock(stall_timeout_s)
        with requests.Session() as session:
            _with_retries(lambda: _transfer(session, url, part, request_headers, progress, timeout_s, stall),
                          url, part, retries, backoff_s, stall)
        if expected is not None:
            actual = file_sha256(part)
            if actual != expected:
                part.unlink()
                raise DownloadError(
                    f"{url}: checksum mismatch: expected sha256 {expected}, got {actual}. The "
                    "downloaded file was deleted. Check data.sha256 and the URL in data.source: the "
                    "file at the URL may have changed (data.sha256: null accepts what it serves).", url)
        os.replace(part, target)
    return target


def _with_retries(attempt: Callable[[], _T], url: str, part: Path, retries: int, backoff_s: float,
                  stall: _StallClock) -> _T:
    failures_in_a_row = 0
    while True:
        bytes_before = _bytes_in(part)
        try:
            return attempt()
        except _TransientError as exc:
            # a cut after new bytes still moved the download forward: only stalls count
            failures_in_a_row = 1 if _bytes_in(part) > bytes_before else failures_in_a_row + 1
            if failures_in_a_row > retries:
                raise DownloadError(f"{url}: failed {failures_in_a_row} times in a row (last: {exc}). "
                                    f"{_next_run_hint(part)}", url) from exc
            delay_s = backoff_s * 2 ** (failures_in_a_row - 1)
            if exc.retry_after_s is not None:
                delay_s = max(delay_s, min(exc.retry_after_s, MAX_RETRY_AFTER_S))
            if delay_s >= stall.left_s():  # the next attempt would start past the deadline
                raise DownloadError(f"{url}: no new data for {_seconds(stall.waited_s())} over "
                                    f"{failures_in_a_row} attempt{'s' if failures_in_a_row > 1 else ''} "
                                    f"(last: {exc}). {_next_run_hint(part)}", url) from exc
            log.warning("%s: %s; retrying in %.1f s", url, exc, delay_s)
            time.sleep(delay_s)


def _bytes_in(part: Path) -> int:
    return part.stat().st_size if part.exists() else 0


def _next_run_hint(part: Path) -> str:
    size = _bytes_in(part)
    if size:
        return (f"Check the network connection and the URL, then run again: the download resumes from "
                f"the {size:,} bytes already in {part}.")
    return "Check the network connection and the URL, then run again: the next run starts the download again."


def _seconds(duration_s: float) -> str:
    return f"{duration_s:.0f} s" if duration_s >= 10 else f"{duration_s:.1f} s"


def _transfer(session: requests.Session, url: str, part: Path, headers: dict[str, str],
              progress: bool, timeout_s: float, stall: _StallClock) -> None:
    """One attempt: append the missing bytes to `part`; raises _TransientError if it falls short."""
    offset, total = _bytes_in(part), None
    if offset:
        headers = {**headers, "Range": f"bytes={offset}-"}
    # never wait past the download's no-progress deadline (a floor keeps the timeout valid for requests)
    attempt_timeout_s = max(min(timeout_s, stall.left_s()), 0.01)
    try:
        with session.get(url, headers=headers, stream=True, timeout=attempt_timeout_s) as response:
            if response.status_code == 416 and offset:
                total = _total_from_content_range(response.headers.get("Content-Range", ""))
                if total is None or total == offset:
                    return  # nothing left to fetch: the .part is already the whole file
                part.unlink()
                raise _TransientError(f"the server has {total} bytes but {offset} were on disk "
                                      "(the file changed?); starting over")
            _raise_for_status(response, url)
            if response.status_code == 206:
                start, total = _parse_content_range(response.headers.get("Content-Range", ""), url)
                if start != offset:
                    part.unlink()
                    raise _TransientError(f"asked for bytes from {offset}, got from {start}; "
                                          "starting over")
                mode = "ab"
            else:  # 200: the server ignored Range and sends the whole file from byte 0
                offset, mode = 0, "wb"
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            with open(part, mode) as out, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                               unit_divisor=1024, desc=part.name.removesuffix(".part"),
                                               disable=not progress, leave=False) as bar:
                for chunk in response.iter_content(CHUNK_BYTES):
                    out.write(chunk)
                    stall.progressed()
                    bar.update(len(chunk))
    except requests.exceptions.SSLError as exc:
        raise DownloadError(f"{url}: TLS/SSL error: {exc}. Check the URL and the system "
                            "certificates.", url) from exc
    except requests.Timeout as exc:  # before ConnectionError: a ConnectTimeout is both
        raise _TransientError(f"nothing received for {_seconds(attempt_timeout_s)}") from exc
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
        raise _TransientError(f"{type(exc).__name__}: {exc}") from exc
    except OSError as exc:  # the .part file's disk: full or read-only (the bytes so far stay for a rerun)
        problem = storage_problem(exc, part, None if total is None else total - _bytes_in(part))
        if problem is None:
            raise
        raise StorageError(problem) from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise _TransientError(f"the connection ended after {size} of {total} bytes")


def _raise_for_status(response: requests.Response, url: str) -> None:
    status = response.status_code
    if status < 400:
        return
    if status in TRANSIENT_STATUSES:
        retry_after = response.headers.get("Retry-After", "")
        raise _TransientError(f"HTTP {status} {response.reason}",
                              float(retry_after) if retry_after.isdigit() else None)
    if status in (401, 403):
        hint = "Access denied: check that the URL can be downloaded without logging in."
    elif status in (404, 410):
        hint = "Check data.source for typos."
    else:
        hint = "Check the URL in data.source."
    raise DownloadError(f"{url}: HTTP {status} {response.reason}. {hint}", url, status)


def _parse_content_range(value: str, url: str) -> tuple[int, int | None]:
    match = _CONTENT_RANGE.match(value.strip())
    if match is None:
        raise DownloadError(f"{url}: a partial answer (206) with an unreadable Content-Range "
                            f"{value!r}; delete the .part file in the download cache and retry.", url)
    total = match.group(3)
    return int(match.group(1)), None if total == "*" else int(total)


def _total_from_content_range(value: str) -> int | None:
    # a 416 answer carries "bytes */<total>"
    match = re.match(r"^bytes \*/(\d+)$", value.strip())
    return int(match.group(1)) if match else None
