"""Quality benchmark: training recipes, the same steps, scored against the real sample.

Recipes:
  default           params.yaml as it is: the article's DCGAN and noisy labels, the generator's learning
                    rate at 2x the discriminator's (lr_g_scale 2), sampled from the EMA generator
  article_no_ema    the article's recipe (lr 0.00015 for both networks) without the EMA of the generator
  pytorch_examples  pytorch/examples' DCGAN: arch dcgan, lr 0.0002, beta1 0.5, hard labels, no EMA
  diffaugment       default with `augment: diffaugment` (the paper's policy, every image D sees)
  diffaugment_mirror  and `mirror: true` (half the real images flipped)
  default_best      the default training's best snapshot by FID during training (generator_best.pt)
  g_rate_3x         default with the generator's rate at 3x the discriminator's (lr_g_scale 3)
  spectral_norm     default with `d_norm: spectral`: D's BatchNorm replaced by spectral normalisation

FID during training (every 250 steps on 500 samples: LOOP_PROTOCOL, fixed here rather than taken
from params.yaml, whose loop settings are sized for make repro's short run) scores snapshots against a
*selection* half of the real images (a seeded permutation's first half); every recipe is also
scored against the other, *held-out* half (heldout_fid), which no choice of snapshot has seen, so
that default_best's figure is not flattered by having chosen on the images it is scored against.

The EMA never feeds back into training (the networks, optimisers and noise are the same with or
without it), so `article_no_ema` samples the raw generator of the `article` training, which is exactly
what training with `ema_decay: 0` would have produced.

Every recipe trains for the same number of steps and batch size on the shared 4,998-image sample of
the Kaggle anime faces (4,712 distinct images after preprocess drops exact duplicates), with the
project's own train() (the stage's code path: bf16/compile per `auto`), then generates `--samples`
images (sample k from seed k) and scores FID, KID and SWD against ALL the real images.

    python benchmarks/quality.py                       # ~85 min for the three on a 2-core CPU (three trainings)
    python benchmarks/quality.py --steps 50 --samples 200 --recipes default   # a quick look

A training whose models are already in --work/<training>/ with the same training parameters (its
recipe.json) is reused, so scoring again costs minutes, not hours; delete --work to retrain, for
example after changing the training code.

Prints a Markdown table (recorded in benchmarks/quality.md); raw figures go to --json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO_ROOT, sample_zip  # beside this script

sys.path.insert(0, str(REPO_ROOT / "src"))

from anime_dcgan.data.fetch import fetch_source  # noqa: E402
from anime_dcgan.data.preprocess import preprocess_images  # noqa: E402
from anime_dcgan.evaluation.fid import feature_statistics, frechet_distance  # noqa: E402
from anime_dcgan.evaluation.inception import inception_features  # noqa: E402
from anime_dcgan.evaluation.reference import compute_reference, load_reference, save_reference  # noqa: E402
from anime_dcgan.evaluation.registry import EvalInputs, compute_metrics  # noqa: E402
from anime_dcgan.params import Params, load_params  # noqa: E402
from anime_dcgan.tracking import Tracker  # noqa: E402
from anime_dcgan.training.loop import TrainOutputs, train  # noqa: E402
from anime_dcgan.training.networks import load_model  # noqa: E402
from anime_dcgan.training.sample import generate_for_seeds  # noqa: E402
from anime_dcgan.util.stage import run_stage  # noqa: E402

# recipe -> (the training run it samples, the generator file of that run)
RECIPES: dict[str, tuple[str, str]] = {
    "default": ("default", "generator_ema.pt"),
    "article_no_ema": ("article", "generator.pt"),
    "pytorch_examples": ("pytorch_examples", "generator.pt"),
    "diffaugment": ("diffaugment", "generator_ema.pt"),
    "diffaugment_mirror": ("diffaugment_mirror", "generator_ema.pt"),
    "default_best": ("default", "generator_best.pt"),
    "g_rate_3x": ("g_rate_3x", "generator_ema.pt"),
    "spectral_norm": ("spectral_norm", "generator_ema.pt"),
}
# the loop of every training here (params.yaml's are sized for make repro); none changes what is learnt
LOOP_PROTOCOL = {"log_every": 25, "sample_every": 100, "checkpoint_every": 250, "eval_every": 250, "eval_samples": 500}
TRAININGS: dict[str, dict] = {  # parameters changed from params.yaml
    "default": {},
    "article": {"lr": 0.00015, "lr_g_scale": 1.0},
    "pytorch_examples": {"arch": "dcgan", "lr": 0.0002, "lr_g_scale": 1.0, "beta1": 0.5, "label_noise": 0.0,
                         "ema_decay": 0.0},
    # the DiffAugment paper's policy as published (colour, translation 1/8, cutout 1/2, always applied):
    # nothing here is tuned on the sample
    "diffaugment": {"augment": "diffaugment"},
    "diffaugment_mirror": {"augment": "diffaugment", "mirror": True},
    # the generator's rate three times the discriminator's instead of twice: 2x over the article's
    # equal rates helped because D won early and the EMA absorbs a faster generator's step noise
    "g_rate_3x": {"lr_g_scale": 3.0},
    # SN-GAN's discriminator (Miyato et al. 2018), the normalisation a large study of GAN recipes found
    # the most reliable across datasets (Kurach et al. 2019); the default's rates and loss are kept,
    # so only D's normalisation differs: nothing is tuned on the sample
    "spectral_norm": {"d_norm": "spectral"},
}


def prepare_data(zip_path: Path, work: Path, seed: int) -> Path:
    """The sample as the pipeline's processed tensor file (cached in work/)."""
    images = work / "processed/images.npy"
    if not images.is_file():
        data = Params().data.model_copy(update={"source": str(zip_path)})
        fetch_source(data, seed, work / "raw", work / "downloads", progress=False)
        print(preprocess_images(work / "raw", work / "processed", 64, 32, progress=False).line())
    return images


def real_reference(images_path: Path, work: Path, seed: int) -> dict:
    """Inception features of every real image (cached: ~10 minutes on 2 CPU cores)."""
    path = work / "reference_all.npz"
    if not path.is_file():
        images = np.load(images_path, mmap_mode="r")
        save_reference(path, compute_reference(images, len(images), seed, progress=True))
    return load_reference(path)


def split_references(reference: dict, work: Path, seed: int) -> tuple[Path, dict]:
    """The selection half (saved, for FID during training) and the held-out half of the real set,
    both from the features already computed for all of it."""
    order = np.random.default_rng(seed).permutation(len(reference["indices"]))
    halves = []
    for rows in (np.sort(order[:len(order) // 2]), np.sort(order[len(order) // 2:])):
        features = reference["features"][rows]
        mu, sigma = feature_statistics(features.astype(np.float64))
        halves.append({**reference, "indices": reference["indices"][rows], "features": features, "mu": mu,
                       "sigma": sigma})
    path = work / "reference_selection.npz"
    save_reference(path, halves[0])
    return path, halves[1]


def run_training(name: str, base: dict, images_path: Path, work: Path, selection: Path) -> dict:
    """Train one recipe's networks into work/<name>/ (the train stage's own code path), or reuse the
    models of an earlier invocation trained with the same parameters."""
    params = Params.model_validate({**base, **TRAININGS[name]})
    folder = work / name
    outputs = TrainOutputs(folder / "models", folder / "progress", folder / "losses.csv", folder / "fid_by_step.csv",
                           folder / "train.json")
    recipe = folder / "recipe.json"
    if recipe.is_file() and json.loads(recipe.read_text()) == params.training_identity() and outputs.summary_json.is_file():
        print(f"   reusing the trained models in {folder}", flush=True)
        return json.loads(outputs.summary_json.read_text())
    recipe.unlink(missing_ok=True)
    summary = train(params, images_path, outputs, Tracker(folder), folder / "checkpoints", reference=selection)
    recipe.write_text(json.dumps(params.training_identity(), indent=2))
    return summary


def score_recipe(name: str, training: dict, images_path: Path, reference: dict, heldout: dict, n_samples: int,
                 seed: int, work: Path) -> dict:
    run_name, generator_file = RECIPES[name]
    generator = load_model(work / run_name / "models" / generator_file)
    fake = generate_for_seeds(generator, range(n_samples))                   # (n, 3, 64, 64) uint8
    real = np.load(images_path, mmap_mode="r")
    started = time.perf_counter()
    fake_features = inception_features(fake, progress=True)                 # (n, 2048): for both references
    metrics = compute_metrics(EvalInputs(fake_images=fake, real_features=reference["features"].astype(np.float64),
                                         real_images=real, real_mu=reference["mu"], real_sigma=reference["sigma"],
                                         fake_features=fake_features, seed=seed, progress=True),
                              names=["fid", "kid", "swd"])
    heldout_fid = frechet_distance(*feature_statistics(fake_features), heldout["mu"], heldout["sigma"])
    return {"recipe": name, "training": run_name, "generator": generator_file, "overrides": TRAININGS[run_name],
            "train_seconds": training["train_seconds"], "images_per_second": training["images_per_second"],
            "eval_seconds": round(time.perf_counter() - started, 1), "best_step": training["best_step"],
            "heldout_fid": heldout_fid, **metrics}


def markdown(results: list[dict], args: argparse.Namespace, n_real: int) -> str:
    fid_key = next(k for k in results[0] if k.startswith("fid_"))
    kid_key = next(k for k in results[0] if k.startswith("kid_") and not k.endswith("_std"))
    lines = [f"| recipe | {fid_key} | FID vs held-out half | {kid_key} | swd_mean | swd_64 | swd_32 | swd_16 | "
             "best step | train s | images/s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        best_step = r["best_step"] if r["generator"] == "generator_best.pt" else "-"
        lines.append(f"| {r['recipe']} | {r[fid_key]:.2f} | {r['heldout_fid']:.2f} | {r[kid_key]:.4f} | "
                     f"{r['swd_mean']:.1f} | {r['swd_64']:.1f} | {r['swd_32']:.1f} | {r['swd_16']:.1f} | "
                     f"{best_step} | {r['train_seconds']:.0f} | {r['images_per_second']:.0f} |")
    default = next((r for r in results if r["recipe"] == "default"), None)
    if default is not None:
        for r in results:
            if r is not default:
                gain = 1 - default[fid_key] / r[fid_key]
                lines.append(f"\ndefault vs {r['recipe']}: FID {gain:+.1%}")
    header = (f"{args.steps} steps x batch {args.batch_size} per recipe, {args.samples} generated vs all {n_real} "
              f"real images; {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
              f"torch {torch.__version__}")
    return header + "\n\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zip", type=Path, default=sample_zip(),
                        help="the real sample (default %(default)s: $ANIME_DCGAN_SAMPLE, else the shared copy "
                             "beside the repository)")
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=2000, help="generated images scored per recipe")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--work", type=Path, default=Path("/tmp/anime_dcgan_quality"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.zip.is_file():
        parser.error(f"{args.zip} not found: give the 4,998-image sample with --zip")

    args.work.mkdir(parents=True, exist_ok=True)
    base = {**load_params(REPO_ROOT / "params.yaml").model_dump(), **LOOP_PROTOCOL, "steps": args.steps,
            "batch_size": args.batch_size}
    images_path = prepare_data(args.zip, args.work, base["seed"])
    reference = real_reference(images_path, args.work, base["seed"])
    selection, heldout = split_references(reference, args.work, base["seed"])
    trainings = {}
    for run_name in dict.fromkeys(RECIPES[name][0] for name in args.recipes):
        print(f"== training {run_name}: {TRAININGS[run_name] or 'params.yaml as is'}", flush=True)
        trainings[run_name] = run_training(run_name, base, images_path, args.work, selection)
    results = []
    for name in args.recipes:
        print(f"== scoring {name}: {RECIPES[name]}", flush=True)
        results.append(score_recipe(name, trainings[RECIPES[name][0]], images_path, reference, heldout,
                                    args.samples, base["seed"], args.work))
        print(json.dumps(results[-1]), flush=True)
    report = markdown(results, args, len(reference["indices"]))
    print(report)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    run_stage("quality", main)  # Ctrl-C, SIGTERM, SIGHUP: the training's MLflow run ends KILLED, as in a stage
