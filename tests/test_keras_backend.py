"""backend=jax: the train and fine_tune steps on Keras's JAX backend (tf.data still feeding),
their model evaluated and exported on TensorFlow. JAX runs in a subprocess: this process
imported Keras on TensorFlow, and Keras picks its backend once per process."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from components import backbones, evaluation, export, keras_backend, model as model_lib, tfrecords
from components.errors import TlpError

STEPS_SCRIPT = """
import inspect, json, os, sys
from kfp.dsl import Artifact, Dataset, Model
from components import kfp_steps
from pipelines.pipeline import create_pipeline

dataset, weights, out = sys.argv[1:]
arguments = {name: spec.default for name, spec in
             create_pipeline().component_spec.inputs.items() if spec.default is not None}
arguments.update(weights=weights, backend="jax", epochs=2, fine_tune_epochs=1,
                 fine_tune_layers="10", batch_size=8, steps_per_execution=2,
                 run_id="run", task_name="task")  # KFP's placeholders.


def run(step, **artifacts):
    names = inspect.signature(step.python_func).parameters
    step.python_func(**{n: arguments[n] for n in names if n in arguments}, **artifacts)
    return artifacts


def outputs(name):
    return dict(model=Model(uri=f"{out}/{name}/model"), history=Artifact(uri=f"{out}/{name}/h"),
                tensorboard=Artifact(uri=f"{out}/{name}/tb"))


os.makedirs(f"{out}/train", exist_ok=True)  # As KFP makes an output's folder.
trained = run(kfp_steps.train, dataset=Dataset(uri=dataset), **outputs("train"),
              initial_model=Model(uri=f"{out}/train/initial_model"))
tuned = run(kfp_steps.fine_tune, dataset=Dataset(uri=dataset), trained_model=trained["model"],
            train_history=trained["history"], **outputs("tune"))
import keras
from components import tfrecords

model = keras.models.load_model(tuned["model"].path)
images = next(iter(tfrecords.load_split(dataset, "test", 64, training=False)))[0]
print(json.dumps({"backend": keras.backend.backend(), "model": tuned["model"].path,
                  "metadata": tuned["model"].metadata,
                  "probabilities": keras.ops.convert_to_numpy(model(images)).tolist()}))
"""


def test_select_validates_and_cannot_switch_a_running_keras():
    with pytest.raises(TlpError, match="backend='torch'; choose one of tensorflow, jax"):
        keras_backend.select("torch")
    keras_backend.select("tensorflow")  # What this process already runs: nothing to do.
    with pytest.raises(TlpError, match="already imported with the tensorflow backend"):
        keras_backend.select("jax")


def test_jax_trained_model_evaluates_and_exports_on_tensorflow(tmp_path, tiny_dataset):
    # A weights file keeps the backbone frozen, so JAX compiles in seconds rather than minutes.
    weights = tmp_path / "backbone.weights.h5"
    backbones.build_backbone("MobileNetV2", 32, "none").save_weights(weights)
    env = {key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"}
    result = subprocess.run([sys.executable, "-c", STEPS_SCRIPT, str(tiny_dataset),
                             str(weights), str(tmp_path / "out")],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Keras backend jax" in result.stdout
    jax_run = json.loads(result.stdout.strip().splitlines()[-1])
    assert jax_run["backend"] == "jax"
    assert jax_run["metadata"] == {"backend": "jax", "train_nodes": 1, "tuned": {}}
    assert keras.backend.backend() == "tensorflow"
    model = keras.models.load_model(jax_run["model"])
    images = next(iter(tfrecords.load_split(tiny_dataset, "test", 64, training=False)))[0]
    np.testing.assert_allclose(model(images), jax_run["probabilities"], atol=1e-5)
    result, _ = evaluation.evaluate(jax_run["model"], str(tiny_dataset), 8, 2, 0.0)
    assert result["gate"]["approved"] and sum(map(sum, result["confusion_matrix"])) == 6
    served = model_lib.without_augmentation(model)
    export.export_saved_model(served, ["blue", "green", "red"], 32, tmp_path / "saved_model")
    assert export.verify_saved_model(export.keras_reference(served, str(tiny_dataset)),
                                     tmp_path / "saved_model") < 1e-4
