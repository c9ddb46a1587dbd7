"""DVC stage `evaluate`: generated samples vs the real data -> metrics/eval.json (FID, KID, precision,
recall, SWD, diversity, memorisation, mode coverage) and report/index.html; logged to the training
run in MLflow."""

import json

from anime_dcgan import paths
from anime_dcgan.device import pick_device
from anime_dcgan.evaluation.evaluate import EvaluationInputs, evaluate
from anime_dcgan.params import load_params
from anime_dcgan.tracking import Tracker
from anime_dcgan.util.io import atomic_write_json
from anime_dcgan.util.stage import run_stage


def main() -> None:
    params = load_params()
    train_summary = json.loads(paths.TRAIN_JSON.read_text())
    inputs = EvaluationInputs(
        samples=paths.SAMPLES_NPY, real_images=paths.PROCESSED_IMAGES, manifest=paths.MANIFEST,
        reference=paths.REFERENCE_INCEPTION, attributes_dir=paths.REFERENCE_ATTRIBUTES, losses=paths.LOSSES_CSV,
        pictures={name: paths.SAMPLES_DIR / f"{name}.png" for name in ("progress_sheet", "interpolation")})
    results = evaluate(inputs, paths.REPORT_DIR, params.fid_samples, params.seed, pick_device(params.device))
    run = Tracker().run_for_training(train_summary["mlflow_run_id"])
    run.log_metrics([(train_summary["steps"], results)])
    run.log_artifact(paths.REPORT_DIR, "report")
    atomic_write_json(paths.EVAL_JSON, {**results, "mlflow_run_id": run.run_id})
    print("evaluate: " + ", ".join(f"{k} {v:.4g}" for k, v in results.items()) + f"; report in {paths.REPORT_DIR}/")


if __name__ == "__main__":
    run_stage("evaluate", main)
