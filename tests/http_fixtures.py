"""A real HTTP server on 127.0.0.1 for tests: static files with Range support, injected faults, and
an emulation of the Hugging Face hub that the real huggingface_hub client can download from.

Usage (the `http_server` fixture starts one per test, rooted at a fresh folder):

    def test_something(http_server):
        (http_server.root / "faces.zip").write_bytes(data)
        http_server.cut_after("/faces.zip", n_bytes=100)     # first GET ends after 100 body bytes
        http_server.fail_first("/faces.zip", count=2)        # ...after two 503 answers
        path = download(http_server.url("faces.zip"), cache_dir)
        assert http_server.requests_for("/faces.zip")[-1].headers["Range"] == "bytes=100-"

    http_server.add_hf_dataset("owner/name", {"data/train.parquet": parquet_bytes})
    monkeypatch.setenv("HF_ENDPOINT", http_server.base_url)  # now `hf:owner/name` resolves here

The hub emulation answers what huggingface_hub asks for, with the headers it reads:

    GET  /api/datasets/<repo>[/revision/<rev>]          dataset info: {"id", "sha", "siblings", ...}
    GET  /api/datasets/<repo>/tree/<rev>[/<path>]       the file listing (?recursive, ?cursor pages
                                                        linked by `Link: <...>; rel="next"`)
    HEAD/GET /datasets/<repo>/resolve/<rev>/<path>      a file: `X-Repo-Commit`, `ETag`; an LFS file
                                                        answers 302 to the CDN with `X-Linked-Etag`
                                                        (its sha256) and `X-Linked-Size`
    GET  /cdn/<sha256>                                  LFS content, on a second port and addressed as
                                                        localhost: another host, as the hub's CDN is
                                                        (huggingface_hub sends it no Authorization)

Errors carry `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo), which
huggingface_hub turns into its exception classes. A revision is a branch/tag name given to
`add_hf_dataset` or the commit sha it got (`commit()`).

Fault rules match the URL path without its query string, and count only GET requests.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import pytest
from requests.structures import CaseInsensitiveDict

# Files with these endings are stored in git LFS on the real hub: the tree listing carries their
# sha256 and `resolve` redirects to a CDN, which the emulation imitates with its second listener.
LFS_SUFFIXES = (".parquet", ".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".png", ".jpg", ".webp")


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str              # without the query string, percent-decoded
    query: str
    headers: CaseInsensitiveDict
    server: str            # "main" (files and hub) or "cdn"


@dataclass
class _HubRevision:
    files: dict[str, bytes]
    page_size: int | None
    commit: str


@dataclass
class _HubRepo:
    revisions: dict[str, _HubRevision] = field(default_factory=dict)
    token: str | None = None   # private: only this bearer token may read it
    gated: bool = False        # like private, but answered as the hub answers a gated repo

    def find(self, revision: str) -> _HubRevision | None:
        if revision in self.revisions:
            return self.revisions[revision]
        return next((found for found in self.revisions.values() if found.commit == revision), None)


@dataclass
class _Faults:
    cut_after_bytes: dict[str, int] = field(default_factory=dict)   # path -> body bytes of the 1st GET
    failures_left: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (count, status)
    ignore_range: set[str] = field(default_factory=set)


class _Listener(ThreadingHTTPServer):
    """A ThreadingHTTPServer that can hang up its open connections: a client that pools them
    (huggingface_hub does) must find the server gone after stop(), as after a real outage."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:  # type: ignore[no-untyped-def]
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        # a client that hangs up mid-request (a stage killed or stopped while downloading) is what
        # the tests cause on purpose: not worth socketserver's traceback on stderr
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def hang_up(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class HttpTestServer:
    """Serves `root` and the hub emulation over HTTP on 127.0.0.1 (random free ports) from
    background threads."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.required_token: str | None = None  # when set, every hub repo needs this bearer token
        self._requests: list[RecordedRequest] = []
        self._faults = _Faults()
        self._hub: dict[str, _HubRepo] = {}
        self._lfs_objects: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._listeners: dict[str, _Listener] = {}
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> HttpTestServer:
        for role in ("main", "cdn"):
            handler = type(f"{role.title()}Handler", (_Handler,), {"server_state": self, "role": role})
            listener = _Listener(handler)
            self._listeners[role] = listener
            # a short poll interval keeps stop() (and so each test's teardown) quick
            thread = threading.Thread(target=listener.serve_forever, kwargs={"poll_interval": 0.02},
                                      name=f"http-test-server-{role}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for listener in self._listeners.values():
            listener.shutdown()
            listener.server_close()
            listener.hang_up()
        for thread in self._threads:
            thread.join(timeout=5)
        self._listeners.clear()
        self._threads.clear()

    def __enter__(self) -> HttpTestServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _origin(self, role: str) -> str:
        assert role in self._listeners, "start() the server first"
        host, port = self._listeners[role].server_address[:2]
        return f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        """The files and the hub (what HF_ENDPOINT points at)."""
        return self._origin("main")

    @property
    def cdn_url(self) -> str:
        # The same listener by another host name: huggingface_hub tells the hub from its CDN by host
        # (older 2.x versions ignore the port), and only the CDN may be reached without credentials.
        return self._origin("cdn").replace("127.0.0.1", "localhost")

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
                       page_size: int | None = None, token: str | None = None,
                       gated: bool = False) -> str:
        """Emulate the dataset repo `repo_id` at `revision` (a branch or tag); returns its commit sha.

        page_size splits the listing into pages linked by a `Link: <...>; rel="next"` header.
        token makes the repo private (gated: gated) to all but that bearer token.
        """
        digest = hashlib.sha1(f"{repo_id}@{revision}".encode())
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
        commit = digest.hexdigest()
        with self._lock:
            repo = self._hub.setdefault(repo_id, _HubRepo())
            repo.revisions[revision] = _HubRevision(dict(files), page_size, commit)
            repo.token = token if token is not None else repo.token
            repo.gated = gated or repo.gated
            for name, content in files.items():
                if name.endswith(LFS_SUFFIXES):
                    self._lfs_objects[hashlib.sha256(content).hexdigest()] = content
        return commit

    def commit(self, repo_id: str, revision: str = "main") -> str:
        return self._hub[repo_id].revisions[revision].commit

    def corrupt_cdn(self, content: bytes) -> None:
        """Serve other bytes of the same length for the LFS file `content` (a broken CDN or disk)."""
        with self._lock:
            self._lfs_objects[hashlib.sha256(content).hexdigest()] = bytes(byte ^ 0xFF for byte in content)

    @staticmethod
    def cdn_path(content: bytes) -> str:
        """The CDN path an LFS file's `resolve` redirects to (for faults and request checks)."""
        return f"/cdn/{hashlib.sha256(content).hexdigest()}"

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


# Matched against the path as sent (still percent-encoded): huggingface_hub encodes a revision
# such as "refs/pr/1", and a folder in the tree URL, as one segment.
_REPO = r"/([^/]+/[^/]+)"
_INFO = re.compile(rf"^/api/datasets{_REPO}(?:/revision/([^/]+))?/?$")
_TREE = re.compile(rf"^/api/datasets{_REPO}/tree/([^/]+)(?:/(.+?))?/?$")
_RESOLVE = re.compile(rf"^/datasets{_REPO}/resolve/([^/]+)/(.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def _git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    server_state: HttpTestServer
    role: str
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
        state._record(RecordedRequest(self.command, path, split.query,
                                      CaseInsensitiveDict(self.headers.items()), self.role))

        fail_status, cut_after, ignore_range = (None, None, False)
        if self.command == "GET":
            fail_status, cut_after, ignore_range = state._take_fault(path)
        if fail_status is not None:
            self._send_plain(fail_status, f"injected failure {fail_status}\n", send_body,
                             extra_headers={"Retry-After": "0"})
            return

        if self.role == "cdn":
            # like a signed CDN URL: the address itself is the permission
            content = state._lfs_objects.get(path.removeprefix("/cdn/")) if path.startswith("/cdn/") else None
            if content is None:
                self._send_plain(404, f"{path} not found\n", send_body)
                return
            self._send_file(content, send_body, cut_after, ignore_range)
            return

        for pattern, answer in ((_INFO, self._answer_info), (_TREE, self._answer_tree),
                                (_RESOLVE, self._answer_resolve)):
            match = pattern.match(split.path)
            if match:
                repo_id = unquote(match.group(1))
                revision = unquote(match.group(2) or "main")
                found = self._hub_revision(repo_id, revision, send_body, pattern is _RESOLVE)
                if found is not None:
                    answer(repo_id, found, match, split.query, send_body, cut_after, ignore_range)
                return

        file_path = (state.root / path.lstrip("/")).resolve()
        inside = file_path.is_relative_to(state.root.resolve())
        if not (inside and file_path.is_file()):
            self._send_plain(404, f"{path} not found\n", send_body)
            return
        self._send_file(file_path.read_bytes(), send_body, cut_after, ignore_range)

    # -- hub ---------------------------------------------------------------------------------------
    def _hub_revision(self, repo_id: str, revision: str, send_body: bool,
                      for_content: bool) -> _HubRevision | None:
        """The repo at `revision`, or None after answering as the hub does (401/403/404). A gated
        repo shows its metadata and listing to all, its files (`for_content`) only to the token."""
        state = self.server_state
        repo = state._hub.get(repo_id)
        authorization = self.headers.get("Authorization")
        needed = None if repo is None else (repo.token or state.required_token)
        if repo is not None and repo.gated and not for_content:
            needed = None
        if repo is None or (needed is not None and authorization != f"Bearer {needed}"):
            if repo is not None and repo.gated:
                self._send_hub_error(401 if authorization is None else 403, "GatedRepo",
                                     f"Access to dataset {repo_id} is restricted. You must have access "
                                     "to it and be authenticated to access it. Please log in.", send_body)
            elif authorization is not None and repo is not None:
                # the hub's answer to a token it does not know
                self._send_hub_error(401, None, "Invalid credentials in Authorization header", send_body)
            else:
                # without a token the hub hides whether a private repo exists: 401 for both
                self._send_hub_error(401 if authorization is None else 404, "RepoNotFound",
                                     "Repository not found", send_body)
            return None
        found = repo.find(revision)
        if found is None:
            self._send_hub_error(404, "RevisionNotFound", f"Invalid rev id: {revision}", send_body)
        return found

    def _answer_info(self, repo_id: str, found: _HubRevision, match: re.Match, query: str,
                     send_body: bool, *_: object) -> None:
        repo = self.server_state._hub[repo_id]
        info = {"_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id,
                "author": repo_id.split("/")[0], "sha": found.commit,
                "private": repo.token is not None, "gated": "manual" if repo.gated else False,
                "disabled": False, "tags": [], "downloads": 0, "likes": 0,
                "siblings": [{"rfilename": name} for name in sorted(found.files)]}
        self._send_json(info, send_body)

    def _answer_tree(self, repo_id: str, found: _HubRevision, match: re.Match, query: str,
                     send_body: bool, *_: object) -> None:
        folder = unquote(match.group(3) or "").strip("/")
        params = parse_qs(query)
        recursive = params.get("recursive", ["false"])[0].lower() == "true"
        entries = _tree_entries(found.files, folder, recursive)
        if folder and not entries:
            self._send_hub_error(404, "EntryNotFound", f"{folder} does not exist on {found.commit}",
                                 send_body, {"X-Repo-Commit": found.commit})
            return
        start = int(params.get("cursor", ["0"])[0])
        end = len(entries) if found.page_size is None else start + found.page_size
        headers = {}
        if end < len(entries):
            next_query = urlencode({**{key: values[0] for key, values in params.items()}, "cursor": end})
            headers["Link"] = f'<{self.server_state.base_url}{urlsplit(self.path).path}?{next_query}>; rel="next"'
        self._send_json(entries[start:end], send_body, headers)

    def _answer_resolve(self, repo_id: str, found: _HubRevision, match: re.Match, query: str,
                        send_body: bool, cut_after: int | None, ignore_range: bool) -> None:
        file_path = unquote(match.group(3))
        content = found.files.get(file_path)
        if content is None:
            self._send_hub_error(404, "EntryNotFound", "Entry not found", send_body,
                                 {"X-Repo-Commit": found.commit})
            return
        headers = {"X-Repo-Commit": found.commit}
        if file_path.endswith(LFS_SUFFIXES):
            sha256 = hashlib.sha256(content).hexdigest()
            headers |= {"Location": f"{self.server_state.cdn_url}/cdn/{sha256}",
                        "ETag": f'"{_git_blob_id(content)}"', "X-Linked-Etag": f'"{sha256}"',
                        "X-Linked-Size": str(len(content))}
            self._send_plain(302, "", send_body, extra_headers=headers)
            return
        self._send_file(content, send_body, cut_after, ignore_range,
                        extra_headers=headers | {"ETag": f'"{_git_blob_id(content)}"'})

    # -- answers -----------------------------------------------------------------------------------
    def _send_file(self, content: bytes, send_body: bool, cut_after: int | None,
                   ignore_range: bool, extra_headers: dict[str, str] | None = None) -> None:
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
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
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

    def _send_json(self, document: object, send_body: bool, extra_headers: dict[str, str] | None = None,
                   status: int = 200) -> None:
        self._send_plain(status, json.dumps(document), send_body,
                         extra_headers={"Content-Type": "application/json", **(extra_headers or {})})

    def _send_hub_error(self, status: int, code: str | None, message: str, send_body: bool,
                        extra_headers: dict[str, str] | None = None) -> None:
        headers = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {}),
                   **(extra_headers or {})}
        self._send_json({"error": message}, send_body, headers, status)

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


def _tree_entries(files: dict[str, bytes], folder: str, recursive: bool) -> list[dict[str, object]]:
    """The shape of the hub's `GET /api/datasets/{repo}/tree/{revision}[/{folder}]` answer: the
    entries under `folder` (the whole repo for ""), paths relative to the repo's root."""
    prefix = f"{folder}/" if folder else ""
    inside = {name: content for name, content in files.items() if name.startswith(prefix)}
    depth = prefix.count("/")

    def shown(path: str) -> bool:  # non-recursive listings stop at the folder's own children
        return recursive or path.count("/") == depth

    directories = sorted({"/".join(name.split("/")[:level])
                          for name in inside for level in range(depth + 1, name.count("/") + 1)})
    entries: list[dict[str, object]] = [
        {"type": "directory", "oid": hashlib.sha1(directory.encode()).hexdigest(), "size": 0,
         "path": directory} for directory in directories if shown(directory)]
    for name in sorted(inside):
        if not shown(name):
            continue
        content = inside[name]
        entry: dict[str, object] = {"type": "file", "oid": _git_blob_id(content), "size": len(content),
                                    "path": name}
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
