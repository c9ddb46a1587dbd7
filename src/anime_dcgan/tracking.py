"""MLflow tracking: runs, logged models and the registry (with serving.py, the only modules that import mlflow).

Where runs go:
- default: an sqlite store ``mlflow.db`` at the repository root, found by absolute path (DVC's
  ``DVC_ROOT`` when set, so runs of ``dvc exp run --queue/--temp`` land in the main store), with the
  experiment's artifacts under ``<root>/mlruns``;
- ``MLFLOW_TRACKING_URI`` overrides both (a shared tracking server). A server that does not answer
  stops the stage at once with a clear message: runs are never silently lost or logged elsewhere.

A run is ended FINISHED, FAILED (an exception) or KILLED (Ctrl-C, SIGTERM, SIGHUP). A run left
RUNNING by a process that died without ending it (SIGKILL, power loss, a crash of the interpreter)
is marked KILLED by the next stage that opens the store on the same machine: every run records the
host, process id and process start time it ran under, and a run whose process is gone is ended,
with a tag saying when and why.

Every call ends within a bounded time. HTTP calls use MLflow's own retry settings, given defaults
here that give up after about a minute (MLflow's own: 8 minutes); a locked sqlite store is waited
for up to ANIME_DCGAN_TRACKING_WAIT_S seconds (60), saying who holds it. Then the call raises
TrackingUnavailable (one line), and a full or read-only store raises the OSError the stage prints
as one line. The training loop keeps training through such an outage (see training/loop.py).
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import random
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from anime_dcgan.errors import PipelineError
from anime_dcgan.paths import repo_root

EXPERIMENT_NAME = os.environ.get("MLFLOW_EXPERIMENT_NAME", "anime-dcgan")
_BATCH_LIMIT = 1000  # MLflow's limit on metrics per log_batch call
_PARAMS_LIMIT = 100  # and on params
# MLflow's HTTP retries (7, with a backoff of 2 s doubling, a 120 s timeout each) take over 8 minutes
# to give up on a server that is gone; these bound one call to about a minute. The user's own
# settings of these variables win.
for _variable, _default in (("MLFLOW_HTTP_REQUEST_TIMEOUT", "12"), ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3"),
                            ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")):
    os.environ.setdefault(_variable, _default)


class TrackingUnavailable(PipelineError):
    """The MLflow store cannot be reached (a server gone) or stayed locked (sqlite)."""


def tracking_wait_s() -> float:
    """How long a call waits for a locked sqlite store, and the end of training for the store to answer."""
    return float(os.environ.get("ANIME_DCGAN_TRACKING_WAIT_S", "60"))


def tracking_uri(root: Path | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root or repo_root()) / 'mlflow.db'}"


def _check_server(uri: str) -> None:
    """Fail fast when a remote tracking server is down, instead of MLflow's minutes of retries."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
    except requests.RequestException as exc:
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} (from MLFLOW_TRACKING_URI) does not answer: {exc}.\n"
            "Start the server, or unset MLFLOW_TRACKING_URI to log to the local store mlflow.db."
        ) from None


# calls that are not safe to repeat: log_image saves its files, then writes a tag, which may fail
_TRIED_ONCE = {"log_image"}


def _use_store_in_process(uri: str) -> None:
    """Make `uri` MLflow's global store and registry (log_model and the registry's own lookups read
    those), without the MLFLOW_TRACKING_URI that set_tracking_uri also exports to child processes."""
    import mlflow

    exported = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if exported is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = exported


class _BoundedClient:
    """An MlflowClient whose every call ends within a bounded time, with one clear line when it fails."""

    def __init__(self, uri: str):
        self.uri = uri
        self.db_path = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
        self._client = None  # made at the first call: making it reads (or creates) the sqlite schema
        self._said_locked = False

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return functools.partial(self._call, name)

    def _mlflow(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            # the store's sqlalchemy errors come back to us as exceptions, handled below: not its traceback too
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
            # the registry in the same store (MLflow's default: ./mlflow.db of the working directory)
            _use_store_in_process(self.uri)
            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.bounded(lambda: getattr(self._mlflow(), name)(*args, **kwargs), once=name in _TRIED_ONCE)

    def bounded(self, call: Callable[[], Any], once: bool = False) -> Any:
        """call(), retried while the sqlite store is locked (`once`: never retried), with one line when
        the store fails."""
        wait = 0.0 if once else tracking_wait_s()
        deadline = time.monotonic() + wait  # each try itself waits up to MLflow's sqlite busy timeout (20 s)
        while True:
            try:
                return call()
            except Exception as exc:
                if not self._locked(exc):
                    raise
                if time.monotonic() >= deadline:
                    waited = f" stayed locked for {wait:.0f} s" if wait else " is locked"
                    raise TrackingUnavailable(f"the MLflow store {self.db_path}{waited}{self._holders()}; "
                                              "close what holds it and rerun") from None
                self.say_locked()
                time.sleep(0.5)

    def _locked(self, exc: Exception) -> bool:
        """Whether `exc` is a locked sqlite store; raises the one-line error for an unreachable server
        or a full or read-only store."""
        import requests

        text = str(exc)
        if self.db_path is not None:
            for marker, code in (("database or disk is full", errno.ENOSPC), ("readonly database", errno.EROFS)):
                if marker in text:
                    raise OSError(code, os.strerror(code), str(self.db_path)) from None
            return "database is locked" in text
        if isinstance(exc, requests.RequestException) or text.startswith("API request to"):
            reason = "no answer in time" if "timed out" in text.lower() or "timeout" in text.lower() else (
                "connection refused" if "refused" in text.lower() else text.splitlines()[0][:200])
            raise TrackingUnavailable(f"MLflow tracking server {self.uri} stopped answering ({reason})") from None
        return False

    def say_locked(self) -> None:
        if not self._said_locked:
            print(f"tracking: the MLflow store {self.db_path} is locked{self._holders()}; waiting up to "
                  f"{tracking_wait_s():.0f} s (ANIME_DCGAN_TRACKING_WAIT_S)", file=sys.stderr, flush=True)
            self._said_locked = True

    def _holders(self) -> str:
        """' (open in pid 12 (sqlite3 mlflow.db))': the other processes that have the store open."""
        import psutil

        store, found = str(self.db_path.resolve()), []
        for process in psutil.process_iter(["pid", "cmdline"]):
            if process.pid == os.getpid():
                continue
            try:
                if any(f.path == store for f in process.open_files()):
                    found.append(f"pid {process.pid} ({' '.join(process.info['cmdline'] or [])[:80]})")
            except (psutil.Error, OSError):
                continue
        return f" (open in {', '.join(found)})" if found else ""

    def answers(self) -> bool:
        """Whether the store takes writes now: a probe of two seconds at most."""
        if self.db_path is not None:
            try:
                with closing(sqlite3.connect(self.db_path, timeout=1)) as db:
                    db.execute("BEGIN IMMEDIATE")
                    db.rollback()
                return True
            except sqlite3.Error:
                return False
        import requests

        try:
            return requests.get(self.uri.rstrip("/") + "/health", timeout=2).ok
        except requests.RequestException:
            return False


class Tracker:
    """A client bound to one store and experiment; creates the sqlite schema and experiment safely
    when several stages (for example `dvc queue start -j 2` workers) start at once."""

    def __init__(self, root: Path | None = None):
        from filelock import FileLock

        self.root = root or repo_root()
        self.uri = tracking_uri(self.root)
        _check_server(self.uri)
        local = self.uri.startswith("sqlite:")
        self.client = _BoundedClient(self.uri)
        if self.client.db_path is not None and self.client.db_path.exists() and not self.client.answers():
            self.client.say_locked()
        # sqlite schema creation/migration and experiment creation race between processes: serialise
        lock = FileLock(str(self.root / "mlflow.db.lock")) if local else _no_lock()
        with lock:
            experiment = self.client.get_experiment_by_name(EXPERIMENT_NAME)
            if experiment is None:
                artifacts = (self.root / "mlruns").as_uri() if local else None
                # the UI opens a "model training" experiment on its runs, not on GenAI traces
                self.experiment_id = self.client.create_experiment(
                    EXPERIMENT_NAME, artifact_location=artifacts,
                    tags={"mlflow.experimentKind": "custom_model_development"})
            else:
                self.experiment_id = experiment.experiment_id
        self.end_runs_of_dead_processes()

    def run_exists(self, run_id: str | None) -> bool:
        if not run_id:
            return False
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
            return True
        except MlflowException:
            return False

    def run_status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    def mark_killed_if_running(self, run_id: str | None) -> bool:
        """A run whose process died without ending it (SIGKILL, power loss) is marked KILLED."""
        if self.run_exists(run_id) and self.run_status(run_id) == "RUNNING":
            self.client.set_terminated(run_id, status="KILLED")
            return True
        return False

    def end_runs_of_dead_processes(self) -> list[str]:
        """Mark KILLED every RUNNING run that a process of this machine started and that process is
        gone; returns their ids. Runs of other machines are left alone: their processes cannot be seen."""
        host = socket.gethostname()
        running = self.client.search_runs([self.experiment_id], "attributes.status = 'RUNNING'",
                                          max_results=1000)
        ended = []
        for run in running:
            tags = run.data.tags
            if tags.get(_HOST_TAG) != host or _PID_TAG not in tags or _process_alive(tags):
                continue
            found = datetime.now(timezone.utc).isoformat(timespec="seconds")
            self.client.set_tag(run.info.run_id, "anime_dcgan.ended_by",
                                f"marked KILLED at {found}: its process {tags[_PID_TAG]} on {host} had died "
                                "without ending the run (SIGKILL, power loss or a crash)")
            self.client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
        return ended

    @contextmanager
    def start_run(self, run_name: str | None, tags: Mapping[str, str]) -> Iterator[Run]:
        """A new run ended FINISHED on success, KILLED on Ctrl-C/SIGTERM, FAILED on an exception."""
        info = self._create_run(run_name, tags)
        run = Run(self, info.run_id)
        try:
            yield run
        except BaseException as exc:
            if not isinstance(exc, TrackingUnavailable):
                try:
                    self.client.set_terminated(info.run_id,
                                               status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
                except (TrackingUnavailable, OSError):
                    pass  # the store failed too: the next stage marks the run, its process being gone
            raise
        self.client.set_terminated(info.run_id, status="FINISHED")

    def answers(self) -> bool:
        return self.client.answers()

    def _create_run(self, name: str | None, tags: Mapping[str, str]):
        # MLflow draws a missing run name from Python's global `random`, which training seeds: with a
        # fresh state meanwhile, every run gets its own name and the training RNG stream is untouched
        state = random.getstate()
        random.seed()
        try:
            return self.client.create_run(self.experiment_id, run_name=name,
                                          tags={**_source_tags(), **tags, **_process_tags()}).info
        finally:
            random.setstate(state)

    def log_generator_model(self, run_id: str, generator_file: Path, image_size: int, step: int,
                            name: str | None = None) -> str:
        """The generator as an MLflow LoggedModel (a pyfunc, see serving.py) named `name` (default
        serving.MODEL_NAME, the EMA generator) linked to run `run_id`; returns its model id."""
        from anime_dcgan import serving

        return self.client.bounded(lambda: serving.log_generator(  # a retry would log it twice
            self.experiment_id, run_id, generator_file, image_size, step, name or serving.MODEL_NAME), once=True)

    def generator_model_of(self, run_id: str, name: str | None = None) -> str | None:
        """The id of the generator model named `name` (default: the EMA generator's) that run `run_id`
        logged, if any."""
        outputs = self.client.get_run(run_id).outputs
        for output in (outputs.model_outputs if outputs else []):
            if self.client.get_logged_model(output.model_id).name == (name or _model_name()):
                return output.model_id
        return None

    def register_generator(self, model_id: str, run_id: str, fid_key: str, fid: float, protocol: str,
                           tags: Mapping[str, str]) -> str:
        """Register LoggedModel `model_id` as a new version of REGISTERED_MODEL, alias it @latest-eval,
        and move @champion to it when its FID beats the champion's under the same protocol (the
        metric and the reference statistics). Returns one line saying what was done."""
        from filelock import FileLock
        from mlflow.exceptions import MlflowException

        client = self.client
        # the champion's compare-and-set, between evaluate stages of one machine (`dvc queue start -j 2`)
        lock = FileLock(str(self.root / "mlflow.db.lock")) if self.uri.startswith("sqlite:") else _no_lock()
        with lock:
            try:
                client.create_registered_model(REGISTERED_MODEL, description=(
                    "The EMA generator of each evaluated training run. @champion: the lowest FID under one "
                    "protocol; @latest-eval: the newest. Input: a table of seeds; output: uint8 images."))
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            version = client.create_model_version(
                REGISTERED_MODEL, source=f"models:/{model_id}", run_id=run_id, model_id=model_id,
                tags={**tags, "fid_metric": fid_key, "fid": repr(fid), "protocol": protocol}).version
            client.set_registered_model_alias(REGISTERED_MODEL, "latest-eval", version)
            try:
                champion = client.get_model_version_by_alias(REGISTERED_MODEL, "champion")
            except MlflowException:
                champion = None
            said = f"{REGISTERED_MODEL} version {version} (@latest-eval, {fid_key} {fid:.4g})"
            if champion is None:
                client.set_registered_model_alias(REGISTERED_MODEL, "champion", version)
                return f"{said} is the first @champion"
            if champion.tags.get("protocol") != protocol:
                return (f"{said}; @champion stays version {champion.version}: it was scored under another "
                        f"protocol ({champion.tags.get('protocol')}), so the two FIDs cannot be compared")
            champion_fid = float(champion.tags["fid"])
            if fid < champion_fid:
                client.set_registered_model_alias(REGISTERED_MODEL, "champion", version)
                return f"{said} is the new @champion (version {champion.version} had {champion_fid:.4g})"
            return f"{said}; @champion stays version {champion.version} ({champion_fid:.4g})"

    @contextmanager
    def system_metrics(self, run_id: str, interval_s: float = 5) -> Iterator[None]:
        """CPU, memory, disk and network use (and GPU use where nvidia-ml-py is installed: the `gpu`
        extra) sampled every interval_s seconds (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides)
        into the run's system metrics, by MLflow's own monitor thread. Best effort: during a store
        outage its samples are dropped, and it says so only at the end."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)  # not a warning every sample
        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, tracking_uri=self.uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()

    def run_link(self, run_id: str) -> str:
        """The run's page in the MLflow UI: on the tracking server, or on `make ui`'s default address."""
        base = self.uri.rstrip("/") if self.uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
        return f"{base}/#/experiments/{self.experiment_id}/runs/{run_id}"

    def attach(self, run_id: str) -> Run:
        """Log into an existing run without changing its status."""
        return Run(self, run_id)

    def run_for_training(self, training_run_id: str) -> Run:
        """The run later stages (generate, evaluate) log into: the training run itself.

        When this store does not hold it (the models came from `dvc pull` or DVC's run cache on
        another machine), one stand-in run per training run is created and reused, tagged with the
        original id, so samples and metrics still land together."""
        if self.run_exists(training_run_id):
            return self.attach(training_run_id)
        tag = "anime_dcgan.training_run"
        found = self.client.search_runs([self.experiment_id], f"tags.`{tag}` = '{training_run_id}'", max_results=1)
        if found:
            return self.attach(found[0].info.run_id)
        info = self._create_run(run_name(), {
            **provenance_tags(self.root), tag: training_run_id,
            "mlflow.note.content": f"Outputs of training run {training_run_id}, which is not in this "
                                   "store (restored by dvc pull or the DVC run cache)."})
        self.client.set_terminated(info.run_id, status="FINISHED")
        return self.attach(info.run_id)


REGISTERED_MODEL = "anime-dcgan-generator"


def _model_name() -> str:
    from anime_dcgan.serving import MODEL_NAME

    return MODEL_NAME


def _source_tags() -> dict[str, str]:
    """The tags MLflow's fluent API gives a run: user, source script and type, git commit."""
    from mlflow.tracking.context.registry import resolve_tags

    return resolve_tags()


_HOST_TAG, _PID_TAG, _STARTED_TAG = "anime_dcgan.host", "anime_dcgan.pid", "anime_dcgan.process_started"


def _process_start(pid: int) -> str | None:
    """When process `pid` started, as the boot id and the start time in clock ticks since boot (Linux):
    with the pid, it names one process, even after the pid is reused or the machine rebooted."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    return f"{boot_id}:{stat.rsplit(')', 1)[1].split()[19]}"  # field 22, after the command name


def _process_tags() -> dict[str, str]:
    tags = {_HOST_TAG: socket.gethostname(), _PID_TAG: str(os.getpid())}
    started = _process_start(os.getpid())
    return tags | ({_STARTED_TAG: started} if started else {})


def _process_alive(tags: Mapping[str, str]) -> bool:
    pid = int(tags[_PID_TAG])
    if _STARTED_TAG in tags and Path("/proc").is_dir():
        return _process_start(pid) == tags[_STARTED_TAG]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


@contextmanager
def _no_lock() -> Iterator[None]:
    yield


class Run:
    def __init__(self, tracker: Tracker, run_id: str):
        self.client = tracker.client
        self.run_id = run_id
        self._images_tried: set[tuple[str, int]] = set()

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = [Param(key, str(value)) for key, value in sorted(flatten(params).items())]
        for start in range(0, len(flat), _PARAMS_LIMIT):
            self.client.log_batch(self.run_id, params=flat[start:start + _PARAMS_LIMIT])

    def log_metrics(self, rows: Iterable[tuple[int, Mapping[str, float]]], model_id: str | None = None,
                    dataset: Dataset | None = None) -> None:
        """Log many (step, {name: value}) rows in a few batched writes (never one write per step),
        linked to a logged model and the dataset they measure when given."""
        self.send_metrics(list(rows), model_id, dataset)

    def send_metrics(self, pending: list[tuple[int, Mapping[str, float]]], model_id: str | None = None,
                     dataset: Dataset | None = None) -> None:
        """Log and remove the rows of `pending` a batch at a time: when the store fails midway, the
        rows not yet logged are the ones left, so a later call sends each exactly once."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        link = {"model_id": model_id} | ({"dataset_name": dataset.name, "dataset_digest": dataset.digest}
                                         if dataset else {})
        while pending:
            batch, count = [], 0
            while count < len(pending) and (not batch or len(batch) + len(pending[count][1]) <= _BATCH_LIMIT):
                step, values = pending[count]
                batch += [Metric(name, float(value), now, int(step), **link) for name, value in values.items()]
                count += 1
            self.client.log_batch(self.run_id, metrics=batch)
            del pending[:count]

    def log_dataset(self, dataset: Dataset, context: str) -> None:
        """Record `dataset` as an input of the run (the UI's Dataset column), `context` training or evaluation."""
        from mlflow.entities import Dataset as MlflowDataset
        from mlflow.entities import DatasetInput, InputTag

        entity = MlflowDataset(name=dataset.name, digest=dataset.digest, source_type="local",
                               source=json.dumps({"uri": dataset.source}),
                               profile=json.dumps({"num_rows": dataset.n_images, "image_size": dataset.image_size}))
        self.client.log_inputs(self.run_id, datasets=[
            DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)])])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        """An (H, W, 3) uint8 image shown by step in the MLflow UI (progress grids). Logged once even
        when a try failed after saving it (log_image writes the image, then a tag)."""
        if (key, step) in self._images_tried and any(
                f"{key}+step+{step}+" in artifact.path for artifact in self.client.list_artifacts(self.run_id, "images")):
            self.client.set_tag(self.run_id, "mlflow.loggedImages", "True")  # what that try did not get to
            return
        self._images_tried.add((key, step))
        self.client.log_image(self.run_id, image, key=key, step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if Path(path).is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)


@dataclass(frozen=True)
class Dataset:
    """The processed images a run trained on or was scored against."""
    name: str        # the data.source it came from
    source: str      # where it lies: data/processed/images.npy
    digest: str      # the file's MD5, the digest DVC keeps for it in dvc.lock
    n_images: int
    image_size: int

    @classmethod
    def of(cls, images_npy: Path, name: str) -> Dataset:
        """The dataset of a processed images.npy, uint8 (N, 3, S, S)."""
        import hashlib

        with open(images_npy, "rb") as handle:
            digest = hashlib.file_digest(handle, "md5").hexdigest()
        shape = np.load(images_npy, mmap_mode="r").shape
        return cls(name=name, source=str(images_npy), digest=digest, n_images=shape[0], image_size=shape[-1])


def download_artifacts(uri: str, destination: Path) -> Path:
    """The local copy of an MLflow artifact URI (runs:/<id>/models ...) from this repository's store
    (or MLFLOW_TRACKING_URI's server)."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    store = tracking_uri()
    _check_server(store)
    _use_store_in_process(store)  # models:/<name>@<alias> is looked up there
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(destination),
                                                        tracking_uri=store))
    except (MlflowException, OSError) as exc:
        raise PipelineError(f"{uri}: cannot be fetched from the MLflow store {store}: "
                            f"{str(exc).splitlines()[0][:300]}") from None


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"data": {"source": "x"}} -> {"data.source": "x"}: the names dvc uses for nested params."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def provenance_tags(root: Path) -> dict[str, str]:
    """Git commit and DVC experiment of this run, so a run in the UI leads back to its code."""
    tags = {"anime_dcgan.repo_root": str(root)}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path.cwd(), capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        tags["mlflow.source.git.commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    for env, tag in (("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def run_name() -> str | None:
    """DVC's experiment name when DVC runs the stage (`dvc exp run`), else MLflow picks one."""
    return os.environ.get("DVC_EXP_NAME") or None
