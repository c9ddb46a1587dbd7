# Two commands set up and run everything:  `make repro`  and  `make test`.
# Targets are idempotent: the virtual environment is (re)installed only when pyproject.toml changes,
# and `dvc repro` reruns only the stages whose inputs changed.

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
INSTALLED := $(VENV)/.installed
UI_PORT ?= 5000
MLFLOW_STORE ?= sqlite:///$(CURDIR)/mlflow.db
# stage commands call `python` and `dvc`: take both from the project's environment
export PATH := $(BIN):$(PATH)

.PHONY: install repro test test-e2e ui leaderboard clean

install: $(INSTALLED)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	$(BIN)/python -m anime_dcgan.offline_plots .dvc/plots/offline.html   # `dvc plots` pages that draw offline
	touch $@

repro: $(INSTALLED)
	dvc repro

test: $(INSTALLED)
	python -m pytest

test-e2e: $(INSTALLED)
	python -m pytest -m e2e

# the link opens the experiment's runs in the UI's model-training view (its default is the GenAI view);
# one worker: the default four, with their job runners, take gigabytes on a small machine; no job runner
# at all (it runs GenAI jobs: trace scoring and archival, which this project has none of), so the UI
# starts sooner and stops at once on Ctrl-C
ui: $(INSTALLED)
	@echo "MLflow UI: http://127.0.0.1:$(UI_PORT)/#/experiments/$$(python -c "from mlflow import MlflowClient; \
		e = MlflowClient('$(MLFLOW_STORE)').get_experiment_by_name('anime-dcgan'); print(e.experiment_id if e else 0)" \
		2>/dev/null)/runs?workflowType=machine_learning"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=$${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} \
		mlflow ui --backend-store-uri $(MLFLOW_STORE) --host 127.0.0.1 --port $(UI_PORT) --workers 1

# `dvc exp show` ranked by FID, with the scores and the parameters people sweep (not the ids, constants
# and 160 columns of "..."): `make leaderboard FID=fid_2k` for another fid_samples, CSV=1 for a file
FID ?= fid_1k
LEADERBOARD_COLUMNS := ^(Experiment|rev|(fid|kid)_[0-9]+k?|precision_.*|recall_.*|swd_mean|tvd_mean|seed|arch|d_norm|lr|lr_g_scale|label_noise|params.yaml:steps|batch_size|ema_decay)$$

leaderboard: $(INSTALLED)
	@dvc exp show $(if $(CSV),--csv) --sort-by metrics/eval.json:$(FID) --sort-order asc --drop '.*' \
		--keep '$(LEADERBOARD_COLUMNS)'

clean:
	rm -rf $(VENV)
