"""The evaluate stage's visual report: one self-contained HTML page (its pictures embedded), readable
offline and inside MLflow's artifact preview, which cannot follow relative links."""

from __future__ import annotations

import base64
import html
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from anime_dcgan.util.io import atomic_dir
from anime_dcgan.util.visuals import image_grid, pairs_image, save_png

# what each metric means, shown beside its value (lower/higher = better)
_EXPLANATIONS = {
    "fid": "Fréchet Inception distance (lower is better)",
    "kid": "kernel Inception distance (lower is better)",
    "precision_k3": "share of samples inside the real manifold (quality, higher is better)",
    "recall_k3": "share of real images inside the samples' manifold (coverage, higher is better)",
    "swd": "sliced Wasserstein distance of Laplacian-pyramid patches x1e3 (lower is better)",
    "ms_ssim_fake": "MS-SSIM of random sample pairs (lower = more diverse)",
    "ms_ssim_real": "the same for real pairs: the level to compare with",
    "copy_fraction": "samples closer to a training image than 99% of real neighbours (copy alarm, ~0.01 is healthy)",
    "nn_distance_ratio": "median sample-to-real over real-to-real nearest distance (~1 healthy, << 1 copying)",
    "tvd": "total variation distance of attribute shares vs the real data (lower = modes covered)",
}


def _explain(name: str) -> str:
    for prefix, text in _EXPLANATIONS.items():
        if name.startswith(prefix):
            return text
    return ""


def loss_curves(losses: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    from matplotlib import pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for column in ("loss_d_real", "loss_d_fake", "loss_g"):
        top.plot(losses.step, losses[column], label=column)
    top.set_ylabel("BCE loss")
    top.legend()
    for column in ("d_x", "d_g_z"):
        bottom.plot(losses.step, losses[column], label=column)
    bottom.set_ylabel("mean D output")
    bottom.set_xlabel("step")
    bottom.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _embedded(path: Path) -> str:
    """An <img> source holding the picture itself."""
    kind = {".png": "png", ".gif": "gif"}.get(path.suffix, "png")
    return f"data:image/{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def write_report(folder: Path, metrics: Mapping[str, float | str], real: np.ndarray, fake: np.ndarray,
                 closest_fake: np.ndarray, closest_real: np.ndarray, losses: pd.DataFrame,
                 extra_pictures: Mapping[str, Path], header: Mapping[str, str]) -> Path:
    """folder/index.html with real vs generated grids (uint8 (64, 3, S, S) each), the closest
    sample/training-image pairs, the loss curves, the metric table and extra pictures, all embedded
    (the PNG files are kept beside it), under a header of `header`'s lines (run, link, date, parameters)."""
    with atomic_dir(folder) as staging:
        save_png(image_grid(real), staging / "real.png")
        save_png(image_grid(fake), staging / "generated.png")
        save_png(pairs_image(closest_fake, closest_real), staging / "closest_pairs.png")
        loss_curves(losses, staging / "losses.png")
        for name, path in extra_pictures.items():
            shutil.copy2(path, staging / f"{name}{path.suffix}")

        def picture(name: str, alt: str) -> str:
            return f'<img src="{_embedded(staging / name)}" alt="{html.escape(alt)}">'

        rows = "\n".join(
            f"<tr><td>{html.escape(name)}</td><td>{value:.4g}</td><td>{html.escape(_explain(name))}</td></tr>"
            if isinstance(value, float) else
            f"<tr><td>{html.escape(name)}</td><td>{html.escape(str(value))}</td><td></td></tr>"
            for name, value in metrics.items())
        about = "\n".join(
            f'<tr><td>{html.escape(name)}</td><td>'
            + (f'<a href="{html.escape(value)}">{html.escape(value)}</a>' if value.startswith("http") else html.escape(value))
            + "</td></tr>" for name, value in header.items())
        extras = "\n".join(f"<h2>{html.escape(name)}</h2>{picture(f'{name}{path.suffix}', name)}"
                           for name, path in extra_pictures.items())
        (staging / "index.html").write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>anime-dcgan evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}} img{{image-rendering:pixelated;max-width:100%}}
table{{border-collapse:collapse}} td{{border:1px solid #ccc;padding:2px 8px}}
.pair{{display:flex;gap:2em}}</style></head><body>
<h1>anime-dcgan evaluation</h1>
<table>{about}</table>
<div class="pair"><div><h2>real</h2>{picture("real.png", "real images")}</div>
<div><h2>generated</h2>{picture("generated.png", "generated images")}</div></div>
<h2>metrics</h2><table>{rows}</table>
<h2>closest pairs (generated | nearest training image, Inception features)</h2>
{picture("closest_pairs.png", "closest pairs")}
<h2>losses</h2>{picture("losses.png", "loss curves")}
{extras}
</body></html>
""")
    return folder / "index.html"
