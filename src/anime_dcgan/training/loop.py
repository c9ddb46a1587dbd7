"""The training loop around the pure step of step.py: data on the device, logging, progress grids,
the collapse monitor, divergence checks, checkpoints and exact resume, and the exported models.

The step itself never synchronises with the host: its metrics are summed on the device and read
only every `log_every` steps (that read is where a NaN/inf is caught).

MLflow is told after each checkpoint is written, so a tracking failure never costs a step. When the
store stops answering mid-training (a server gone, an sqlite store locked), training goes on: the
metrics, tags and progress grids wait and are sent, each once, when it answers again (probed at
every grid). At the end the stage waits up to ANIME_DCGAN_TRACKING_WAIT_S seconds for the store,
then stops with one line, its final checkpoint kept: the rerun resumes there and only exports.

With several processes (training/distributed.py) every rank runs the steps; rank 0 alone does the
rest, and the ranks meet only where they must: in DDP's gradient averaging, the interval's metrics,
the checkpoints (every rank's random state) and the final check that their weights agree.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import random
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout
from tqdm import tqdm

from anime_dcgan.device import Runtime, peak_rss_bytes, pick_runtime, tune_cpu_allocator
from anime_dcgan.errors import PipelineError
from anime_dcgan.evaluation.registry import count_label
from anime_dcgan.leases import CpuShare, leased_gpus
from anime_dcgan.params import OptimParams, Params
from anime_dcgan.tracking import Dataset, Run, Tracker, TrackingUnavailable, provenance_tags, run_name, tracking_wait_s
from anime_dcgan.training import checkpoint as ckpt
from anime_dcgan.training.augment import mirror
from anime_dcgan.training.calibration import Calibration, calibrate, record_choice, recorded_choice
from anime_dcgan.training.cpu_ops import use_cpu_kernels
from anime_dcgan.training.distributed import (
    SINGLE,
    Ranks,
    from_main,
    gathered,
    local_batch_size,
    rank_seed,
    sum_across_ranks,
    weights_digest,
)
from anime_dcgan.training.fid_monitor import BestSnapshot, FidMonitor, exported_generator
from anime_dcgan.training.networks import ModelConfig, model_summary, save_model
from anime_dcgan.training.sample import to_uint8
from anime_dcgan.training.step import (
    STEP_METRICS,
    Gan,
    build_gan,
    draw_step_inputs,
    ema_decay_at,
    normalise,
    train_step,
)
from anime_dcgan.util.io import atomic_dir, atomic_path, atomic_write_json, atomic_write_text, file_sha256
from anime_dcgan.util.visuals import image_grid, load_png, save_png

COMPILE_WARM_UP_STEPS = 3      # compilation, CUDA graph recording and its first replay: the first calls
GRID_SIZE = 64                 # fixed-noise samples in a progress grid (8 x 8)
COLLAPSE_DIVERSITY = 0.2       # fixed-noise diversity below this share of the real data's = collapse


class DivergenceError(PipelineError):
    """A loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainOutputs:
    models_dir: Path       # generator.pt, generator_ema.pt, discriminator.pt, summary.txt (+ generator_best.pt)
    progress_dir: Path     # step_000100.png ... fixed-noise grids through training
    losses_csv: Path       # one row per logging interval (a DVC plot, x = step)
    fid_csv: Path          # step, fid, kid: one row per FID during training (a DVC plot)
    summary_json: Path     # final figures + mlflow_run_id (a DVC metrics file)


def load_dataset(path: Path, device: torch.device) -> torch.Tensor:
    """The whole processed dataset as one uint8 (N, 3, S, S) tensor on the device."""
    try:
        images = np.load(path)
    except FileNotFoundError:
        raise PipelineError(f"{path} does not exist; run the preprocess stage (dvc repro)") from None
    except (ValueError, OSError, EOFError) as exc:  # not a .npy file, or a damaged one
        raise PipelineError(f"{path} is not a readable .npy file ({exc}); rerun the preprocess stage "
                            "(dvc repro -f preprocess)") from None
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3] or images.dtype != np.uint8:
        raise PipelineError(f"{path}: expected uint8 images of shape (N, 3, S, S), got {images.dtype} "
                         f"{images.shape}; rerun the preprocess stage")
    if len(images) == 0:
        raise PipelineError(f"{path} holds no images; rerun the preprocess stage")
    return torch.from_numpy(images).to(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def fixed_noise(nz: int, seed: int, device: torch.device) -> torch.Tensor:
    """The progress grids' noise (GRID_SIZE, nz, 1, 1): its own generator, so drawing it never
    shifts the training RNG."""
    return torch.randn(GRID_SIZE, nz, 1, 1, generator=torch.Generator().manual_seed(seed)).to(device)


class _Interval:
    """Step metrics summed on the device over one logging interval (of this rank: `read` and
    `any_bad` combine the ranks')."""

    def __init__(self, length: int, device: torch.device, ranks: Ranks):
        self.total = torch.zeros(len(STEP_METRICS), device=device)
        self.finite = torch.ones(length, dtype=torch.bool, device=device)  # per step of the interval
        self.count = 0
        self.ranks = ranks

    def add(self, metrics: torch.Tensor) -> None:
        self.total += metrics
        self.finite[self.count] = torch.isfinite(metrics).all()
        self.count += 1

    def read(self, last_step: int) -> dict[str, float]:
        """Host read (the only sync); raises DivergenceError naming the first bad step (of any rank)."""
        bad_ranks = sum_across_ranks((~self.finite[:self.count]).int(), self.ranks).cpu()   # (count,)
        if bool(bad_ranks.any()):
            first_bad = last_step - self.count + 1 + int(bad_ranks.nonzero()[0])
            raise DivergenceError(f"step {first_bad}")
        sum_across_ranks(self.total, self.ranks)
        mean = (self.total / (self.count * self.ranks.world_size)).tolist()
        self.total.zero_()
        self.finite.fill_(True)
        self.count = 0
        return dict(zip(STEP_METRICS, mean))

    def any_bad(self) -> bool:
        """Whether a step since the last read gave a NaN/inf, on any rank."""
        bad = (~self.finite[:self.count]).any().int().reshape(1)
        return bool(sum_across_ranks(bad, self.ranks))


def train(params: Params, images_path: Path, outputs: TrainOutputs, tracker: Tracker | None,
          checkpoint_root: Path, progress: bool = True, ranks: Ranks = SINGLE,
          cpu_share: CpuShare | None = None, reference: Path | None = None) -> dict[str, Any]:
    """Train (or resume, or extend) the run that `params` and the data at `images_path` describe.
    With several ranks each process calls this; rank 0 alone has a tracker and returns the summary.
    With a `cpu_share`, training runs on the share of the cores it gives, re-checked at every log
    step. `reference`: the real data's Inception statistics, for FID during training (eval_every)."""
    runtime = pick_runtime(params.device, params.precision, params.compile)
    if params.sync_batchnorm and runtime.device.type != "cuda":
        raise PipelineError(f"sync_batchnorm: true needs CUDA GPUs (SyncBatchNorm runs on them only), not "
                            f"{runtime.device.type}; set it to false")
    _take_cpu_share(cpu_share, None)  # before the calibration, which times at this thread count
    if runtime.device.type == "cuda" and ranks.distributed:
        runtime = dataclasses.replace(runtime, device=torch.device("cuda", ranks.local_rank))
    if runtime.device.type == "cpu":
        tune_cpu_allocator()
    optim = params.optim.model_copy(update={"batch_size": local_batch_size(params.batch_size, ranks.world_size)})
    monitor = None
    if params.eval_every and ranks.is_main:
        if reference is None:
            raise PipelineError("eval_every > 0 scores FID during training, which needs the reference statistics "
                                "of the fid_reference stage; set eval_every: 0 to train without")
        monitor = FidMonitor(reference, params.eval_samples, params.seed, runtime.device)
    dataset = load_dataset(images_path, runtime.device)                    # (N, 3, S, S) uint8
    config = {**params.training_identity(), "image_size": dataset.shape[-1], "world_size": ranks.world_size}
    data_digest = file_sha256(images_path)
    folder = checkpoint_root / ckpt.run_identity(config, data_digest)
    lineage = ckpt.lineage(config, data_digest)
    lock = FileLock(str(folder / "lock"))
    if ranks.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise PipelineError(f"another training run with the same parameters and data is running "
                               f"(it holds {folder / 'lock'}); wait for it to finish") from None
    try:
        if ranks.is_main:
            _continue_a_finished_run(folder, checkpoint_root, lineage, params)
        # timed by rank 0 alone (the others wait): every rank runs the same step variant
        calibration = from_main(step_choice(params, optim, runtime, dataset.shape[-1], folder)
                                if ranks.is_main else None, ranks)
        if ranks.is_main:
            print(f"train: step variant {calibration.describe()}")
        record = Dataset.of(images_path, params.data.source) if ranks.is_main else None
        training = _Training(params, calibration.choice.applied_to(runtime), calibration, dataset, record, folder,
                             progress, ranks, cpu_share, monitor)
        return training.run(tracker, outputs, lambda run_id: ckpt.keep_finished(
            folder, ckpt.finished_root(checkpoint_root), lineage, params.steps, run_id))
    except TrackingUnavailable as exc:
        step = ckpt.latest_step(folder)
        raise TrackingUnavailable(f"{exc}; " + (
            f"the training state is kept at step {step} in {folder}: rerun when the store answers and "
            "training resumes there" if step is not None else "no training step was lost")) from None
    finally:
        if lock.is_locked:
            lock.release()


def _continue_a_finished_run(folder: Path, checkpoint_root: Path, lineage: str, params: Params) -> None:
    """A run with no checkpoint of its own starts from the longest finished run of its lineage."""
    if ckpt.latest_step(folder) is not None:  # its own checkpoint: a resume
        return
    (folder / ckpt.RUN_FILE).unlink(missing_ok=True)  # from a copy that a kill cut short
    finished = ckpt.longest_finished(ckpt.finished_root(checkpoint_root), lineage, params.steps, params.log_every)
    if finished is not None:
        record = ckpt.continue_finished(finished, folder)
        print(f"train: continuing the finished {record['steps']}-step run (MLflow run {record['mlflow_run_id']}) "
              f"to {params.steps} steps, from its final state in {finished}")


def _take_cpu_share(share: CpuShare | None, threads_before: int | None,
                    say: Callable[[str], None] = print) -> int:
    """Apply the share (when there is one) and say when it changed; returns torch's thread count."""
    if share is None:
        return torch.get_num_threads()
    threads = share.apply()
    if threads != threads_before:
        say(f"train: {share.describe()}")
    return threads


def step_choice(params: Params, optim: OptimParams, runtime: Runtime, image_size: int, folder: Path) -> Calibration:
    """The run's precision and CPU kernels: those it recorded when it started (a resumed run keeps
    them), else the calibration's for this machine (at each rank's batch size), recorded in `folder`."""
    recorded = recorded_choice(folder)
    if recorded is not None:
        return Calibration(recorded, "recorded")
    calibration = calibrate(ModelConfig.from_params(params.model, image_size), optim, runtime, params.precision)
    record_choice(folder, calibration.choice)
    return calibration


def networks_for_steps(gan: Gan, runtime: Runtime, ranks: Ranks = SINGLE) -> Gan:
    """The view of `gan` that train_step runs: with several ranks, each network inside DDP (which
    averages its gradients), the generator update's pass through D outside it (D's own gradients are
    not wanted there); compiled when runtime.compile. The originals, which share their weights, are
    the ones saved and sampled."""
    def compiled(net: torch.nn.Module) -> torch.nn.Module:
        return torch.compile(net, mode=runtime.compile_mode) if runtime.compile else net

    if not ranks.distributed:
        discriminator = compiled(gan.discriminator)
        return dataclasses.replace(gan, generator=compiled(gan.generator), discriminator=discriminator,
                                   discriminator_in_g_update=discriminator)
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [runtime.device] if runtime.device.type == "cuda" else None
    with warnings.catch_warnings():
        # its replacement, forward_sync_buffers=False, still syncs the buffers at construction; the
        # BatchNorm statistics here must never be synced
        warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
        generator, discriminator = [compiled(DistributedDataParallel(net, device_ids=device_ids,
                                                                     broadcast_buffers=False))
                                    for net in (gan.generator, gan.discriminator)]
    return dataclasses.replace(gan, generator=generator, discriminator=discriminator,
                               discriminator_in_g_update=compiled(gan.discriminator))


def begin_step(runtime: Runtime) -> None:
    """Call before each train_step on networks_for_steps' view."""
    if runtime.compile and runtime.compile_mode == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are dead


def _metrics_only(row: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in row.items() if k != "step"}


class _Training:
    """One training run: its networks, checkpoint folder (named by the run identity), MLflow run and
    loss history."""

    def __init__(self, params: Params, runtime: Runtime, calibration: Calibration, dataset: torch.Tensor,
                 dataset_record: Dataset | None, folder: Path, progress: bool, ranks: Ranks,
                 cpu_share: CpuShare | None = None, monitor: FidMonitor | None = None):
        self.params, self.runtime, self.dataset, self.folder = params, runtime, dataset, folder
        self.calibration, self.ranks, self.progress = calibration, ranks, progress and ranks.is_main
        self.dataset_record = dataset_record
        self.optim, self.loop = params.optim, params.loop
        self.rank_batch_size = local_batch_size(self.optim.batch_size, ranks.world_size)
        self.model_config = ModelConfig.from_params(params.model, dataset.shape[-1])
        seed_everything(params.seed)  # the same initial weights on every rank
        self.gan = build_gan(self.model_config, self.optim, runtime.device)
        if ranks.distributed:  # then each rank its own batches and noise
            seed_everything(rank_seed(params.seed, ranks.rank))
        if ranks.distributed and params.sync_batchnorm:  # in place: the optimisers keep the same parameters
            for network in (self.gan.generator, self.gan.discriminator):
                torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
        # summaries of the plain networks, before the CPU kernels are swapped in
        self.summaries = "\n\n".join(model_summary(m) for m in (self.gan.generator, self.gan.discriminator))
        if runtime.cpu_kernels:
            use_cpu_kernels(self.gan.generator, self.gan.discriminator)
        self.interval = _Interval(self.loop.log_every, runtime.device, ranks)
        self.history: list[dict[str, float]] = []
        self.pending: list[tuple[int, dict[str, float]]] = []   # metrics not yet sent to MLflow
        self.pending_tags: dict[str, str] = {}                    # and tags
        self.pending_grids: list[int] = []                        # and the steps of progress grids
        self.outage: TrackingUnavailable | None = None           # the failure while the store is unavailable
        self.collapse_warning = ""
        self.monitor = monitor                                    # FID during training (rank 0)
        self.fid_history: list[dict[str, float]] = []
        self.best: BestSnapshot | None = None
        self.eval_seconds = 0.0
        self.cpu_share, self.cpu_threads = cpu_share, torch.get_num_threads()
        self.start_step = 0
        self.mlflow_run: Run | None = None
        self.tracker: Tracker | None = None

    def run(self, tracker: Tracker | None, outputs: TrainOutputs,
            keep_finished: Callable[[str], Path]) -> dict[str, Any]:
        if not self.ranks.is_main:  # the other ranks: rank 0's saved state, the steps, the agreement check
            state = from_main(None, self.ranks)
            if state is not None:
                self._load_state(state)
            self._prepare_step()
            self._steps()
            self._check_ranks_agree()
            return {}
        tags = {**provenance_tags(tracker.root), "anime_dcgan.run_identity": self.folder.name}
        if leased_gpus():
            tags["anime_dcgan.gpus_leased"] = leased_gpus()
        damaged: list[str] = []
        state = ckpt.load_checkpoint(self.folder, on_damaged=damaged.append)
        for message in damaged:
            print(f"train: WARNING: {message}")
        if damaged:
            print("train: " + (f"resuming from the previous checkpoint (step {state['step']}) instead"
                               if state is not None else "no good checkpoint is left: training starts afresh"))
            tags["anime_dcgan.damaged_checkpoints"] = "; ".join(damaged)[:5000]
        from_main(state, self.ranks)
        extended = ckpt.extended_run(self.folder)
        if extended is not None:
            tags |= {"anime_dcgan.extends_run": extended["mlflow_run_id"],
                     "anime_dcgan.extends_from_step": str(extended["steps"])}
        if state is not None:
            self._load_state(state)
        resumed = state is not None and state["mlflow_run_id"] != (extended or {}).get("mlflow_run_id")
        if resumed:
            tracker.mark_killed_if_running(state["mlflow_run_id"])
            tags |= {"anime_dcgan.resumed_from_step": str(self.start_step),
                     "anime_dcgan.resumed_from_run": state["mlflow_run_id"]}
        compile_failure = self._prepare_step()
        if compile_failure:
            tags["anime_dcgan.compile_failed"] = compile_failure[:5000]
        counts = [sum(p.numel() for p in m.parameters()) for m in (self.gan.generator, self.gan.discriminator)]
        print(f"train: generator {counts[0]:,} parameters, discriminator {counts[1]:,} (layer tables in "
              "models/summary.txt and the MLflow run's model_summary.txt)")
        size, steps = self.model_config.image_size, self.loop.steps
        where = (f"{self.ranks.world_size} {self.runtime.device.type} processes" if self.ranks.distributed
                 else self.runtime.device.type)
        print(f"train: {len(self.dataset):,} images of {size}x{size} on {where}, "
              f"{self.runtime.precision}{', compiled' if self.runtime.compile else ''}; "
              + (f"resuming at step {self.start_step} of {steps}" if resumed
                 else f"continuing from step {self.start_step} to {steps}" if self.start_step else f"{steps} steps"))

        with tracker.start_run(run_name(), tags) as run:
            self.tracker, self.mlflow_run = tracker, run
            run.log_params(self.params.model_dump())
            run.log_params({"lr_generator": self.optim.lr_g, "lr_discriminator": self.optim.lr_d,
                            "runtime.device": self.runtime.device.type, "runtime.precision": self.runtime.precision,
                            "runtime.compile": self.runtime.compile, "runtime.cpu_kernels": self.runtime.cpu_kernels,
                            "runtime.step_choice": self.calibration.source, "runtime.world_size": self.ranks.world_size,
                            "data.n_images": len(self.dataset),
                            **{f"calibration.{label}_images_per_s": rate
                               for label, rate in self.calibration.images_per_second.items()}})
            run.log_text(self.summaries, "model_summary.txt")
            self._log_augmentation_picture(run)
            run.log_dataset(self.dataset_record, "training")
            # the resumed or extended run carries the whole curve, not only the part after the restart
            run.log_metrics((row["step"], _metrics_only(row)) for row in self.history)
            run.log_metrics((row["step"], self._fid_metrics(row)) for row in self.fid_history)
            with tracker.system_metrics(run.run_id):
                seconds = self._steps()
                digests = self._check_ranks_agree()
                summary = self._export(outputs, seconds, digests)
            try:
                keep_finished(run.run_id)  # the final state, for a longer run of the same lineage
            except OSError as exc:  # the models are out: only a later, longer run would miss it
                print(f"train: WARNING: the final state was not kept for longer runs ({exc}); a longer run of "
                      "these parameters will train from step 0")
            return summary

    def _log_augmentation_picture(self, run: Run) -> None:
        """What D sees of the real data, when it is augmented: 32 real images (rows 1-4) and the same
        as a step augments them (rows 5-8), drawn from a generator of their own so that the
        training's random stream is the same with or without the picture."""
        if self.gan.augment is None and not self.optim.mirror:
            return
        generator = torch.Generator(self.runtime.device).manual_seed(self.params.seed)
        real = normalise(self.dataset[:GRID_SIZE // 2])                    # (32, 3, S, S)
        seen = mirror(real, generator) if self.optim.mirror else real
        if self.gan.augment is not None:
            seen = self.gan.augment(seen, generator)
        picture = self.folder / "augmentations.png"
        save_png(image_grid(to_uint8(torch.cat((real, seen))).cpu()), picture)
        run.log_artifact(picture, "images")
        print(f"train: D sees augmented real images (augment {self.optim.augment}, augment_p "
              f"{self.optim.augment_p}, mirror {self.optim.mirror}): images/augmentations.png in the MLflow run")

    def _load_state(self, state: dict[str, Any]) -> None:
        gan = self.gan
        gan.generator.load_state_dict(state["generator"])
        gan.discriminator.load_state_dict(state["discriminator"])
        gan.ema.load_state_dict(state["ema"])
        gan.opt_g.load_state_dict(state["opt_g"])
        gan.opt_d.load_state_dict(state["opt_d"])
        own = state["ranks"][self.ranks.rank] if self.ranks.distributed else state
        ckpt.restore_rng_state(own["rng"])
        self.interval.total.copy_(own["interval_total"])
        self.start_step, self.history = state["step"], state["history"]
        self.interval.count = state["interval_count"]
        self.fid_history, self.best = state["fid_history"], BestSnapshot.from_state(state["best"])
        self.collapse_warning = state["collapse_warning"]

    def _prepare_step(self) -> str:
        """Set the networks' view for the steps (networks_for_steps). A compiled step of one process is
        first warmed up: a few steps on the real state, then undone (weights, optimisers, EMA,
        BatchNorm statistics and every RNG restored), so that a compiler or CUDA graph failure shows
        here and training goes on eagerly instead, exactly as an eager run. Returns that failure, or ""."""
        self.step_gan = networks_for_steps(self.gan, self.runtime, self.ranks)
        if not self.runtime.compile or self.ranks.distributed:  # a failing rank of several stops the job
            return ""
        gan = self.gan
        networks = {"generator": gan.generator, "discriminator": gan.discriminator, "ema": gan.ema,
                    "opt_g": gan.opt_g, "opt_d": gan.opt_d}
        saved = copy.deepcopy({name: part.state_dict() for name, part in networks.items()})
        rng = ckpt.capture_rng_state()
        failure = ""
        try:
            for _ in range(COMPILE_WARM_UP_STEPS):
                self._one_step(self.step_gan, self.start_step + 1)
        except Exception as exc:  # whatever the compiler or the graph capture raised: the eager step decides
            failure = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
        for name, part in networks.items():
            part.load_state_dict(saved[name])
        ckpt.restore_rng_state(rng)
        if failure:
            print(f"train: WARNING: the compiled step failed ({failure[:300]}); training goes on eagerly "
                  "(MLflow tag anime_dcgan.compile_failed)")
            self.runtime = dataclasses.replace(self.runtime, compile=False)
            self.step_gan = networks_for_steps(self.gan, self.runtime, self.ranks)
        return failure

    def _one_step(self, step_gan: Gan, step: int) -> torch.Tensor:
        """One train_step on freshly drawn batch indices and noise; returns its (6,) STEP_METRICS."""
        begin_step(self.runtime)
        indices, z, targets = draw_step_inputs(len(self.dataset), self.rank_batch_size, self.model_config.nz,
                                               self.optim.label_noise, self.runtime.device)
        return train_step(step_gan, self.dataset, indices, z, targets, self.runtime.autocast(),
                          ema_decay_at(step, self.optim.ema_decay))

    def _steps(self) -> float:
        """Train from start_step to the last step; returns the seconds it took."""
        loop, runtime = self.loop, self.runtime
        z_fixed = fixed_noise(self.model_config.nz, self.params.seed, runtime.device)
        with torch.no_grad():
            real_diversity = float(normalise(self.dataset[:GRID_SIZE]).std(dim=0).mean())
        step_gan = self.step_gan
        bar = tqdm(total=loop.steps, initial=self.start_step, desc="train", unit="step", disable=not self.progress)
        main = self.ranks.is_main
        if self.start_step == 0 and main:  # the untrained generator: the UI's image slider opens on a picture
            self._progress_grid(0, z_fixed, real_diversity)
        if self.cpu_share is not None and main:
            self.pending.append((self.start_step, {"cpu_threads": self.cpu_threads}))
        started = time.perf_counter()
        for step in range(self.start_step + 1, loop.steps + 1):
            self.interval.add(self._one_step(step_gan, step))
            bar.update()
            last = step == loop.steps
            if step % loop.log_every == 0 or last:
                row = {"step": step, **self._read_interval(step)}
                self.history.append(row)
                self.pending.append((step, _metrics_only(row)))
                self._share_cores(step)
                bar.set_postfix(d=f"{row['loss_d_real'] + row['loss_d_fake']:.3f}", g=f"{row['loss_g']:.3f}")
            grid_due = step % loop.sample_every == 0 or last
            if grid_due and main:
                self._progress_grid(step, z_fixed, real_diversity)
            if self.monitor is not None and step % loop.eval_every == 0:  # never at other steps: see _score
                self._score(step)
            if step % loop.checkpoint_every == 0 or last:
                self._check_finite(step)
                self._save_checkpoint(step)
            if grid_due and not last and main:  # MLflow only after the checkpoint; the last step's goes with the export
                self._send_to_mlflow()
        bar.close()
        return time.perf_counter() - started

    def _fid_metrics(self, row: dict[str, float]) -> dict[str, float]:
        label = count_label(self.params.eval_samples)
        return {f"train_fid_{label}": row["fid"], f"train_kid_{label}": row["kid"]}

    def _score(self, step: int) -> None:
        """FID/KID of the generator as exported at this step; keeps it when it is the best so far.
        Only at multiples of eval_every, so a run extended from a shorter one scores the same steps as
        one trained from scratch."""
        started = time.perf_counter()
        generator = exported_generator(self.gan.ema, self.optim.batch_size, self.params.seed)
        score = self.monitor.score(generator, step)
        self.fid_history.append(score.row())
        self.pending.append((step, self._fid_metrics(score.row())))
        if self.best is None or score.fid < self.best.score.fid:
            self.best = BestSnapshot.of(score, generator)
        self.eval_seconds += time.perf_counter() - started
        best = self.best.score
        tqdm.write(f"train: step {step}: FID {score.fid:.2f}, KID {score.kid:.4f} ({self.params.eval_samples} samples); "
                   + ("the best so far" if best is score else f"the best is step {best.step} (FID {best.fid:.2f})"))

    def _share_cores(self, step: int) -> None:
        """Follow the CPU share as other trainings start and end; the thread count is an MLflow metric by step."""
        threads = _take_cpu_share(self.cpu_share, self.cpu_threads, tqdm.write)  # a line of its own beside the bar
        if threads != self.cpu_threads and self.ranks.is_main:
            self.pending.append((step, {"cpu_threads": threads}))
        self.cpu_threads = threads

    def _send_to_mlflow(self, final: bool = False) -> None:
        """Send the pending grids, metrics and tags; while the store is unavailable they wait. With
        `final`, wait for the store up to tracking_wait_s(), then raise TrackingUnavailable."""
        deadline = time.monotonic() + tracking_wait_s()
        while True:
            if self.outage is None or self.tracker.answers():
                try:
                    self._send_pending()
                except TrackingUnavailable as exc:
                    if self.outage is None:
                        print(f"train: WARNING: {exc}; training goes on, and its metrics and progress grids are "
                              "sent when the store answers again", flush=True)
                    self.outage = exc
                else:
                    if self.outage is not None:
                        self.outage = None
                        print("train: MLflow answers again: the metrics and grids kept meanwhile are sent", flush=True)
                    return
            if not final:
                return
            if time.monotonic() >= deadline:
                raise TrackingUnavailable(f"{self.outage} (still, after waiting {tracking_wait_s():.0f} s at the "
                                          "end of training)")
            time.sleep(1)

    def _send_pending(self) -> None:
        run = self.mlflow_run
        while self.pending_grids:
            step = self.pending_grids[0]
            run.log_image(load_png(self.folder / "progress" / f"step_{step:06d}.png"), key="progress", step=step)
            self.pending_grids.pop(0)
        run.send_metrics(self.pending)
        if self.pending_tags:
            run.set_tags(self.pending_tags)
            self.pending_tags = {}

    def _read_interval(self, step: int) -> dict[str, float]:
        try:
            return self.interval.read(step)
        except DivergenceError as exc:
            saved = ckpt.load_checkpoint(self.folder)
            kept = (f"the last good checkpoint (step {saved['step']}) is kept in {self.folder}"
                    if saved else "no checkpoint had been written yet")
            raise DivergenceError(
                f"training diverged: a loss became NaN or infinite at {exc}; {kept}. Rerunning the same "
                f"parameters repeats the run; lower lr (now {self.optim.lr}), raise label_noise, or use "
                "precision: fp32 to change it."
            ) from None

    def _check_finite(self, step: int) -> None:
        if self.interval.count and self.interval.any_bad():  # steps since the last log: checked before saving
            self._read_interval(step)

    def _check_ranks_agree(self) -> list[str]:
        """Every rank's weights digest (rank order); stops when they differ: DDP failed to keep them in step."""
        digests = gathered(weights_digest(self.gan.generator) + weights_digest(self.gan.discriminator), self.ranks)
        if len(set(digests)) > 1:
            raise PipelineError(f"the {self.ranks.world_size} ranks ended with different weights "
                                f"({', '.join(d[:12] for d in digests)}): DDP did not keep them in step")
        if self.ranks.distributed and self.ranks.is_main:
            print(f"train: the {len(digests)} ranks' weights agree (sha256 {digests[0][:16]}...)")
        return digests

    @torch.no_grad()
    def _progress_grid(self, step: int, z_fixed: torch.Tensor, real_diversity: float) -> None:
        """The fixed-noise grid, saved beside the checkpoints (and pending for MLflow); the collapse check."""
        G = self.gan.generator
        G.eval()  # running statistics: no side effect on training, no dependence on the grid's batch
        with self.runtime.autocast():
            samples = G(z_fixed).float()                                    # (64, 3, S, S)
        G.train()
        image = image_grid(to_uint8(samples).cpu())
        save_png(image, self.folder / "progress" / f"step_{step:06d}.png")
        self.pending_grids.append(step)
        # collapse monitor: spread of the fixed-noise samples relative to real images' spread
        diversity = float(samples.std(dim=0).mean()) / max(real_diversity, 1e-8)
        d_accuracy = self.history[-1]["d_accuracy"] if self.history else float("nan")
        self.pending.append((step, {"fixed_noise_diversity": diversity}))
        if diversity < COLLAPSE_DIVERSITY and not self.collapse_warning and step > 0:  # not the initial weights
            self.collapse_warning = (f"step {step}: fixed-noise diversity {diversity:.3f} of the real "
                                     f"data's (< {COLLAPSE_DIVERSITY}), discriminator accuracy {d_accuracy:.2f}")
            print(f"WARNING: mode collapse suspected at {self.collapse_warning}")
            self.pending_tags["collapse_warning"] = self.collapse_warning

    def _save_checkpoint(self, step: int) -> None:
        # every rank's random stream and metrics so far: the resumed ranks continue each their own
        ranks = gathered({"rng": ckpt.capture_rng_state(), "interval_total": self.interval.total.cpu()}, self.ranks)
        if not self.ranks.is_main:
            return
        gan = self.gan
        ckpt.save_checkpoint(self.folder, {
            "step": step,
            "generator": gan.generator.state_dict(), "discriminator": gan.discriminator.state_dict(),
            "ema": gan.ema.state_dict(), "opt_g": gan.opt_g.state_dict(), "opt_d": gan.opt_d.state_dict(),
            "history": self.history, "interval_total": self.interval.total.cpu(),
            "interval_count": self.interval.count, "mlflow_run_id": self.mlflow_run.run_id,
            "fid_history": self.fid_history, "best": self.best.state() if self.best else None,
            "collapse_warning": self.collapse_warning,
            **({"ranks": ranks} if self.ranks.distributed else {}),
        })

    def _export(self, outputs: TrainOutputs, seconds: float, rank_digests: list[str]) -> dict[str, Any]:
        """Write the DVC outputs of the stage and log them to MLflow."""
        self._send_to_mlflow(final=True)  # before any output: a stage that cannot log leaves none
        gan, run, steps, batch_size = self.gan, self.mlflow_run, self.loop.steps, self.optim.batch_size
        outputs.models_dir.mkdir(parents=True, exist_ok=True)
        save_model(exported_generator(gan.generator, batch_size, self.params.seed), outputs.models_dir / "generator.pt")
        save_model(exported_generator(gan.ema, batch_size, self.params.seed), outputs.models_dir / "generator_ema.pt")
        if self.best is not None:
            save_model(self.best.generator(gan.ema), outputs.models_dir / "generator_best.pt")
        save_model(gan.discriminator.eval(), outputs.models_dir / "discriminator.pt")
        atomic_write_text(outputs.models_dir / "summary.txt", self.summaries + "\n")

        with atomic_dir(outputs.progress_dir) as staging:  # the grids, kept across a resume, become the output
            for grid in sorted((self.folder / "progress").iterdir()):
                step = int(grid.stem.removeprefix("step_"))
                # an extended run's copy also holds the shorter run's last grid, which this run never drew
                if step % self.loop.sample_every == 0 or step == steps:
                    shutil.copy2(grid, staging)
        _write_losses(outputs.losses_csv, self.history)
        _write_csv(outputs.fid_csv, ["step", "fid", "kid"], self.fid_history)
        trained_steps = steps - self.start_step
        train_seconds = seconds - self.eval_seconds
        best = self.best.score if self.best else None
        extended = ckpt.extended_run(self.folder)
        summary = {
            "steps": steps,
            "resumed_from_step": self.start_step,
            "extends_mlflow_run_id": extended["mlflow_run_id"] if extended else "",
            "train_seconds": round(train_seconds, 2),  # the steps alone
            "fid_eval_seconds": round(self.eval_seconds, 2),
            "images_per_second": round(trained_steps * batch_size / train_seconds, 1) if train_seconds else 0.0,
            "eval_samples": self.params.eval_samples if self.params.eval_every else None,
            "best_step": best.step if best else None,
            "best_fid": round(best.fid, 4) if best else None,
            "best_kid": round(best.kid, 6) if best else None,
            "device": self.runtime.device.type,
            "precision": self.runtime.precision,
            "compiled": self.runtime.compile,
            "world_size": self.ranks.world_size,
            "gpus_leased": leased_gpus(),
            "cpu_threads": self.cpu_threads,  # at the end (the MLflow metric cpu_threads has every change)
            "weights_sha256": rank_digests[0],  # the same on every rank (checked)
            "cpu_kernels": self.runtime.cpu_kernels,
            "step_choice": self.calibration.source,
            "calibration_images_per_second": self.calibration.images_per_second,
            "peak_rss_mb": round(peak_rss_bytes() / 2**20),  # of the whole stage process so far
            "collapse_warning": self.collapse_warning,
            "mlflow_run_id": run.run_id,
            **{f"final_{k}": round(v, 5) for k, v in _metrics_only(self.history[-1]).items()},
        }
        atomic_write_json(outputs.summary_json, summary)
        run.log_metrics([(steps, {"images_per_second": summary["images_per_second"]})])
        if best is not None:
            run.set_tags({"anime_dcgan.best_step": str(best.step), "anime_dcgan.best_fid": f"{best.fid:.4f}"})
        run.log_artifact(outputs.models_dir, "models")
        run.log_artifact(outputs.losses_csv, "metrics")
        run.log_artifact(outputs.fid_csv, "metrics")
        model_id = self.tracker.log_generator_model(run.run_id, outputs.models_dir / "generator_ema.pt",
                                                    self.model_config.image_size, steps)
        print(f"train: the EMA generator is MLflow model {model_id} (models:/{model_id})")
        return summary


def _write_losses(path: Path, history: list[dict[str, float]]) -> None:
    _write_csv(path, ["step", *STEP_METRICS],
               [{k: (round(v, 6) if k != "step" else v) for k, v in row.items()} for row in history])


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
