"""FID during training: scores by step in MLflow and metrics/, the best snapshot kept as
generator_best.pt and used by sample_source: best, exact resume, and no effect on the training."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_train import (
    TINY,
    assert_same_models,
    client,
    make_workspace,
    run_library,
    start_stage,
    uninterrupted_and_killed,
)

from anime_dcgan.errors import PipelineError
from anime_dcgan.evaluation.inception import _cached_inception
from anime_dcgan.params import ParamsError, parse_params
from anime_dcgan.training.fid_monitor import FidMonitor
from anime_dcgan.training.networks import load_model

SCORED = {"eval_every": 4, "eval_samples": 8}


def test_scores_by_step_land_in_metrics_and_mlflow_and_the_best_snapshot_is_kept(tmp_path):
    root = make_workspace(tmp_path / "scored", **SCORED)
    _cached_inception.cache_clear()  # loaded midway through the training, as in a stage of its own
    summary = run_library(root, **SCORED)

    scores = pd.read_csv(root / "metrics/fid_by_step.csv")
    assert list(scores.columns) == ["step", "fid", "kid"] and list(scores.step) == [4, 8, 12]
    assert (scores.fid > 0).all() and np.isfinite(scores.kid).all()
    best = scores.loc[scores.fid.idxmin()]
    assert summary["best_step"] == best.step and summary["best_fid"] == pytest.approx(best.fid, abs=1e-4)
    assert summary["eval_samples"] == 8 and summary["fid_eval_seconds"] > 0

    # generator_best.pt is the snapshot that scored best: scored again, it gives the same FID
    generator = load_model(root / "models/generator_best.pt")
    monitor = FidMonitor(root / "reference/inception.npz", 8, 0, torch.device("cpu"))
    assert monitor.score(generator, 0).fid == pytest.approx(summary["best_fid"], abs=1e-3)

    run = client(root).get_run(summary["mlflow_run_id"])
    history = client(root).get_metric_history(run.info.run_id, "train_fid_8")
    assert [m.step for m in history] == [4, 8, 12]
    assert [round(m.value, 4) for m in history] == list(scores.fid)
    assert run.data.tags["anime_dcgan.best_step"] == str(summary["best_step"])
    assert "metrics/fid_by_step.csv" in {a.path for a in client(root).list_artifacts(run.info.run_id, "metrics")}

    # scoring draws from none of the training's random streams: the same weights as a run without it
    plain = make_workspace(tmp_path / "plain")
    unscored = run_library(plain)
    assert unscored["weights_sha256"] == summary["weights_sha256"]
    assert unscored["best_step"] is None and not (plain / "models/generator_best.pt").exists()
    assert pd.read_csv(plain / "metrics/fid_by_step.csv").empty


def test_a_killed_scored_run_resumes_with_its_scores_and_best_snapshot_bit_identical(tmp_path):
    settings = {"steps": 300, "checkpoint_every": 20, "log_every": 10, "sample_every": 100,
                "eval_every": 50, "eval_samples": 8}
    reference, root = uninterrupted_and_killed(tmp_path, settings, checkpoints=2)
    resumed = start_stage(root)
    out, err = resumed.communicate()
    assert resumed.returncode == 0, err
    assert "train: step 300: FID" in out
    summary = json.loads((root / "metrics/train.json").read_text())
    assert summary["resumed_from_step"] > 0
    assert_same_models(root, reference)
    assert (root / "models/generator_best.pt").read_bytes() == (reference / "models/generator_best.pt").read_bytes()
    assert (root / "metrics/fid_by_step.csv").read_bytes() == (reference / "metrics/fid_by_step.csv").read_bytes()
    assert len(pd.read_csv(root / "metrics/fid_by_step.csv")) == 6
    history = client(root).get_metric_history(summary["mlflow_run_id"], "train_fid_8")
    assert [m.step for m in history] == [50, 100, 150, 200, 250, 300]  # the whole curve, in the resumed run


def test_without_reference_statistics_a_scored_run_stops_in_one_line(tmp_path):
    root = make_workspace(tmp_path)
    with pytest.raises(PipelineError, match=r"reference statistics .*inception.npz not found; rerun the fid_reference"):
        run_library(root, **SCORED)


def test_sample_source_best_needs_scores():
    with pytest.raises(ParamsError) as raised:
        parse_params({**TINY, "eval_every": 0, "sample_source": "best"})
    assert str(raised.value).splitlines()[1] == (
        "  - sample_source: best needs FID during training, which eval_every: 0 turns off; set eval_every "
        "(e.g. 250) or sample_source: ema")
    assert parse_params({**TINY, **SCORED, "sample_source": "best"}).sample_source == "best"
    with pytest.raises(ParamsError, match="eval_samples"):
        parse_params({**TINY, "eval_samples": 1})
