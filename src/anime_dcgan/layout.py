"""Where each stage reads and writes, relative to the repository root (mirrors dvc.yaml)."""

import os
from pathlib import Path


def repo_root() -> Path:
    """The repository a stage belongs to: DVC_ROOT when DVC runs the stage (it points at the main
    repository even for `dvc exp run --queue/--temp` workspaces), else the current folder."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


PARAMS = Path("params.yaml")
RAW_DIR = Path("data/raw")                       # download: images exactly as obtained
RAW_IMAGES = RAW_DIR / "images"
RAW_ATTRIBUTES = RAW_DIR / "attributes.csv"      # labels per image, when the source has them
PROCESSED_DIR = Path("data/processed")
PROCESSED_IMAGES = PROCESSED_DIR / "images.npy"  # uint8 (N, 3, H, W)
MANIFEST = PROCESSED_DIR / "manifest.csv"
REJECTED = PROCESSED_DIR / "rejected.csv"
DOWNLOAD_CACHE = Path(".cache/downloads")        # partial and finished downloads (survive DVC's cleanup)
CHECKPOINT_ROOT = Path(".cache/checkpoints")     # resumable training state, one folder per run identity
REFERENCE_DIR = Path("reference")
REFERENCE_INCEPTION = REFERENCE_DIR / "inception.npz"      # real-set Inception features + statistics
REFERENCE_ATTRIBUTES = REFERENCE_DIR / "attributes"       # hair/eye colour classifier (synthetic data)
MODELS_DIR = Path("models")
PROGRESS_DIR = Path("progress")
SAMPLES_DIR = Path("samples")
METRICS_DIR = Path("metrics")
LOSSES_CSV = METRICS_DIR / "losses.csv"
TRAIN_JSON = METRICS_DIR / "train.json"
EVAL_JSON = METRICS_DIR / "eval.json"
REPORT_DIR = Path("report")
