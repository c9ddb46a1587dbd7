"""One training on several devices: PyTorch's DistributedDataParallel, started by torchrun.

With `devices` above 1 the train stage starts itself again through torchrun's own entry point
(`torch.distributed.run`, the code behind the `torchrun` command), one process per device; on several
machines the user runs `torchrun --nnodes ...` with the stage script on each. Either way every
process finds its rank in the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK).

The semantics, for a world of W ranks:
- `batch_size` is the global batch: each rank draws batch_size / W images and noise vectors from its
  own random stream (seeded from `seed` and its rank). DDP averages the gradients, so an update
  follows the whole batch's mean loss, as on one device.
- BatchNorm statistics stay per rank (`broadcast_buffers=False`): the discriminator's separate real
  and fake passes are the pattern that DDP's buffer broadcast breaks (pytorch#175024).
- Rank 0 alone logs to MLflow, writes progress grids, checkpoints and the stage's outputs; a
  checkpoint holds every rank's random state, and on resume rank 0 sends the state to the others.
- The world size is part of the run identity: a run never resumes at another world size.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from anime_dcgan.errors import PipelineError

# a collective that waits longer than this (a rank stuck, not dead: torchrun stops the job when one
# dies) fails instead of hanging
COLLECTIVE_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the training job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0   # the device index on this machine

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = Ranks()


def ranks_from_torchrun() -> Ranks | None:
    """The ranks torchrun gave this process, or None when it was not started by torchrun."""
    if "TORCHELASTIC_RUN_ID" not in os.environ and "LOCAL_RANK" not in os.environ:
        return None
    return Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))


def world_size_for(devices: int | str, device_type: str, visible_gpus: int) -> int:
    """The number of processes the `devices` parameter asks for on this machine."""
    if devices == "auto":
        return max(visible_gpus, 1) if device_type == "cuda" else 1
    if device_type == "cuda" and devices > visible_gpus:
        raise PipelineError(f"devices: {devices} asks for more GPUs than the {visible_gpus} visible here "
                            "(CUDA_VISIBLE_DEVICES limits them when set); use devices: auto")
    if device_type == "mps" and devices > 1:
        raise PipelineError("devices: above 1 needs CUDA GPUs or the CPU (gloo); MPS has one device")
    return devices


def local_batch_size(batch_size: int, world_size: int) -> int:
    if batch_size % world_size:
        raise PipelineError(f"batch_size: {batch_size} does not split evenly across {world_size} devices "
                            f"(each rank takes batch_size / devices images); use a multiple of {world_size}")
    return batch_size // world_size


def launch(world_size: int, script: Path) -> None:
    """Run `script` in `world_size` processes on this machine through torchrun, and wait for them.
    One failed process stops the others (no restarts: a rerun of the stage resumes its checkpoint)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    print(f"train: starting {world_size} processes with torchrun (one per device)", flush=True)
    try:
        run(parse_args(["--standalone", f"--nproc-per-node={world_size}", "--max-restarts=0",
                        str(script)]))
    except ChildFailedError as exc:
        failures = "; ".join(f"rank {rank}: {_describe(failure)}" for rank, failure in sorted(exc.failures.items()))
        raise PipelineError(f"a training process failed ({failures}); the others were stopped. Rerun "
                            "the stage: it resumes from the last checkpoint") from None


def _describe(failure: Any) -> str:
    if failure.exitcode < 0:
        return f"killed by signal {-failure.exitcode}"
    return f"exit code {failure.exitcode}"


@contextlib.contextmanager
def process_group(ranks: Ranks, device: torch.device) -> Iterator[None]:
    """The job's process group (NCCL on CUDA, gloo on the CPU) while the block runs."""
    if not ranks.distributed:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=ranks.rank,
                            world_size=ranks.world_size, timeout=COLLECTIVE_TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """The seed of one rank's batch and noise stream: distinct per rank, fixed by `seed`."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def from_main(value: Any, ranks: Ranks) -> Any:
    """Rank 0's `value`, on every rank (any picklable object)."""
    if not ranks.distributed:
        return value
    box = [value if ranks.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gathered(value: Any, ranks: Ranks) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if not ranks.distributed:
        return [value]
    values: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(values, value)
    return values


def sum_across_ranks(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """In place: the sum of `tensor` over the ranks."""
    if ranks.distributed:
        dist.all_reduce(tensor)
    return tensor


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's parameters (exact bytes): equal on every rank when DDP kept them in step."""
    digest = hashlib.sha256()
    for name, value in module.state_dict().items():
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue  # BatchNorm statistics stay per rank by design
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
