"""The train stage's leases, in real `dvc repro` runs of tiny project repositories started side by
side: a GPU is held by one training at a time (the GPUs pretended by ANIME_DCGAN_GPU_COUNT, the
training itself on the CPU), and concurrent CPU trainings split the cores, following the others as
they come and go. The lease logic itself: tests/test_leases.py."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from project_repo import ProjectRepo, make_project_repo
from servers import log_tail, signal_group, start_in_session, stop_group, stopped_on_failure, wait_until

from anime_dcgan.leases import GPU_COUNT_ENV, LEASE_DIR_ENV
from anime_dcgan.tracking import Tracker

pytestmark = pytest.mark.e2e

CORES = len(os.sched_getaffinity(0))
START_S = 300  # dvc, torch's import and the calibration, on a busy 2-core machine


def started(repo: ProjectRepo, log: Path, **env: str):
    return start_in_session(["dvc", "repro", "train"], repo.root, {**repo.env, **env}, log)


def has_line(log: Path, pattern: str, count: int = 1) -> bool:
    return len(re.findall(pattern, log.read_text(errors="replace"), re.MULTILINE)) >= count


def test_a_pretended_gpu_is_leased_to_one_training_at_a_time(tmp_path: Path):
    # device auto: the stage leases "GPU 0" although CUDA is absent and it then trains on the CPU
    repos = [make_project_repo(tmp_path / name, device="auto", steps=200) for name in ("first", "second")]
    for repo in repos:
        repo.dvc("repro", "preprocess")
    env = {GPU_COUNT_ENV: "1", LEASE_DIR_ENV: str(tmp_path / "leases")}
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    first = started(repos[0], logs[0], **env)
    with stopped_on_failure(first):
        wait_until(lambda: has_line(logs[0], r"^train: leased GPU 0 \(of 0\)"), START_S, "the first lease",
                   first, logs[0])
        second = started(repos[1], logs[1], **env)
        with stopped_on_failure(second):
            wait_until(lambda: has_line(logs[1], r"waiting for 1 free GPU of 0: busy 0 \(pid \d+ on "), START_S,
                       "the second training to wait", second, logs[1])
            assert first.poll() is None, "the second training should wait while the first one trains"
            assert first.wait(timeout=600) == 0, log_tail(logs[0])
            assert second.wait(timeout=600) == 0, log_tail(logs[1])
    assert has_line(logs[1], r"leased 1 GPU: 0 after waiting \d+ s")
    for repo in repos:
        assert repo.json("metrics/train.json")["gpus_leased"] == "0"
        client = repo.mlflow()
        experiment = client.get_experiment_by_name("anime-dcgan")
        [run] = [run for run in client.search_runs([experiment.experiment_id])
                 if "anime_dcgan.run_identity" in run.data.tags]
        assert run.data.tags["anime_dcgan.gpus_leased"] == "0"


def test_more_gpus_than_visible_are_refused_in_one_line(tmp_path: Path):
    repo = make_project_repo(tmp_path / "repo", device="auto", devices=2)
    result = repo.dvc("repro", "train", check=False, env={GPU_COUNT_ENV: "1", LEASE_DIR_ENV: str(tmp_path / "leases")})
    assert result.returncode != 0
    assert f"2 GPUs requested but 1 visible to this stage ({GPU_COUNT_ENV}=1 pretends so)" in result.stderr


@pytest.mark.skipif(CORES < 2, reason="one core: a share of it is the whole of it")
def test_concurrent_cpu_trainings_split_the_cores_and_take_them_back(tmp_path: Path):
    # long enough to outlast the second training's start; both are stopped once the shares are seen
    repos = [make_project_repo(tmp_path / name, steps=1_000_000, log_every=20, checkpoint_every=100_000,
                               sample_every=100_000) for name in ("first", "second")]
    for repo in repos:
        repo.dvc("repro", "preprocess")
        del repo.env["OMP_NUM_THREADS"]  # a thread count the user chose would be kept as it is
    env = {LEASE_DIR_ENV: str(tmp_path / "leases")}
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    # not anchored at the line's start: the progress bar's carriage returns share the log's lines
    alone = rf"train: {CORES} of {CORES} CPU threads$"
    half = rf"train: {CORES // 2} of {CORES} CPU threads, shared with 1 other training on this machine$"
    first = started(repos[0], logs[0], **env)
    try:
        wait_until(lambda: has_line(logs[0], alone), START_S, "the first training on every core", first, logs[0])
        second = started(repos[1], logs[1], **env)
        with stopped_on_failure(second):
            wait_until(lambda: has_line(logs[1], half), START_S, "the second training on half", second, logs[1])
            wait_until(lambda: has_line(logs[0], half), 60, "the first training to give up half", first, logs[0])
        # the kernel frees a killed training's slot: the first one takes every core back
        signal_group(second, signal.SIGKILL)
        second.wait(timeout=30)
        wait_until(lambda: has_line(logs[0], alone, count=2), 60, "the first training to take the cores back",
                   first, logs[0])
    finally:
        stop_group(first)
    # the killed training's run, if it had started one, is ended by the next stage opening its store
    tracker = Tracker(repos[1].root)
    assert {run.info.status for run in tracker.client.search_runs([tracker.experiment_id])} <= {"KILLED"}
