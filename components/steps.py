"""The training of the train and fine_tune steps, from their parameters and files: what the
KFP step runs itself (one process), and what every node of its TrainJob runs
(components/node_training.py). Call keras_backend.select first: this imports Keras."""
import os

from components import configs, trainjob, training
from components.errors import TlpError

# The files each step reads (inputs) and writes (outputs), by their KFP artifact names;
# tensorboard is a folder, the others are files.
INPUTS = {"train": ("dataset",), "fine_tune": ("dataset", "trained_model", "train_history")}
OUTPUTS = {"train": ("model", "history", "tensorboard", "initial_model"),
           "fine_tune": ("model", "history", "tensorboard")}
FOLDER_OUTPUTS = ("tensorboard",)
KERAS_OUTPUTS = ("model", "initial_model")  # Keras picks the format by extension.


def train(parameters: dict, files: dict[str, str], state: str) -> dict:
    """The train step's training from its KFP parameters; files: local paths of INPUTS and
    OUTPUTS["train"]; state: where its resumable state lives. Returns the history."""
    return training.train_from_parameters(parameters, files["dataset"], files["model"],
                                          files["history"], state, files["tensorboard"],
                                          files["initial_model"])


def fine_tune(parameters: dict, files: dict[str, str], state: str) -> dict:
    """The fine_tune step's training, as train above."""
    return training.fine_tune_from_parameters(parameters, files["dataset"],
                                              files["trained_model"], files["train_history"],
                                              files["model"], files["history"], state,
                                              files["tensorboard"])


STEPS = {"train": train, "fine_tune": fine_tune}


def run(step: str, values: dict) -> dict:
    """The KFP step `step` from its arguments (its locals(): parameters, artifacts, train_nodes,
    run_id, task_name): here in one process, or with train_nodes > 1 on the nodes of a
    TrainJob (components/trainjob.py). Returns the history."""
    artifacts = {name: values[name] for name in INPUTS[step] + OUTPUTS[step]}
    state = training.state_location(artifacts["model"].uri, artifacts["model"].path)
    for name in KERAS_OUTPUTS:
        if name in artifacts:
            artifacts[name].path += ".keras"
    parameters = {name: value for name, value in values.items()
                  if isinstance(value, (str, int, float, bool))}
    nodes = values["train_nodes"]
    if nodes > 1:
        trainjob.run_step(step, parameters, artifacts, INPUTS[step], OUTPUTS[step],
                          FOLDER_OUTPUTS, state, nodes, values["run_id"], values["task_name"])
        return training.load_history(artifacts["history"].path)
    if os.environ.get(configs.TRAINJOB_SETTINGS_ENV) and \
            trainjob.NodeSettings.from_environment().launcher:
        raise TlpError("train_nodes=1, but this pipeline was compiled with --train-nodes > 1: "
                       f"its {step} step has no GPU and only launches TrainJobs. Run it with "
                       "train_nodes 2 or more, or compile with --train-nodes 1.")
    return STEPS[step](parameters, {name: artifact.path for name, artifact in artifacts.items()},
                       state)
