"""Mode coverage on data with known attributes (the built-in synthetic faces).

A small CNN, one classification head per attribute (hair colour, eye colour, ...), is trained on the
real processed images and their labels from manifest.csv. Applied to generated images it gives the
share of each class among the samples; a generator that covers every mode reproduces the real
shares. Per attribute we report the total variation distance between the two distributions,

    tvd = 1/2 * sum_c |share_fake(c) - share_real(c)|      (0: same shares, 1: disjoint)

as ``tvd_<attribute>``, and their mean ``tvd_mean``. The classifier's validation accuracy (in the
training report) says how far its predictions can be trusted.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from anime_dcgan.errors import PipelineError
from anime_dcgan.evaluation.images import as_uint8_images
from anime_dcgan.util.io import atomic_torch_save

FILE_FORMAT = "anime_dcgan.attribute_classifier/1"


@dataclass(frozen=True)
class AttributeClassifierConfig:
    """Everything needed to rebuild the network, and what its outputs mean."""

    classes: dict[str, tuple[str, ...]]    # attribute -> class names, in output order
    channels: tuple[int, ...] = (16, 32, 64)  # one stride-2 conv block each: 64 -> 32 -> 16 -> 8 px

    @property
    def attributes(self) -> tuple[str, ...]:
        return tuple(self.classes)


class AttributeClassifier(nn.Module):
    """uint8 images (B, 3, S, S) -> {attribute: logits (B, n_classes)}; any S >= 8 (global pooling).

    Global *max* pooling: a feature answers "is there an eye of this colour anywhere", which a few
    eye pixels decide. Average pooling dilutes them among hair and background: in a trial on 5,000
    synthetic faces eye-colour accuracy was 0.30 with average pooling and 0.94 with max pooling.
    """

    def __init__(self, config: AttributeClassifierConfig):
        super().__init__()
        self.config = config
        blocks: list[nn.Module] = []
        in_channels = 3
        for out_channels in config.channels:  # each block halves the side: (B, C_out, S / 2, S / 2)
            blocks += [nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
            in_channels = out_channels
        self.trunk = nn.Sequential(*blocks, nn.AdaptiveMaxPool2d(1), nn.Flatten())  # (B, C_last)
        self.heads = nn.ModuleDict({attribute: nn.Linear(in_channels, len(names))
                                    for attribute, names in config.classes.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.float() / 127.5 - 1.0  # the project's [-1, 1] convention
        shared = self.trunk(x)            # (B, C_last)
        return {attribute: head(shared) for attribute, head in self.heads.items()}


def label_classes(labels: pd.DataFrame, attributes: list[str] | tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Sorted class names of each attribute column, after checking the columns exist and are complete."""
    missing = [attribute for attribute in attributes if attribute not in labels.columns]
    if missing:
        raise PipelineError(f"label column(s) {missing} are missing (columns present: "
                            f"{list(labels.columns)}); mode coverage needs the attribute columns that "
                            "the synthetic source writes to manifest.csv")
    empty = [attribute for attribute in attributes if labels[attribute].isna().any()]
    if empty:
        raise PipelineError(f"label column(s) {empty} have empty values; every image needs a label")
    return {attribute: tuple(sorted(labels[attribute].astype(str).unique())) for attribute in attributes}


def _class_indices(labels: pd.DataFrame, classes: dict[str, tuple[str, ...]]) -> dict[str, np.ndarray]:
    """Labels as class indices (N,) per attribute, in the order of ``classes``."""
    label_classes(labels, tuple(classes))  # same checks: columns present, no empty values
    indices = {}
    for attribute, names in classes.items():
        values = labels[attribute].astype(str)
        lookup = {name: index for index, name in enumerate(names)}
        unknown = sorted(set(values) - set(lookup))
        if unknown:
            raise PipelineError(f"label column {attribute!r} has values {unknown} that the classifier "
                                f"does not know (it knows {list(names)}); retrain it on these labels")
        indices[attribute] = values.map(lookup).to_numpy(dtype=np.int64)
    return indices


def train_attribute_classifier(images: np.ndarray | torch.Tensor, labels: pd.DataFrame,
                               attributes: list[str] | tuple[str, ...], seed: int = 0,
                               device: str | torch.device = "cpu", epochs: int = 3,
                               max_images: int = 20_000, validation_fraction: float = 0.1,
                               batch_size: int = 128, lr: float = 2e-3,
                               channels: tuple[int, ...] = (16, 32, 64),
                               progress: bool = False) -> tuple[AttributeClassifier, dict[str, Any]]:
    """Train on (a seeded subset of up to ``max_images`` of) the real images and their labels.

    Rows of ``labels`` match images by position (manifest.csv row i describes image i). A seeded
    ``validation_fraction`` is held out; the report gives the validation accuracy per attribute as
    ``val_accuracy_<attribute>`` (time and accuracy on the synthetic faces: benchmarks/inception.md).
    """
    images = as_uint8_images(images)
    if len(labels) != len(images):
        raise PipelineError(f"{len(labels)} label rows for {len(images)} images: manifest.csv and "
                            "images.npy do not match; rerun the preprocess stage")
    if not attributes:
        raise ValueError("attributes is empty: name at least one label column to classify")
    if epochs < 1 or not 0 < validation_fraction < 1:
        raise ValueError(f"need epochs >= 1 and 0 < validation_fraction < 1, got {epochs}, {validation_fraction}")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(len(images))[:max_images])  # sorted: sequential memory-map reads
    n_validation = max(1, int(round(len(chosen) * validation_fraction)))
    if len(chosen) - n_validation < 2:
        raise ValueError(f"too few images to train and validate a classifier: {len(chosen)}")
    classes = label_classes(labels, attributes)
    targets_all = _class_indices(labels, classes)
    pixels = torch.from_numpy(images[chosen])  # (n, 3, S, S) uint8, a copy (fancy indexing)
    targets = {attribute: torch.from_numpy(values[chosen]) for attribute, values in targets_all.items()}
    split = torch.from_numpy(rng.permutation(len(chosen)))
    validation, training = split[:n_validation], split[n_validation:]

    config = AttributeClassifierConfig(classes=classes, channels=tuple(channels))
    with torch.random.fork_rng(devices=[]):  # seed the initialisation without touching the caller's RNG
        torch.manual_seed(seed)
        model = AttributeClassifier(config).to(device)
    started = time.perf_counter()
    _fit(model, pixels, targets, training, epochs, batch_size, lr, seed, progress)
    seconds = time.perf_counter() - started
    predictions = predict_attributes(model, pixels[validation], device)
    report: dict[str, Any] = {
        f"val_accuracy_{a}": float((predictions[a] == targets[a][validation].numpy()).mean()) for a in attributes}
    report.update(train_images=len(training), val_images=n_validation, epochs=epochs, train_seconds=round(seconds, 1))
    return model, report


def _fit(model: AttributeClassifier, pixels: torch.Tensor, targets: dict[str, torch.Tensor], rows: torch.Tensor,
         epochs: int, batch_size: int, lr: float, seed: int, progress: bool = False) -> None:
    """Adam on the given rows of uint8 images (n, 3, S, S) and class indices (n,) per attribute,
    visited in a seeded order."""
    device = next(model.parameters()).device
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    model.train()
    bar = tqdm(total=epochs * -(-len(rows) // batch_size), desc="attribute classifier", unit="batch",
               disable=not progress, mininterval=0.5)
    for _ in range(epochs):
        for batch in rows[torch.randperm(len(rows), generator=order)].split(batch_size):
            bar.update()
            logits = model(pixels[batch].to(device))
            # summed cross-entropy over the heads: minimise sum_a -log p_a(label_a | image)
            loss = sum(F.cross_entropy(logits[a], targets[a][batch].to(device)) for a in targets)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    bar.close()
    model.eval()


def predict_attributes(classifier: AttributeClassifier, images: np.ndarray | torch.Tensor,
                       device: str | torch.device = "cpu", batch_size: int = 256) -> dict[str, np.ndarray]:
    """Predicted class index (N,) per attribute for uint8 images (N, 3, S, S)."""
    images = as_uint8_images(images)
    predictions: dict[str, list[np.ndarray]] = {attribute: [] for attribute in classifier.config.attributes}
    classifier.eval()
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.array(images[start:start + batch_size])).to(device)  # writable copy
            for attribute, logits in classifier(batch).items():
                predictions[attribute].append(logits.argmax(dim=1).cpu().numpy())
    return {attribute: np.concatenate(parts) for attribute, parts in predictions.items()}


def class_shares(indices: np.ndarray, n_classes: int) -> np.ndarray:
    """Share of each class (n_classes,) among class indices."""
    return np.bincount(indices, minlength=n_classes) / max(len(indices), 1)


def mode_coverage(classifier: AttributeClassifier, fake_images: np.ndarray | torch.Tensor,
                  real_labels: pd.DataFrame, device: str | torch.device = "cpu") -> dict[str, float]:
    """{"tvd_<attribute>": ..., "tvd_mean": ...}: predicted class shares of the generated images
    against the label shares of the real images (see the module docstring)."""
    config = classifier.config
    real_indices = _class_indices(real_labels, config.classes)
    fake_indices = predict_attributes(classifier, fake_images, device)
    result = {}
    for attribute, names in config.classes.items():
        fake_share = class_shares(fake_indices[attribute], len(names))
        real_share = class_shares(real_indices[attribute], len(names))
        result[f"tvd_{attribute}"] = float(0.5 * np.abs(fake_share - real_share).sum())
    result["tvd_mean"] = float(np.mean(list(result.values())))
    return result


def save_attribute_classifier(path: str | Path, classifier: AttributeClassifier,
                              report: dict[str, Any] | None = None) -> None:
    """Write a self-contained file (weights, class names, architecture, training report), atomically."""
    config = asdict(classifier.config)
    payload = {
        "format": FILE_FORMAT,
        "config": {"classes": {a: list(names) for a, names in config["classes"].items()},
                   "channels": list(config["channels"])},
        "state_dict": {name: tensor.cpu() for name, tensor in classifier.state_dict().items()},
        "report": dict(report or {}),
    }
    atomic_torch_save(payload, path)


def load_attribute_classifier(path: str | Path, device: str | torch.device = "cpu") -> AttributeClassifier:
    """Rebuild a classifier written by :func:`save_attribute_classifier`, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"attribute classifier {path} not found; rerun the stage that trains it")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged or foreign files
        raise PipelineError(f"{path} is not a readable attribute classifier ({exc}); rerun the stage "
                            "that trains it") from None
    if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
        raise PipelineError(f"{path} is not an attribute classifier file (expected format {FILE_FORMAT!r}); "
                            "rerun the stage that trains it")
    raw = payload["config"]
    config = AttributeClassifierConfig(classes={a: tuple(names) for a, names in raw["classes"].items()},
                                       channels=tuple(raw["channels"]))
    classifier = AttributeClassifier(config)
    classifier.load_state_dict(payload["state_dict"])
    return classifier.to(device).eval()
