"""DVC stage `generate`: the trained generator -> samples/ (per-seed samples, grid, interpolations,
progress animation and contact sheet), also logged to the training run in MLflow."""

import json

from anime_dcgan import paths
from anime_dcgan.device import pick_device
from anime_dcgan.params import load_params
from anime_dcgan.tracking import Tracker
from anime_dcgan.training.networks import load_model
from anime_dcgan.training.sample import write_samples
from anime_dcgan.util.stage import run_stage


def main() -> None:
    params = load_params()
    generator = load_model(paths.GENERATOR_FILES[params.sample_source], pick_device(params.device))
    pictures = write_samples(generator, params.n_samples, paths.PROGRESS_DIR, paths.SAMPLES_DIR)
    run = Tracker().run_for_training(json.loads(paths.TRAIN_JSON.read_text())["mlflow_run_id"])
    for path in pictures.values():
        run.log_artifact(path, "samples")
    print(f"generate: {params.n_samples} samples from the {params.sample_source} generator in "
          f"{paths.SAMPLES_DIR}/; logged to MLflow run {run.run_id}")


if __name__ == "__main__":
    run_stage("generate", main)
