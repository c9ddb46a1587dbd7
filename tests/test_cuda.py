"""The training path on this machine's GPU, as the pipeline runs it there (bf16, compiled as CUDA
graphs): the compiled step learns and reads the weights the optimisers update, never recompiles after
its warm-up, runs as CUDA graphs; bf16 autocast stays finite; a run stopped after a checkpoint resumes
through train() to the weights of a straight run; a GPU lease limits a child process to its GPU.

Skipped without CUDA; benchmarks/gpu_check.sh runs them on a machine with a GPU.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_train import TINY, make_workspace, run_library  # the CPU tests' tiny run, here on CUDA
from torch._dynamo.utils import counters

from anime_dcgan.device import Runtime, pick_runtime
from anime_dcgan.leases import GPU_COUNT_ENV, gpu_lease, visible_gpus
from anime_dcgan.params import parse_params
from anime_dcgan.training import checkpoint as ckpt
from anime_dcgan.training.loop import (
    COMPILE_WARM_UP_STEPS,
    begin_step,
    load_dataset,
    networks_for_steps,
    seed_everything,
)
from anime_dcgan.training.networks import Generator, ModelConfig, model_summary
from anime_dcgan.training.step import Gan, build_gan, draw_step_inputs, ema_decay_at, train_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ON_CUDA = {"device": "cuda", "precision": "auto", "compile": "auto"}  # what the pipeline runs on a GPU
STEPS = 30
LOSSES_AND_MEANS = slice(0, 5)  # STEP_METRICS but d_accuracy, which one logit near 0 can flip
STOP_AFTER_CHECKPOINT = 8       # of TINY's 12 steps, checkpointed every 4


@dataclass
class StepRun:
    """STEPS steps of the train stage's step on TINY's networks and data, run as training/loop.py runs them."""

    runtime: Runtime
    gan: Gan                       # the networks trained (the loop saves and samples these)
    noise: torch.Tensor            # (batch, nz, 1, 1), fixed: the generator's output is read on it
    metrics: torch.Tensor          # (STEPS, len(STEP_METRICS)), on the CPU
    graphs: list[int]              # graphs Dynamo had compiled, after each step
    frames: list[int]              # frames Dynamo had been asked to compile, after each step
    graph_breaks: dict[str, int]   # by reason
    cudagraph_skips: int           # compiled graphs that Inductor runs without a CUDA graph
    moved: float                   # mean |G(noise) after - before| the steps: what training changed
    step_view_offset: float        # mean |G(noise) as the steps run it - as the trained weights give it eagerly|


def generator_output(gan: Gan, noise: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """The eager generator's output in training mode (batch statistics, as the steps use it), fp32."""
    with torch.no_grad(), runtime.autocast():
        return gan.generator(noise).float()


def run_steps(runtime: Runtime, workspace: Path) -> StepRun:
    params = parse_params({**TINY, **ON_CUDA})
    dataset = load_dataset(workspace / "data/processed/images.npy", runtime.device)   # (64, 3, 16, 16)
    model = ModelConfig.from_params(params.model, dataset.shape[-1])
    torch._dynamo.reset()  # this run's compilations alone in the counters
    counters.clear()
    seed_everything(params.seed)
    gan = build_gan(model, params.optim, runtime.device)
    step_gan = networks_for_steps(gan, runtime)
    batch_size = params.optim.batch_size  # the compiled graphs' batch: another would recompile them
    noise = torch.randn(batch_size, model.nz, 1, 1, generator=torch.Generator().manual_seed(1)).to(runtime.device)
    initial_output = generator_output(gan, noise, runtime)
    metrics, graphs, frames = [], [], []
    for step in range(1, STEPS + 1):
        begin_step(runtime)
        indices, z, targets = draw_step_inputs(len(dataset), batch_size, model.nz, params.optim.label_noise,
                                               runtime.device)
        metrics.append(train_step(step_gan, dataset, indices, z, targets, runtime.autocast(),
                                  ema_decay_at(step, params.optim.ema_decay)))
        graphs.append(counters["stats"]["unique_graphs"])
        frames.append(counters["frames"]["total"])
    graph_breaks, cudagraph_skips = dict(counters["graph_break"]), counters["inductor"]["cudagraph_skips"]

    trained_output = generator_output(gan, noise, runtime)
    begin_step(runtime)
    # with gradients on, as in the steps, this replays the graph recorded in training (under no_grad
    # Dynamo would compile and record a new one)
    with runtime.autocast():
        step_output = step_gan.generator(noise).detach().float()
    return StepRun(runtime, gan, noise, torch.stack(metrics).cpu(), graphs, frames, graph_breaks, cudagraph_skips,
                   moved=float((trained_output - initial_output).abs().mean()),
                   step_view_offset=float((step_output - trained_output).abs().mean()))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("steps"))


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return pick_runtime(ON_CUDA["device"], ON_CUDA["precision"], ON_CUDA["compile"])


@pytest.fixture(scope="module")
def compiled_run(runtime: Runtime, workspace: Path) -> StepRun:
    return run_steps(runtime, workspace)


@pytest.fixture(scope="module")
def eager_run(runtime: Runtime, workspace: Path) -> StepRun:
    return run_steps(dataclasses.replace(runtime, compile=False), workspace)


def test_the_compiled_step_learns_and_reads_the_weights_the_optimisers_update(compiled_run, eager_run):
    run = compiled_run
    assert run.runtime.compile and run.runtime.compile_mode == "reduce-overhead"  # CUDA graphs
    assert torch.isfinite(run.metrics).all(), run.metrics
    assert (run.metrics[:, LOSSES_AND_MEANS].std(dim=0) > 0).all(), f"losses that never change: {run.metrics}"
    # step 1: the same weights and inputs in both runs; only the rounding of bf16 differs between
    # Inductor's fused kernels and the eager ones
    torch.testing.assert_close(run.metrics[0, LOSSES_AND_MEANS], eager_run.metrics[0, LOSSES_AND_MEANS],
                               atol=0.05, rtol=0)

    assert run.moved > 0, "training left the generator as it was initialised"
    # a CUDA graph that had copied the weights when it was recorded would go on computing the initial
    # generator: the compiled one must give the trained weights' output instead
    assert run.step_view_offset < 0.5 * run.moved, (
        f"compiled G is {run.step_view_offset:.4f} from the trained weights' output; training moved it {run.moved:.4f}")


def test_no_recompilation_after_the_warm_up_steps(compiled_run):
    # the loop's warm-up: step 1 compiles G and D (D twice: the generator update runs it without its
    # weights' gradients), the next ones record and first replay the CUDA graphs
    run, warm = compiled_run, COMPILE_WARM_UP_STEPS - 1
    assert run.graphs[0] > 0, "the first step compiled nothing"
    assert run.graphs[-1] == run.graphs[warm], f"graphs compiled, by step: {run.graphs}"
    assert run.frames[-1] == run.frames[warm], f"frames compiled, by step: {run.frames}"
    assert run.graph_breaks == {}, f"graph breaks, by reason: {run.graph_breaks}"


def test_the_compiled_step_runs_as_cuda_graphs(compiled_run):
    assert compiled_run.cudagraph_skips == 0, (
        f"{compiled_run.cudagraph_skips} compiled graphs run without CUDA graphs; TORCH_LOGS=perf_hints says why")


def test_bf16_autocast_steps_stay_finite(eager_run):
    # eager: the compiled bf16 steps are the first test's
    if eager_run.runtime.precision != "bf16":
        pytest.skip(f"{torch.cuda.get_device_name()} has no bf16: the pipeline trains in fp32 there")
    with torch.no_grad(), eager_run.runtime.autocast():
        assert eager_run.gan.generator(eager_run.noise).dtype == torch.bfloat16
    assert torch.isfinite(eager_run.metrics).all(), eager_run.metrics


def test_summarising_a_network_leaves_it_on_the_gpu():
    # train() summarises its networks after building them on the device; torchinfo runs the summary
    # on the CPU, and nn.Module.to moves a network in place
    generator = Generator(ModelConfig(nz=16, ngf=8, image_size=16)).cuda()
    model_summary(generator)
    assert {p.device.type for p in generator.parameters()} == {"cuda"}


class StoppedAfterCheckpoint(Exception):
    """Stands for a kill right after a checkpoint: what the resumed run finds is the same."""


def test_a_run_stopped_after_a_checkpoint_resumes_to_the_weights_of_a_straight_run(tmp_path, monkeypatch):
    # The CPU tests SIGKILL a stage process; here the stop is in-process, sparing two process starts
    # and compilations of the GPU check's time.
    torch._dynamo.reset()  # the recompile limit counts per code object: earlier tests' networks out of it
    # deterministic cuDNN kernels: then the two runs add the same numbers in the same order
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    straight = make_workspace(tmp_path / "straight")
    run_library(straight, **ON_CUDA)

    stopped = make_workspace(tmp_path / "stopped")
    save_checkpoint = ckpt.save_checkpoint

    def save_then_stop(folder: Path, state: dict) -> None:
        save_checkpoint(folder, state)
        if state["step"] == STOP_AFTER_CHECKPOINT:
            raise StoppedAfterCheckpoint

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_stop)
    with pytest.raises(StoppedAfterCheckpoint):
        run_library(stopped, **ON_CUDA)
    monkeypatch.setattr(ckpt, "save_checkpoint", save_checkpoint)
    summary = run_library(stopped, **ON_CUDA)

    assert summary["resumed_from_step"] == STOP_AFTER_CHECKPOINT and summary["device"] == "cuda"
    assert summary["compiled"] is True, "the compiled step failed and training went on eagerly (the warning above)"
    # Expected equal to the last bit. CUDA promises no bitwise reproducibility across runs, though, so
    # the comparison allows rounding noise: far below the ~1e-4 that one step more or less, another
    # batch or a lost optimiser state moves a weight.
    for name in ("generator.pt", "generator_ema.pt", "discriminator.pt"):
        resumed = torch.load(stopped / "models" / name, weights_only=True)["state_dict"]
        expected = torch.load(straight / "models" / name, weights_only=True)["state_dict"]
        assert resumed.keys() == expected.keys()
        for key in resumed:
            torch.testing.assert_close(resumed[key], expected[key], rtol=1e-5, atol=1e-6,
                                       msg=lambda message: f"{name} {key}: {message}")
    torch.testing.assert_close(pd.read_csv(stopped / "metrics/losses.csv").to_numpy(),
                               pd.read_csv(straight / "metrics/losses.csv").to_numpy(), rtol=0, atol=1e-5)


def test_a_gpu_lease_shows_a_child_process_only_the_leased_gpu(tmp_path, monkeypatch):
    monkeypatch.delenv(GPU_COUNT_ENV, raising=False)  # the real GPUs, not pretended ones
    visible = visible_gpus()
    assert visible, "torch sees CUDA but nvidia-smi lists no GPU"
    with gpu_lease(1, tmp_path) as leased:  # a lease folder of its own: trainings running here keep theirs
        assert len(leased) == 1 and leased[0] in visible
        assert os.environ["CUDA_VISIBLE_DEVICES"] == leased[0]
        child = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                               capture_output=True, text=True, timeout=120, check=False)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "1"
