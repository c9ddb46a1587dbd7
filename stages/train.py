"""DVC stage `train`: processed images + training params -> models/, progress/, metrics/train.json,
metrics/losses.csv; one MLflow run. Resumes its own checkpoint after a kill."""

from anime_dcgan import layout
from anime_dcgan.params import load_params
from anime_dcgan.stage import run_stage
from anime_dcgan.tracking import Tracker
from anime_dcgan.train import TrainOutputs, train


def main() -> None:
    params = load_params()
    tracker = Tracker()
    outputs = TrainOutputs(models_dir=layout.MODELS_DIR, progress_dir=layout.PROGRESS_DIR,
                           losses_csv=layout.LOSSES_CSV, summary_json=layout.TRAIN_JSON)
    summary = train(params, layout.PROCESSED_IMAGES, outputs, tracker, tracker.root / layout.CHECKPOINT_ROOT)
    print(f"train: {summary['steps']} steps at {summary['images_per_second']} images/s; "
          f"MLflow run {summary['mlflow_run_id']}")


if __name__ == "__main__":
    run_stage("train", main)
