"""DVC stage `preprocess`: data/raw/ -> data/processed/images.npy (uint8 N x 3 x S x S), manifest.csv,
rejected.csv."""

from anime_dcgan import layout
from anime_dcgan.data.preprocess import preprocess_images
from anime_dcgan.params import load_params
from anime_dcgan.stage import run_stage


def main() -> None:
    data = load_params().data
    summary = preprocess_images(layout.RAW_DIR, layout.PROCESSED_DIR, data.image_size, data.min_size, data.workers)
    print(f"preprocess: {summary.line()}")


if __name__ == "__main__":
    run_stage("preprocess", main)
