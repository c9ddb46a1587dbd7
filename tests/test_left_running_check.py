"""The suite's own guard (conftest.py): a test that leaves an MLflow run RUNNING in its stores fails."""
from pathlib import Path

from conftest import running_runs
from mlflow import MlflowClient


def test_a_run_left_running_in_a_nested_store_is_found_until_it_is_ended(tmp_path: Path):
    store = tmp_path / "repo" / "mlflow.db"
    store.parent.mkdir()
    client = MlflowClient(f"sqlite:///{store}")
    run = client.create_run(client.create_experiment("guard"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mlflow.db").write_bytes(b"not a database")  # skipped, not an error
    assert running_runs(tmp_path) == [f"{store}: {run.info.run_id}"]
    client.set_terminated(run.info.run_id, status="KILLED")
    assert running_runs(tmp_path) == []
