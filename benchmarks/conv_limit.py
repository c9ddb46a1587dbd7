"""The machine's convolution limit: the best GFLOP/s among the training networks' (arch dcgan) own
convolutions, each timed alone, forward + backward (data and weight gradients), at the run's batch
size and precision, on channels_last tensors as the training step holds them.
    .venv/bin/python benchmarks/conv_limit.py [--batch-size 128] [--precision auto] [--device auto]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from anime_dcgan.device import pick_runtime
from anime_dcgan.training.networks import Discriminator, Generator, ModelConfig


@dataclass(frozen=True)
class Convolution:
    transposed: bool
    input_shape: tuple[int, ...]    # (B, C_in, H, W)
    weight_shape: tuple[int, ...]   # (C_out, C_in, k, k); (C_in, C_out, k, k) when transposed
    output_shape: tuple[int, ...]   # (B, C_out, H', W')
    stride: int
    padding: int


def convolution_shapes(model: ModelConfig, batch_size: int) -> list[Convolution]:
    """The distinct convolutions of both networks, followed through them on one image."""
    found = []
    x = torch.zeros(1, model.nz, 1, 1)                                         # z: (1, nz, 1, 1)
    with torch.no_grad():
        for layer in [*Generator(model).net, *Discriminator(model).net]:       # G's image goes on into D
            out = layer(x)
            if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                found.append(Convolution(isinstance(layer, nn.ConvTranspose2d), (batch_size, *x.shape[1:]),
                                         tuple(layer.weight.shape), (batch_size, *out.shape[1:]),
                                         layer.stride[0], layer.padding[0]))
            x = out
    return list(dict.fromkeys(found))


def forward_backward_flops(conv: Convolution) -> int:
    """2 FLOPs per multiply-add; each gradient takes as many as the forward, in which every pixel of the
    smaller map (a convolution's output, a transposed one's input) meets the whole kernel."""
    batch, _, height, width = conv.input_shape if conv.transposed else conv.output_shape
    return 3 * 2 * batch * height * width * torch.Size(conv.weight_shape).numel()


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def convolution_rates(model: ModelConfig, batch_size: int, dtype: torch.dtype, device: torch.device,
                      repeats: int = 3) -> dict[Convolution, float]:
    """Each of convolution_shapes with its forward + backward GFLOP/s, the best of `repeats` timed calls."""
    def tensor(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)

    rates = {}
    for conv in convolution_shapes(model, batch_size):
        x, weight = (tensor(shape).requires_grad_() for shape in (conv.input_shape, conv.weight_shape))
        grad_out = tensor(conv.output_shape)
        op = F.conv_transpose2d if conv.transposed else F.conv2d
        seconds = []
        for _ in range(repeats + 1):  # the first call, untimed, is where oneDNN/cuDNN pick their kernel
            synchronise(device)
            started = time.perf_counter()
            torch.autograd.grad(op(x, weight, stride=conv.stride, padding=conv.padding), (x, weight), grad_out)
            synchronise(device)
            seconds.append(time.perf_counter() - started)
        rates[conv] = forward_backward_flops(conv) / min(seconds[1:]) / 1e9
    return rates


def conv_limit(model: ModelConfig, batch_size: int, dtype: torch.dtype, device: torch.device, repeats: int = 3) -> float:
    """The machine's convolution limit, in GFLOP/s."""
    return max(convolution_rates(model, batch_size, dtype, device, repeats).values())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args()
    runtime = pick_runtime(args.device, args.precision, False)
    rates = convolution_rates(ModelConfig("dcgan"), args.batch_size, runtime.autocast_dtype or torch.float32,
                              runtime.device)
    print("\n".join(f"{rate:5.0f} GFLOP/s  {conv}" for conv, rate in rates.items()))
    print(f"limit ({runtime.device.type}, {runtime.precision}): {max(rates.values()):.0f} GFLOP/s")
