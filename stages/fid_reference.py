"""DVC stage `fid_reference`: Inception features and statistics of the real images ->
reference/inception.npz. Recomputed only when the processed data, fid_samples, fid_50k_full or seed
change. With fid_50k_full it also holds the statistics of every real image."""

import numpy as np

from anime_dcgan import paths
from anime_dcgan.device import pick_device
from anime_dcgan.evaluation.reference import compute_reference, save_reference
from anime_dcgan.params import load_params
from anime_dcgan.util.stage import run_stage


def main() -> None:
    params = load_params()
    images = np.load(paths.PROCESSED_IMAGES, mmap_mode="r")
    reference = compute_reference(images, params.fid_samples, params.seed, pick_device(params.device), progress=True,
                                  full=params.fid_50k_full)
    save_reference(paths.REFERENCE_INCEPTION, reference)
    full = f", and of all {len(images):,} (fid_50k_full)" if params.fid_50k_full else ""
    print(f"fid_reference: Inception statistics of {len(reference['indices']):,} of {len(images):,} real "
          f"images{full} -> {paths.REFERENCE_INCEPTION}")


if __name__ == "__main__":
    run_stage("fid_reference", main)
