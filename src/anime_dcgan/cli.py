"""The `anime-dcgan` command: a trained generator used outside the pipeline, and its scores.

    anime-dcgan sample --model models --seeds 0-63,100 --grid grid.png --outdir faces/
    anime-dcgan interpolate --model models --seeds 1,7,42 --frames 60 --out walk.gif
    anime-dcgan export --model models --format onnx --out generator.onnx
    anime-dcgan fid reference/inception.npz my-images/ --samples 1000

Image k is the generate stage's sample k: the same noise (seeded with k) through the same eval-mode
generator.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from anime_dcgan.errors import PipelineError
from anime_dcgan.training.networks import Generator, load_model
from anime_dcgan.training.sample import generate, latent_for_seed, latents_for_seeds, slerp, to_uint8
from anime_dcgan.util.io import atomic_path
from anime_dcgan.util.visuals import image_grid, save_png

GENERATOR_FILES = {"ema": "generator_ema.pt", "raw": "generator.pt"}
_MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")

EXAMPLES = {
    "sample": """examples:
  anime-dcgan sample --model models --seeds 42 --outdir faces/
  anime-dcgan sample --model models --seeds 0-63 --grid grid.png
  anime-dcgan sample --model models:/anime-dcgan-generator@champion --seeds 42 --grid champion.png
  anime-dcgan sample --model runs:/<run id>/models --count 10000 --outdir fid-images/
  anime-dcgan sample --model <dvc experiment name> --seeds 0-15 --grid exp.png""",
    "interpolate": """examples:
  anime-dcgan interpolate --model models --seeds 1,7,42 --frames 60 --out walk.gif
  anime-dcgan interpolate --model models --seeds 3,4 --frames 90 --fps 30 --out walk.mp4""",
    "export": """examples:
  anime-dcgan export --model models --format torchscript --out generator.pt
  anime-dcgan export --model models --format onnx --out generator.onnx

The exported module maps latents z (N, nz) to images (N, S, S, 3) uint8; z for seed k is
torch.randn(nz, generator=torch.Generator().manual_seed(k)).""",
    "fid": """examples:
  anime-dcgan fid reference/inception.npz samples/samples.npy --samples 1000   # = the evaluate stage's
  anime-dcgan fid data/processed/images.npy other-gan-output.zip
  anime-dcgan fid my-dataset/ my-samples/ --samples 5000 --json scores.json

A is the real set and B the set scored: precision is the share of B inside A's manifold, recall
the share of A inside B's. Each set is a folder or a .zip of images (all of one size), a uint8 .npy
of (N, 3, S, S) or (N, S, S, 3) images, and A may be the fid_reference stage's reference/inception.npz
(used whole). --samples N takes the first N images of each set (sorted file names in a folder or zip).""",
}


class CliError(PipelineError):
    """A bad argument: printed as one line."""


def parse_seeds(text: str) -> list[int]:
    """'0-3,10' -> [0, 1, 2, 3, 10]"""
    seeds: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None:
            raise CliError(f"--seeds {text!r}: {part.strip()!r} is neither a seed nor a range such as 0-63")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise CliError(f"--seeds {text!r}: the range {first}-{last} runs backwards (write {last}-{first})")
        seeds += range(first, last + 1)
    return seeds


def resolve_generator(model: str, which: str, download_dir: Path) -> Path:
    """The generator file that `model` names: a models/ folder, a .pt file, or an MLflow URI: a run's
    artifacts (runs:/<id>/models) or a logged or registered model (models:/<model id>,
    models:/anime-dcgan-generator@champion, models:/anime-dcgan-generator/3)."""
    if model.startswith(_MLFLOW_SCHEMES):
        from anime_dcgan.tracking import download_artifacts

        local = download_artifacts(model, download_dir)
    elif Path(model).exists():
        local = Path(model)
    else:
        local = experiment_generator(model, which, download_dir)
        if local is None:
            raise CliError(f"--model {model}: no such folder, file or DVC experiment (give the models/ folder, a "
                           "generator .pt file, an experiment name from `dvc exp show` or an MLflow URI such as "
                           "runs:/<run id>/models)")
    if (local / "MLmodel").is_file():  # an MLflow model (models:/...): it holds the EMA generator only
        if which != "ema":
            raise CliError(f"--model {model}: an MLflow model holds the EMA generator only; drop --generator raw "
                           "or give the run's models/ folder (runs:/<run id>/models)")
        local = next((local / "artifacts").glob("*.pt"), local / "artifacts" / GENERATOR_FILES["ema"])
    elif local.is_dir():
        local = local / GENERATOR_FILES[which]
        if not local.is_file():
            raise CliError(f"--model {model}: holds no {GENERATOR_FILES[which]} (the train stage's models/ "
                           "folder has one)")
    return local


def experiment_generator(name: str, which: str, download_dir: Path) -> Path | None:
    """The generator file of DVC experiment `name` of the repository around the working directory
    (its committed models/ output, read from the DVC cache or remote), or None when no experiment has
    that name."""
    import dvc.api
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo
    from dvc.repo.experiments.utils import resolve_name

    try:
        repo = Repo()
    except NotDvcRepoError:
        return None
    with repo:
        found = resolve_name(repo.scm, name).get(name)
        if found is None:
            return None
        rev = repo.scm.get_ref(str(found))
        target = download_dir / GENERATOR_FILES[which]
        try:
            with dvc.api.open(f"models/{GENERATOR_FILES[which]}", repo=repo.root_dir, rev=rev, mode="rb") as source:
                target.write_bytes(source.read())
        except Exception as exc:  # not in the cache, and no remote holds it
            raise CliError(f"--model {name}: the experiment's models/ are not in the DVC cache ({type(exc).__name__}); "
                           f"fetch them with `dvc exp pull <remote> {name}`, or `dvc exp apply {name} && dvc pull "
                           "models`") from None
    return target


def open_generator(model: str, which: str, device: str) -> Generator:
    with tempfile.TemporaryDirectory(prefix="anime-dcgan-model-") as download_dir:
        path = resolve_generator(model, which, Path(download_dir))
        try:
            generator = load_model(path, device)
        except Exception as exc:  # not a saved model of this project
            raise CliError(f"--model {model}: {path} is not a generator saved by this project ({exc})") from None
    if not isinstance(generator, Generator):
        raise CliError(f"--model {model}: {path} holds a discriminator, not a generator")
    return generator


def _hwc(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 3, S, S) -> (N, S, S, 3)"""
    return images.transpose(0, 2, 3, 1)


def command_sample(args: argparse.Namespace) -> None:
    seeds = list(range(args.count)) if args.count is not None else parse_seeds(args.seeds)
    if not args.grid and not args.outdir:
        raise CliError("give --outdir (one PNG per seed), --grid (one picture) or both")
    generator = open_generator(args.model, args.generator, args.device)
    from tqdm import tqdm

    chunks = []
    for start in tqdm(range(0, len(seeds), args.batch_size), desc="sample", unit="batch", disable=len(seeds) <= 256):
        chunks.append(generate(generator, latents_for_seeds(seeds[start:start + args.batch_size],
                                                            generator.config.nz)))
    images = np.concatenate(chunks)                                               # (N, 3, S, S)
    if args.outdir:
        for seed, image in zip(seeds, _hwc(images)):  # the generate stage's names: seed_000042.png
            save_png(np.ascontiguousarray(image), Path(args.outdir) / f"seed_{seed:06d}.png")
        print(f"sample: {len(seeds)} images in {args.outdir}/")
    if args.grid:
        save_png(image_grid(images, nrow=min(args.columns, len(images))), Path(args.grid))
        print(f"sample: a grid of {len(seeds)} images in {args.grid}")


def interpolation_latents_loop(seeds: Sequence[int], frames: int, nz: int) -> torch.Tensor:
    """`frames` latents (frames, nz, 1, 1) on a closed spherical path through the seeds' latents:
    seed 0 -> seed 1 -> ... -> seed 0, the same number of frames between each pair."""
    per_leg = frames // len(seeds)
    latents = [latent_for_seed(seed, nz) for seed in seeds]
    t = torch.arange(per_leg) / per_leg  # the end of a leg is the start of the next one
    return torch.cat([slerp(latents[i], latents[(i + 1) % len(latents)], t) for i in range(len(latents))])


def _ffmpeg() -> str | None:
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return shutil.which("ffmpeg")


def command_interpolate(args: argparse.Namespace) -> None:
    seeds = parse_seeds(args.seeds)
    if len(seeds) < 2:
        raise CliError(f"--seeds {args.seeds!r}: an interpolation needs at least two seeds")
    if args.frames < len(seeds):
        raise CliError(f"--frames {args.frames}: at least one frame per seed ({len(seeds)})")
    out = Path(args.out)
    if out.suffix.lower() not in (".gif", ".mp4"):
        raise CliError(f"--out {out}: write a .gif or an .mp4")
    ffmpeg = _ffmpeg() if out.suffix.lower() == ".mp4" else None
    if out.suffix.lower() == ".mp4" and ffmpeg is None:
        raise CliError("an .mp4 needs ffmpeg: `pip install imageio-ffmpeg` or install ffmpeg; or write a .gif")
    generator = open_generator(args.model, args.generator, args.device)
    frames = _hwc(generate(generator, interpolation_latents_loop(seeds, args.frames, generator.config.nz)))
    if args.size:
        frames = np.stack([_resized(frame, args.size) for frame in frames])
    if ffmpeg is None:
        from PIL import Image

        with atomic_path(out) as tmp:
            pictures = [Image.fromarray(frame) for frame in frames]
            pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:],
                             duration=round(1000 / args.fps), loop=0)
    else:
        height, width = frames.shape[1:3]
        with atomic_path(out) as tmp:
            subprocess.run([ffmpeg, "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
                            "-s", f"{width}x{height}", "-r", str(args.fps), "-i", "-", "-pix_fmt", "yuv420p",
                            "-f", "mp4", str(tmp)], input=frames.tobytes(), check=True)
    print(f"interpolate: {len(frames)} frames through seeds {', '.join(map(str, seeds))} in {out}")


def _resized(frame: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.NEAREST))


class ExportedGenerator(torch.nn.Module):
    """z (N, nz) -> images (N, S, S, 3) uint8: what an export holds."""

    def __init__(self, generator: Generator):
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        images = self.generator(z[:, :, None, None])                             # (N, 3, S, S) in [-1, 1]
        return to_uint8(images).permute(0, 2, 3, 1)


def command_export(args: argparse.Namespace) -> None:
    generator = open_generator(args.model, args.generator, "cpu")
    module = ExportedGenerator(generator).eval()
    example = latents_for_seeds([0, 1], generator.config.nz).flatten(1)          # (2, nz)
    out = Path(args.out)
    with atomic_path(out) as tmp, torch.no_grad(), warnings.catch_warnings():
        # both exporters are deprecated in favour of torch.export, whose files neither runtime loads
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
        if args.format == "torchscript":
            torch.jit.save(torch.jit.trace(module, example), str(tmp))
        else:  # the TorchScript-based exporter: no onnxscript needed, a batch of any size
            torch.onnx.export(module, (example,), str(tmp), dynamo=False, input_names=["z"],
                              output_names=["images"], dynamic_axes={"z": {0: "batch"}, "images": {0: "batch"}})
    print(f"export: {args.format} module z (N, {generator.config.nz}) -> uint8 images (N, "
          f"{generator.config.image_size}, {generator.config.image_size}, 3) in {out}")


def load_image_set(spec: str, limit: int | None) -> np.ndarray:
    """The first `limit` images of a folder, .zip or .npy as uint8 (N, 3, S, S)."""
    from PIL import Image, UnidentifiedImageError

    from anime_dcgan.data.readers.base import IMAGE_EXTENSIONS

    path = Path(spec)
    if not path.exists():
        raise CliError(f"{spec}: no such folder or file")
    if path.suffix == ".npy":
        try:
            images = np.load(path, mmap_mode="r")
        except ValueError as exc:
            raise CliError(f"{spec}: not a readable .npy file ({exc})") from None
        if images.ndim == 4 and images.shape[-1] == 3 and images.shape[1] != 3:
            images = images.transpose(0, 3, 1, 2)                              # (N, S, S, 3) -> (N, 3, S, S)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise CliError(f"{spec}: expected uint8 images (N, 3, S, S) or (N, S, S, 3), got {images.dtype} "
                           f"{images.shape}")
        return np.ascontiguousarray(images[:limit])
    if path.is_dir():
        names = sorted(str(f.relative_to(path)) for f in path.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
        def open_member(name: str):
            return open(path / name, "rb")
    elif zipfile.is_zipfile(path):
        archive = zipfile.ZipFile(path)
        names = sorted(n for n in archive.namelist() if Path(n).suffix.lower() in IMAGE_EXTENSIONS)
        open_member = archive.open
    else:
        raise CliError(f"{spec}: give a folder or .zip of images, an .npy of images, or reference/inception.npz")
    images = []
    for name in names[:limit]:
        try:
            with open_member(name) as handle, Image.open(handle) as image:
                images.append(np.asarray(image.convert("RGB")).transpose(2, 0, 1))
        except (UnidentifiedImageError, OSError) as exc:
            raise CliError(f"{spec}: {name} is not a readable image ({exc})") from None
        if images[-1].shape != images[0].shape:
            raise CliError(f"{spec}: {name} is {images[-1].shape[2]}x{images[-1].shape[1]} but {names[0]} is "
                           f"{images[0].shape[2]}x{images[0].shape[1]}: resize the set to one size first")
    if len(images) < 4:
        raise CliError(f"{spec}: {len(images)} images; the scores need at least 4 on each side")
    return np.stack(images)


def command_fid(args: argparse.Namespace) -> None:
    from anime_dcgan.evaluation.inception import inception_features
    from anime_dcgan.evaluation.reference import load_reference
    from anime_dcgan.evaluation.registry import EvalInputs, compute_metrics

    scored = load_image_set(args.b, args.samples)                               # (N, 3, S, S)
    if args.a.endswith(".npz"):
        reference = load_reference(args.a)
        real = {"real_features": reference["features"].astype(np.float64), "real_mu": reference["mu"],
                "real_sigma": reference["sigma"]}
    else:  # any size: Inception resizes both sets to 299
        real = {"real_features": inception_features(load_image_set(args.a, args.samples), args.device, progress=True)}
    # real_images feed only SWD and MS-SSIM, not computed here
    inputs = EvalInputs(fake_images=scored, real_images=scored, seed=args.seed, device=args.device, progress=True,
                        **real)
    scores = compute_metrics(inputs, ["fid", "kid", "pr_k3"])
    scores |= {"images_a": len(real["real_features"]), "images_b": len(scored)}
    if args.json:
        from anime_dcgan.util.io import atomic_write_json

        atomic_write_json(args.json, scores)
    print(json.dumps(scores, indent=2, sort_keys=True))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anime-dcgan", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES[name],
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        if name != "fid":
            sub.add_argument("--model", default="models",
                             help="the models/ folder (default), a generator .pt file, or runs:/<run id>/models")
            sub.add_argument("--generator", choices=sorted(GENERATOR_FILES), default="ema",
                             help="in a models/ folder: the EMA generator (default) or the raw one")
        return sub

    sample = command("sample", "images for given seeds, as PNG files and/or one grid")
    chosen = sample.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--seeds", help="seeds and ranges: 0-63,100,200-205")
    chosen.add_argument("--count", type=int, help="seeds 0 .. N-1 (for external FID tools)")
    sample.add_argument("--outdir", help="one PNG per seed, seed_000042.png")
    sample.add_argument("--grid", help="one PNG of all the images")
    sample.add_argument("--columns", type=int, default=8, help="images per row of the grid (8)")
    sample.add_argument("--batch-size", type=int, default=256)
    sample.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 ...")

    walk = command("interpolate", "a looping spherical walk through the seeds' latents, as a GIF or MP4")
    walk.add_argument("--seeds", required=True, help="two or more seeds: 1,7,42")
    walk.add_argument("--frames", type=int, default=60, help="frames in the whole loop (60)")
    walk.add_argument("--fps", type=int, default=20, help="frames per second (20)")
    walk.add_argument("--size", type=int, help="scale each frame to this many pixels square")
    walk.add_argument("--out", required=True, help="walk.gif or walk.mp4")
    walk.add_argument("--device", default="cpu")

    export = command("export", "the generator as a TorchScript or ONNX module: z -> uint8 images")
    export.add_argument("--format", required=True, choices=["torchscript", "onnx"])
    export.add_argument("--out", required=True)

    score = command("fid", "FID, KID and precision/recall of image set B against set A, the pipeline's protocol")
    score.add_argument("a", help="the real set: folder, .zip, .npy, or reference/inception.npz")
    score.add_argument("b", help="the set scored: folder, .zip or .npy")
    score.add_argument("--samples", type=int, help="the first N images of each set (default: all)")
    score.add_argument("--seed", type=int, default=0,
                       help="KID subsets and precision/recall pairing (0, as params.yaml)")
    score.add_argument("--json", help="also write the scores to this file")
    score.add_argument("--device", default="cpu")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    for option, least in (("count", 1), ("samples", 4)):  # precision/recall use 3 neighbours: 4 images
        if getattr(args, option, None) is not None and getattr(args, option) < least:
            raise SystemExit(f"anime-dcgan {args.command}: error: --{option} must be at least {least}")
    handlers = {"sample": command_sample, "interpolate": command_interpolate, "export": command_export,
                "fid": command_fid}
    try:
        handlers[args.command](args)
    except PipelineError as exc:
        print(f"anime-dcgan {args.command}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"anime-dcgan {args.command}: interrupted; no partial output was left behind", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
