"""DVC stage `download`: `data.source` -> data/raw/ (the images exactly as obtained)."""

from anime_dcgan import paths
from anime_dcgan.data.fetch import fetch_source
from anime_dcgan.params import load_params
from anime_dcgan.util.stage import run_stage


def main() -> None:
    params = load_params()
    summary = fetch_source(params.data, params.seed, paths.RAW_DIR, paths.repo_root() / paths.DOWNLOAD_CACHE)
    print(f"download: {summary.line()}")


if __name__ == "__main__":
    run_stage("download", main)
