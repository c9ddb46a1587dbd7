"""A local folder of image files, walked recursively in sorted order."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from anime_dcgan.data.readers.base import FetchJob, Tally, classify_member, select


def read_folder(job: FetchJob, folder: Path, excluded: tuple[Path, ...]) -> Tally:
    tally = Tally()
    excluded_dirs = {path.resolve() for path in excluded}
    images: list[str] = []
    for current, dirnames, filenames in os.walk(folder):
        current_path = Path(current)
        # sorted walk: the skipped examples and the copy order do not depend on the file system
        dirnames[:] = sorted(name for name in dirnames
                             if (current_path / name).resolve() not in excluded_dirs)
        for filename in sorted(filenames):
            relative = (current_path / filename).relative_to(folder).as_posix()
            verdict = classify_member(relative)
            if verdict == "image":
                images.append(relative)
            elif verdict == "skip":
                tally.skip(relative)
    kept = select(images, job.data.max_images, tally)
    with job.progress_bar(len(kept), "copy") as bar:
        for relative in images:
            if relative in kept:
                destination = job.images_dir / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / relative, destination)
                tally.n_images += 1
                bar.update()
    return tally
