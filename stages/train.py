"""DVC stage `train`: processed images + training params -> models/, progress/, metrics/train.json,
metrics/losses.csv; one MLflow run. Resumes its own checkpoint after a kill."""

from anime_dcgan import paths
from anime_dcgan.params import load_params
from anime_dcgan.tracking import Tracker
from anime_dcgan.training.loop import TrainOutputs, train
from anime_dcgan.util.stage import run_stage


def main() -> None:
    params = load_params()
    tracker = Tracker()
    outputs = TrainOutputs(models_dir=paths.MODELS_DIR, progress_dir=paths.PROGRESS_DIR,
                           losses_csv=paths.LOSSES_CSV, summary_json=paths.TRAIN_JSON)
    summary = train(params, paths.PROCESSED_IMAGES, outputs, tracker, tracker.root / paths.CHECKPOINT_ROOT)
    print(f"train: {summary['steps']} steps at {summary['images_per_second']} images/s; "
          f"MLflow run {summary['mlflow_run_id']}")


if __name__ == "__main__":
    run_stage("train", main)
