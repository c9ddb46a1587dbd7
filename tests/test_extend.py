"""Longer runs without starting over: a run asked for more steps continues the longest finished run
of its lineage and ends bit-identical to one trained from scratch; finished runs are bounded."""

import os

import pandas as pd
from test_train import assert_same_models, client, make_workspace, run_library

from anime_dcgan.training import checkpoint as ckpt
from anime_dcgan.training import loop

SCORED = {"eval_every": 4, "eval_samples": 8}


def test_an_extended_run_ends_bit_identical_to_one_trained_from_scratch(tmp_path, capsys):
    extended = make_workspace(tmp_path / "extended", **SCORED)
    short = run_library(extended, **SCORED, steps=8)
    longer = run_library(extended, **SCORED, steps=16)
    said = capsys.readouterr().out
    assert f"train: continuing the finished 8-step run (MLflow run {short['mlflow_run_id']}) to 16 steps" in said
    assert longer["resumed_from_step"] == 8 and longer["extends_mlflow_run_id"] == short["mlflow_run_id"]

    scratch = make_workspace(tmp_path / "scratch", **SCORED)
    direct = run_library(scratch, **SCORED, steps=16)
    assert direct["resumed_from_step"] == 0 and direct["extends_mlflow_run_id"] == ""
    assert longer["weights_sha256"] == direct["weights_sha256"]
    assert_same_models(extended, scratch)
    for output in ("models/generator_best.pt", "metrics/losses.csv", "metrics/fid_by_step.csv"):
        assert (extended / output).read_bytes() == (scratch / output).read_bytes(), output
    assert sorted(p.name for p in (extended / "progress").iterdir()) == sorted(
        p.name for p in (scratch / "progress").iterdir())
    assert list(pd.read_csv(extended / "metrics/fid_by_step.csv").step) == [4, 8, 12, 16]

    runs = client(extended)
    run = runs.get_run(longer["mlflow_run_id"])
    assert run.data.tags["anime_dcgan.extends_run"] == short["mlflow_run_id"]
    assert run.data.tags["anime_dcgan.extends_from_step"] == "8"
    assert "anime_dcgan.resumed_from_run" not in run.data.tags  # an extension, not a resume
    assert runs.get_run(short["mlflow_run_id"]).info.status == "FINISHED"
    assert [m.step for m in runs.get_metric_history(run.info.run_id, "loss_g")] == list(range(2, 17, 2))
    finished = sorted(p.name.rpartition("-")[2] for p in (extended / ".cache/finished_runs").iterdir())
    assert finished == ["0000008", "0000016"]


def test_a_collapse_warning_survives_into_the_extended_run(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "COLLAPSE_DIVERSITY", float("inf"))  # every grid after step 0 looks collapsed
    extended = make_workspace(tmp_path / "extended")
    assert run_library(extended, steps=8)["collapse_warning"].startswith("step 4: ")
    longer = run_library(extended, steps=12)
    assert longer["resumed_from_step"] == 8
    direct = run_library(make_workspace(tmp_path / "scratch"), steps=12)
    assert longer["collapse_warning"] == direct["collapse_warning"] != ""  # the first warning, at step 4


def test_only_a_shorter_run_of_the_same_lineage_ending_on_a_logging_step_is_continued(tmp_path):
    root = make_workspace(tmp_path)
    run_library(root, steps=7)   # log_every 2: its last interval was a partial one
    assert run_library(root, steps=10)["resumed_from_step"] == 0
    assert run_library(root, steps=12, lr=0.0004)["resumed_from_step"] == 0  # another lineage
    assert run_library(root, steps=12)["resumed_from_step"] == 10
    assert run_library(root, steps=10)["resumed_from_step"] == 0  # never a longer run, nor itself


def _finished_run(root, name: str, age: int) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / ckpt.RUN_FILE).write_text('{"mlflow_run_id": "x", "steps": 1}')
    os.utime(folder, (1_000_000 + age, 1_000_000 + age))


def test_finished_runs_beyond_the_bound_are_removed_oldest_first(tmp_path):
    finished = tmp_path / "finished_runs"
    for age in range(ckpt.FINISHED_KEEP):
        _finished_run(finished, f"old{age}-0000001", age)
    run_folder = tmp_path / "checkpoints/run"
    run_folder.mkdir(parents=True)
    ckpt.save_checkpoint(run_folder, {"step": 5})
    kept = ckpt.keep_finished(run_folder, finished, "new", 5, "run-id")
    assert not run_folder.exists()
    assert sorted(p.name for p in finished.iterdir()) == sorted(
        [kept.name] + [f"old{age}-0000001" for age in range(1, ckpt.FINISHED_KEEP)])
    assert ckpt.load_checkpoint(kept)["step"] == 5
    assert ckpt.longest_finished(finished, "new", 6, 5) == kept
    assert ckpt.longest_finished(finished, "new", 5, 5) is None and ckpt.longest_finished(finished, "new", 6, 2) is None
