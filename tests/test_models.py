import dataclasses

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from anime_dcgan.training.networks import Discriminator, Generator, ModelConfig, load_model, model_summary, save_model


@pytest.mark.parametrize("arch", ["article", "dcgan"])
@pytest.mark.parametrize("image_size", [16, 32, 64])
def test_shapes(arch, image_size):
    config = ModelConfig(arch=arch, image_size=image_size, nz=20, ngf=8, ndf=8)
    z = torch.randn(5, 20, 1, 1)
    images = Generator(config)(z)
    assert images.shape == (5, 3, image_size, image_size)
    assert images.min() >= -1 and images.max() <= 1  # tanh output
    assert Discriminator(config)(images).shape == (5, 1)


def test_article_architecture_matches_the_article():
    """512@4x4 -> 256@8x8 -> 128@16x16 -> 64@32x32 -> extra 3x3 conv (64) -> 3@64x64."""
    generator = Generator(ModelConfig("article"))
    shapes, x = [], torch.randn(2, 100, 1, 1)
    for layer in generator.net:
        x = layer(x)
        if isinstance(layer, (torch.nn.ConvTranspose2d, torch.nn.Conv2d)):
            kind = "ConvTranspose2d" if isinstance(layer, torch.nn.ConvTranspose2d) else "Conv2d"
            shapes.append((kind, tuple(x.shape[1:])))
    assert shapes == [
        ("ConvTranspose2d", (512, 4, 4)), ("ConvTranspose2d", (256, 8, 8)), ("ConvTranspose2d", (128, 16, 16)),
        ("ConvTranspose2d", (64, 32, 32)), ("Conv2d", (64, 32, 32)), ("ConvTranspose2d", (3, 64, 64)),
    ]
    norms = [m for m in generator.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.5 for m in norms)
    assert all(isinstance(m, torch.nn.LeakyReLU) and m.negative_slope == 0.2
               for m in generator.net if isinstance(m, (torch.nn.LeakyReLU, torch.nn.ReLU)))

    discriminator = Discriminator(ModelConfig("article"))
    convs = [m.out_channels for m in discriminator.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [64, 128, 256, 512]
    assert isinstance(discriminator.net[-1], torch.nn.Linear) and discriminator.net[-1].in_features == 512 * 16
    # BatchNorm on all but the first convolution
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in discriminator.modules()) == 3


def test_dcgan_architecture_is_pytorch_examples():
    generator = Generator(ModelConfig("dcgan"))
    assert any(isinstance(m, torch.nn.ReLU) for m in generator.modules())
    assert not any(isinstance(m, torch.nn.Conv2d) for m in generator.modules())  # no extra conv
    weights = torch.cat([m.weight.flatten() for m in generator.modules() if isinstance(m, torch.nn.ConvTranspose2d)])
    assert abs(weights.std().item() - 0.02) < 0.002  # N(0, 0.02) init
    # parameter counts of pytorch/examples' dcgan with nz=100, ngf=ndf=64
    assert sum(p.numel() for p in generator.parameters()) == 3_576_704
    assert sum(p.numel() for p in Discriminator(ModelConfig("dcgan")).parameters()) == 2_765_568


def test_summary_lists_layers_with_shapes_and_params():
    text = model_summary(Generator(ModelConfig("article")))
    assert "ConvTranspose2d" in text and "[1, 512, 4, 4]" in text and "[1, 3, 64, 64]" in text
    assert "Total params" in text


@pytest.mark.parametrize("network", [Generator, Discriminator])
def test_summarising_a_network_changes_nothing_of_it(network, monkeypatch):
    # the train stage summarises the networks it then trains: the summary must leave their
    # BatchNorm statistics, their device (a GPU's network must not be moved to the CPU) and the
    # random stream as they were
    model = network(ModelConfig("article"))
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    rng = torch.get_rng_state()
    moved = []
    original_to = torch.nn.Module.to

    def recording_to(self, *args, **kwargs):
        moved.append(self)
        return original_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", recording_to)
    model_summary(model)
    assert not any(module is model for module in moved), "the summary moved the network itself"
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training


def test_saved_model_loads_without_params(tmp_path):
    config = ModelConfig("dcgan", image_size=32, nz=10, ngf=8, ndf=8)
    generator = Generator(config).eval()
    save_model(generator, tmp_path / "g.pt")
    loaded = load_model(tmp_path / "g.pt")
    assert loaded.config == config and not loaded.training
    z = torch.randn(3, 10, 1, 1)
    assert torch.equal(loaded(z), generator(z))
    assert list(tmp_path.iterdir()) == [tmp_path / "g.pt"]  # no temporary file left


def test_spectral_discriminator_has_no_batchnorm_and_keeps_every_weight_at_spectral_norm_one(tmp_path):
    config = ModelConfig("article", image_size=16, nz=8, ngf=4, ndf=8, d_norm="spectral")
    torch.manual_seed(0)
    discriminator = Discriminator(config)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in discriminator.modules())
    weighted = [m for m in discriminator.net if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weighted) == 3 and all(parametrize.is_parametrized(m, "weight") for m in weighted)
    for _ in range(200):  # one power iteration per training forward pass: enough to converge on any seed tried
        discriminator(torch.randn(4, 3, 16, 16))
    for layer in weighted:
        largest_singular_value = torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2)
        assert largest_singular_value.item() == pytest.approx(1.0, abs=0.01)

    # saved and loaded: the same function, the power iteration's vectors included
    discriminator.eval()
    save_model(discriminator, tmp_path / "d.pt")
    loaded = load_model(tmp_path / "d.pt")
    assert loaded.config == config
    images = torch.randn(3, 3, 16, 16)
    assert torch.equal(loaded(images), discriminator(images))
    # the default keeps BatchNorm; a model saved before d_norm existed loads as one
    batch_config = dataclasses.replace(config, d_norm="batch")
    assert any(isinstance(m, nn.BatchNorm2d) for m in Discriminator(batch_config).modules())
    old = torch.load(tmp_path / "d.pt", weights_only=True)
    old["config"] = {k: v for k, v in dataclasses.asdict(batch_config).items() if k != "d_norm"}
    old["state_dict"] = Discriminator(batch_config).state_dict()
    torch.save(old, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").config.d_norm == "batch"


def test_invalid_image_size_is_refused():
    with pytest.raises(ValueError, match="power of two"):
        Generator(ModelConfig(image_size=48))
