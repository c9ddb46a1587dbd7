"""The step calibration: the faster variant wins, its cache is keyed and reused, a resumed run keeps
its recorded choice."""

import json
import signal
import time

import pytest
import torch
from test_train import TINY, client, make_workspace, start_stage, wait_for_checkpoint

from anime_dcgan.device import pick_runtime, supports_bf16
from anime_dcgan.params import parse_params
from anime_dcgan.training import calibration
from anime_dcgan.training.calibration import StepChoice, calibrate, candidates
from anime_dcgan.training.networks import ModelConfig

PARAMS = parse_params(TINY)
MODEL = ModelConfig.from_params(PARAMS.model, 16)
CPU = pick_runtime("cpu", "fp32", False)
REAL_STEP_RUNNER = calibration.step_runner


def slowed(label_to_slow: str, calls: list[str]):
    """step_runner with the candidate `label_to_slow` made 50 ms slower per step; records the labels built."""
    def runner(model, optim, runtime, dataset):
        step = REAL_STEP_RUNNER(model, optim, runtime, dataset)
        label = StepChoice(runtime.precision, runtime.cpu_kernels).label
        calls.append(label)
        if label != label_to_slow:
            return step
        return lambda: (time.sleep(0.05), step())
    return runner


@pytest.mark.parametrize("slow", ["fp32-cpu_kernels", "fp32"])
def test_the_faster_variant_is_chosen_when_the_other_is_made_slower(tmp_path, monkeypatch, slow):
    calls = []
    monkeypatch.setattr(calibration, "step_runner", slowed(slow, calls))
    chosen = calibrate(MODEL, PARAMS.optim, CPU, "fp32", cache=tmp_path / "cache.json")
    # both timed on the real networks, built afresh and alternating in each round
    assert calls == ["fp32-cpu_kernels", "fp32"] * calibration.ROUNDS
    assert chosen.source == "measured"
    assert chosen.choice.label == ({"fp32", "fp32-cpu_kernels"} - {slow}).pop()
    rates = chosen.images_per_second
    assert set(rates) == {"fp32", "fp32-cpu_kernels"} and rates[slow] < rates[chosen.choice.label]
    assert rates[slow] < PARAMS.optim.batch_size / 0.05  # the 50 ms are in the figure


def test_the_cache_is_keyed_by_configuration_and_reused(tmp_path, monkeypatch):
    cache = tmp_path / "cache.json"
    calls = []
    monkeypatch.setattr(calibration, "step_runner", slowed("fp32", calls))
    first = calibrate(MODEL, PARAMS.optim, CPU, "fp32", cache=cache)
    builds = 2 * calibration.ROUNDS  # two candidates, one build per round
    assert first.source == "measured" and len(calls) == builds

    # the same machine and configuration: nothing is timed, even where the timing would now differ
    monkeypatch.setattr(calibration, "step_runner", slowed("fp32-cpu_kernels", calls))
    again = calibrate(MODEL, PARAMS.optim, CPU, "fp32", cache=cache)
    assert again.source == "cached" and len(calls) == builds
    assert again.choice == first.choice and again.images_per_second == first.images_per_second

    # another batch size or other networks are other keys: timed again, and both kept
    other_batch = PARAMS.optim.model_copy(update={"batch_size": 4})
    assert calibrate(MODEL, other_batch, CPU, "fp32", cache=cache).source == "measured"
    wider = ModelConfig.from_params(parse_params({**TINY, "ngf": 16}).model, 16)
    assert calibrate(wider, PARAMS.optim, CPU, "fp32", cache=cache).source == "measured"
    assert len(calls) == 3 * builds and len(json.loads(cache.read_text())) == 3


def test_calibration_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    calibrate(MODEL, PARAMS.optim, CPU, "fp32", cache=tmp_path / "cache.json")
    assert torch.equal(torch.rand(3), expected)


def test_candidates_per_precision_parameter():
    labels = [c.label for c in candidates(pick_runtime("cpu", "auto", False), "auto")]
    native_bf16 = ["bf16-cpu_kernels", "bf16"] if supports_bf16(torch.device("cpu")) else []
    assert labels == ["fp32-cpu_kernels", "fp32", *native_bf16]  # emulated bf16 is never a candidate
    assert [c.label for c in candidates(CPU, "fp32")] == ["fp32-cpu_kernels", "fp32"]


def test_a_resumed_run_keeps_its_recorded_choice(tmp_path, monkeypatch):
    cache = tmp_path / "cache.json"
    monkeypatch.setenv(calibration.CACHE_ENV, str(cache))
    root = make_workspace(tmp_path / "ws", steps=300, checkpoint_every=20)
    process = start_stage(root)
    wait_for_checkpoint(root, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    (key, entry), = json.loads(cache.read_text()).items()
    first = StepChoice(**entry["choice"])
    (folder,) = (root / ".cache/checkpoints").iterdir()
    assert calibration.recorded_choice(folder) == first

    # this machine's cache now says the other variant; the run resumes with the one it started with
    other = StepChoice("fp32", not first.cpu_kernels)
    cache.write_text(json.dumps({key: {**entry, "choice": {"precision": "fp32", "cpu_kernels": other.cpu_kernels}}}))
    resumed = start_stage(root)
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert f"step variant {first.label} (recorded)" in out
    summary = json.loads((root / "metrics/train.json").read_text())
    assert summary["resumed_from_step"] > 0
    assert summary["step_choice"] == "recorded" and summary["cpu_kernels"] == first.cpu_kernels
    params = client(root).get_run(summary["mlflow_run_id"]).data.params
    assert params["runtime.step_choice"] == "recorded" and params["runtime.cpu_kernels"] == str(first.cpu_kernels)

    # a new run of the same networks and batch size takes the cache's choice
    fresh = make_workspace(tmp_path / "fresh", steps=4)
    done = start_stage(fresh)
    out, err = done.communicate(timeout=120)
    assert done.returncode == 0, err
    summary = json.loads((fresh / "metrics/train.json").read_text())
    assert summary["step_choice"] == "cached" and summary["cpu_kernels"] == other.cpu_kernels
