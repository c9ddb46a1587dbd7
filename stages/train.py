"""DVC stage `train`: processed images + training params -> models/, progress/, metrics/train.json,
metrics/losses.csv; one MLflow run. Resumes its own checkpoint after a kill.

On a machine with GPUs it first leases the ones it trains on (leases.py: `dvc queue start -j N`
then spreads its trainings over the GPUs instead of piling them onto the first); on the CPU it
trains on its share of the cores. With `devices` above 1 it starts itself again in one process per
device through torchrun (training/distributed.py); started by torchrun (`torchrun ...
stages/train.py`, also across machines) it is one rank of the job, on the devices its launcher gave it."""

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from anime_dcgan import paths
from anime_dcgan.device import pick_device
from anime_dcgan.leases import CpuShare, cpu_share, gpu_lease, visible_gpus
from anime_dcgan.params import Params, load_params
from anime_dcgan.tracking import Tracker
from anime_dcgan.training.distributed import (
    SINGLE,
    Ranks,
    launch,
    local_batch_size,
    process_group,
    ranks_from_torchrun,
    world_size_for,
)
from anime_dcgan.training.loop import TrainOutputs, train
from anime_dcgan.util.stage import run_stage


def main() -> None:
    params = load_params()
    ranks = ranks_from_torchrun()
    if ranks is not None:
        return train_rank(params, ranks)
    with gpus_leased(params):  # before anything initialises CUDA, which reads CUDA_VISIBLE_DEVICES once
        device = pick_device(params.device)
        gpus = torch.cuda.device_count() if device.type == "cuda" else 0
        world_size = world_size_for(params.devices, device.type, gpus)
        local_batch_size(params.batch_size, world_size)  # refused here, before any process starts
        if world_size > 1:
            return launch(world_size, Path(__file__))  # torchrun gives its workers one thread each on the CPU
        # a thread count the user chose is kept; otherwise concurrent trainings split the cores
        shared = device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ
        with cpu_share() if shared else nullcontext() as share:
            train_rank(params, SINGLE, share)


@contextmanager
def gpus_leased(params: Params) -> Iterator[None]:
    """While inside, the GPUs this training runs on are leased to it (all visible ones for
    `devices: auto`) and are the only ones CUDA shows it; on a machine without GPUs, nothing."""
    visible = visible_gpus() if params.device in ("auto", "cuda") else []
    if not visible:
        yield
        return
    with gpu_lease(len(visible) if params.devices == "auto" else params.devices) as leased:
        print(f"train: leased GPU {', '.join(leased)} (of {', '.join(visible)})", flush=True)
        yield


def train_rank(params: Params, ranks: Ranks, share: CpuShare | None = None) -> None:
    device = pick_device(params.device)
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)  # one GPU per process of this machine
    with process_group(ranks, device):
        tracker = Tracker() if ranks.is_main else None
        outputs = TrainOutputs(models_dir=paths.MODELS_DIR, progress_dir=paths.PROGRESS_DIR,
                               losses_csv=paths.LOSSES_CSV, fid_csv=paths.FID_CSV, summary_json=paths.TRAIN_JSON)
        summary = train(params, paths.PROCESSED_IMAGES, outputs, tracker, paths.repo_root() / paths.CHECKPOINT_ROOT,
                        ranks=ranks, cpu_share=share, reference=paths.REFERENCE_INCEPTION)
    if ranks.is_main:
        best = (f"; the best FID during training at step {summary['best_step']} ({summary['best_fid']:.2f}, "
                "models/generator_best.pt)" if summary["best_step"] is not None else "")
        print(f"train: {summary['steps']} steps at {summary['images_per_second']} images/s{best}; "
              f"MLflow run {summary['mlflow_run_id']}")


if __name__ == "__main__":
    run_stage("train", main)
