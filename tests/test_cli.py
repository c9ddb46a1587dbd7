"""The `anime-dcgan` console script (installed by `make install`) on a tiny trained generator."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
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


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


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
    (["sample", "--model", "absent", "--seeds", "1", "--grid", "g.png"], "--model absent: no such folder, file or DVC experiment"),
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


# -- anime-dcgan fid ---------------------------------------------------------------------------------

def scores(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.e2e
def test_fid_of_the_pipelines_sets_equals_the_evaluate_stages_figures(reproduced_repo) -> None:
    repo = reproduced_repo
    evaluated = repo.json("metrics/eval.json")
    n = evaluated["fid_samples"]
    # the stage's environment (its thread count): the same Inception arithmetic
    result = cli("fid", "reference/inception.npz", "samples/samples.npy", "--samples", str(n), cwd=repo.root,
                 env=repo.env)
    ours = scores(result)
    for key in (f"fid_{n}", f"kid_{n}", "precision_k3", "recall_k3"):
        assert ours[key] == pytest.approx(evaluated[key], rel=1e-9, abs=1e-12), key


def test_fid_reads_folders_zips_and_npy_alike_and_a_set_against_itself_scores_zero(trained: Path,
                                                                                  tmp_path: Path) -> None:
    assert cli("sample", "--count", "12", "--outdir", str(tmp_path / "a"), cwd=trained).returncode == 0
    assert cli("sample", "--seeds", "100-111", "--outdir", str(tmp_path / "b"), cwd=trained).returncode == 0
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as archive:
        for path in sorted((tmp_path / "b").iterdir()):
            archive.write(path, f"nested/{path.name}")
    np.save(tmp_path / "b.npy", pngs(tmp_path / "b", range(100, 112)).transpose(0, 2, 3, 1))  # (N, S, S, 3)

    from_folder = scores(cli("fid", str(tmp_path / "a"), str(tmp_path / "b"), cwd=trained))
    assert from_folder["images_a"] == from_folder["images_b"] == 12 and from_folder["fid_12"] > 1
    for other in ("b.zip", "b.npy"):
        assert scores(cli("fid", str(tmp_path / "a"), str(tmp_path / other), cwd=trained)) == from_folder
    itself = scores(cli("fid", str(tmp_path / "a"), str(tmp_path / "a"), "--json", str(tmp_path / "s.json"),
                        cwd=trained))
    assert abs(itself["fid_12"]) < 1e-6 and itself["precision_k3"] == itself["recall_k3"] == 1.0
    assert json.loads((tmp_path / "s.json").read_text()) == itself


def test_fid_refuses_bad_sets_in_one_line(trained: Path, tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for index, size in enumerate((16, 16, 16, 20)):
        Image.new("RGB", (size, size)).save(mixed / f"{index}.png")
    broken = tmp_path / "broken"
    shutil.copytree(mixed, broken)
    (broken / "3.png").write_bytes(b"not a png")
    for args, message in (([str(mixed), str(mixed)], "3.png is 20x20 but 0.png is 16x16: resize the set"),
                          ([str(broken), str(broken)], "3.png is not a readable image"),
                          ([str(mixed), str(mixed), "--samples", "2"], "--samples must be at least 4"),
                          ([str(mixed), str(tmp_path / "absent")], "absent: no such folder or file")):
        result = cli("fid", *args, cwd=trained)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert message in result.stderr.strip().splitlines()[-1]
