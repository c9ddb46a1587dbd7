"""benchmarks/train_throughput.py on a tiny sample, and benchmarks/conv_limit.py on tiny networks."""

import io
import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from anime_dcgan.device import pick_runtime
from anime_dcgan.params import parse_params
from anime_dcgan.training.calibration import step_runner
from anime_dcgan.training.networks import Discriminator, Generator, ModelConfig

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # as when the scripts run: their shared modules beside them
from conv_limit import (Convolution, conv_limit, convolution_rates, convolution_shapes, forward_backward_flops,
                        step_convolution_bound, step_convolution_flops, step_passes)


def write_sample_zip(path: Path, count: int) -> Path:
    """A zip laid out as the real sample: `count` distinct 64x64 RGB images (noise) in one folder."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as archive:
        for index in range(count):
            png = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(png, format="PNG")
            archive.writestr(f"faces/{index:03d}.png", png.getvalue())
    return path


@pytest.mark.slow
def test_tiny_run_reports_both_rates_their_ratio_and_the_share_of_the_conv_limit(tmp_path: Path):
    # 3 batches of 8: the reference's warm-up and timed steps are one epoch (its workers start once)
    sample = write_sample_zip(tmp_path / "sample.zip", 24)
    out = tmp_path / "results.json"
    args = ["--steps", "2", "--warmup", "1", "--repeats", "1", "--batch-size", "8", "--device", "cpu",
            "--conv-limit", "--json-out", str(out)]
    result = subprocess.run([sys.executable, str(BENCHMARKS / "train_throughput.py"), *args], check=False,
                            capture_output=True, text=True, timeout=240,
                            env={**os.environ, "ANIME_DCGAN_SAMPLE": str(sample)})
    assert result.returncode == 0, result.stderr

    report = json.loads(out.read_text())
    for side in ("reference", "project"):
        rounds = report[f"{side}_rounds_images_per_s"]
        assert len(rounds) == 1 and all(math.isfinite(rate) and rate > 0 for rate in rounds)
        assert report[f"{side}_images_per_s"] == max(rounds)  # the best round
    assert report["project_over_reference"] == pytest.approx(
        report["project_images_per_s"] / report["reference_images_per_s"])
    assert report["images"] == str(sample) and report["project_images"] == 24  # the sample the setting names
    assert (report["batch_size"], report["steps"], report["warmup"], report["repeats"]) == (8, 2, 1, 1)
    assert report["arch"] == "dcgan" and report["device"] == "cpu"
    assert report["project_precision"] == pick_runtime("cpu").precision
    assert report["cpu"] and report["torch"] == torch.__version__ and report["threads"] == torch.get_num_threads()
    assert report["command"].endswith("train_throughput.py " + " ".join(args))
    assert report["conv_limit_gflops"] > 0 and report["project_gflop_per_image"] > 0
    achieved = report["project_images_per_s"] * report["project_gflop_per_image"]
    assert report["project_gflops"] == pytest.approx(achieved)
    assert report["project_fraction_of_conv_limit"] == pytest.approx(achieved / report["conv_limit_gflops"])
    assert report["step_convolution_bound_fraction"] == pytest.approx(
        report["step_convolution_bound_gflops"] / report["conv_limit_gflops"])


TINY = ModelConfig("dcgan", image_size=16, nz=8, ngf=4, ndf=4)


def test_the_shapes_are_the_networks_own_convolutions():
    shapes = convolution_shapes(TINY, batch_size=2)
    layers = [m for net in (Generator(TINY), Discriminator(TINY)) for m in net.modules()
              if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(shapes) == len(set(shapes)) == len(layers)  # no two alike in these networks
    assert [conv.weight_shape for conv in shapes] == [tuple(layer.weight.shape) for layer in layers]
    assert all(conv.input_shape[0] == conv.output_shape[0] == 2 for conv in shapes)
    assert shapes[0].input_shape == (2, TINY.nz, 1, 1) and shapes[-1].output_shape == (2, 1, 1, 1)


def test_flops_of_a_known_convolution():
    # (2, 8, 8, 8) -> (2, 16, 4, 4): 2 x 16 output pixels, each 16 x 8 x 4 x 4 multiply-adds, 3 passes
    conv = Convolution(False, (2, 8, 8, 8), (16, 8, 4, 4), (2, 16, 4, 4), stride=2, padding=1)
    assert forward_backward_flops(conv) == 3 * 2 * (2 * 4 * 4) * (16 * 8 * 4 * 4)


def test_flops_match_pytorchs_count_of_forward_and_backward():
    for conv in convolution_shapes(TINY, batch_size=2):  # transposed and not, strided and not
        x = torch.randn(conv.input_shape, requires_grad=True)
        weight = torch.randn(conv.weight_shape, requires_grad=True)
        op = F.conv_transpose2d if conv.transposed else F.conv2d
        with FlopCounterMode(display=False) as counter:
            out = op(x, weight, stride=conv.stride, padding=conv.padding)
            torch.autograd.grad(out, (x, weight), torch.ones_like(out))
        assert tuple(out.shape) == conv.output_shape
        assert forward_backward_flops(conv) == counter.get_total_flops(), conv


def test_conv_limit_on_tiny_networks():
    rates = convolution_rates(TINY, 2, torch.float32, torch.device("cpu"), repeats=1)
    assert list(rates) == convolution_shapes(TINY, 2)
    assert all(math.isfinite(rate) and rate > 0 for rate in rates.values())
    limit = conv_limit(TINY, 2, torch.float32, torch.device("cpu"), repeats=1)
    assert math.isfinite(limit) and limit > 0


def test_the_bounds_passes_are_the_convolutions_one_training_step_runs():
    """The ceiling counts each layer's forward, data-gradient and weight-gradient passes as the step
    runs them: their FLOPs add up to PyTorch's count over one real step of the train stage's code."""
    shapes = convolution_shapes(TINY, batch_size=4)
    assert [(conv.network, conv.first) for conv in shapes] == (
        [("generator", True)] + [("generator", False)] * 2 + [("discriminator", True)] + [("discriminator", False)] * 2)
    assert step_passes(shapes[0]) == (1, 0, 1) and step_passes(shapes[3]) == (3, 1, 2)
    runtime = pick_runtime("cpu", "fp32", False)
    step = step_runner(TINY, parse_params({"batch_size": 4}).optim, runtime,
                       torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8))
    step()  # the first step: anything done once is out of the count
    with FlopCounterMode(display=False) as counter:
        step()
    assert step_convolution_flops(TINY, 4) == counter.get_total_flops()


def test_step_bound_on_tiny_networks():
    bound = step_convolution_bound(TINY, 2, torch.float32, torch.device("cpu"), repeats=1)
    assert math.isfinite(bound) and bound > 0
