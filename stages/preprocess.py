"""DVC stage `preprocess`: data/raw/ -> data/processed/images.npy (uint8 N x 3 x S x S), manifest.csv,
rejected.csv."""

from anime_dcgan import paths
from anime_dcgan.data.preprocess import preprocess_images
from anime_dcgan.params import load_params
from anime_dcgan.util.stage import run_stage


def main() -> None:
    data = load_params().data
    summary = preprocess_images(paths.RAW_DIR, paths.PROCESSED_DIR, data.image_size, data.min_size, data.workers)
    print(f"preprocess: {summary.line()}")


if __name__ == "__main__":
    run_stage("preprocess", main)
