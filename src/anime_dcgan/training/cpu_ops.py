"""CPU-only kernels the training loop swaps into the plain networks of networks.py (as stylegan2
keeps conv2d_gradfix in its ops/): the stride-2 layers next to the 4x4 map, with a faster weight
gradient.

Both networks have one such layer: the discriminator's last downsampling convolution (8x8 -> 4x4)
and the generator's first upsampling one (4x4 -> 8x8). Their weight gradient sums over the batch a
product of an 8x8 map with a 4x4 map; oneDNN's backward-weights kernels run it at half the speed of
its forward convolutions on some CPUs (benchmarks/train_throughput.md). The same sum is a forward
convolution with the batch as the channels: the 8x8 map, transposed to (C, B, 8, 8), is the input and
the 4x4 map, transposed to (C', B, 4, 4), is the kernel, dilated by the stride 2. For the larger maps
of the other layers it is slower, so they keep oneDNN's kernels. The swapped layers keep their
weights and compute the same values; on other devices they run PyTorch's own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STRIDE, PADDING = 2, 1


def weight_grad_as_conv(large: torch.Tensor, small: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """sum over b, i, j of small[b, :, i, j] x large[b, :, 2i + ki - 1, 2j + kj - 1]: a stride-2,
    padding-1 4x4 convolution's weight gradient, with large = its input and small = the gradient of
    its output; with the two swapped, a transposed convolution's. (B, C, 2h, 2w), (B, C', h, w) ->
    (C', C, 4, 4) in `memory_format`."""
    # NCHW: from channels_last maps, these transposes copy faster than to channels_last, and the
    # convolution runs as fast
    inputs = large.transpose(0, 1).contiguous()                                      # (C, B, 2h, 2w)
    kernel = small.transpose(0, 1).contiguous()                                      # (C', B, h, w)
    grad = F.conv2d(inputs, kernel, padding=PADDING, dilation=STRIDE)                # (C, C', 4, 4)
    channels, other_channels = grad.shape[:2]
    if memory_format == torch.channels_last:
        # (C, C' * 16) -> (C' * 16, C): PyTorch copies a 2D transpose in cache-sized blocks, faster
        # than the same permutation of a 4D tensor
        rows = grad.reshape(channels, -1).t().contiguous()                           # (C' * 16, C)
        return rows.view(other_channels, 4, 4, channels).permute(0, 3, 1, 2)         # (C', C, 4, 4)
    return grad.transpose(0, 1).contiguous(memory_format=memory_format)              # (C', C, 4, 4)


class _ConvWithWeightGradAsConv(torch.autograd.Function):
    """A stride-2, padding-1, bias-free convolution (or transposed convolution) whose backward
    computes the weight gradient with `weight_grad_as_conv`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, transposed: bool) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.transposed = transposed
        conv = F.conv_transpose2d if transposed else F.conv2d
        return conv(x, weight, stride=STRIDE, padding=PADDING)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:  # the data gradient is the opposite convolution
            opposite = F.conv2d if ctx.transposed else F.conv_transpose2d
            grad_x = opposite(grad_out, weight, stride=STRIDE, padding=PADDING)
        if ctx.needs_input_grad[1]:
            # in the weight's own layout: autograd would otherwise copy it again, in fp32
            layout = torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last) \
                else torch.contiguous_format
            large, small = (grad_out, x) if ctx.transposed else (x, grad_out)
            grad_weight = weight_grad_as_conv(large, small, layout)
        return grad_x, grad_weight, None


def _conv_on_cpu(x: torch.Tensor, weight: torch.Tensor, transposed: bool) -> torch.Tensor:
    # autocast does not reach into a custom Function's backward: cast as autocast would (its list
    # puts convolutions in the low precision), then run the Function in that one dtype
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    with torch.autocast("cpu", enabled=False):
        return _ConvWithWeightGradAsConv.apply(x.to(dtype), weight.to(dtype), transposed)


class _WeightGradAsConvOnCpu:
    """The forward both layers share: PyTorch's own on other devices, the Function on the CPU
    (`transposed` is set by PyTorch's convolution classes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        return _conv_on_cpu(x, self.weight, self.transposed)


class Conv2dTo4x4(_WeightGradAsConvOnCpu, nn.Conv2d):
    """4x4 kernel, stride 2, padding 1, no bias: (B, C, 8, 8) -> (B, C', 4, 4)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 4, STRIDE, PADDING, bias=False)


class ConvTranspose2dFrom4x4(_WeightGradAsConvOnCpu, nn.ConvTranspose2d):
    """4x4 kernel, stride 2, padding 1, no bias: (B, C, 4, 4) -> (B, C', 8, 8)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 4, STRIDE, PADDING, bias=False)


def _is_stride2_4x4(layer: nn.Module, cls: type[nn.Module]) -> bool:
    return (type(layer) is cls and layer.kernel_size == (4, 4) and layer.stride == (STRIDE, STRIDE)
            and layer.padding == (PADDING, PADDING) and layer.bias is None)


def use_cpu_kernels(generator: nn.Module, discriminator: nn.Module) -> None:
    """Swap the two layers next to the 4x4 map for their CPU versions, in place: the generator's
    first stride-2 transposed convolution (4x4 -> 8x8) and the discriminator's last stride-2
    convolution (8x8 -> 4x4). Only the class changes (no new weights, no random numbers drawn), so
    optimisers, EMA copies and saved state dicts are unaffected."""
    upsampling = [m for m in generator.modules() if _is_stride2_4x4(m, nn.ConvTranspose2d)]
    downsampling = [m for m in discriminator.modules() if _is_stride2_4x4(m, nn.Conv2d)]
    if upsampling:
        upsampling[0].__class__ = ConvTranspose2dFrom4x4
    if downsampling:
        downsampling[-1].__class__ = Conv2dTo4x4
