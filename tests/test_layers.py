"""The layers next to the 4x4 map compute their weight gradient as a convolution over the batch:
the same values as PyTorch's own layers, in the same dtypes and layouts."""

import copy

import pytest
import torch
from torch import nn

from anime_dcgan.training.cpu_ops import Conv2dTo4x4, ConvTranspose2dFrom4x4, _ConvWithWeightGradAsConv


def _pair(transposed: bool, in_channels: int, out_channels: int, memory_format) -> tuple[nn.Module, nn.Module]:
    """(the project's layer, PyTorch's layer) with the same weights."""
    torch.manual_seed(0)
    if transposed:
        fast, plain = ConvTranspose2dFrom4x4(in_channels, out_channels), nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=False)
    else:
        fast, plain = Conv2dTo4x4(in_channels, out_channels), nn.Conv2d(in_channels, out_channels, 4, 2, 1, bias=False)
    plain.load_state_dict(fast.state_dict())
    return fast.to(memory_format=memory_format), plain.to(memory_format=memory_format)


def _forward_backward(layer: nn.Module, x: torch.Tensor, bf16: bool):
    x = x.detach().clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = layer(x)
    weights = torch.linspace(-1, 1, y.numel()).view(y.shape)  # a loss whose gradient differs per element
    (y.float() * weights).sum().backward()
    return y, x.grad, layer.weight.grad


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("batch, small", [(5, 4), (3, 8)])
def test_same_output_and_gradients_as_pytorch_layers_in_fp32(transposed, memory_format, batch, small):
    fast, plain = _pair(transposed, 6, 10, memory_format)
    size = small if transposed else 2 * small
    x = torch.randn(batch, 6, size, size).contiguous(memory_format=memory_format)
    (y, grad_x, grad_w), (y_ref, grad_x_ref, grad_w_ref) = (_forward_backward(m, x, bf16=False) for m in (fast, plain))
    assert y.shape == y_ref.shape == (batch, 10, 2 * small if transposed else small, 2 * small if transposed else small)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(grad_x, grad_x_ref)
    torch.testing.assert_close(grad_w, grad_w_ref, rtol=1e-5, atol=1e-5)
    assert grad_w.stride() == fast.weight.stride()  # in the weight's own layout


@pytest.mark.parametrize("transposed", [False, True])
def test_bf16_autocast_casts_like_pytorch_layers(transposed):
    fast, plain = _pair(transposed, 32, 16, torch.channels_last)
    size = 4 if transposed else 8
    x = torch.randn(16, 32, size, size).contiguous(memory_format=torch.channels_last)
    y, grad_x, grad_w = _forward_backward(fast, x, bf16=True)
    y_ref, grad_x_ref, grad_w_ref = _forward_backward(plain, x, bf16=True)
    _, _, grad_w_fp32 = _forward_backward(plain, x, bf16=False)
    assert (y.dtype, grad_x.dtype, grad_w.dtype) == (y_ref.dtype, grad_x_ref.dtype, grad_w_ref.dtype) == \
        (torch.bfloat16, torch.float32, torch.float32)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(grad_x, grad_x_ref)
    # both round to bf16: each within bf16 precision of the fp32 gradient
    scale = grad_w_fp32.abs().max()
    assert (grad_w - grad_w_fp32).abs().max() / scale < 2e-2
    assert (grad_w_ref - grad_w_fp32).abs().max() / scale < 2e-2


@pytest.mark.parametrize("transposed", [False, True])
def test_gradients_pass_gradcheck_in_float64(transposed):
    torch.manual_seed(0)
    x = torch.randn(3, 2, 2 if transposed else 4, 2 if transposed else 4, dtype=torch.float64, requires_grad=True)
    weight_shape = (2, 3, 4, 4) if transposed else (3, 2, 4, 4)
    weight = torch.randn(*weight_shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: _ConvWithWeightGradAsConv.apply(a, b, transposed), (x, weight))


def test_frozen_weight_and_constant_input_get_no_gradient():
    """The generator update freezes D (input gradient only); D on real images needs no input gradient."""
    layer = Conv2dTo4x4(4, 8).to(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    layer.requires_grad_(False)
    layer(x).sum().backward()
    assert x.grad is not None and layer.weight.grad is None
    layer.requires_grad_(True)
    layer(torch.randn(2, 4, 8, 8)).sum().backward()
    assert layer.weight.grad is not None


def test_the_loop_swaps_in_exactly_the_two_layers_next_to_the_4x4_map_and_nothing_changes_but_speed():
    from anime_dcgan.training.cpu_ops import use_cpu_kernels
    from anime_dcgan.training.networks import Discriminator, Generator, ModelConfig

    config = ModelConfig("article", image_size=32, nz=8, ngf=4, ndf=4)
    torch.manual_seed(0)
    generator, discriminator = Generator(config), Discriminator(config)
    plain_g, plain_d = copy.deepcopy(generator), copy.deepcopy(discriminator)
    rng_before = torch.get_rng_state()
    use_cpu_kernels(generator, discriminator)
    assert torch.equal(torch.get_rng_state(), rng_before)  # no weights drawn: training's RNG is untouched
    swapped = [(name, type(m)) for net in (generator, discriminator) for name, m in net.named_modules()
               if isinstance(m, (Conv2dTo4x4, ConvTranspose2dFrom4x4))]
    assert swapped == [("net.3", ConvTranspose2dFrom4x4), ("net.5", Conv2dTo4x4)]
    assert generator.state_dict().keys() == plain_g.state_dict().keys()

    z = torch.randn(3, 8, 1, 1)
    fake, plain_fake = generator(z), plain_g(z)                             # (3, 3, 32, 32)
    torch.testing.assert_close(fake, plain_fake)
    discriminator(fake).sum().backward()
    plain_d(plain_fake).sum().backward()
    for (name, p), q in zip(discriminator.named_parameters(), plain_d.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    for (name, p), q in zip(generator.named_parameters(), plain_g.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
