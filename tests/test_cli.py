"""The `anime-dcgan` console script (installed by `make install`) on a tiny trained generator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image
from test_train import make_workspace, run_library

from anime_dcgan.cli import interpolation_latents_loop
from anime_dcgan.training.networks import load_model
from anime_dcgan.training.sample import generate, generate_for_seeds, latents_for_seeds

SCRIPT = Path(sys.executable).with_name("anime-dcgan")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository-like folder after a tiny training: models/, metrics/train.json, mlflow.db."""
    root = make_workspace(tmp_path_factory.mktemp("cli"))
    run_library(root)
    return root


def pngs(folder: Path, seeds) -> np.ndarray:
    """(N, 3, S, S) uint8, as the generate stage stores samples."""
    return np.stack([np.asarray(Image.open(folder / f"seed_{seed:06d}.png")).transpose(2, 0, 1) for seed in seeds])


def ema(root: Path):
    return load_model(root / "models/generator_ema.pt")


def test_sample_writes_each_seed_as_the_generate_stage_does_and_a_grid(trained: Path, tmp_path: Path) -> None:
    result = cli("sample", "--seeds", "0-5,42", "--outdir", str(tmp_path / "faces"), "--grid",
                 str(tmp_path / "grid.png"), cwd=trained)
    assert result.returncode == 0, result.stderr
    seeds = [0, 1, 2, 3, 4, 5, 42]
    assert np.array_equal(pngs(tmp_path / "faces", seeds), generate_for_seeds(ema(trained), seeds))
    # seed 42 alone is the image seed 42 is within a batch: eval-mode BatchNorm, noise per seed
    alone = cli("sample", "--seeds", "42", "--outdir", str(tmp_path / "alone"), cwd=trained)
    assert alone.returncode == 0, alone.stderr
    assert np.array_equal(pngs(tmp_path / "alone", [42]), pngs(tmp_path / "faces", [42]))
    size = ema(trained).config.image_size
    assert Image.open(tmp_path / "grid.png").size == (2 + 7 * (size + 2), 2 + size + 2)


def test_sample_from_an_mlflow_run_uri_gives_the_same_images(trained: Path, tmp_path: Path) -> None:
    run_id = json.loads((trained / "metrics/train.json").read_text())["mlflow_run_id"]
    result = cli("sample", "--model", f"runs:/{run_id}/models", "--count", "4", "--outdir", str(tmp_path / "f"),
                 cwd=trained)
    assert result.returncode == 0, result.stderr
    assert np.array_equal(pngs(tmp_path / "f", range(4)), generate_for_seeds(ema(trained), range(4)))


@pytest.mark.parametrize(("args", "message"), [
    (["sample", "--seeds", "5-1", "--grid", "g.png"], "the range 5-1 runs backwards (write 1-5)"),
    (["sample", "--seeds", "abc", "--grid", "g.png"], "'abc' is neither a seed nor a range such as 0-63"),
    (["sample", "--model", "absent", "--seeds", "1", "--grid", "g.png"], "--model absent: no such folder or file"),
    (["sample", "--model", "models/discriminator.pt", "--seeds", "1", "--grid", "g.png"], "holds a discriminator"),
    (["sample", "--model", "runs:/0123456789abcdef/models", "--seeds", "1", "--grid", "g.png"],
     "runs:/0123456789abcdef/models: cannot be fetched from the MLflow store"),
    (["sample", "--seeds", "1"], "give --outdir (one PNG per seed), --grid (one picture) or both"),
    (["export", "--format", "tflite", "--out", "x"], "invalid choice: 'tflite'"),
    (["interpolate", "--seeds", "3", "--out", "w.gif"], "needs at least two seeds"),
    (["interpolate", "--seeds", "3,4", "--out", "w.avi"], "write a .gif or an .mp4"),
])
def test_bad_arguments_fail_with_one_clear_line(trained: Path, args: list[str], message: str) -> None:
    result = cli(*args, cwd=trained)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("command", ["sample", "interpolate", "export"])
def test_each_subcommand_has_help_with_examples(trained: Path, command: str) -> None:
    result = cli(command, "--help", cwd=trained)
    assert result.returncode == 0 and "examples:" in result.stdout and f"anime-dcgan {command}" in result.stdout


def test_interpolate_writes_a_looping_gif_through_the_seeds(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "walk.gif"
    result = cli("interpolate", "--seeds", "1,7,42", "--frames", "30", "--out", str(out), cwd=trained)
    assert result.returncode == 0, result.stderr
    gif = Image.open(out)
    assert gif.n_frames == 30 and gif.info["loop"] == 0
    expected = generate(ema(trained), interpolation_latents_loop([1, 7, 42], 30, ema(trained).config.nz))
    for index, seed in ((0, 1), (10, 7), (20, 42)):  # each leg starts on its seed's own image
        gif.seek(index)
        frame = np.asarray(gif.convert("RGB")).astype(int).transpose(2, 0, 1)
        assert np.abs(frame - generate_for_seeds(ema(trained), [seed])[0]).mean() < 8  # GIF palette
        assert np.abs(frame - expected[index]).mean() < 8


def test_exports_load_back_and_match_the_eager_generator(trained: Path, tmp_path: Path) -> None:
    generator = ema(trained)
    z = latents_for_seeds(range(5), generator.config.nz).flatten(1)                    # (5, nz)
    with torch.no_grad():
        eager = generator(z[:, :, None, None])                                           # (5, 3, S, S)
    eager_uint8 = generate_for_seeds(generator, range(5)).transpose(0, 2, 3, 1).astype(int)

    for fmt, name in (("torchscript", "g.pt"), ("onnx", "g.onnx")):
        result = cli("export", "--format", fmt, "--out", str(tmp_path / name), cwd=trained)
        assert result.returncode == 0, result.stderr
    scripted = torch.jit.load(str(tmp_path / "g.pt"))
    with torch.no_grad():
        assert (scripted.generator(z[:, :, None, None]) - eager).abs().max() <= 1e-4
        assert np.abs(scripted(z).numpy().astype(int) - eager_uint8).max() <= 1
    session = onnxruntime.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    [images] = session.run(None, {"z": z.numpy()})  # a batch of 5 from a module traced at 2
    assert images.dtype == np.uint8 and images.shape == eager_uint8.shape
    assert np.abs(images.astype(int) - eager_uint8).max() <= 1


def test_an_mp4_is_written_with_ffmpeg_or_refused_saying_how_to_get_it(trained: Path, tmp_path: Path) -> None:
    from anime_dcgan.cli import _ffmpeg

    out = tmp_path / "walk.mp4"
    result = cli("interpolate", "--seeds", "3,4", "--frames", "8", "--out", str(out), cwd=trained)
    if _ffmpeg() is None:
        assert result.returncode == 1
        assert "an .mp4 needs ffmpeg: `pip install imageio-ffmpeg`" in result.stderr
        assert not out.exists()
    else:
        assert result.returncode == 0, result.stderr
        assert out.read_bytes()[4:8] == b"ftyp"  # an MP4 container
