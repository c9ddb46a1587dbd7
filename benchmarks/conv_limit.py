"""The machine's convolution limit: the best GFLOP/s among the training networks' (arch dcgan) own
convolutions, each timed alone, forward + backward (data and weight gradients), at the run's batch
size and precision, on channels_last tensors as the training step holds them.

Also the step's ceiling (`step_convolution_bound`): the GFLOP/s of one training step if each of its
convolution passes ran at its own speed timed alone and nothing else took any time. No step of these
kernels can reach a larger share of the limit.
    .venv/bin/python benchmarks/conv_limit.py [--batch-size 128] [--precision auto] [--device auto]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
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
    network: str = "discriminator"  # or "generator"
    first: bool = False             # the network's first layer: its input (z, an image) needs no gradient of its own


# how often one training step (training/step.py) runs each pass of a layer, per network:
# (forward, data gradient, data gradient of the first layer, weight gradient). G runs forward once
# (D's fake update and G's update share the fake batch) and backward in G's update; D runs forward on
# the real batch, the fake batch and in G's update, its weight gradients in its own two updates, and
# its data gradients in all three (in its own updates the first layer's input is data, no gradient)
STEP_PASSES = {"generator": (1, 1, 0, 1), "discriminator": (3, 3, 1, 2)}


def convolution_shapes(model: ModelConfig, batch_size: int) -> list[Convolution]:
    """The distinct convolutions of both networks, followed through them on one image."""
    found = []
    x = torch.zeros(1, model.nz, 1, 1)                                         # z: (1, nz, 1, 1)
    with torch.no_grad():
        for network in (Generator(model), Discriminator(model)):               # G's image goes on into D
            convolutions = [m for m in network.net if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
            for layer in network.net:
                out = layer(x)
                if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                    found.append(Convolution(isinstance(layer, nn.ConvTranspose2d), (batch_size, *x.shape[1:]),
                                             tuple(layer.weight.shape), (batch_size, *out.shape[1:]),
                                             layer.stride[0], layer.padding[0],
                                             type(network).__name__.lower(), layer is convolutions[0]))
                x = out
    return list(dict.fromkeys(found))


def forward_flops(conv: Convolution) -> int:
    """2 FLOPs per multiply-add; every pixel of the smaller map (a convolution's output, a transposed
    one's input) meets the whole kernel. Each gradient takes as many."""
    batch, _, height, width = conv.input_shape if conv.transposed else conv.output_shape
    return 2 * batch * height * width * torch.Size(conv.weight_shape).numel()


def forward_backward_flops(conv: Convolution) -> int:
    return 3 * forward_flops(conv)


def step_passes(conv: Convolution) -> tuple[int, int, int]:
    """(forward, data gradient, weight gradient) passes of `conv` in one training step."""
    forward, data, first_data, weight = STEP_PASSES[conv.network]
    return forward, first_data if conv.first else data, weight


def step_convolution_flops(model: ModelConfig, batch_size: int) -> int:
    """FLOPs of every convolution pass of one training step."""
    return sum(forward_flops(conv) * sum(step_passes(conv)) for conv in convolution_shapes(model, batch_size))


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(run: Callable[[], object], device: torch.device, repeats: int = 3) -> float:
    """The fastest of `repeats` timed calls of `run`, after one untimed call (where oneDNN, cuDNN or
    NNPACK pick their kernel and size their workspace)."""
    run()
    seconds = []
    for _ in range(repeats):
        synchronise(device)
        started = time.perf_counter()
        run()
        synchronise(device)
        seconds.append(time.perf_counter() - started)
    return min(seconds)


def random_channels_last(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)


def convolution_rates(model: ModelConfig, batch_size: int, dtype: torch.dtype, device: torch.device,
                      repeats: int = 3) -> dict[Convolution, float]:
    """Each of convolution_shapes with its forward + backward GFLOP/s, the best of `repeats` timed calls."""
    rates = {}
    for conv in convolution_shapes(model, batch_size):
        x, weight = (random_channels_last(shape, dtype, device).requires_grad_()
                     for shape in (conv.input_shape, conv.weight_shape))
        grad_out = random_channels_last(conv.output_shape, dtype, device)
        op = F.conv_transpose2d if conv.transposed else F.conv2d
        seconds = best_seconds(lambda: torch.autograd.grad(op(x, weight, stride=conv.stride, padding=conv.padding),
                                                           (x, weight), grad_out), device, repeats)
        rates[conv] = forward_backward_flops(conv) / seconds / 1e9
    return rates


def pass_seconds(conv: Convolution, dtype: torch.dtype, device: torch.device, repeats: int = 3) -> tuple[float, float, float]:
    """Seconds of `conv`'s forward, data gradient and weight gradient, each timed alone (best of `repeats`)."""
    x, weight, grad_out = (random_channels_last(shape, dtype, device)
                           for shape in (conv.input_shape, conv.weight_shape, conv.output_shape))
    stride, padding = [conv.stride] * 2, [conv.padding] * 2
    op = F.conv_transpose2d if conv.transposed else F.conv2d

    def backward(mask: list[bool]) -> None:
        torch.ops.aten.convolution_backward(grad_out, x, weight, None, stride, padding, [1, 1], conv.transposed,
                                            [0, 0], 1, mask)

    forward_s = best_seconds(lambda: op(x, weight, stride=conv.stride, padding=conv.padding), device, repeats)
    data_gradient_s = best_seconds(lambda: backward([True, False, False]), device, repeats)
    weight_gradient_s = best_seconds(lambda: backward([False, True, False]), device, repeats)
    return forward_s, data_gradient_s, weight_gradient_s


def step_convolution_bound(model: ModelConfig, batch_size: int, dtype: torch.dtype, device: torch.device,
                           repeats: int = 3) -> float:
    """GFLOP/s of one training step if each of its convolution passes ran at its speed alone and
    nothing else (normalisation, activations, losses, optimisers) took any time."""
    seconds = sum(count * pass_time
                  for conv in convolution_shapes(model, batch_size)
                  for count, pass_time in zip(step_passes(conv), pass_seconds(conv, dtype, device, repeats)))
    return step_convolution_flops(model, batch_size) / seconds / 1e9


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
    dtype, model = runtime.autocast_dtype or torch.float32, ModelConfig("dcgan")
    rates = convolution_rates(model, args.batch_size, dtype, runtime.device)
    print("\n".join(f"{rate:5.0f} GFLOP/s  {conv}" for conv, rate in rates.items()))
    limit = max(rates.values())
    bound = step_convolution_bound(model, args.batch_size, dtype, runtime.device)
    print(f"limit ({runtime.device.type}, {runtime.precision}): {limit:.0f} GFLOP/s; a training step whose "
          f"convolutions ran as fast as each does alone, with nothing else taking time: {bound:.0f} GFLOP/s, "
          f"{bound / limit:.0%} of the limit")
