"""DVC stage `evaluate`: generated samples vs the real data -> metrics/eval.json (FID, KID, precision,
recall, SWD, diversity, memorisation, mode coverage) and report/index.html; logged to the training
run in MLflow."""

import json

from anime_dcgan import layout
from anime_dcgan.device import pick_device
from anime_dcgan.evaluate import EvaluationInputs, evaluate
from anime_dcgan.io import atomic_write_json
from anime_dcgan.params import load_params
from anime_dcgan.stage import run_stage
from anime_dcgan.tracking import Tracker


def main() -> None:
    params = load_params()
    train_summary = json.loads(layout.TRAIN_JSON.read_text())
    inputs = EvaluationInputs(
        samples=layout.SAMPLES_DIR / "samples.npy", real_images=layout.PROCESSED_IMAGES, manifest=layout.MANIFEST,
        reference=layout.REFERENCE_INCEPTION, attributes_dir=layout.REFERENCE_ATTRIBUTES, losses=layout.LOSSES_CSV,
        pictures={name: layout.SAMPLES_DIR / f"{name}.png" for name in ("progress_sheet", "interpolation")})
    results = evaluate(inputs, layout.REPORT_DIR, params.fid_samples, params.seed, pick_device(params.device))
    run = Tracker().run_for_training(train_summary["mlflow_run_id"])
    run.log_metrics([(train_summary["steps"], results)])
    run.log_artifact(layout.REPORT_DIR, "report")
    atomic_write_json(layout.EVAL_JSON, {**results, "mlflow_run_id": run.run_id})
    print("evaluate: " + ", ".join(f"{k} {v:.4g}" for k, v in results.items()) + f"; report in {layout.REPORT_DIR}/")


if __name__ == "__main__":
    run_stage("evaluate", main)
