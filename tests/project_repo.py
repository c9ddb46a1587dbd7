"""Real git + DVC repositories of this project, in temporary folders, for end-to-end tests.

`make_project_repo` copies the project's pipeline (src/, stages/, dvc.yaml, params.yaml, DVC config)
into a new git repository with a tiny configuration, commits it, and returns a `ProjectRepo` whose
commands run the real `git`, `dvc` and `python` of this environment. `reproduced_repo` hands out
copies of one repository in which `dvc repro` already ran (once per test session).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
PIPELINE_FILES = ("src", "stages", "dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", ".dvc/config",
                  ".dvc/.gitignore", ".dvc/plots/offline.html")  # the last: written by `make install`
# small enough that the whole pipeline runs in about a minute on 2 CPU cores
TINY_PARAMS: dict[str, Any] = {
    "data": {"synthetic_count": 96, "image_size": 32},
    "steps": 6, "batch_size": 8, "nz": 16, "ngf": 8, "ndf": 8, "log_every": 2, "sample_every": 2,
    "checkpoint_every": 2, "eval_every": 0, "eval_samples": 8, "n_samples": 16, "fid_samples": 8,
    "compile": False, "precision": "fp32",
    "device": "cpu",
}

# FID during training, off in TINY_PARAMS (each score costs more than the tiny steps between them):
# on for the repositories whose plots, metrics and UI are checked
FID_DURING_TRAINING: dict[str, Any] = {"eval_every": 3}


def committed_params_text() -> str:
    """params.yaml as committed (HEAD), not as an experiment applied to the workspace left it: the
    tests run on the defaults whatever `dvc exp run` / `dvc exp apply` did to the working tree."""
    try:
        return subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=PROJECT, capture_output=True, text=True,
                              check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):  # not a git checkout (an unpacked source archive)
        return (PROJECT / "params.yaml").read_text()


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and key in base else value
    return merged


@dataclass
class ProjectRepo:
    root: Path
    env: dict[str, str]

    def run(self, *command: str, check: bool = True, timeout: float = 900,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(command, cwd=self.root, env={**self.env, **(env or {})}, capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n"
                                 f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}")
        return result

    def dvc(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run("dvc", *args, **kwargs)

    def git(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run("git", *args, **kwargs)

    def params(self) -> dict[str, Any]:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def set_params(self, **overrides: Any) -> None:
        (self.root / "params.yaml").write_text(yaml.safe_dump(_merge(self.params(), overrides), sort_keys=False))

    def json(self, relative: str) -> Any:
        return json.loads((self.root / relative).read_text())

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    def mlflow(self):
        from mlflow.tracking import MlflowClient

        # the registry named too: otherwise MLflow takes the process's global one, which an in-process
        # Tracker of another test may have set
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)


def repo_env(home: Path) -> dict[str, str]:
    """This environment's tools first on PATH, a fixed git identity, nothing inherited that would
    redirect DVC or MLflow."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("DVC_", "MLFLOW_", "GIT_")) and key != "PYTHONPATH"}
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "HOME": str(home),  # no user-level git/dvc configuration leaks in
        "GIT_AUTHOR_NAME": "e2e", "GIT_AUTHOR_EMAIL": "e2e@example.com",
        "GIT_COMMITTER_NAME": "e2e", "GIT_COMMITTER_EMAIL": "e2e@example.com",
        "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1",
        # one torch thread: for the tiny models here, a second OpenMP thread only waits for the other
        # core, which the tests' other processes keep busy
        "OMP_NUM_THREADS": "1",
    })
    return env


def make_project_repo(root: Path, **param_overrides: Any) -> ProjectRepo:
    root.mkdir(parents=True)
    for name in PIPELINE_FILES:
        source, target = PROJECT / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target)
    (root / "params.yaml").write_text(committed_params_text())
    home = root.parent / f".{root.name}-home"
    home.mkdir(exist_ok=True)
    repo = ProjectRepo(root, repo_env(home))
    repo.set_params(**_merge(TINY_PARAMS, param_overrides))
    repo.git("init", "-q", "-b", "main")
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "anime-dcgan pipeline (tiny configuration)")
    return repo


def copy_repo(template: ProjectRepo, root: Path) -> ProjectRepo:
    """A copy of a reproduced repository with its own, empty MLflow store (the template's store
    records artifact locations inside the template)."""
    shutil.copytree(template.root, root, symlinks=True)
    (root / "mlflow.db").unlink(missing_ok=True)
    shutil.rmtree(root / "mlruns", ignore_errors=True)
    home = root.parent / f".{root.name}-home"
    home.mkdir(exist_ok=True)
    return ProjectRepo(root, repo_env(home))


@pytest.fixture
def project_repo(tmp_path: Path) -> ProjectRepo:
    """A fresh repository, nothing reproduced yet."""
    return make_project_repo(tmp_path / "repo")


@pytest.fixture(scope="session")
def _reproduced_template(tmp_path_factory: pytest.TempPathFactory) -> ProjectRepo:
    repo = make_project_repo(tmp_path_factory.mktemp("template") / "repo", **FID_DURING_TRAINING)
    repo.dvc("repro")
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "dvc repro")
    return repo


@pytest.fixture
def reproduced_repo(_reproduced_template: ProjectRepo, tmp_path: Path) -> ProjectRepo:
    """A copy of a repository whose pipeline already ran and was committed (dvc.lock, metrics)."""
    return copy_repo(_reproduced_template, tmp_path / "repo")
