"""DVC stage `download`: `data.source` -> data/raw/ (the images exactly as obtained)."""

from anime_dcgan import layout
from anime_dcgan.data.sources import fetch_source
from anime_dcgan.params import load_params
from anime_dcgan.stage import run_stage


def main() -> None:
    params = load_params()
    summary = fetch_source(params.data, params.seed, layout.RAW_DIR, layout.repo_root() / layout.DOWNLOAD_CACHE)
    print(f"download: {summary.line()}")


if __name__ == "__main__":
    run_stage("download", main)
