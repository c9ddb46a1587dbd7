"""Sharing results through a DVC remote, as the README tells a team to: the author adds a remote,
commits it and pushes; a collaborator clones the git repository (no DVC cache), pulls, and finds the
pipeline up to date, with a generator that draws exactly the author's samples.

Both remotes hold the outputs of one pipeline run (the session's `reproduced_repo` template): a local
folder, and an S3 bucket on an S3-compatible server on 127.0.0.1 (moto's server mode).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from project_repo import ProjectRepo, repo_env
from servers import free_port, start_in_session, stop_group, wait_for_http

from anime_dcgan.training.networks import load_model
from anime_dcgan.training.sample import generate_for_seeds

pytestmark = pytest.mark.e2e

BUCKET = "anime-dcgan-e2e"
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "e2e-access-key", "AWS_SECRET_ACCESS_KEY": "e2e-secret-key",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true"}  # never ask a cloud metadata service for credentials
COMPARED_SEEDS = range(8)
MOTO_START_S = 60


def add_default_remote(repo: ProjectRepo, name: str, url: str, *settings: tuple[str, str]) -> None:
    """`dvc remote add -d`, optional `dvc remote modify`, committed like the README says."""
    repo.dvc("remote", "add", "-d", name, url)
    for key, value in settings:
        repo.dvc("remote", "modify", name, key, value)
    repo.git("add", ".dvc/config")
    repo.git("commit", "-q", "-m", f"Add DVC remote {name}")


def clone(source: ProjectRepo, target: Path, env: dict[str, str] | None = None) -> ProjectRepo:
    source.git("clone", "-q", str(source.root), str(target))
    home = target.parent / f".{target.name}-home"
    home.mkdir()
    return ProjectRepo(target, {**repo_env(home), **(env or {})})


def assert_pushed(repo: ProjectRepo, stored: set[str]) -> None:
    """`stored` (the remote's objects, as `md5/ab/cdef...`) came from this repository's cache, and the
    remote holds everything the committed outputs need."""
    cache = repo.root / ".dvc/cache/files"
    assert stored, "dvc push stored nothing on the remote"
    assert all((cache / name).is_file() for name in stored), stored
    assert repo.dvc("status", "--cloud", "--json").stdout.strip() == "{}"


def assert_round_trip(author: ProjectRepo, collaborator: ProjectRepo) -> None:
    """A clone with no DVC cache, pulled: everything up to date, nothing to rerun, same generator."""
    assert not (collaborator.root / ".dvc/cache").exists(), "a git clone must not carry the DVC cache"
    assert not (collaborator.root / "models").exists()

    collaborator.dvc("pull")

    status = collaborator.dvc("status")
    assert "Data and pipelines are up to date." in status.stdout, status.stdout
    assert collaborator.dvc("status", "--json").stdout.strip() == "{}"
    repro = collaborator.dvc("repro")
    assert "Running stage" not in repro.stdout, repro.stdout
    for stage in ("download", "preprocess", "train", "generate", "evaluate"):
        assert f"Stage '{stage}' didn't change, skipping" in repro.stdout, (stage, repro.stdout)
    assert collaborator.git("status", "--porcelain").stdout == "", "dvc repro changed tracked files"

    ours = load_model(author.root / "models/generator_ema.pt")
    theirs = load_model(collaborator.root / "models/generator_ema.pt")
    ours_samples = generate_for_seeds(ours, COMPARED_SEEDS)                   # (8, 3, S, S) uint8
    theirs_samples = generate_for_seeds(theirs, COMPARED_SEEDS)
    assert np.array_equal(ours_samples, theirs_samples)
    pulled_samples = collaborator.root / "samples/samples.npy"
    assert pulled_samples.read_bytes() == (author.root / "samples/samples.npy").read_bytes()
    # sample k of samples.npy comes from seed k: the pulled generator redraws the pulled samples
    assert np.array_equal(np.load(pulled_samples)[:len(COMPARED_SEEDS)], theirs_samples)


def test_a_local_remote_round_trip(reproduced_repo: ProjectRepo, tmp_path: Path) -> None:
    remote = tmp_path / "dvc-remote"
    add_default_remote(reproduced_repo, "storage", str(remote))

    push = reproduced_repo.dvc("push")
    assert "pushed" in push.stdout, push.stdout
    assert_pushed(reproduced_repo, {path.relative_to(remote / "files").as_posix()
                                    for path in remote.rglob("*") if path.is_file()})

    assert_round_trip(reproduced_repo, clone(reproduced_repo, tmp_path / "collaborator"))


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=FAKE_AWS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=FAKE_AWS["AWS_SECRET_ACCESS_KEY"],
                        region_name=FAKE_AWS["AWS_DEFAULT_REGION"])


@pytest.fixture
def s3_endpoint(tmp_path: Path) -> Iterator[str]:
    """An S3-compatible server on 127.0.0.1 (moto's server mode, its own process) with an empty bucket;
    the test is skipped when it cannot start."""
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("boto3") is None:
        pytest.skip("moto[server] and boto3 are needed for the S3 round trip (pip install 'moto[server]' dvc-s3)")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "moto-server.log"
    server = start_in_session([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              tmp_path, dict(os.environ), log_path)
    try:
        try:
            wait_for_http(f"{endpoint}/moto-api/", MOTO_START_S, server, log_path)
        except AssertionError as exc:
            pytest.skip(f"the S3 server (moto) did not start on 127.0.0.1:{port}: {exc}")
        s3_client(endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        stop_group(server)


def test_an_s3_remote_round_trip(reproduced_repo: ProjectRepo, s3_endpoint: str, tmp_path: Path) -> None:
    reproduced_repo.env.update(FAKE_AWS)
    add_default_remote(reproduced_repo, "s3remote", f"s3://{BUCKET}/anime-dcgan", ("endpointurl", s3_endpoint))

    push = reproduced_repo.dvc("push")
    assert "pushed" in push.stdout, push.stdout
    keys = {item["Key"] for page in s3_client(s3_endpoint).get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for item in page.get("Contents", [])}
    assert all(key.startswith("anime-dcgan/files/md5/") for key in keys), keys
    assert_pushed(reproduced_repo, {key.removeprefix("anime-dcgan/files/") for key in keys})

    assert_round_trip(reproduced_repo, clone(reproduced_repo, tmp_path / "collaborator", env=FAKE_AWS))
