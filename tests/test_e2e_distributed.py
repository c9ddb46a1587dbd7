"""One training on two CPU processes (torchrun + DDP over gloo), run by a real `dvc repro` in a tiny
project repository: the ranks stay in step, rank 0 alone logs one MLflow run, the result is
bit-identical between runs and with two "nodes" (two torchrun agents meeting through a c10d
rendezvous, as README's multi-node lines), and one rank killed stops the whole job, whose rerun
resumes."""

from __future__ import annotations

import hashlib
import signal
import time
from pathlib import Path

import psutil
import pytest
from project_repo import ProjectRepo, make_project_repo
from servers import free_port, log_tail, start_in_session, stop_group, stopped_on_failure, wait_until

from anime_dcgan.paths import CHECKPOINT_ROOT
from anime_dcgan.training.checkpoint import CHECKPOINT_GLOB

pytestmark = pytest.mark.e2e

# long enough to kill a rank midway (checkpoints every 20 steps), short enough to run three times
TWO_PROCESSES = {"devices": 2, "steps": 300, "checkpoint_every": 20, "log_every": 10, "sample_every": 100}


def generator_digest(repo: ProjectRepo) -> str:
    return hashlib.sha256((repo.root / "models/generator_ema.pt").read_bytes()).hexdigest()


def training_runs(repo: ProjectRepo) -> list:
    client = repo.mlflow()
    experiment = client.get_experiment_by_name("anime-dcgan")
    return [run for run in client.search_runs([experiment.experiment_id])
            if "anime_dcgan.run_identity" in run.data.tags]


def rank_processes(repo: ProjectRepo, rank: int) -> list[psutil.Process]:
    """The torchrun workers of `repo` with this RANK."""
    found = []
    for process in psutil.process_iter():
        try:
            environ = process.environ()
            if environ.get("RANK") == str(rank) and Path(process.cwd()) == repo.root:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> ProjectRepo:
    repo = make_project_repo(tmp_path_factory.mktemp("ddp") / "repo", **TWO_PROCESSES)
    result = repo.dvc("repro", "train")
    assert "starting 2 processes with torchrun" in result.stdout
    assert "the 2 ranks' weights agree" in result.stdout
    return repo


def test_two_processes_keep_the_same_weights_and_log_one_run(trained: ProjectRepo):
    summary = trained.json("metrics/train.json")
    assert summary["world_size"] == 2
    assert len(summary["weights_sha256"]) == 128
    runs = training_runs(trained)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["runtime.world_size"] == "2"


def test_world_size_one_differs_and_two_runs_are_bit_identical(trained: ProjectRepo, tmp_path: Path):
    again = make_project_repo(tmp_path / "again", **TWO_PROCESSES)
    again.dvc("repro", "train")
    assert generator_digest(again) == generator_digest(trained)
    single = make_project_repo(tmp_path / "single", **{**TWO_PROCESSES, "devices": 1})
    single.dvc("repro", "train")
    assert single.json("metrics/train.json")["world_size"] == 1
    assert generator_digest(single) != generator_digest(trained)  # other batches: another run


def test_a_killed_rank_stops_the_job_and_the_rerun_resumes_bit_identical(trained: ProjectRepo, tmp_path: Path):
    repo = make_project_repo(tmp_path / "repo", **TWO_PROCESSES)
    repo.dvc("repro", "preprocess")
    log = tmp_path / "repro.log"
    process = start_in_session(["dvc", "repro", "train"], repo.root, repo.env, log)
    with stopped_on_failure(process):
        wait_until(lambda: len(list((repo.root / CHECKPOINT_ROOT).glob(f"*/{CHECKPOINT_GLOB}"))) >= 2, 300,
                   "two checkpoints", process, log)
        victims = rank_processes(repo, 1)
        assert victims, "no rank-1 worker found"
        for victim in victims:
            victim.send_signal(signal.SIGKILL)
        started = time.monotonic()
        process.wait(timeout=120)  # torchrun stops rank 0 too: no hang
    assert process.returncode != 0
    assert time.monotonic() - started < 120
    assert "a training process failed" in log_tail(log), log_tail(log)
    assert not any(p.is_running() for p in rank_processes(repo, 0))
    stop_group(process, timeout_s=10)

    rerun = repo.dvc("repro", "train")
    assert "resuming at step" in rerun.stdout
    # the killed job's run is ended: KILLED (rank 0 stopped by torchrun) or FAILED (rank 0 saw its
    # peer's connection drop first), never left RUNNING
    statuses = sorted(run.info.status for run in training_runs(repo))
    assert len(statuses) == 2 and statuses.pop(statuses.index("FINISHED")) and statuses[0] in {"FAILED", "KILLED"}
    assert generator_digest(repo) == generator_digest(trained)


def test_batch_that_does_not_split_is_refused_in_one_line(tmp_path: Path):
    repo = make_project_repo(tmp_path / "repo", **{**TWO_PROCESSES, "devices": 3})
    result = repo.dvc("repro", "train", check=False)
    assert result.returncode != 0
    assert "batch_size: 8 does not split evenly across 3 devices" in result.stderr + result.stdout


def test_two_nodes_meeting_through_c10d_train_as_one_node_with_two_processes(trained: ProjectRepo, tmp_path: Path):
    # one clone per "node", each with its own copy of the data, as after `dvc pull` on each machine
    nodes = [make_project_repo(tmp_path / f"node-{index}", **TWO_PROCESSES) for index in range(2)]
    endpoint = f"127.0.0.1:{free_port()}"
    agents = []
    for index, node in enumerate(nodes):
        node.dvc("repro", "preprocess")
        command = ["torchrun", "--nnodes=2", f"--node-rank={index}", "--nproc-per-node=1", "--rdzv-backend=c10d",
                   f"--rdzv-endpoint={endpoint}", "--rdzv-id=two-nodes", "--max-restarts=0", "stages/train.py"]
        # one thread per rank (repo_env), as torchrun gives the two processes of one node: the same arithmetic
        agents.append((start_in_session(command, node.root, node.env, tmp_path / f"node-{index}.log"), node))
    for agent, node in agents:
        with stopped_on_failure(agent):
            agent.wait(timeout=600)
        assert agent.returncode == 0, log_tail(tmp_path / f"{node.root.name}.log")

    # c10d hands out the ranks (--node-rank is for the static rendezvous): rank 0's node has the outputs
    [main_node] = [node for node in nodes if (node.root / "models/generator_ema.pt").exists()]
    assert main_node.json("metrics/train.json")["world_size"] == 2
    assert generator_digest(main_node) == generator_digest(trained)
    assert len(training_runs(main_node)) == 1
