"""The trained generator as an MLflow model: logged by the train stage (a LoggedModel linked to its
run), registered by the evaluate stage, served by `mlflow models serve` and read by `anime-dcgan
--model models:/...`.

Input: a table with one column `seed` (int64). Output: the images, uint8 (N, S, S, 3); image k is
the generate stage's sample k (noise seeded with k, the eval-mode EMA generator, on the CPU).
The model carries this package's code, so it loads where the project is not installed.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

import anime_dcgan

GENERATOR_ARTIFACT = "generator"  # the name of the .pt file among the model's artifacts
MODEL_NAME = "generator"          # the LoggedModel's name within its run


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """seeds (a table with column `seed`) -> uint8 images (N, S, S, 3)"""

    def load_context(self, context):  # no type hints: MLflow would read them as the input schema
        from anime_dcgan.training.networks import load_model

        self.generator = load_model(Path(context.artifacts[GENERATOR_ARTIFACT]), "cpu")

    def predict(self, context, model_input, params=None):
        from anime_dcgan.training.sample import generate_for_seeds

        seeds = [int(seed) for seed in model_input["seed"]]
        return generate_for_seeds(self.generator, seeds).transpose(0, 2, 3, 1)  # (N, 3, S, S) -> (N, S, S, 3)


def signature(image_size: int) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    return ModelSignature(inputs=Schema([ColSpec("long", "seed")]),
                          outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, image_size, image_size, 3))]))


def log_generator(experiment_id: str, run_id: str, generator_file: Path, image_size: int, step: int,
                  name: str = MODEL_NAME) -> str:
    """Log `generator_file` as a LoggedModel of run `run_id` in the process's tracking store (set by
    the Tracker); returns its model id."""
    import pandas as pd
    from mlflow.models import Model

    mlflow.set_experiment(experiment_id=experiment_id)
    # Model.log, not pyfunc.log_model: only it takes the run to link the model to
    info = Model.log(
        artifact_path=None, flavor=mlflow.pyfunc, name=name, run_id=run_id, step=step, model_type="gan-generator",
        python_model=__file__,  # a model from code: this file, run at load time, sets the model (no pickle)
        artifacts={GENERATOR_ARTIFACT: str(generator_file)}, code_paths=[str(Path(anime_dcgan.__file__).parent)],
        signature=signature(image_size), input_example=pd.DataFrame({"seed": [0, 1]}),
        # stated, not inferred: inference loads the model in a second process
        pip_requirements=[f"{name}=={version(name)}" for name in ("mlflow", "torch", "numpy", "pandas")])
    return info.model_id


mlflow.models.set_model(GeneratorModel())  # what MLflow takes when it loads the model from this file
