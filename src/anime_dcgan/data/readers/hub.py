"""Hugging Face dataset repositories: `hf:owner/name[@revision][/path]` -> the downloaded files.

The official client, huggingface_hub, lists the repository and downloads the files: it resolves the
revision, sends HF_TOKEN, talks to the HF_ENDPOINT mirror, retries and resumes a cut transfer and
checks each file's size. Its cache lives in the job's download cache (``<cache_dir>/huggingface``),
which DVC's cleanup of data/raw/ leaves alone; it also keeps the repository's file listing, so once
the files are downloaded a rerun works with the hub unreachable. On top of that, a file stored in
LFS (archives and parquet files are) is checked against the sha256 the hub gave for it, and the
chosen file against data.sha256 when that is set.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import httpx2
from huggingface_hub import HfApi, RepoFile, get_cached_repo_tree, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    CachedRepoTreeNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from tqdm import tqdm

from anime_dcgan import __version__
from anime_dcgan.data.readers.base import FetchJob, SourceError, format_from_name
from anime_dcgan.util.io import file_sha256

log = logging.getLogger(__name__)

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
# Seconds to wait for the hub's first answer (HF_HUB_ETAG_TIMEOUT overrides it): the hub answers
# metadata requests at once, so silence this long means it is unreachable and the cache should serve.
DEFAULT_TIMEOUT_S = 10.0
_HF_SOURCE = re.compile(r"^hf:(?P<owner>[\w.-]+)/(?P<name>[\w.-]+)"
                        r"(?:@(?P<revision>[^/\s]+))?(?:/(?P<path>.+))?$")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# huggingface_hub 2.x talks to the hub through httpx2 and lets its transport errors (connection
# refused, timeouts, a connection cut) through from API calls; HF_HUB_OFFLINE=1 raises the other.
_NO_CONNECTION = (httpx2.TransportError, OfflineModeIsEnabled)
# answers of a hub that is down or overloaded rather than refusing this request
_HUB_DOWN_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


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


class _SilentBar(tqdm):
    """huggingface_hub's progress bars, switched off (job.progress is false)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **{**kwargs, "disable": True})


@dataclass(frozen=True)
class _Hub:
    """How to reach the hub, read from the environment when the stage runs: huggingface_hub reads
    HF_ENDPOINT and its timeouts once, when it is imported, and every call here passes them."""

    endpoint: str
    token: str | None
    timeout_s: float
    cache_dir: Path
    progress: bool

    @classmethod
    def from_environment(cls, job: FetchJob) -> _Hub:
        endpoint = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or DEFAULT_HF_ENDPOINT
        timeout = os.environ.get("HF_HUB_ETAG_TIMEOUT", "").strip()
        return cls(endpoint, os.environ.get("HF_TOKEN", "").strip() or None,
                   float(timeout) if timeout else DEFAULT_TIMEOUT_S,
                   Path(job.cache_dir) / "huggingface", job.progress)

    def api(self) -> HfApi:
        return HfApi(endpoint=self.endpoint, token=self.token, library_name="anime-dcgan",
                     library_version=__version__)

    def download_options(self, online: bool) -> dict[str, object]:
        """What hf_hub_download and snapshot_download share."""
        return {"repo_type": "dataset", "cache_dir": self.cache_dir, "endpoint": self.endpoint,
                "token": self.token, "etag_timeout": self.timeout_s, "local_files_only": not online,
                "library_name": "anime-dcgan", "library_version": __version__,
                "tqdm_class": None if self.progress else _SilentBar}

    def page(self, hub: HubSource) -> str:
        return f"{self.endpoint}/datasets/{hub.repo_id}"


def fetch_hub_files(job: FetchJob, source: str) -> list[tuple[Path, str]]:
    """Download the files `source` names: [(local file, file name)].

    The local file is the blob in huggingface_hub's cache, so a reader that finds it damaged and
    deletes it makes the next run download it anew.
    """
    hub = HubSource.parse(source)
    settings = _Hub.from_environment(job)
    unreachable: str | None = None  # why the hub could not be asked, when it could not
    try:
        try:
            # one request with a timeout first: a dead endpoint fails fast here, and a wrong name,
            # revision or token fails with its own error (the listing and downloads below retry a
            # failing connection several times over, without any timeout for listings)
            settings.api().dataset_info(hub.repo_id, revision=hub.revision, timeout=settings.timeout_s)
            chosen, local = _fetch(job, hub, settings, source, online=True)
        except (*_NO_CONNECTION, HfHubHTTPError) as exc:
            if not _hub_unreachable(exc):
                raise
            unreachable = _reason(exc)
            log.warning("%s cannot be reached (%s): looking for hf:%s@%s in the download cache %s "
                        "instead", settings.endpoint, unreachable, hub.repo_id, hub.revision,
                        settings.cache_dir)
            chosen, local = _fetch(job, hub, settings, source, online=False)
    except (HfHubHTTPError, LocalEntryNotFoundError, CachedRepoTreeNotFoundError, HFValidationError,
            *_NO_CONNECTION) as exc:
        raise _explained(exc, hub, settings, source, unreachable) from exc
    return [(_verified(file, path, hub, source, job.data.sha256), PurePosixPath(path).name)
            for file, path in zip(local, chosen, strict=True)]


def _fetch(job: FetchJob, hub: HubSource, settings: _Hub, source: str,
           online: bool) -> tuple[list[str], list[Path]]:
    """(the paths in the repo of the files to use, their files in the cache); offline, only the cache
    is asked."""
    if hub.path is not None and format_from_name(hub.path) is not None:
        return [hub.path], [_download_file(hub, hub.path, settings, online, source)]
    chosen = _choose_hub_files(_list_files(hub, settings, online, source), hub, source)
    if job.data.sha256 is not None and len(chosen) > 1:
        raise SourceError(f"data.sha256 is set but {source} has {len(chosen)} files; set data.sha256 "
                          f"to null or name one file (hf:{hub.repo_id}/<path>).")
    return chosen, _download_files(hub, chosen, settings, online, source)


def _hub_unreachable(exc: Exception) -> bool:
    """No connection, or a hub that is down: what the cache can stand in for."""
    return isinstance(exc, _NO_CONNECTION) or (
        isinstance(exc, HfHubHTTPError) and _status(exc) in _HUB_DOWN_STATUSES)


def _list_files(hub: HubSource, settings: _Hub, online: bool, source: str) -> list[str]:
    """The paths of the repo's files under hub.path (all of them without a path)."""
    if online:
        try:
            return [entry.path for entry in settings.api().list_repo_tree(
                hub.repo_id, path_in_repo=hub.path, recursive=True, revision=hub.revision,
                repo_type="dataset") if isinstance(entry, RepoFile)]
        except RemoteEntryNotFoundError as exc:
            raise SourceError(f"data.source {source!r}: there is no folder {hub.path!r} in the Hugging "
                              f"Face dataset {hub.repo_id} at revision {hub.revision!r}. Check the path "
                              f"and revision on {settings.page(hub)}.") from exc
    # the listing snapshot_download saved with the files, for the commit the revision last pointed to
    listing = get_cached_repo_tree(hub.repo_id, repo_type="dataset", revision=hub.revision,
                                   cache_dir=settings.cache_dir)
    prefix = f"{hub.path}/" if hub.path else ""
    return [entry.path for entry in listing if entry.path.startswith(prefix)]


def _choose_hub_files(paths: list[str], hub: HubSource, source: str) -> list[str]:
    """All parquet files (sorted) if any, else the single archive."""
    parquet = sorted(path for path in paths if format_from_name(path) == "parquet")
    archives = sorted(path for path in paths if format_from_name(path) in ("zip", "tar"))
    if parquet:
        return parquet
    if len(archives) == 1:
        return archives
    candidates = archives or sorted(paths)
    where = f"{hub.repo_id}/{hub.path}" if hub.path else hub.repo_id
    listed = ", ".join(candidates[:20]) + (", ..." if len(candidates) > 20 else "") or "(no files)"
    reason = "several archives" if archives else "no parquet file and no archive"
    raise SourceError(f"data.source {source!r}: {reason} in {where}; name the file to use as "
                      f"hf:{hub.repo_id}/<path>. Files: {listed}")


def _download_file(hub: HubSource, path: str, settings: _Hub, online: bool, source: str) -> Path:
    try:
        return Path(hf_hub_download(hub.repo_id, path, revision=hub.revision,
                                    **settings.download_options(online)))
    except RemoteEntryNotFoundError as exc:
        raise SourceError(f"data.source {source!r}: the file {path!r} is not in the Hugging Face dataset "
                          f"{hub.repo_id} at revision {hub.revision!r}. Check the path and revision on "
                          f"{settings.page(hub)}.") from exc


def _download_files(hub: HubSource, paths: list[str], settings: _Hub, online: bool,
                    source: str) -> list[Path]:
    # snapshot_download, unlike hf_hub_download, saves the repo's listing in the cache for offline reruns
    snapshot = Path(snapshot_download(hub.repo_id, revision=hub.revision,
                                      allow_patterns=[glob.escape(path) for path in paths],
                                      **settings.download_options(online)))
    files = [snapshot.joinpath(*path.split("/")) for path in paths]
    missing = [path for path, file in zip(paths, files, strict=True) if not file.is_file()]
    if missing:  # the revision moved between the listing and the download
        raise SourceError(f"data.source {source!r}: {', '.join(missing[:3])} vanished from the Hugging Face "
                          f"dataset {hub.repo_id} at revision {hub.revision!r} while downloading; run again.")
    return files


def _verified(local: Path, path: str, hub: HubSource, source: str, sha256: str | None) -> Path:
    """The repo's cached blob that the snapshot entry `local` links to, checked against the hub's
    sha256 and data.sha256."""
    # Followed one link only: the blob may itself link into the cache-wide store of Xet files,
    # whose entries are named after another hash and shared between repos.
    blob = Path(os.path.normpath(local.parent / os.readlink(local))) if local.is_symlink() else local
    # huggingface_hub names a blob after the file's ETag, which for an LFS file is its sha256 (a
    # copy made where symlinks are not supported has no such name: only its size was checked)
    hub_sha256 = blob.name if blob.parent.name == "blobs" and _SHA256.fullmatch(blob.name) else None
    if hub_sha256 is None and sha256 is None:
        return blob
    actual = file_sha256(blob)
    if hub_sha256 is not None and actual != hub_sha256:
        blob.unlink()
        raise SourceError(f"data.source {source!r}: the downloaded {path} does not match the hub's "
                          f"checksum (sha256 {hub_sha256}, got {actual}); it was deleted from the download "
                          "cache: run again to download it anew.")
    if sha256 is not None and actual != sha256.lower():
        blob.unlink()
        raise SourceError(f"data.source {source!r}: checksum mismatch for {path} at revision "
                          f"{hub.revision!r}: expected sha256 {sha256.lower()} (data.sha256), got {actual}. "
                          "The downloaded file was deleted. Check data.sha256 and the revision in "
                          "data.source: the file may have changed (pin a commit with @<sha>; data.sha256: "
                          "null accepts what the hub serves).")
    return blob


def _explained(exc: Exception, hub: HubSource, settings: _Hub, source: str,
               unreachable: str | None) -> SourceError:
    """One line for what huggingface_hub raised: what is wrong and what to do."""
    page = settings.page(hub)
    where = f"the Hugging Face dataset {hub.repo_id}"
    status = _status(exc)
    if isinstance(exc, GatedRepoError):
        message = (f"{where} is gated: accept its conditions on {page} while logged in, and set HF_TOKEN "
                   "to a read token of that account.")
    elif isinstance(exc, RepositoryNotFoundError):
        token_hint = (" (HF_TOKEN is set: check that its account can read it)" if settings.token else
                      "; for a private or gated dataset set HF_TOKEN to a token with read access")
        message = (f"Hugging Face dataset {hub.repo_id!r} not found on {settings.endpoint}: check the "
                   f"owner/name in data.source{token_hint}.")
    elif isinstance(exc, RevisionNotFoundError):
        message = (f"revision {hub.revision!r} not found in {where}: check the @revision in data.source "
                   f"(a branch, a tag or a commit sha; see {page}).")
    elif status in (401, 403):
        message = (f"{settings.endpoint} refused access to {where} (HTTP {status}: {_first_line(exc)}): set "
                   "HF_TOKEN to a valid token with read access to it.")
    elif isinstance(exc, HFValidationError):
        message = f"{_first_line(exc)}"
    elif isinstance(exc, (LocalEntryNotFoundError, CachedRepoTreeNotFoundError)) or _hub_unreachable(exc):
        what = "some of its files are" if isinstance(exc, IncompleteSnapshotError) else "it is"
        message = (f"cannot reach the Hugging Face hub at {settings.endpoint} ({unreachable or _reason(exc)}), "
                   f"and {what} not in the download cache {settings.cache_dir} for revision "
                   f"{hub.revision!r}. Check the network connection and HF_ENDPOINT, then run again.")
    else:
        message = (f"the Hugging Face hub at {settings.endpoint} answered {_reason(exc)}. Check HF_ENDPOINT "
                   "and data.source.")
    return SourceError(f"data.source {source!r}: {message}")


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {_first_line(exc)}"
