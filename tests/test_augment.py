"""The augmentations of what the discriminator sees (training/augment.py): shapes, value ranges,
gradients through them, identity at probability 0, reproducible draws."""

import pytest
import torch

from anime_dcgan.training.augment import (
    CUTOUT_RATIO,
    TRANSLATION_RATIO,
    augmentation,
    colour,
    cutout,
    diffaugment,
    mirror,
    translation,
)

TRANSFORMS = {"colour": colour, "translation": translation, "cutout": cutout, "diffaugment": diffaugment}


def images(batch: int = 16, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, size, size, generator=generator) * 2 - 1).contiguous(
        memory_format=torch.channels_last)                                   # (B, 3, S, S) in [-1, 1]


def seeded(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_each_transform_keeps_the_shape_and_changes_the_images(name):
    x = images()
    out = TRANSFORMS[name](x, 1.0, seeded())
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()
    assert not torch.equal(out, x)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_probability_zero_is_the_identity(name):
    x = images()
    assert torch.equal(TRANSFORMS[name](x, 0.0, seeded()), x)
    assert augmentation("diffaugment", 0.0) is None and augmentation("none", 1.0) is None


@pytest.mark.parametrize("name", TRANSFORMS)
def test_gradients_flow_through_every_transform(name):
    x = images().requires_grad_(True)
    TRANSFORMS[name](x, 1.0, seeded()).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_the_same_generator_draws_the_same_augmentation():
    x = images()
    assert torch.equal(diffaugment(x, 1.0, seeded(7)), diffaugment(x, 1.0, seeded(7)))
    assert not torch.equal(diffaugment(x, 1.0, seeded(7)), diffaugment(x, 1.0, seeded(8)))


def test_colour_moves_each_image_mean_by_the_brightness_only():
    # saturation keeps each pixel's channel mean and contrast the image mean: only brightness,
    # U(-0.5, 0.5), moves the mean
    x = images(batch=256)
    shift = colour(x, 1.0, seeded()).mean(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3))
    assert shift.abs().max() <= 0.5 + 1e-5
    assert shift.min() < -0.3 and shift.max() > 0.3


def test_translation_moves_whole_images_by_at_most_an_eighth_and_pads_with_zero():
    size = 32
    x = torch.full((64, 3, size, size), -1.0)
    x[:, :, size // 2, size // 2] = 1.0  # one bright pixel in the middle of each image
    out = translation(x, 1.0, seeded())
    assert set(out.unique().tolist()) <= {-1.0, 0.0, 1.0}
    reach = int(size * TRANSLATION_RATIO + 0.5)
    moves = set()
    for image in out:
        [[row, column]] = (image[0] == 1.0).nonzero().tolist()
        moves.add((row - size // 2, column - size // 2))
    assert all(abs(dy) <= reach and abs(dx) <= reach for dy, dx in moves)
    assert len(moves) > 10  # shifts differ from image to image


def test_cutout_zeroes_one_square_of_half_the_size_at_most():
    size = 32
    x = torch.ones(64, 3, size, size)
    out = cutout(x, 1.0, seeded())
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    zeroed = (out[:, 0] == 0).sum(dim=(1, 2))                             # (B,) pixels cut per image
    side = int(size * CUTOUT_RATIO + 0.5)
    assert (zeroed <= side * side).all() and (zeroed > 0).all()
    assert (zeroed == side * side).any()  # a square clear of the borders has its whole area
    assert torch.equal(out[:, 0], out[:, 1])  # the same square in every channel


def test_mirror_flips_about_half_the_images_and_nothing_else():
    x = images(batch=200)
    out = mirror(x, seeded())
    flipped = torch.tensor([torch.equal(o, i.flip(2)) for o, i in zip(out, x)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert (flipped | kept).all()
    assert 60 < int(flipped.sum()) < 140
