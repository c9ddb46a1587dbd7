"""Hugging Face dataset repositories: `hf:owner/name[@revision][/path]` -> the downloaded files."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from anime_dcgan.data.http import (
    TRANSIENT_STATUSES,
    DownloadError,
    download,
    fetch_json,
)
from anime_dcgan.data.readers.base import FetchJob, SourceError, format_from_name

log = logging.getLogger(__name__)

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
_HF_SOURCE = re.compile(r"^hf:(?P<owner>[\w.-]+)/(?P<name>[\w.-]+)"
                        r"(?:@(?P<revision>[^/\s]+))?(?:/(?P<path>.+))?$")


@dataclass(frozen=True)
class HubSource:
    """A parsed `hf:owner/name[@revision][/path]`."""

    repo_id: str
    revision: str
    path: str | None

    @classmethod
    def parse(cls, source: str) -> HubSource:
        match = _HF_SOURCE.match(source.strip())
        if match is None:
            raise SourceError(f"data.source {source!r}: expected hf:owner/name[@revision][/path], "
                              "e.g. hf:huggan/anime-faces or hf:huggan/anime-faces@main/data.zip.")
        path = (match["path"] or "").strip("/") or None
        return cls(f"{match['owner']}/{match['name']}", match["revision"] or "main", path)

    def resolve_url(self, endpoint: str, path: str) -> str:
        return (f"{endpoint}/datasets/{self.repo_id}/resolve/{quote(self.revision, safe='')}/"
                f"{quote(path)}")

    def tree_url(self, endpoint: str) -> str:
        return (f"{endpoint}/api/datasets/{self.repo_id}/tree/{quote(self.revision, safe='')}"
                "?recursive=true")


def hub_endpoint_and_headers() -> tuple[str, dict[str, str]]:
    """HF_ENDPOINT (default https://huggingface.co) and the Authorization header from HF_TOKEN."""
    endpoint = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or DEFAULT_HF_ENDPOINT
    token = os.environ.get("HF_TOKEN", "").strip()
    return endpoint, ({"Authorization": f"Bearer {token}"} if token else {})


def _list_hub_files(hub: HubSource, endpoint: str, headers: dict[str, str],
                    cache_dir: Path) -> list[dict[str, Any]]:
    """The repo's file entries ({type, path, size, lfs?}), following the listing's pages.

    The listing is kept in the cache so that a rerun works offline, like the cached downloads.
    """
    first_url = hub.tree_url(endpoint)
    saved = cache_dir / f"hf-tree-{hashlib.sha256(first_url.encode()).hexdigest()[:12]}.json"
    entries: list[dict[str, Any]] = []
    url: str | None = first_url
    try:
        while url is not None:
            # with a saved listing, an unreachable hub is not worth a long retry loop
            page, url = fetch_json(url, headers, retries=0 if saved.is_file() else 5)
            if not isinstance(page, list):
                raise SourceError(f"{first_url}: expected a JSON list of files, got "
                                  f"{json.dumps(page)[:200]}. Check HF_ENDPOINT.")
            entries.extend(entry for entry in page if isinstance(entry, dict))
    except DownloadError as exc:
        if exc.status == 404:
            raise SourceError(f"Hugging Face dataset {hub.repo_id!r} (revision {hub.revision!r}) not "
                              f"found on {endpoint}: check the owner/name and revision in data.source; "
                              "for a private dataset set HF_TOKEN.") from exc
        unreachable = exc.status is None or exc.status in TRANSIENT_STATUSES
        if not (unreachable and saved.is_file()):
            raise
        log.warning("%s is unreachable (%s); using the file listing saved in %s", endpoint, exc, saved)
        return json.loads(saved.read_text())
    saved.parent.mkdir(parents=True, exist_ok=True)
    temporary = saved.with_name(saved.name + ".tmp")
    temporary.write_text(json.dumps(entries))
    os.replace(temporary, saved)
    return entries


def _choose_hub_files(listing: list[dict[str, Any]], hub: HubSource,
                      source: str) -> list[tuple[str, str | None]]:
    """All parquet files (sorted) if any, else the single archive: [(path, sha256 from LFS)]."""
    prefix = f"{hub.path}/" if hub.path else ""
    files = {entry["path"]: (entry.get("lfs") or {}).get("oid") for entry in listing
             if entry.get("type") == "file" and str(entry.get("path", "")).startswith(prefix)}
    parquet = sorted(path for path in files if format_from_name(path) == "parquet")
    archives = sorted(path for path in files if format_from_name(path) in ("zip", "tar"))
    if parquet:
        return [(path, files[path]) for path in parquet]
    if len(archives) == 1:
        return [(archives[0], files[archives[0]])]
    candidates = archives or sorted(files)
    where = f"{hub.repo_id}/{hub.path}" if hub.path else hub.repo_id
    listed = ", ".join(candidates[:20]) + (", ..." if len(candidates) > 20 else "") or "(no files)"
    reason = "several archives" if archives else "no parquet file and no archive"
    raise SourceError(f"data.source {source!r}: {reason} in {where}; name the file to use as "
                      f"hf:{hub.repo_id}/<path>. Files: {listed}")


def fetch_hub_files(job: FetchJob, source: str) -> list[tuple[Path, str]]:
    """Download the files `source` names: [(local file, file name)]."""
    hub = HubSource.parse(source)
    endpoint, headers = hub_endpoint_and_headers()
    if hub.path is not None and format_from_name(hub.path) is not None:
        chosen = [(hub.path, None)]  # a file named outright: no listing needed
    else:
        listing = _list_hub_files(hub, endpoint, headers, job.cache_dir)
        chosen = _choose_hub_files(listing, hub, source)
    if job.data.sha256 is not None and len(chosen) > 1:
        raise SourceError(f"data.sha256 is set but {source} has {len(chosen)} files; set data.sha256 "
                          f"to null or name one file (hf:{hub.repo_id}/<path>).")
    files = []
    for path, listed_sha256 in chosen:
        url = hub.resolve_url(endpoint, path)
        try:
            file = download(url, job.cache_dir, job.data.sha256 or listed_sha256, headers=headers,
                            progress=job.progress)
        except DownloadError as exc:
            if exc.status == 404:
                raise SourceError(f"data.source {source!r}: the file {path!r} is not in the Hugging "
                                  f"Face dataset {hub.repo_id} at revision {hub.revision!r} ({url}). "
                                  f"Check the path and revision on {endpoint}/datasets/{hub.repo_id}.") \
                    from exc
            raise
        files.append((file, PurePosixPath(path).name))
    return files
