"""DVC stage `evaluate`: generated samples vs the real data -> metrics/eval.json (FID, KID, precision,
recall, SWD, diversity, memorisation, mode coverage; with fid_50k_full also the field's protocol)
and report/index.html; logged to the training run in MLflow, linked to the run's generator model (the
one sample_source names), which is registered as a new version of anime-dcgan-generator
(@latest-eval, and @champion when its FID is the best under this protocol)."""

import json
from datetime import datetime, timezone

from anime_dcgan import paths
from anime_dcgan.device import pick_device
from anime_dcgan.evaluation.evaluate import EvaluationInputs, evaluate
from anime_dcgan.evaluation.full_fid import METRIC as FULL_FID
from anime_dcgan.evaluation.full_fid import fid_full, require_full_statistics
from anime_dcgan.evaluation.reference import load_reference, reference_digest
from anime_dcgan.params import load_params
from anime_dcgan.serving import MODEL_NAME
from anime_dcgan.tracking import Dataset, Tracker, flatten, provenance_tags
from anime_dcgan.training.networks import load_model
from anime_dcgan.util.io import atomic_write_json
from anime_dcgan.util.stage import run_stage

SET_SIZES = ("fid_samples", "reference_images")  # in eval.json, but constants of the protocol, not scores
MODEL_NAMES = {"ema": MODEL_NAME, "raw": f"{MODEL_NAME}_raw", "best": f"{MODEL_NAME}_best"}  # MLflow LoggedModels


def main() -> None:
    params = load_params()
    reference = load_reference(paths.REFERENCE_INCEPTION)
    if params.fid_50k_full:
        require_full_statistics(reference)  # before the other metrics' minutes, not after them
    train_summary = json.loads(paths.TRAIN_JSON.read_text())
    inputs = EvaluationInputs(
        samples=paths.SAMPLES_NPY, real_images=paths.PROCESSED_IMAGES, manifest=paths.MANIFEST,
        reference=paths.REFERENCE_INCEPTION, attributes_dir=paths.REFERENCE_ATTRIBUTES, losses=paths.LOSSES_CSV,
        pictures={name: paths.SAMPLES_DIR / f"{name}.png" for name in ("progress_sheet", "interpolation")})
    tracker = Tracker()
    run = tracker.run_for_training(train_summary["mlflow_run_id"])
    header = {"MLflow run": run.run_id, "link": tracker.run_link(run.run_id),
              "evaluated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "parameters": ", ".join(f"{key}={value}" for key, value in flatten(params.model_dump()).items())}
    device = pick_device(params.device)
    results = evaluate(inputs, paths.REPORT_DIR, params.fid_samples, params.seed, device, header)
    generator_file = paths.GENERATOR_FILES[params.sample_source]
    if params.fid_50k_full:
        print("evaluate: fid_50k_full: 50,000 generated images against every real image")
        results[FULL_FID] = fid_full(load_model(generator_file, device), reference, device)

    dataset = Dataset.of(paths.PROCESSED_IMAGES, params.data.source)
    # the generator that made the samples; a run restored from DVC (not in this store) gets it logged here
    step = train_summary["best_step"] if params.sample_source == "best" else train_summary["steps"]
    model_name = MODEL_NAMES[params.sample_source]
    model_id = tracker.generator_model_of(run.run_id, model_name) or tracker.log_generator_model(
        run.run_id, generator_file, dataset.image_size, step, model_name)
    scores = {name: value for name, value in results.items() if name not in SET_SIZES}
    run.log_metrics([(train_summary["steps"], scores)], model_id=model_id, dataset=dataset)
    run.set_tags({f"evaluate.{name}": str(results[name]) for name in SET_SIZES})
    run.log_artifact(paths.REPORT_DIR, "report")

    fid_key = next(name for name in scores if name.startswith("fid_"))
    protocol = f"{fid_key} against reference {reference_digest(reference)}"
    provenance = provenance_tags(tracker.root)
    registered = tracker.register_generator(model_id, run.run_id, fid_key, results[fid_key], protocol, {
        "dvc.exp_name": provenance.get("dvc.exp_name", ""), "git.rev": provenance.get("mlflow.source.git.commit", "")})
    atomic_write_json(paths.EVAL_JSON, {**results, "mlflow_run_id": run.run_id, "mlflow_model_id": model_id})
    print("evaluate: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()) + f"; report in {paths.REPORT_DIR}/")
    print(f"evaluate: registered {registered}")


if __name__ == "__main__":
    run_stage("evaluate", main)
