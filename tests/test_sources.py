"""fetch_source(): every form of data.source, into data/raw/, with real files and a real HTTP server."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import random
import re
import shutil
import signal
import socket
import tarfile
import time
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from http_fixtures import HttpTestServer
from PIL import Image
from servers import free_port

from anime_dcgan.data.fetch import FetchSummary, fetch_source
from anime_dcgan.data.http import DownloadError
from anime_dcgan.data.readers.base import SourceError
from anime_dcgan.data.readers.hub import HubSource
from anime_dcgan.params import DataParams


def _image_bytes(index: int, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (index * 37 % 256, index * 91 % 256, 200)).save(buffer, fmt)
    return buffer.getvalue()


# relative path -> content: a small tree as users' folders and archives look
FACES = {f"faces/{index:03d}.png": _image_bytes(index) for index in range(6)} | {
    "faces/extra/a.JPG": _image_bytes(7, "JPEG"),
    "faces/extra/b.JpEg": _image_bytes(8, "JPEG"),
}
NOT_IMAGES = {"faces/notes.txt": b"hello", "faces/labels.csv": b"a,b\n"}
IGNORED = {"faces/.DS_Store": b"x", "__MACOSX/faces/._000.png": b"x", ".hidden/secret.png": b"x"}


def _fetch(tmp_path: Path, source: str | Path, **data: object) -> tuple[FetchSummary, Path]:
    raw_dir = tmp_path / "data" / "raw"
    summary = fetch_source(DataParams(source=str(source), **data), seed=0, raw_dir=raw_dir,
                           cache_dir=tmp_path / ".cache" / "downloads", progress=False)
    return summary, raw_dir


def _written(raw_dir: Path) -> dict[str, bytes]:
    images = raw_dir / "images"
    return {path.relative_to(images).as_posix(): path.read_bytes()
            for path in images.rglob("*") if path.is_file()}


def _write_tree(root: Path, files: dict[str, bytes], order: list[str] | None = None) -> Path:
    for name in order or list(files):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(files[name])
    return root


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _add_tar_member(archive: tarfile.TarFile, name: str, content: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    archive.addfile(info, io.BytesIO(content))


def _no_leftovers(tmp_path: Path) -> bool:
    data = tmp_path / "data"
    return not data.exists() or not [path for path in data.iterdir() if path.name != "raw"]


# -- local folders and archives --------------------------------------------------------------------

def test_a_folder_is_copied_recursively_taking_only_images(tmp_path):
    folder = _write_tree(tmp_path / "src", FACES | NOT_IMAGES | IGNORED)

    summary, raw_dir = _fetch(tmp_path, folder)

    assert _written(raw_dir) == FACES
    assert (summary.kind, summary.n_images, summary.n_skipped) == ("folder", 8, 2)
    assert not (raw_dir / "attributes.csv").exists()
    assert "8 images" in summary.line() and "faces/notes.txt" in summary.line()
    assert _no_leftovers(tmp_path)


@pytest.mark.parametrize("suffix, mode", [(".zip", None), (".tar", "w"), (".tar.gz", "w:gz"),
                                          (".tgz", "w:gz"), (".tar.bz2", "w:bz2"),
                                          (".tar.xz", "w:xz")])
def test_archives_are_unpacked_with_their_relative_paths(tmp_path, suffix, mode):
    archive = tmp_path / f"faces{suffix}"
    files = FACES | NOT_IMAGES | IGNORED
    if mode is None:
        archive.write_bytes(_zip_bytes(files))
    else:
        with tarfile.open(archive, mode) as tar:
            for name, content in files.items():
                _add_tar_member(tar, name, content)

    summary, raw_dir = _fetch(tmp_path, archive)

    assert _written(raw_dir) == FACES
    assert (summary.kind, summary.n_images, summary.n_skipped) == ("archive", 8, 2)


def test_max_images_keeps_the_same_subset_whatever_the_creation_order(tmp_path):
    files = {f"img/{index:04d}.png": _image_bytes(index) for index in range(40)}
    forward, backward = list(files), list(reversed(files))
    shuffled = forward.copy()
    random.Random(3).shuffle(shuffled)
    subsets = []
    for run, order in enumerate((forward, backward, shuffled)):
        folder = _write_tree(tmp_path / f"src{run}", files, order)
        summary, raw_dir = _fetch(tmp_path / f"run{run}", folder, max_images=10)
        assert (summary.n_images, summary.n_skipped) == (10, 30)
        subsets.append(sorted(_written(raw_dir)))
    zipped = tmp_path / "img.zip"
    zipped.write_bytes(_zip_bytes({name: files[name] for name in shuffled}))
    subsets.append(sorted(_written(_fetch(tmp_path / "zip", zipped, max_images=10)[1])))

    expected = sorted(sorted(files, key=lambda name: hashlib.sha1(name.encode()).hexdigest())[:10])
    assert all(subset == expected for subset in subsets)


def test_zip_slip_members_are_refused_and_nothing_is_written(tmp_path):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip_bytes({"ok.png": _image_bytes(1), "../evil.png": _image_bytes(2)}))

    with pytest.raises(SourceError, match=r"'\.\./evil\.png'.*outside the output folder"):
        _fetch(tmp_path, archive)

    assert not (tmp_path / "data" / "evil.png").exists() and not (tmp_path / "evil.png").exists()
    assert not (tmp_path / "data" / "raw").exists() and _no_leftovers(tmp_path)


def test_an_archive_bomb_is_refused_before_anything_is_written(tmp_path):
    # 2 MiB of zeros deflates to about 2 KB: a ~1000-fold ratio, the shape of a zip bomb
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("ok.png", _image_bytes(1))
        archive.writestr("faces/huge.png", bytes(2 * 2**20))
    with pytest.raises(SourceError, match=r"'faces/huge\.png' inflates [0-9,]+-fold \(data\.max_compression_ratio: 500\)"):
        _fetch(tmp_path, bomb)
    assert not (tmp_path / "data" / "raw").exists() and _no_leftovers(tmp_path)

    # a large member declared as such, stored uncompressed (zip) or in a tar: the size limit
    big = tmp_path / "big.tar"
    with tarfile.open(big, "w") as archive:
        _add_tar_member(archive, "big.png", bytes(3 * 2**20))
    with pytest.raises(SourceError, match=r"'big\.png' declares 3\.0 MB \(data\.max_file_mb: 2\).*Raise data\.max_file_mb"):
        _fetch(tmp_path, big, max_file_mb=2)
    assert not (tmp_path / "data" / "raw").exists() and _no_leftovers(tmp_path)

    # both limits are settings: raised, the same archives unpack
    summary, raw_dir = _fetch(tmp_path, bomb, max_compression_ratio=5000)
    assert summary.n_images == 2 and len(_written(raw_dir)["faces/huge.png"]) == 2 * 2**20
    assert _fetch(tmp_path, big, max_file_mb=4)[0].n_images == 1


def test_tar_absolute_names_links_and_devices_are_refused(tmp_path):
    cases = {"absolute": "/etc/face.png", "symlink": tarfile.SYMTYPE, "fifo": tarfile.FIFOTYPE}
    for case, detail in cases.items():
        archive = tmp_path / f"{case}.tar"
        with tarfile.open(archive, "w") as tar:
            _add_tar_member(tar, "ok.png", _image_bytes(1))
            if case == "absolute":
                _add_tar_member(tar, detail, _image_bytes(2))
            else:
                info = tarfile.TarInfo("face.png")
                info.type = detail
                info.linkname = "/etc/passwd"
                tar.addfile(info)
        expected = {"absolute": "outside the output folder", "symlink": "is a link",
                    "fifo": "device or pipe"}[case]
        with pytest.raises(SourceError, match=expected) as error:
            _fetch(tmp_path, archive)
        assert archive.name in str(error.value)
        assert not (tmp_path / "data" / "raw").exists()


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_a_truncated_archive_is_reported_by_name(tmp_path, suffix):
    files = {f"f/{index}.png": _image_bytes(index) for index in range(20)}
    archive = tmp_path / f"faces{suffix}"
    if suffix == ".zip":
        archive.write_bytes(_zip_bytes(files))
    else:
        with tarfile.open(archive, "w:gz") as tar:
            for name, content in files.items():
                _add_tar_member(tar, name, content)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])

    with pytest.raises(SourceError, match="corrupt or truncated") as error:
        _fetch(tmp_path, archive)

    assert str(archive) in str(error.value) and "Re-create or re-download" in str(error.value)
    assert archive.exists()  # a user's own file is never deleted
    assert not (tmp_path / "data" / "raw").exists() and _no_leftovers(tmp_path)


def test_the_shared_real_sample_zip_unpacks(tmp_path, shared_sample_zip):
    summary, raw_dir = _fetch(tmp_path, shared_sample_zip, max_images=25)

    written = _written(raw_dir)
    assert (summary.n_images, len(written)) == (25, 25)
    assert summary.n_skipped == 4998 - 25
    assert all(name.startswith("anime-faces-64/") and name.endswith(".jpg") for name in written)
    with Image.open(raw_dir / "images" / next(iter(written))) as image:
        assert image.size == (64, 64)


# -- parquet ---------------------------------------------------------------------------------------

def _faces_table(n_rows: int, struct: bool = True) -> pa.Table:
    images = [_image_bytes(index, "PNG" if index % 3 else "JPEG") for index in range(n_rows)]
    image_struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    column = (pa.array([{"bytes": content, "path": f"{index}.png"}
                        for index, content in enumerate(images)], image_struct)
              if struct else pa.array(images, pa.binary()))
    return pa.table({"image": column, "label": pa.array([index % 4 for index in range(n_rows)]),
                     "name": pa.array([f"face {index}" for index in range(n_rows)]),
                     "tags": pa.array([["a", "b"]] * n_rows)})


@pytest.mark.parametrize("struct", [True, False])
def test_parquet_rows_become_files_and_scalar_columns_become_attributes(tmp_path, struct):
    table = _faces_table(300, struct)  # more rows than one read batch
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(table, path, row_group_size=100)

    summary, raw_dir = _fetch(tmp_path, path)

    written = _written(raw_dir)
    assert (summary.kind, summary.n_images, len(written)) == ("parquet", 300, 300)
    assert written["train-00000-of-00001/000000.jpg"] == _image_bytes(0, "JPEG")
    assert written["train-00000-of-00001/000299.png"] == _image_bytes(299)
    with open(raw_dir / "attributes.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["file", "label", "name"]  # the list column `tags` is not a label
    assert rows[299] == {"file": "images/train-00000-of-00001/000299.png", "label": "3",
                         "name": "face 299"}
    assert all((raw_dir / row["file"]).is_file() for row in rows)


def test_parquet_max_images_subset_and_missing_bytes(tmp_path):
    table = _faces_table(30)
    images = table.column("image").to_pylist()
    images[5] = {"bytes": None, "path": "elsewhere.png"}
    table = table.set_column(0, "image", pa.array(images, table.schema.field("image").type))
    path = tmp_path / "shard.parquet"
    pq.write_table(table, path)

    full, raw_full = _fetch(tmp_path / "full", path)
    subset, raw_subset = _fetch(tmp_path / "subset", path, max_images=12)

    assert (full.n_images, full.n_skipped) == (29, 1) and "shard/000005" in full.line()
    keys = sorted((f"shard/{row:06d}" for row in range(30)),
                  key=lambda key: hashlib.sha1(key.encode()).hexdigest())[:12]
    written_keys = sorted(name.split(".")[0] for name in _written(raw_subset))
    assert written_keys == sorted(set(keys) - {"shard/000005"})
    assert subset.n_images + subset.n_skipped == 30
    with open(raw_subset / "attributes.csv", newline="") as file:
        assert len(list(csv.DictReader(file))) == subset.n_images


def test_parquet_image_column_detection_errors_name_the_columns(tmp_path):
    ambiguous = tmp_path / "two.parquet"
    pq.write_table(pa.table({"a": pa.array([b"x"]), "b": pa.array([b"y"])}), ambiguous)
    no_images = tmp_path / "none.parquet"
    pq.write_table(pa.table({"label": pa.array([1])}), no_images)

    with pytest.raises(SourceError, match=r"several columns \(a, b\).*data.image_column"):
        _fetch(tmp_path / "1", ambiguous)
    with pytest.raises(SourceError, match=r"no column.*label \(int64\)"):
        _fetch(tmp_path / "2", no_images)
    with pytest.raises(SourceError, match="data.image_column 'c' is not a column"):
        _fetch(tmp_path / "3", ambiguous, image_column="c")
    summary, raw_dir = _fetch(tmp_path / "4", ambiguous, image_column="b")
    assert _written(raw_dir) == {"two/000000.bin": b"y"}  # unknown magic: kept as obtained


def test_a_file_that_is_not_parquet_is_reported(tmp_path):
    path = tmp_path / "faces.parquet"
    path.write_bytes(b"this is not a parquet file at all")

    with pytest.raises(SourceError, match="not a readable parquet file") as error:
        _fetch(tmp_path, path)
    assert str(path) in str(error.value)


# -- bad source strings and the atomic swap --------------------------------------------------------

@pytest.mark.parametrize("source, message", [
    ("no/such/folder", "no such file or folder"),
    ("ftp://example.com/faces.zip", "unsupported URL scheme 'ftp'"),
    ("hf:just-a-name", "expected hf:owner/name"),
])
def test_unknown_sources_list_the_accepted_forms(tmp_path, source, message):
    with pytest.raises(SourceError, match=message) as error:
        _fetch(tmp_path, source)
    if not source.startswith("hf:"):
        assert source in str(error.value) and "Accepted forms of data.source" in str(error.value)
    assert not (tmp_path / "data" / "raw").exists()


def test_a_file_of_unknown_kind_is_refused(tmp_path):
    path = tmp_path / "faces.rar"
    path.write_bytes(b"Rar!")
    with pytest.raises(SourceError, match="a file of unknown kind") as error:
        _fetch(tmp_path, path)
    assert "faces.rar" in str(error.value)


def test_a_source_without_images_is_an_error(tmp_path):
    folder = _write_tree(tmp_path / "src", NOT_IMAGES)
    with pytest.raises(SourceError, match=r"contains no images \(2 files skipped"):
        _fetch(tmp_path, folder)


def test_sha256_on_a_local_file_is_checked_and_refused_for_folders(tmp_path):
    archive = tmp_path / "faces.zip"
    archive.write_bytes(_zip_bytes(FACES))
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()

    assert _fetch(tmp_path / "ok", archive, sha256=digest)[0].n_images == 8
    with pytest.raises(SourceError, match=f"expected sha256 {'1' * 64}.*got {digest}"):
        _fetch(tmp_path / "bad", archive, sha256="1" * 64)
    with pytest.raises(SourceError, match="data.sha256 is set but the folder"):
        _fetch(tmp_path / "folder", _write_tree(tmp_path / "src", FACES), sha256=digest)


def test_a_failing_fetch_leaves_the_previous_raw_dir_untouched(tmp_path):
    first = _write_tree(tmp_path / "first", {"a.png": _image_bytes(1)})
    second = _write_tree(tmp_path / "second", {"b.png": _image_bytes(2)})
    _, raw_dir = _fetch(tmp_path, first)
    before = _written(raw_dir)

    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(SourceError):
        _fetch(tmp_path, broken)
    assert _written(raw_dir) == before == {"a.png": _image_bytes(1)}
    assert _no_leftovers(tmp_path)

    _fetch(tmp_path, second)  # a successful fetch replaces everything
    assert _written(raw_dir) == {"b.png": _image_bytes(2)}
    assert _no_leftovers(tmp_path)


@pytest.mark.parametrize("presses", [1, 2], ids=["ctrl-c", "ctrl-c-twice"])
def test_an_interrupted_fetch_leaves_no_staging_folder(tmp_path, monkeypatch, presses):
    """A real SIGINT midway through copying a folder. Pressed twice, the second one lands in the
    cleanup just after images/ is removed, before the staging folder itself: it used to stay, empty."""
    _, raw_dir = _fetch(tmp_path, _write_tree(tmp_path / "first", {"a.png": _image_bytes(1)}))
    copy_file, remove_dir = shutil.copyfile, os.rmdir
    copied, presses_left = [], [presses]

    def ctrl_c() -> None:
        presses_left[0] -= 1
        signal.raise_signal(signal.SIGINT)

    def copy_then_ctrl_c(source, destination):
        copy_file(source, destination)
        copied.append(destination)
        if len(copied) == 3:
            ctrl_c()
        return destination

    def rmdir_then_ctrl_c(path, *args, **kwargs):
        remove_dir(path, *args, **kwargs)
        if Path(path).name == "images" and presses_left[0]:
            ctrl_c()

    monkeypatch.setattr(shutil, "copyfile", copy_then_ctrl_c)
    monkeypatch.setattr(os, "rmdir", rmdir_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        _fetch(tmp_path, _write_tree(tmp_path / "src", FACES))

    assert len(copied) == 3 and presses_left == [0]
    assert not (tmp_path / "data" / ".raw.partial").exists() and _no_leftovers(tmp_path)
    assert _written(raw_dir) == {"a.png": _image_bytes(1)}  # the previous raw_dir is untouched


# -- URLs ------------------------------------------------------------------------------------------

def test_a_zip_url_is_downloaded_to_the_cache_and_unpacked(http_server, tmp_path):
    (http_server.root / "faces.zip").write_bytes(_zip_bytes(FACES | NOT_IMAGES))

    summary, raw_dir = _fetch(tmp_path, http_server.url("faces.zip"))

    assert _written(raw_dir) == FACES
    assert (summary.kind, summary.n_skipped) == ("url", 2) and "zip faces.zip" in summary.line()
    assert [path.name.split("-", 1)[1] for path in (tmp_path / ".cache/downloads").glob("*.zip")] == \
        ["faces.zip"]


def test_a_parquet_url_and_a_single_image_url(http_server, tmp_path):
    pq.write_table(_faces_table(5), http_server.root / "faces.parquet")
    (http_server.root / "one.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBPVP8 ")

    summary, raw_dir = _fetch(tmp_path / "p", http_server.url("faces.parquet"))
    assert (summary.kind, summary.n_images) == ("url", 5)
    assert (raw_dir / "attributes.csv").is_file()

    summary, raw_dir = _fetch(tmp_path / "i", http_server.url("one.webp"))
    assert _written(raw_dir) == {"one.webp": b"RIFF\x00\x00\x00\x00WEBPVP8 "}


def test_a_url_serving_a_web_page_is_explained(http_server, tmp_path):
    (http_server.root / "download").write_text("<!DOCTYPE html><html>Sign in</html>")

    with pytest.raises(SourceError, match="HTML page") as error:
        _fetch(tmp_path, http_server.url("download"))

    assert "deleted from the download cache" in str(error.value)
    assert not [path for path in (tmp_path / ".cache/downloads").iterdir() if path.suffix != ".lock"]


def test_a_missing_url_fails_clearly_and_leaves_no_raw_dir(http_server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404") as error:
        _fetch(tmp_path, http_server.url("missing.zip"))
    assert "missing.zip" in str(error.value)
    assert not (tmp_path / "data" / "raw").exists() and _no_leftovers(tmp_path)


def test_a_url_checksum_mismatch_leaves_no_file_in_cache_or_raw_dir(http_server, tmp_path):
    (http_server.root / "faces.zip").write_bytes(_zip_bytes(FACES))

    with pytest.raises(DownloadError, match="checksum mismatch"):
        _fetch(tmp_path, http_server.url("faces.zip"), sha256="2" * 64)

    cache = tmp_path / ".cache/downloads"
    assert not [path for path in cache.iterdir() if path.suffix != ".lock"]
    assert not (tmp_path / "data" / "raw").exists() and _no_leftovers(tmp_path)


def test_a_corrupt_downloaded_archive_is_removed_from_the_cache(http_server, tmp_path):
    (http_server.root / "faces.zip").write_bytes(_zip_bytes(FACES)[:300])

    with pytest.raises(SourceError, match="corrupt or truncated.*run again to download it anew"):
        _fetch(tmp_path, http_server.url("faces.zip"))
    assert not list((tmp_path / ".cache/downloads").glob("*faces.zip"))


# -- Hugging Face hub ------------------------------------------------------------------------------
# The real huggingface_hub client against the hub emulation of http_fixtures.py (HF_ENDPOINT).

@pytest.fixture
def hub(http_server: HttpTestServer, monkeypatch: pytest.MonkeyPatch) -> HttpTestServer:
    monkeypatch.setenv("HF_ENDPOINT", http_server.base_url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_ETAG_TIMEOUT", raising=False)
    return http_server


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _hub_error(tmp_path: Path, source: str, match: str, **data: object) -> str:
    """The SourceError message of fetching `source`, checked to be one line."""
    with pytest.raises(SourceError, match=match) as error:
        _fetch(tmp_path, source, **data)
    message = str(error.value)
    assert "\n" not in message, message
    return message


def _blob(tmp_path: Path, repo_id: str, content: bytes) -> Path:
    """Where huggingface_hub keeps an LFS file of `repo_id` in the download cache of `_fetch`."""
    return (tmp_path / ".cache/downloads/huggingface" / f"datasets--{repo_id.replace('/', '--')}" /
            "blobs" / hashlib.sha256(content).hexdigest())


def test_hub_source_strings_parse():
    assert HubSource.parse("hf:huggan/anime-faces") == HubSource("huggan/anime-faces", "main", None)
    assert HubSource.parse("hf:a/b@v1.0/data/x.zip") == HubSource("a/b", "v1.0", "data/x.zip")
    assert HubSource.parse(" hf:a/b@0123abc/data/x y.zip/ ") == HubSource("a/b", "0123abc", "data/x y.zip")


def test_hub_repo_with_one_archive_is_listed_downloaded_and_works_offline(hub, tmp_path, caplog):
    archive = _zip_bytes(FACES)
    hub.add_hf_dataset("huggan/anime-faces", {".gitattributes": b"*.zip lfs", "README.md": b"# faces",
                                               "data.zip": archive})

    summary, raw_dir = _fetch(tmp_path, "hf:huggan/anime-faces")

    assert _written(raw_dir) == FACES
    assert (summary.kind, summary.n_images) == ("hf", 8) and "data.zip" in summary.line()
    assert "recursive=true" in hub.requests_for("/api/datasets/huggan/anime-faces/tree/main")[0].query
    commit = hub.commit("huggan/anime-faces")
    assert hub.requests_for(f"/datasets/huggan/anime-faces/resolve/{commit}/data.zip")
    cdn_gets = hub.requests_for(hub.cdn_path(archive))
    assert [(request.method, request.server) for request in cdn_gets] == [("GET", "cdn")]
    assert _blob(tmp_path, "huggan/anime-faces", archive).read_bytes() == archive

    endpoint = hub.base_url
    hub.stop()  # offline: the listing and the files in the download cache are enough
    with caplog.at_level(logging.WARNING, logger="anime_dcgan.data.readers.hub"):
        summary, raw_dir = _fetch(tmp_path, "hf:huggan/anime-faces")
        assert _written(raw_dir) == FACES
        summary, raw_dir = _fetch(tmp_path, "hf:huggan/anime-faces/data.zip")
        assert _written(raw_dir) == FACES
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 2 and all(endpoint in warning and "cannot be reached" in warning
                                      and "download cache" in warning for warning in warnings)


def test_hub_repo_of_parquet_shards_takes_them_all_across_listing_pages(hub, tmp_path):
    shards = {f"data/train-0000{index}-of-00002.parquet": _parquet_bytes(_faces_table(4))
              for index in range(2)}
    hub.add_hf_dataset("someone/faces", shards | {"README.md": b"x", "data/extra.zip": b"PK"},
                       page_size=2)

    summary, raw_dir = _fetch(tmp_path, "hf:someone/faces")

    assert summary.n_images == 8
    assert sorted(_written(raw_dir))[:2] == ["train-00000-of-00002/000000.jpg",
                                              "train-00000-of-00002/000001.png"]
    with open(raw_dir / "attributes.csv", newline="") as file:
        assert len(list(csv.DictReader(file))) == 8
    assert len(hub.requests_for("/api/datasets/someone/faces/tree/main")) >= 3  # paged listing
    assert not hub.requests_for(hub.cdn_path(b"PK"))  # the archive beside the shards is not fetched

    # offline with one shard gone from the cache: refused, not read from the other shard alone
    _blob(tmp_path, "someone/faces", shards["data/train-00001-of-00002.parquet"]).unlink()
    hub.stop()
    message = _hub_error(tmp_path, "hf:someone/faces", "cannot reach the Hugging Face hub")
    assert "some of its files are not in the download cache" in message
    assert len(_written(raw_dir)) == 8  # the previous data/raw/ is left as it was


def test_a_cut_hub_download_resumes_where_it_stopped(hub, tmp_path):
    # larger than huggingface_hub's write chunk, so that the bytes before the cut reach the disk
    archive = _zip_bytes(FACES | {"faces/noise.bin": os.urandom(12 << 20)})
    hub.add_hf_dataset("o/big", {"data.zip": archive})
    hub.cut_after(hub.cdn_path(archive), n_bytes=len(archive) - 1000)

    summary, raw_dir = _fetch(tmp_path, "hf:o/big/data.zip")

    assert _written(raw_dir) == FACES and summary.n_skipped == 1
    gets = hub.requests_for(hub.cdn_path(archive))
    assert len(gets) == 2 and "Range" not in gets[0].headers
    assert re.fullmatch(r"bytes=[1-9]\d*-", gets[1].headers["Range"])


def test_hub_path_and_revision_select_a_file_or_folder(hub, tmp_path):
    main = hub.add_hf_dataset("o/faces", {"data.zip": _zip_bytes({"x.png": _image_bytes(1)}),
                                          "extra/x y.zip": _zip_bytes({"z.png": _image_bytes(3)})})
    hub.add_hf_dataset("o/faces", {"v1/old.zip": _zip_bytes({"y.png": _image_bytes(2)}),
                                   "v1/other.tar": b""}, revision="v1")

    _, raw_dir = _fetch(tmp_path / "a", "hf:o/faces/data.zip")
    assert _written(raw_dir) == {"x.png": _image_bytes(1)}
    assert not [request for request in hub.requests if "/tree/" in request.path]  # no listing needed

    _, raw_dir = _fetch(tmp_path / "b", "hf:o/faces@v1/v1/old.zip")
    assert _written(raw_dir) == {"y.png": _image_bytes(2)}
    assert hub.requests_for("/datasets/o/faces/resolve/v1/v1/old.zip")

    _, raw_dir = _fetch(tmp_path / "c", f"hf:o/faces@{main}/extra")  # a commit sha and a folder
    assert _written(raw_dir) == {"z.png": _image_bytes(3)}
    assert hub.requests_for(f"/api/datasets/o/faces/tree/{main}/extra")
    assert hub.requests_for(f"/datasets/o/faces/resolve/{main}/extra/x y.zip")

    with pytest.raises(SourceError, match="several archives in o/faces/v1.*hf:o/faces/<path>.*old.zip"):
        _fetch(tmp_path / "d", "hf:o/faces@v1/v1")


def test_hub_errors_name_the_repo_file_and_token(hub, tmp_path, monkeypatch):
    hub.add_hf_dataset("o/faces", {"README.md": b"x", "notes.txt": b"y"})
    _hub_error(tmp_path, "hf:o/faces", r"no parquet file and no archive in o/faces.*README.md")
    message = _hub_error(tmp_path, "hf:o/nothing", "'o/nothing' .*not found")
    assert hub.base_url in message and "HF_TOKEN" in message
    _hub_error(tmp_path, "hf:o/faces/missing.zip",
               rf"'missing.zip' is not in the Hugging Face dataset o/faces at revision 'main'.*"
               rf"{hub.base_url}/datasets/o/faces")
    _hub_error(tmp_path, "hf:o/faces@v9", r"revision 'v9' not found in the Hugging Face dataset o/faces")
    _hub_error(tmp_path, "hf:o/faces@v9/data.zip", r"revision 'v9' not found")
    _hub_error(tmp_path, "hf:o/faces/nowhere", r"no folder 'nowhere' in the Hugging Face dataset o/faces")

    private = _zip_bytes(FACES)
    hub.add_hf_dataset("o/private", {"data.zip": private})
    hub.add_hf_dataset("o/gated", {"data.zip": private}, token="secret", gated=True)
    hub.required_token = "secret"
    _hub_error(tmp_path, "hf:o/private", "HF_TOKEN")
    _hub_error(tmp_path, "hf:o/gated/data.zip", r"is gated: accept its conditions on .*/datasets/o/gated.*HF_TOKEN")
    monkeypatch.setenv("HF_TOKEN", "not-the-secret")
    _hub_error(tmp_path, "hf:o/private", r"refused access .*\(HTTP 401.*HF_TOKEN")
    monkeypatch.setenv("HF_TOKEN", "secret")
    before = len(hub.requests)
    assert _fetch(tmp_path, "hf:o/private")[0].n_images == 8
    sent = hub.requests[before:]
    assert sent and all(request.headers["Authorization"] == "Bearer secret"
                        for request in sent if request.server == "main")
    # the token stays with the hub: the CDN gets a (signed) address, not the credentials
    assert [request for request in sent if request.server == "cdn"]
    assert not [request for request in sent if request.server == "cdn" and "Authorization" in request.headers]
    assert not (tmp_path / "data" / ".raw.partial").exists()


def test_an_unreachable_hub_with_nothing_cached_fails_clearly(tmp_path, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HF_ENDPOINT", dead)
    for source in ("hf:o/faces", "hf:o/faces/data.zip", "hf:o/faces@v1/data"):
        message = _hub_error(tmp_path, source, "cannot reach the Hugging Face hub")
        assert dead in message and "network" in message and "HF_ENDPOINT" in message
    assert not (tmp_path / "data" / "raw").exists() and _no_leftovers(tmp_path)


def test_a_hub_that_never_answers_is_given_up_on_after_the_timeout(tmp_path, monkeypatch):
    with socket.socket() as silent:  # accepts connections (the kernel does) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")  # an int: huggingface_hub parses it so
        started = time.monotonic()
        message = _hub_error(tmp_path, "hf:o/faces", "cannot reach the Hugging Face hub")
    assert endpoint in message and "Timeout" in message
    assert time.monotonic() - started < 5


def test_hub_checksums_are_verified(hub, tmp_path):
    archive = _zip_bytes(FACES)
    right = hashlib.sha256(archive).hexdigest()
    hub.add_hf_dataset("o/faces", {"data.zip": archive})
    shards = {f"train-{index}.parquet": _parquet_bytes(_faces_table(2)) for index in range(2)}
    hub.add_hf_dataset("o/shards", shards)

    assert _fetch(tmp_path / "ok", "hf:o/faces", sha256=right)[0].n_images == 8

    wrong = "2" * 64
    message = _hub_error(tmp_path, "hf:o/faces/data.zip", r"checksum mismatch for data.zip", sha256=wrong)
    assert wrong in message and right in message and "data.sha256" in message
    assert not _blob(tmp_path, "o/faces", archive).exists()  # deleted: the next run downloads it anew
    assert not (tmp_path / "data" / "raw").exists() and _no_leftovers(tmp_path)

    _hub_error(tmp_path, "hf:o/shards", r"data.sha256 is set but hf:o/shards has 2 files", sha256=wrong)

    hub.corrupt_cdn(archive)  # same size, other bytes: only the sha256 tells
    message = _hub_error(tmp_path / "bad", "hf:o/faces", r"does not match the hub's checksum")
    assert right in message
    assert not _blob(tmp_path / "bad", "o/faces", archive).exists()


# -- synthetic -------------------------------------------------------------------------------------

def test_synthetic_source_writes_images_and_attributes(tmp_path):
    pytest.importorskip("anime_dcgan.data.synthetic")

    summary, raw_dir = _fetch(tmp_path, "synthetic", synthetic_count=12, max_images=5, workers=1)

    assert (summary.kind, summary.n_images) == ("synthetic", 5)
    assert len(_written(raw_dir)) == 5
    with open(raw_dir / "attributes.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 5 and all((raw_dir / row["file"]).is_file() for row in rows)
