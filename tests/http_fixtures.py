"""A real HTTP server on 127.0.0.1 for tests: static files with Range support, injected faults, and
the two Hugging Face hub endpoints the download stage uses.

Usage (the `http_server` fixture starts one per test, rooted at a fresh folder):

    def test_something(http_server):
        (http_server.root / "faces.zip").write_bytes(data)
        http_server.cut_after("/faces.zip", n_bytes=100)     # first GET ends after 100 body bytes
        http_server.fail_first("/faces.zip", count=2)        # ...after two 503 answers
        path = download(http_server.url("faces.zip"), cache_dir)
        assert http_server.requests_for("/faces.zip")[-1].headers["Range"] == "bytes=100-"

    http_server.add_hf_dataset("owner/name", {"data/train.parquet": parquet_bytes})
    monkeypatch.setenv("HF_ENDPOINT", http_server.base_url)  # now `hf:owner/name` resolves here

Fault rules match the URL path without its query string, and count only GET requests.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

# Files with these endings are stored in git LFS on the real hub: the tree listing carries their
# sha256 and `resolve` redirects to a CDN, which the emulation imitates with a same-host redirect.
LFS_SUFFIXES = (".parquet", ".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".png", ".jpg", ".webp")


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str              # without the query string
    query: str
    headers: dict[str, str]


@dataclass
class _HubRepo:
    files: dict[str, bytes]
    page_size: int | None


@dataclass
class _Faults:
    cut_after_bytes: dict[str, int] = field(default_factory=dict)   # path -> body bytes of the 1st GET
    failures_left: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (count, status)
    ignore_range: set[str] = field(default_factory=set)


class HttpTestServer:
    """Serves `root` over HTTP on 127.0.0.1 (a random free port) from a background thread."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.required_token: str | None = None  # when set, hub endpoints answer 401 without it
        self._requests: list[RecordedRequest] = []
        self._faults = _Faults()
        self._hub: dict[tuple[str, str], _HubRepo] = {}
        self._lfs_objects: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> HttpTestServer:
        handler = type("BoundHandler", (_Handler,), {"server_state": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        # a short poll interval keeps stop() (and so each test's teardown) quick
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="http-test-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            assert self._thread is not None
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> HttpTestServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "start() the server first"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{quote(path.lstrip('/'))}"

    # -- faults ------------------------------------------------------------------------------------
    def cut_after(self, path: str, n_bytes: int) -> None:
        """The first GET of `path` announces the full length, sends `n_bytes` of body, then hangs up."""
        with self._lock:
            self._faults.cut_after_bytes[_norm(path)] = n_bytes

    def fail_first(self, path: str, count: int, status: int = 503) -> None:
        """The first `count` GETs of `path` are answered with `status` (503 Service Unavailable)."""
        with self._lock:
            self._faults.failures_left[_norm(path)] = (count, status)

    def ignore_range_for(self, path: str) -> None:
        """Answer GETs of `path` with the whole file (200), as servers without Range support do."""
        with self._lock:
            self._faults.ignore_range.add(_norm(path))

    # -- hub emulation -----------------------------------------------------------------------------
    def add_hf_dataset(self, repo_id: str, files: dict[str, bytes], revision: str = "main",
                       page_size: int | None = None) -> None:
        """Emulate the dataset repo `repo_id` at `revision`: its tree listing and `resolve` downloads.

        page_size splits the listing into pages linked by a `Link: <...>; rel="next"` header.
        """
        with self._lock:
            self._hub[(repo_id, revision)] = _HubRepo(dict(files), page_size)
            for name, content in files.items():
                if name.endswith(LFS_SUFFIXES):
                    self._lfs_objects[hashlib.sha256(content).hexdigest()] = content

    # -- inspection --------------------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_for(self, path: str) -> list[RecordedRequest]:
        return [request for request in self.requests if request.path == _norm(path)]

    # -- used by the handler -----------------------------------------------------------------------
    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _take_fault(self, path: str) -> tuple[int | None, int | None, bool]:
        """For a GET of `path`: (status to fail with, bytes to cut after, ignore Range)."""
        with self._lock:
            faults = self._faults
            count, status = faults.failures_left.get(path, (0, 0))
            if count > 0:
                faults.failures_left[path] = (count - 1, status)
                return status, None, False
            return None, faults.cut_after_bytes.pop(path, None), path in faults.ignore_range


def _norm(path: str) -> str:
    return "/" + unquote(path).lstrip("/")


_TREE = re.compile(r"^/api/datasets/([^/]+/[^/]+)/tree/([^/]+)/?$")
_RESOLVE = re.compile(r"^/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    server_state: HttpTestServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def _answer(self, send_body: bool) -> None:
        split = urlsplit(self.path)
        path = _norm(split.path)
        state = self.server_state
        state._record(RecordedRequest(self.command, path, split.query, dict(self.headers.items())))

        fail_status, cut_after, ignore_range = (None, None, False)
        if self.command == "GET":
            fail_status, cut_after, ignore_range = state._take_fault(path)
        if fail_status is not None:
            self._send_plain(fail_status, f"injected failure {fail_status}\n", send_body,
                             extra_headers={"Retry-After": "0"})
            return

        tree = _TREE.match(path)
        resolve = _RESOLVE.match(path)
        if tree or resolve or path.startswith("/cdn/"):
            if not self._authorised():
                self._send_plain(401, "Invalid credentials in Authorization header\n", send_body)
                return
        if tree:
            self._answer_tree(unquote(tree.group(1)), unquote(tree.group(2)), split.query, send_body)
            return
        if resolve:
            self._answer_resolve(resolve.group(1), unquote(resolve.group(2)), resolve.group(3),
                                 send_body)
            return
        if path.startswith("/cdn/"):
            content = state._lfs_objects.get(path.removeprefix("/cdn/"))
        else:
            file_path = (state.root / path.lstrip("/")).resolve()
            inside = file_path.is_relative_to(state.root.resolve())
            content = file_path.read_bytes() if inside and file_path.is_file() else None
        if content is None:
            self._send_plain(404, f"{path} not found\n", send_body)
            return
        self._send_file(content, send_body, cut_after, ignore_range)

    def _authorised(self) -> bool:
        token = self.server_state.required_token
        return token is None or self.headers.get("Authorization") == f"Bearer {token}"

    def _answer_tree(self, repo_id: str, revision: str, query: str, send_body: bool) -> None:
        repo = self.server_state._hub.get((repo_id, revision))
        if repo is None:
            self._send_plain(404, f"Repository {repo_id} at {revision} not found\n", send_body)
            return
        params = parse_qs(query)
        recursive = params.get("recursive", ["false"])[0].lower() == "true"
        entries = _tree_entries(repo.files, recursive)
        start = int(params.get("cursor", ["0"])[0])
        end = len(entries) if repo.page_size is None else start + repo.page_size
        headers = {"Content-Type": "application/json"}
        if end < len(entries):
            next_query = f"recursive={str(recursive).lower()}&cursor={end}"
            next_url = f"{self.server_state.base_url}{self.path.split('?')[0]}?{next_query}"
            headers["Link"] = f'<{next_url}>; rel="next"'
        self._send_plain(200, json.dumps(entries[start:end]), send_body, extra_headers=headers)

    def _answer_resolve(self, repo_id: str, revision: str, file_path: str, send_body: bool) -> None:
        repo = self.server_state._hub.get((repo_id, revision))
        content = None if repo is None else repo.files.get(unquote(file_path))
        if content is None:
            self._send_plain(404, "Entry not found\n", send_body)
            return
        if file_path.endswith(LFS_SUFFIXES):
            location = f"/cdn/{hashlib.sha256(content).hexdigest()}"
            self._send_plain(302, "", send_body, extra_headers={"Location": location})
            return
        self._send_file(content, send_body, None, False)

    def _send_file(self, content: bytes, send_body: bool, cut_after: int | None,
                   ignore_range: bool) -> None:
        size = len(content)
        start, end, status = 0, size, 200
        range_header = self.headers.get("Range")
        if range_header and not ignore_range:
            match = _RANGE.match(range_header.strip())
            if match is None:
                self._send_plain(400, "unsupported Range\n", send_body)
                return
            start = int(match.group(1))
            if start >= size:
                self._send_plain(416, "", send_body, extra_headers={"Content-Range": f"bytes */{size}"})
                return
            end = min(size, int(match.group(2)) + 1) if match.group(2) else size
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        if cut_after is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        if not send_body:
            return
        body = content[start:end]
        if cut_after is not None:
            # announce the full length but hang up early: the client sees a connection cut mid-body
            self.wfile.write(body[:cut_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def _send_plain(self, status: int, text: str, send_body: bool,
                    extra_headers: dict[str, str] | None = None) -> None:
        body = text.encode()
        self.send_response(status)
        headers = {"Content-Type": "text/plain", **(extra_headers or {})}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)


def _tree_entries(files: dict[str, bytes], recursive: bool) -> list[dict[str, object]]:
    """The shape of the hub's `GET /api/datasets/{repo}/tree/{revision}` answer."""
    directories = sorted({"/".join(name.split("/")[:depth])
                          for name in files for depth in range(1, name.count("/") + 1)})
    entries: list[dict[str, object]] = []
    for directory in directories:
        if recursive or "/" not in directory:
            entries.append({"type": "directory", "oid": hashlib.sha1(directory.encode()).hexdigest(),
                            "size": 0, "path": directory})
    for name in sorted(files):
        if not recursive and "/" in name:
            continue
        content = files[name]
        git_blob_id = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
        entry: dict[str, object] = {"type": "file", "oid": git_blob_id, "size": len(content), "path": name}
        if name.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content),
                            "pointerSize": 134}
        entries.append(entry)
    return entries


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[HttpTestServer]:
    """A started HttpTestServer serving tmp_path/"www"; stopped after the test."""
    with HttpTestServer(tmp_path / "www") as server:
        yield server
