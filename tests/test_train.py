"""The train stage on tiny configurations: learning, MLflow records, divergence, exact resume."""

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from filelock import FileLock
from mlflow.tracking import MlflowClient

from anime_dcgan.errors import PipelineError
from anime_dcgan.evaluation.reference import compute_reference, save_reference
from anime_dcgan.params import parse_params
from anime_dcgan.tracking import Tracker
from anime_dcgan.training import checkpoint as ckpt
from anime_dcgan.training import loop as train_module
from anime_dcgan.training.loop import DivergenceError, TrainOutputs, train
from anime_dcgan.training.networks import load_model

REPO = Path(__file__).resolve().parents[1]
TINY = {"arch": "article", "nz": 16, "ngf": 8, "ndf": 8, "batch_size": 8, "steps": 12, "log_every": 2,
        "sample_every": 4, "checkpoint_every": 4, "eval_every": 0, "n_samples": 8, "fid_samples": 8,
        "precision": "fp32", "compile": False, "device": "cpu"}


def make_workspace(root: Path, **overrides) -> Path:
    """A folder laid out like the repository: params.yaml and the processed images."""
    (root / "data/processed").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 3, 16, 16), dtype=np.uint8)
    images[:32, 0] = 255  # two visibly different halves, something to learn
    np.save(root / "data/processed/images.npy", images)
    (root / "params.yaml").write_text(yaml.safe_dump({**TINY, **overrides}))
    if overrides.get("eval_every"):  # FID during training: the fid_reference stage's output
        save_reference(root / "reference/inception.npz", compute_reference(images, 16, seed=0))
    return root


def outputs_in(root: Path) -> TrainOutputs:
    return TrainOutputs(root / "models", root / "progress", root / "metrics/losses.csv", root / "metrics/fid_by_step.csv",
                        root / "metrics/train.json")


def run_library(root: Path, **overrides) -> dict:
    params = parse_params({**TINY, **overrides})
    return train(params, root / "data/processed/images.npy", outputs_in(root), Tracker(root),
                 root / ".cache/checkpoints", progress=False, reference=root / "reference/inception.npz")


def client(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def start_stage(root: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(REPO / "stages/train.py")], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(root: Path, process: subprocess.Popen, count: int = 1, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(list((root / ".cache/checkpoints").glob(f"*/{ckpt.CHECKPOINT_GLOB}"))) < count:
        assert process.poll() is None, f"the stage ended before its first checkpoint: {process.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)


def uninterrupted_and_killed(tmp_path: Path, settings: dict, checkpoints: int) -> tuple[Path, Path]:
    """Two workspaces of the same run: one trained to the end, one SIGKILLed once it wrote
    `checkpoints` checkpoints."""
    reference = make_workspace(tmp_path / "reference", **settings)
    assert start_stage(reference).wait() == 0
    root = make_workspace(tmp_path / "killed", **settings)
    process = start_stage(root)
    wait_for_checkpoint(root, process, count=checkpoints)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    return reference, root


def assert_same_models(root: Path, reference: Path) -> None:
    """Bit-identical weights in the two workspaces' models/."""
    for name in ("generator.pt", "generator_ema.pt", "discriminator.pt"):
        ours = torch.load(root / "models" / name, weights_only=True)["state_dict"]
        theirs = torch.load(reference / "models" / name, weights_only=True)["state_dict"]
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_a_few_steps_learn_and_land_in_mlflow(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # the tiny run lasts seconds
    root = make_workspace(tmp_path)
    summary = run_library(root)

    losses = pd.read_csv(root / "metrics/losses.csv")
    assert list(losses.step) == [2, 4, 6, 8, 10, 12]
    assert np.isfinite(losses.drop(columns="step").to_numpy()).all()
    assert losses.d_x.between(0, 1).all() and losses.d_accuracy.between(0, 1).all()

    # the weights moved away from their initialisation, and the EMA differs from the raw generator
    train_module.seed_everything(0)
    initial = train_module.build_gan(load_model(root / "models/generator.pt").config,
                                     parse_params(TINY).optim, torch.device("cpu"))
    trained = load_model(root / "models/generator.pt")
    ema = load_model(root / "models/generator_ema.pt")
    first = "net.0.weight"
    assert not torch.equal(trained.state_dict()[first], initial.generator.state_dict()[first])
    assert not torch.equal(trained.state_dict()[first], ema.state_dict()[first])
    assert sorted(p.name for p in (root / "progress").iterdir()) == [
        "step_000000.png", "step_000004.png", "step_000008.png", "step_000012.png"]

    recorded = json.loads((root / "metrics/train.json").read_text())
    assert recorded == summary and recorded["resumed_from_step"] == 0
    run = client(root).get_run(recorded["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.00015" and run.data.params["lr_generator"] == "0.0003" and run.data.params["data.source"] == "synthetic"
    history = client(root).get_metric_history(run.info.run_id, "loss_g")
    assert [m.step for m in history] == [2, 4, 6, 8, 10, 12]
    assert [round(m.value, 5) for m in history] == [round(v, 5) for v in losses.loss_g]
    artifacts = {a.path for a in client(root).list_artifacts(run.info.run_id)}
    assert {"images", "models", "metrics", "model_summary.txt"} <= artifacts
    images = [a.path for a in client(root).list_artifacts(run.info.run_id, "images")]
    assert sum(p.endswith(".png") and "progress+step+" in p for p in images) == 4  # steps 0, 4, 8, 12
    # the UI's system metrics charts: MLflow's monitor sampled the training
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
    # the run's folder is gone; its final state is kept, to be extended by a longer run
    assert not any((root / ".cache/checkpoints").iterdir())
    [finished] = (root / ".cache/finished_runs").iterdir()
    assert sorted(p.name for p in finished.iterdir()) == ["checkpoint_000012.pt", "progress", "run.json",
                                                          "step_choice.json"]
    assert json.loads((finished / "run.json").read_text()) == {"mlflow_run_id": run.info.run_id, "steps": 12}


@pytest.mark.parametrize("d_norm", ["batch", "spectral"])  # spectral: the power iteration's state resumes too
def test_killed_run_resumes_bit_identical_and_other_params_never_resume(tmp_path, d_norm):
    settings = {"steps": 300, "checkpoint_every": 20, "log_every": 10, "sample_every": 100, "d_norm": d_norm}
    reference, root = uninterrupted_and_killed(tmp_path, settings, checkpoints=1)
    saved_step = ckpt.load_checkpoint(next((root / ".cache/checkpoints").iterdir()))["step"]
    assert 0 < saved_step < 300
    killed_run = client(root).search_runs([client(root).get_experiment_by_name("anime-dcgan").experiment_id])[0]
    assert killed_run.info.status == "RUNNING"  # SIGKILL: nobody could end it

    # another configuration starts from scratch, even with the checkpoint above lying there
    assert run_library(root, **{**settings, "steps": 20, "lr": 0.0004})["resumed_from_step"] == 0
    assert ckpt.load_checkpoint(next((root / ".cache/checkpoints").iterdir()))["step"] == saved_step

    # the original configuration resumes from its checkpoint and ends exactly like the reference
    resumed = start_stage(root)
    out, err = resumed.communicate()
    assert resumed.returncode == 0, err
    summary = json.loads((root / "metrics/train.json").read_text())
    assert summary["resumed_from_step"] == saved_step
    assert_same_models(root, reference)
    assert (root / "metrics/losses.csv").read_bytes() == (reference / "metrics/losses.csv").read_bytes()

    assert client(root).get_run(killed_run.info.run_id).info.status == "KILLED"
    run = client(root).get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["anime_dcgan.resumed_from_run"] == killed_run.info.run_id
    assert len(client(root).get_metric_history(run.info.run_id, "loss_g")) == 30  # the whole curve


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_end_the_run_killed_and_write_no_outputs(tmp_path, signum, status):
    # SIGHUP: the terminal or SSH session the stage ran in was closed
    root = make_workspace(tmp_path, steps=100_000, checkpoint_every=5)
    process = start_stage(root)
    wait_for_checkpoint(root, process)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == status, err
    assert signal.Signals(signum).name in err and "no partial output" in err
    assert not (root / "models").exists() and not (root / "metrics/train.json").exists()
    (run,) = client(root).search_runs([client(root).get_experiment_by_name("anime-dcgan").experiment_id])
    assert run.info.status == "KILLED"


def test_nan_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    root = make_workspace(tmp_path)
    real_step = train_module.train_step

    def poisoned_step(gan, dataset, indices, z, targets, autocast, ema_decay, calls=[0]):
        calls[0] += 1
        if calls[0] == 7:  # fault injection: a real NaN in the weights, propagated by the real step
            with torch.no_grad():
                next(gan.generator.parameters()).fill_(float("nan"))
        return real_step(gan, dataset, indices, z, targets, autocast, ema_decay)

    monkeypatch.setattr(train_module, "train_step", poisoned_step)
    with pytest.raises(DivergenceError, match=r"NaN or infinite at step 7; the last good checkpoint \(step 4\)"):
        run_library(root)
    (folder,) = (root / ".cache/checkpoints").iterdir()
    assert ckpt.load_checkpoint(folder)["step"] == 4
    (run,) = client(root).search_runs([client(root).get_experiment_by_name("anime-dcgan").experiment_id])
    assert run.info.status == "FAILED"
    assert not (root / "models").exists()


def test_bf16_and_compiled_steps_stay_finite_and_learn(tmp_path):
    from anime_dcgan.device import supports_bf16

    precision = "bf16" if supports_bf16(torch.device("cpu")) else "fp32"
    root = make_workspace(tmp_path)
    summary = run_library(root, precision=precision, compile=True, steps=6, log_every=3)
    assert summary["precision"] == precision and summary["compiled"] is True
    assert summary["peak_rss_mb"] > 200  # torch alone maps more than that
    losses = pd.read_csv(root / "metrics/losses.csv")
    assert np.isfinite(losses.drop(columns="step").to_numpy()).all()


def test_a_compiled_step_that_fails_goes_on_eagerly_and_ends_as_an_eager_run(tmp_path, monkeypatch, capsys):
    eager = make_workspace(tmp_path / "eager")
    run_library(eager)

    calls = itertools.count(1)

    class FailsOnItsFourthCall(torch.nn.Module):
        """A stand-in for a compiled network whose compilation fails midway through the first step,
        after the discriminator's update changed the weights: the warm-up must undo it."""

        def __init__(self, network: torch.nn.Module):
            super().__init__()
            self.network = network

        def forward(self, *inputs):
            if next(calls) == 4:
                raise RuntimeError("simulated compiler failure\nits long traceback")
            return self.network(*inputs)

    monkeypatch.setattr(torch, "compile", lambda network, mode=None: FailsOnItsFourthCall(network))
    failing = make_workspace(tmp_path / "failing")
    summary = run_library(failing, compile=True)

    assert ("train: WARNING: the compiled step failed (RuntimeError: simulated compiler failure); training goes "
            "on eagerly") in capsys.readouterr().out
    assert summary["compiled"] is False
    run = client(failing).get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["anime_dcgan.compile_failed"] == "RuntimeError: simulated compiler failure"
    assert run.data.params["runtime.compile"] == "False"
    assert_same_models(failing, eager)
    assert (failing / "metrics/losses.csv").read_bytes() == (eager / "metrics/losses.csv").read_bytes()


def test_an_augmented_run_shows_what_d_sees_and_resumes_bit_identical_after_a_kill(tmp_path):
    settings = {"steps": 300, "checkpoint_every": 20, "log_every": 10, "sample_every": 100,
                "augment": "diffaugment", "augment_p": 0.8, "mirror": True}
    reference, root = uninterrupted_and_killed(tmp_path, settings, checkpoints=1)
    resumed = start_stage(root)
    out, err = resumed.communicate()
    assert resumed.returncode == 0, err
    assert "train: D sees augmented real images (augment diffaugment, augment_p 0.8, mirror True)" in out
    summary = json.loads((root / "metrics/train.json").read_text())
    assert summary["resumed_from_step"] > 0
    assert_same_models(root, reference)
    assert (root / "metrics/losses.csv").read_bytes() == (reference / "metrics/losses.csv").read_bytes()
    run_id = summary["mlflow_run_id"]
    assert "images/augmentations.png" in {a.path for a in client(root).list_artifacts(run_id, "images")}

    # another training on the same data without augmentation: another run with other weights
    plain = make_workspace(tmp_path / "plain", **{**settings, "augment": "none", "mirror": False})
    assert start_stage(plain).wait() == 0
    assert (plain / "models/generator_ema.pt").read_bytes() != (reference / "models/generator_ema.pt").read_bytes()


def test_sync_batchnorm_off_cuda_is_refused_in_one_line(tmp_path):
    root = make_workspace(tmp_path)
    with pytest.raises(PipelineError, match=r"^sync_batchnorm: true needs CUDA GPUs .*, not cpu; set it to false$"):
        run_library(root, sync_batchnorm=True)
    assert not (root / "models").exists()


def _state(step: int) -> dict:
    return {"step": step, "weights": torch.full((3,), float(step))}


def test_checkpoints_carry_a_checksum_the_last_two_are_kept_and_a_damaged_one_is_moved_aside(tmp_path):
    for step in (4, 8, 12):
        ckpt.save_checkpoint(tmp_path, _state(step))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000008.pt", "checkpoint_000012.pt"]
    assert ckpt.load_checkpoint(tmp_path)["step"] == 12

    # same size, one byte flipped inside the payload: torch would still load it, the checksum does not
    newest = tmp_path / "checkpoint_000012.pt"
    content = bytearray(newest.read_bytes())
    content[-40] ^= 0xFF
    newest.write_bytes(bytes(content))
    told = []
    state = ckpt.load_checkpoint(tmp_path, on_damaged=told.append)
    assert state["step"] == 8 and torch.equal(state["weights"], torch.full((3,), 8.0))
    assert len(told) == 1 and "checkpoint_000012.pt is unusable" in told[0] and "sha256" in told[0]
    assert (tmp_path / "checkpoint_000012.pt.damaged").read_bytes() == bytes(content)  # kept for inspection

    # truncated, and then none left: start afresh
    older = tmp_path / "checkpoint_000008.pt"
    older.write_bytes(older.read_bytes()[:100])
    assert ckpt.load_checkpoint(tmp_path, on_damaged=told.append) is None
    assert "checkpoint_000008.pt is unusable" in told[1]
    assert not list(tmp_path.glob(ckpt.CHECKPOINT_GLOB))


def test_a_damaged_last_checkpoint_resumes_from_the_previous_one_and_ends_bit_identical(tmp_path):
    settings = {"steps": 200, "checkpoint_every": 20, "log_every": 10, "sample_every": 100}
    reference, root = uninterrupted_and_killed(tmp_path, settings, checkpoints=2)
    newest = sorted((root / ".cache/checkpoints").glob(f"*/{ckpt.CHECKPOINT_GLOB}"))[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a write cut short

    resumed = start_stage(root)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"{newest.name} is unusable" in out and "resuming from the previous checkpoint (step" in out
    summary = json.loads((root / "metrics/train.json").read_text())
    assert 0 < summary["resumed_from_step"] < 200
    assert_same_models(root, reference)
    run = client(root).get_run(summary["mlflow_run_id"])
    assert newest.name in run.data.tags["anime_dcgan.damaged_checkpoints"]


def _runs(root: Path) -> list:
    """The store's runs; [] until a stage created it (under the lock Tracker creates the schema with)."""
    if not (root / "mlflow.db").is_file():
        return []
    with FileLock(str(root / "mlflow.db.lock")):
        experiment = client(root).get_experiment_by_name("anime-dcgan")
        return client(root).search_runs([experiment.experiment_id]) if experiment else []


def _wait_for_running_run(root: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not any(r.info.status == "RUNNING" for r in _runs(root)):
        assert process.poll() is None, f"the stage ended early: {process.communicate()}"
        assert time.monotonic() < deadline, "no RUNNING run appeared"
        time.sleep(0.2)


def test_a_run_whose_process_died_is_marked_killed_by_the_next_stage_and_a_live_one_is_left_alone(tmp_path):
    # SIGKILL before the first checkpoint: no checkpoint names the run, so resuming cannot end it
    root = make_workspace(tmp_path, steps=100_000, checkpoint_every=50_000)
    dead = start_stage(root)
    _wait_for_running_run(root, dead)
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    assert {r.info.status for r in _runs(root)} == {"RUNNING"}  # nobody could end it
    alive = start_stage(root)  # the next stage opens the store and looks for such runs first
    deadline = time.monotonic() + 120
    while len(_runs(root)) < 2 or not any(r.info.status == "RUNNING" for r in _runs(root)):
        assert alive.poll() is None and time.monotonic() < deadline, "the second stage started no run"
        time.sleep(0.2)
    try:
        Tracker(root)  # a third process opening the store leaves the live run alone
        by_pid = {r.data.tags["anime_dcgan.pid"]: r for r in _runs(root)}
        assert by_pid[str(dead.pid)].info.status == "KILLED"
        assert f"its process {dead.pid}" in by_pid[str(dead.pid)].data.tags["anime_dcgan.ended_by"]
        assert by_pid[str(alive.pid)].info.status == "RUNNING"  # its process is still training
    finally:
        alive.send_signal(signal.SIGTERM)
        alive.communicate(timeout=60)
    assert {r.info.status for r in _runs(root)} == {"KILLED"}



@pytest.mark.parametrize("content", [b"", b"\x93NUMPY random bytes, not an array", bytes(range(256)) * 40])
def test_a_damaged_images_file_says_to_rerun_preprocess(tmp_path, content):
    root = make_workspace(tmp_path)
    (root / "data/processed/images.npy").write_bytes(content)
    process = start_stage(root)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert "is not a readable .npy file" in err and "rerun the preprocess stage" in err, err
    assert "Traceback" not in err
