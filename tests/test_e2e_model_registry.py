"""The generator as an MLflow model: logged by a real `dvc repro`, registered with its aliases, read
by `anime-dcgan --model models:/...`, and served by a real `mlflow models serve` process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import yaml
from PIL import Image
from project_repo import ProjectRepo
from servers import free_port, start_in_session, stop_group, wait_for_http

from anime_dcgan.tracking import REGISTERED_MODEL, Tracker
from anime_dcgan.training.networks import Generator, ModelConfig, save_model

pytestmark = pytest.mark.e2e
SCRIPT = Path(sys.executable).with_name("anime-dcgan")


def dvc_file_md5(repo: ProjectRepo, relpath: str) -> str:
    """The MD5 DVC keeps for one file of the data/processed output (its .dir listing in the cache)."""
    out = next(o for o in yaml.safe_load((repo.root / "dvc.lock").read_text())["stages"]["preprocess"]["outs"]
               if o["path"] == "data/processed")
    digest = out["md5"]
    listing = json.loads((repo.root / ".dvc/cache/files/md5" / digest[:2] / digest[2:]).read_text())
    return next(entry["md5"] for entry in listing if entry["relpath"] == relpath)


def test_the_training_run_logs_its_generator_dataset_and_source_and_evaluate_registers_it(
        _reproduced_template: ProjectRepo) -> None:
    repo = _reproduced_template  # read only: its store holds the pipeline's run
    client = repo.mlflow()
    run = client.get_run(repo.json("metrics/train.json")["mlflow_run_id"])
    model_id = repo.json("metrics/eval.json")["mlflow_model_id"]
    # Models column: the run's output is the generator model, a pyfunc with a signature
    assert [output.model_id for output in run.outputs.model_outputs] == [model_id]
    model = client.get_logged_model(model_id)
    assert model.source_run_id == run.info.run_id and model.name == "generator"
    assert model.model_type == "gan-generator"
    # its metrics are the evaluate stage's, linked to the model and the dataset
    fid = repo.json("metrics/eval.json")["fid_8"]
    linked = {metric.key: metric for metric in model.metrics}
    assert linked["fid_8"].value == pytest.approx(fid)
    assert "fid_samples" not in linked and "fid_samples" not in run.data.metrics  # a constant, not a score
    # Dataset column: the processed images with DVC's own digest of the file
    (dataset_input,) = run.inputs.dataset_inputs
    digest = dvc_file_md5(repo, "images.npy")
    assert dataset_input.dataset.digest == digest
    assert json.loads(dataset_input.dataset.profile)["num_rows"] == 96
    assert (linked["fid_8"].dataset_name, linked["fid_8"].dataset_digest) == ("synthetic", digest)
    # Source column: what MLflow's fluent API sets
    tags = run.data.tags
    assert tags["mlflow.source.name"].endswith("stages/train.py") and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.source.git.commit"] == repo.git("rev-parse", "HEAD~1").stdout.strip()
    assert tags["mlflow.user"]
    # the registry: version 1, both aliases, its FID and protocol as tags
    version = client.get_model_version_by_alias(REGISTERED_MODEL, "champion")
    latest = client.get_model_version_by_alias(REGISTERED_MODEL, "latest-eval")
    assert str(latest.version) == str(version.version) == "1"
    assert version.source == f"models:/{model_id}" and version.run_id == run.info.run_id
    assert float(version.tags["fid"]) == pytest.approx(fid) and version.tags["protocol"].startswith("fid_8 against")
    assert version.tags["git.rev"] == tags["mlflow.source.git.commit"]


def test_the_champion_is_drawn_by_the_cli_and_served_over_http_with_the_same_images(
        _reproduced_template: ProjectRepo, tmp_path: Path) -> None:
    repo = _reproduced_template
    env = {**repo.env, "MLFLOW_TRACKING_URI": repo.tracking_uri}
    champion = f"models:/{REGISTERED_MODEL}@champion"
    drawn = subprocess.run([str(SCRIPT), "sample", "--model", champion, "--seeds", "3,5,42", "--outdir",
                            str(tmp_path / "faces")], cwd=repo.root, env=env, capture_output=True, text=True,
                           timeout=300)
    assert drawn.returncode == 0, drawn.stderr
    by_cli = np.stack([np.asarray(Image.open(tmp_path / "faces" / f"seed_{seed:06d}.png")) for seed in (3, 5, 42)])
    samples = np.load(repo.root / "samples/samples.npy")  # the generate stage's, sample k from seed k
    assert np.array_equal(by_cli[:2], samples[[3, 5]].transpose(0, 2, 3, 1))

    port = free_port()
    log = tmp_path / "serve.log"
    server = start_in_session(["mlflow", "models", "serve", "-m", champion, "--env-manager", "local",
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              repo.root, env, log)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", 180, server, log)
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", timeout=60,
                               json={"dataframe_split": {"columns": ["seed"], "data": [[3], [5], [42]]}})
        assert answer.status_code == 200, answer.text[:2000]
        served = np.asarray(answer.json()["predictions"], dtype=np.uint8)     # (3, S, S, 3)
        assert np.array_equal(served, by_cli)  # bit-equal on the CPU
        bad = requests.post(f"http://127.0.0.1:{port}/invocations", timeout=60,
                            json={"dataframe_split": {"columns": ["z"], "data": [[1]]}})
        assert bad.status_code == 400 and "seed" in bad.text
    finally:
        assert not [p for p in stop_group(server) if p.is_running()], "a serving process outlived its stop"


def tiny_generator(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    save_model(Generator(ModelConfig(arch="article", nz=8, ngf=4, ndf=4, image_size=16)).eval(), path)
    return path


def test_champion_moves_only_to_a_better_fid_under_the_same_protocol(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker(tmp_path)

    def evaluated(fid: float, protocol: str) -> str:
        with tracker.start_run(None, {}) as run:
            model_id = tracker.log_generator_model(run.run_id, tiny_generator(tmp_path / f"{fid}.pt", int(fid)), 16, 1)
        return tracker.register_generator(model_id, run.run_id, "fid_1k", fid, protocol, {"dvc.exp_name": ""})

    def alias(name: str) -> str:
        return str(tracker.client.get_model_version_by_alias(REGISTERED_MODEL, name).version)

    assert "first @champion" in evaluated(120.0, "fid_1k against reference a")
    assert "@champion stays version 1" in evaluated(130.0, "fid_1k against reference a")
    assert (alias("champion"), alias("latest-eval")) == ("1", "2")
    assert "new @champion" in evaluated(110.0, "fid_1k against reference a")
    assert (alias("champion"), alias("latest-eval")) == ("3", "3")
    lower_elsewhere = evaluated(50.0, "fid_1k against reference b")  # another reference: not comparable
    assert "cannot be compared" in lower_elsewhere
    assert (alias("champion"), alias("latest-eval")) == ("3", "4")
