"""The one table of the files the stages read and write, relative to the repository root (the same
names as dvc.yaml's deps and outs)."""

import os
from pathlib import Path


def repo_root() -> Path:
    """The repository a stage belongs to: DVC_ROOT when DVC runs the stage (it points at the main
    repository even for `dvc exp run --queue/--temp` workspaces), else the current folder."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


# download
RAW_DIR = Path("data/raw")                       # images exactly as obtained (+ attributes.csv)
DOWNLOAD_CACHE = Path(".cache/downloads")        # partial and finished downloads (survive DVC's cleanup)
# preprocess
PROCESSED_DIR = Path("data/processed")
PROCESSED_IMAGES = PROCESSED_DIR / "images.npy"  # uint8 (N, 3, H, W)
MANIFEST = PROCESSED_DIR / "manifest.csv"        # one row per kept image: source, sha256, labels
# fid_reference, attribute_classifier
REFERENCE_INCEPTION = Path("reference/inception.npz")   # real-set Inception features + statistics
REFERENCE_ATTRIBUTES = Path("reference/attributes")     # hair/eye colour classifier (synthetic data)
# train
CHECKPOINT_ROOT = Path(".cache/checkpoints")     # resumable training state, one folder per run identity
MODELS_DIR = Path("models")
# the generator each sample_source names
GENERATOR_FILES = {"ema": MODELS_DIR / "generator_ema.pt", "raw": MODELS_DIR / "generator.pt",
                   "best": MODELS_DIR / "generator_best.pt"}
PROGRESS_DIR = Path("progress")
LOSSES_CSV = Path("metrics/losses.csv")
FID_CSV = Path("metrics/fid_by_step.csv")        # FID during training (eval_every)
TRAIN_JSON = Path("metrics/train.json")
# generate
SAMPLES_DIR = Path("samples")
SAMPLES_NPY = SAMPLES_DIR / "samples.npy"        # uint8 (n_samples, 3, H, W), sample k from seed k
# evaluate
EVAL_JSON = Path("metrics/eval.json")
REPORT_DIR = Path("report")
