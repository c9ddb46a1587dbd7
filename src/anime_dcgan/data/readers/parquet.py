"""Parquet files in the Hugging Face layout: each row's image bytes become
images/<shard>/<row>.<ext>, scalar columns become attributes.csv."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

from anime_dcgan.data.readers.base import (
    DamagedFile,
    FetchJob,
    SourceError,
    Tally,
    extension_from_magic,
    is_damaged_data_error,
    select,
)

PARQUET_BATCH_ROWS = 128   # rows held in memory at once while unpacking a parquet file


def _image_column_kind(data_type: pa.DataType) -> str | None:
    """"struct" for the Hugging Face Image feature {bytes, path}, "binary" for raw bytes, else None."""
    if pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type):
        return "binary"
    if pa.types.is_struct(data_type):
        index = data_type.get_field_index("bytes")
        if index >= 0 and _image_column_kind(data_type.field(index).type) == "binary":
            return "struct"
    return None


def _is_label_type(data_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(data_type):
        return _is_label_type(data_type.value_type)
    return (pa.types.is_integer(data_type) or pa.types.is_floating(data_type)
            or pa.types.is_boolean(data_type) or pa.types.is_string(data_type)
            or pa.types.is_large_string(data_type))


def _choose_image_column(schema: pa.Schema, requested: str | None, path: Path) -> str:
    described = ", ".join(f"{name} ({schema.field(name).type})" for name in schema.names)
    if requested is not None:
        if requested not in schema.names:
            raise SourceError(f"{path}: data.image_column {requested!r} is not a column; the columns "
                              f"are: {described}.")
        if _image_column_kind(schema.field(requested).type) is None:
            raise SourceError(f"{path}: data.image_column {requested!r} holds "
                              f"{schema.field(requested).type}, not image bytes (a binary column or "
                              f"a struct with a 'bytes' field); the columns are: {described}.")
        return requested
    candidates = [name for name in schema.names if _image_column_kind(schema.field(name).type)]
    if len(candidates) != 1:
        found = "no column" if not candidates else f"several columns ({', '.join(candidates)})"
        raise SourceError(f"{path}: {found} could hold image bytes; set data.image_column to the "
                          f"one that does. The columns are: {described}.")
    return candidates[0]


def _shard_names(names: list[str]) -> list[str]:
    """Folder names for the shards: the file stem, or the whole path when stems collide."""
    stems = [PurePosixPath(name).stem for name in names]
    if len(set(stems)) == len(stems):
        return stems
    return [str(PurePosixPath(name).with_suffix("")).replace("/", "_") for name in names]


def _open_parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except Exception as exc:
        if is_damaged_data_error(exc):
            raise DamagedFile(path, exc) from exc
        raise


def _batches(parquet_file: pq.ParquetFile, path: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Row batches of `columns`, one row group at a time so memory stays bounded on any file size.

    (One iter_batches over the whole file reads ahead and can hold about the whole file.)
    """
    for row_group in range(parquet_file.num_row_groups):
        try:
            yield from parquet_file.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[row_group],
                                                 columns=columns)
        except Exception as exc:
            if is_damaged_data_error(exc):
                raise DamagedFile(path, exc) from exc
            raise


def read_parquet(job: FetchJob, shards: list[tuple[Path, str]]) -> Tally:
    """Write each row's image bytes to images/<shard>/<row:06d>.<ext>; labels to attributes.csv."""
    tally = Tally()
    files = [_open_parquet(path) for path, _ in shards]
    first_path = shards[0][0]
    image_column = _choose_image_column(files[0].schema_arrow, job.data.image_column, first_path)
    for (path, _), parquet_file in zip(shards, files):
        schema = parquet_file.schema_arrow
        if image_column not in schema.names or not _image_column_kind(schema.field(image_column).type):
            raise SourceError(f"{path}: has no image column {image_column!r} like {first_path}; "
                              "all parquet files of a source must share their columns.")
    label_columns = [name for name in files[0].schema_arrow.names if name != image_column
                     and all(_has_label_column(file.schema_arrow, name) for file in files)]
    shard_names = _shard_names([name for _, name in shards])
    # row keys come from the metadata alone, so the subset is chosen before any image is read
    keys = [f"{shard}/{row:06d}" for shard, parquet_file in zip(shard_names, files)
            for row in range(parquet_file.metadata.num_rows)]
    kept = select(keys, job.data.max_images, tally)
    with ExitStack() as stack:
        bar = stack.enter_context(job.progress_bar(len(kept), "parquet"))
        writer = None
        if label_columns:
            attributes = stack.enter_context(open(job.staging / "attributes.csv", "w", newline=""))
            writer = csv.writer(attributes)
            writer.writerow(["file", *label_columns])
        for (path, _), shard, parquet_file in zip(shards, shard_names, files):
            (job.images_dir / shard).mkdir(parents=True, exist_ok=True)
            first_row = 0
            for batch in _batches(parquet_file, path, [image_column, *label_columns]):
                images = batch.column(0).to_pylist()
                labels = [batch.column(index).to_pylist() for index in range(1, batch.num_columns)]
                for index, value in enumerate(images):
                    key = f"{shard}/{first_row + index:06d}"
                    if key not in kept:
                        continue
                    content = value.get("bytes") if isinstance(value, dict) else value
                    if not content:
                        tally.skip(f"{key} (no image bytes)")
                        continue
                    relative = f"images/{key}{extension_from_magic(content)}"
                    (job.staging / relative).write_bytes(content)
                    if writer:
                        writer.writerow([relative, *(column[index] for column in labels)])
                    tally.n_images += 1
                    bar.update()
                first_row += batch.num_rows
    return tally


def _has_label_column(schema: pa.Schema, name: str) -> bool:
    return name in schema.names and _is_label_type(schema.field(name).type)
