"""benchmarks/train_throughput.py on tiny settings: both sides run and are reported; bad input is refused."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = REPO / "benchmarks/train_throughput.py"
TINY = ["--steps", "2", "--warmup", "1", "--repeats", "1", "--batch-size", "8", "--image-size", "16",
        "--compile", "false", "--no-variants"]


def run_benchmark(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARK), *args], capture_output=True, text=True, timeout=300)


def write_images(folder: Path, count: int) -> Path:
    """`count` distinct 64x64 RGB PNGs (noise), in a subfolder as a downloaded dataset would have them."""
    rng = np.random.default_rng(0)
    (folder / "faces").mkdir(parents=True)
    for index in range(count):
        pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "faces" / f"{index:03d}.png")
    return folder


@pytest.mark.slow
def test_tiny_run_reports_both_sides_ratio_and_memory(tmp_path: Path):
    # 24 images = 3 full batches of 8: one warm-up step and two timed ones on each side
    images = write_images(tmp_path / "images", 24)
    out = tmp_path / "results.json"
    result = run_benchmark(*TINY, "--device", "cpu", "--image-dir", str(images), "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "| reference | fp32 |" in result.stdout
    assert "| project |" in result.stdout
    assert "project / reference:" in result.stdout

    report = json.loads(out.read_text())
    best = report["best"]
    assert set(best) == {"reference", "project"}
    for name in best:
        run = best[name]
        assert run["images"] == 16 and len(run["step_seconds"]) == 2 and len(run["warmup_seconds"]) == 1
        assert run["images_per_s"] > 0
        assert run["max_rss_bytes"] >= run["imports_rss_bytes"] > 50 * 2**20  # torch alone is larger
        assert run["tree_rss_bytes"] > 0 and run["minor_faults"] >= 0
    assert best["project"]["config"]["tune_allocator"] and not best["project"]["config"]["compile"]
    assert best["project"]["precision"] in ("bf16", "fp32")
    verdicts = report["verdicts"]
    ratio = best["project"]["images_per_s"] / best["reference"]["images_per_s"]
    assert verdicts["ratio_project_over_reference"] == pytest.approx(ratio)
    assert verdicts["target_met"] == (ratio >= 2.5)
    # the project skips the discriminator's weight gradients in the generator update
    assert report["flops_per_image"]["reference"] > report["flops_per_image"]["project"] > 0
    assert report["peak_flops"]["bf16"] > 0 and report["peak_flops"]["fp32"] > 0
    assert report["settings"]["project_images"] == 24
    # the machine-state probe around every run, on all threads against one
    for run in report["runs"]:
        if torch.get_num_threads() >= 2:
            assert len(run["thread_scaling"]) == 2 and min(run["thread_scaling"]) > 0
        else:
            assert run["thread_scaling"] is None


def load_benchmark():
    """The benchmark script as a module, to call its main() in this process (no torch import per case)."""
    if "train_throughput" not in sys.modules:
        sys.path.insert(0, str(BENCHMARK.parent))  # as when run as a script: its helper modules beside it
        spec = importlib.util.spec_from_file_location("train_throughput", BENCHMARK)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["train_throughput"]


@pytest.mark.parametrize(("args", "message"), [
    (["--steps", "0"], "expected a positive whole number, got '0'"),
    (["--repeats", "two"], "expected a positive whole number, got 'two'"),
    (["--image-size", "24"], "--image-size must be a power of two >= 16, got 24"),
    (["--device", "cpu", "--image-dir", "/nonexistent/faces"], "--image-dir /nonexistent/faces is not a folder"),
])
def test_bad_arguments_are_refused_with_a_message(args: list[str], message: str, capsys):
    with pytest.raises(SystemExit) as stopped:
        load_benchmark().main(args)
    assert stopped.value.code != 0
    assert message in f"{stopped.value.code}{capsys.readouterr().err}"  # argparse prints, the others raise it


def test_thread_scaling_measures_and_restores_the_thread_count():
    module = load_benchmark()
    threads = torch.get_num_threads()
    scaling = module.thread_scaling(torch.device("cpu"), torch.float32, repeats=1)
    assert torch.get_num_threads() == threads
    if threads >= 2:
        assert 0.2 < scaling < 4 * threads  # a time ratio: positive, not absurd
    torch.set_num_threads(1)
    try:
        assert module.thread_scaling(torch.device("cpu"), torch.float32) is None  # nothing to compare
    finally:
        torch.set_num_threads(threads)


def run_result(module, name: str, images_per_s: float, warmup_seconds: list[float], minor_faults: int,
               compile: bool = False, tune_allocator: bool = True, weight_grad_as_conv: bool = True):
    """A finished run of 10 steps of 100 images at `images_per_s`."""
    config = module.RunConfig(name, "reference" if name == "reference" else "project", compile, tune_allocator,
                              weight_grad_as_conv)
    seconds = 1000 / images_per_s
    return module.RunResult(config, images=1000, seconds=seconds, step_seconds=[seconds / 10] * 10,
                            warmup_seconds=warmup_seconds, minor_faults=minor_faults,
                            max_rss_bytes=2**30, imports_rss_bytes=2**29, tree_rss_bytes=2**31)


def test_verdicts_on_known_figures(capsys):
    module = load_benchmark()
    summary = module.Summary(machine={"device": "cpu"},
                             settings={"params_steps": 2000, "params_batch_size": 64},
                             flops_per_image={"reference": 2.5e9, "project": 2e9},
                             peak_flops={"bf16": 1e12, "fp32": 5e11})
    summary.runs = [
        run_result(module, "reference", 100, [1.0], 500_000, tune_allocator=False),
        # one step takes 1 s; its warm-up took 31 s: 30 s of compiling
        run_result(module, "project", 100, [31.0, 1.0], 1_000, compile=True),
        run_result(module, "project eager", 80, [1.25, 1.25], 1_000),
        run_result(module, "project, default allocator", 50, [5.0, 1.0], 400_000, compile=True, tune_allocator=False),
        run_result(module, "project, oneDNN weight gradients", 200, [3.0, 1.0], 1_000, compile=True,
                   weight_grad_as_conv=False),
        run_result(module, "reference", 90, [1.0], 500_000, tune_allocator=False),
        run_result(module, "project", 260, [3.0, 1.0], 1_000, compile=True),  # best round, warm cache
    ]
    for run in summary.runs:
        run.thread_scaling = (1.8, 1.8)
    summary.runs[-1].thread_scaling = (1.8, 1.25)
    verdicts = summary.verdicts()
    assert verdicts["ratio_project_over_reference"] == pytest.approx(2.6)  # best rounds: 260 / 100
    assert verdicts["project_best_thread_scaling"] == [1.8, 1.25]
    assert verdicts["target_met"]
    assert verdicts["bf16_limit_images_per_s_project"] == pytest.approx(500)
    assert verdicts["compile_seconds_cold"] == pytest.approx(30)  # the first compiled run's, not the best's
    # 2000 x 64 images: 30 + 128000 / 260 = 522 s compiled against 128000 / 80 = 1600 s eager
    assert verdicts["default_run_seconds_compiled"] == pytest.approx(30 + 128_000 / 260)
    assert verdicts["default_run_seconds_eager"] == pytest.approx(1600)
    assert verdicts["compile_pays_off"]
    assert verdicts["allocator_speedup"] == pytest.approx(260 / 50)
    assert verdicts["minor_faults_per_step_default"] == pytest.approx(40_000)
    assert verdicts["weight_grad_as_conv_speedup"] == pytest.approx(260 / 200)

    module.print_report(summary)
    printed = capsys.readouterr().out
    assert "project / reference: 2.60x (target >= 2.5x on the CPU: met)" in printed
    assert "compile: 30.0 s cold" in printed and "compile pays off" in printed
    assert "| project eager | fp32 | no | 80.0 | 80 |" in printed
    assert "| 52% |" in printed  # project: 260 images/s x 2 GFLOP of a 1 TFLOP/s limit
    assert "minor faults/step 40,000 -> 100" in printed
    assert "weight gradients as convolutions (anime_dcgan.training.cpu_ops): 1.30x" in printed
    assert "  project: 1.80 -> 1.80, 1.80 -> 1.25\n" in printed  # round by round


def test_compile_verdict_when_the_pipeline_runs_eager():
    module = load_benchmark()
    summary = module.Summary(machine={"device": "cpu"}, settings={"params_steps": 1000, "params_batch_size": 100},
                             flops_per_image={"reference": 2.5e9, "project": 2e9},
                             peak_flops={"bf16": 1e12, "fp32": 5e11})
    summary.runs = [
        run_result(module, "reference", 50, [1.0], 500_000, tune_allocator=False),
        run_result(module, "project", 125, [1.0], 1_000),
        run_result(module, "project compiled", 120, [41.0, 1.0], 1_000, compile=True),  # 40 s of compiling
    ]
    verdicts = summary.verdicts()
    assert verdicts["ratio_project_over_reference"] == pytest.approx(2.5)
    assert verdicts["compile_seconds_cold"] == pytest.approx(42.0 - 2 * (1000 / 120) / 10)  # minus 2 steady steps
    assert verdicts["default_run_seconds_eager"] == pytest.approx(100_000 / 125)
    assert not verdicts["compile_pays_off"]


def test_a_folder_without_images_is_refused(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="contains no files"):
        load_benchmark().main(["--device", "cpu", "--image-dir", str(tmp_path / "empty")])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_an_unavailable_device_is_refused():
    with pytest.raises(SystemExit, match="device: 'cuda' was requested but is not available"):
        load_benchmark().main(["--device", "cuda"])
