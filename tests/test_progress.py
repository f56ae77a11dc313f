import builtins
import inspect
import io
import json
import re
import threading

import numpy as np
import pytest

from components import configs
from pipelines import progress

STEPS = ("preprocess", "train", "fine-tune", "evaluate", "export")
STEP_LINE = re.compile(r"^(\S+) +(started|done +\d+\.\d s)$")
EPOCH_LINE = re.compile(r"^(train|fine-tune) +epoch +\d+/\d+  loss \d+\.\d{4}  accuracy "
                        r"\d\.\d{4}  val_loss \d+\.\d{4}  val_accuracy \d\.\d{4}  \d+\.\d s$")


def test_step_lines():
    assert progress.format_step_line("train", "started") == "train       started"
    assert progress.format_step_line("fine-tune", "done", 81.26) == "fine-tune   done     81.3 s"
    assert progress.format_step_line("preprocess", "failed", 3) == "preprocess  failed   3.0 s"


def test_epoch_line_from_marker():
    record = {"epoch": 3, "epochs": 10, "loss": 0.52331, "accuracy": 0.8125,
              "val_loss": 0.61, "val_accuracy": 0.79999, "learning_rate": 0.001,
              "epoch_seconds": 7.94}
    line = f"    {configs.EPOCH_MARKER} {json.dumps(record)}"  # As kfp.local indents it.
    assert progress.parse_epoch_marker(line) == record
    assert progress.format_epoch_line("train", record) == (
        "train         epoch  3/10  loss 0.5233  accuracy 0.8125  val_loss 0.6100  "
        "val_accuracy 0.8000  7.9 s")


@pytest.mark.parametrize("line", ["Epoch 3/10", f"{configs.EPOCH_MARKER} {{not json",
                                  f"{configs.EPOCH_MARKER}s {{}}"])
def test_other_lines_are_no_markers(line):
    assert progress.parse_epoch_marker(line) is None


def test_training_prints_one_marker_per_epoch(capsys):
    import keras

    from components.training import LogEpochSeconds, PrintEpochMarker

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = np.zeros((8, 2)), np.zeros(8, dtype=int)
    model.fit(x, y, validation_data=(x, y), epochs=2, verbose=0,
              callbacks=[LogEpochSeconds(), PrintEpochMarker()])
    records = [r for line in capsys.readouterr().out.splitlines()
               if (r := progress.parse_epoch_marker(line))]
    assert [(r["epoch"], r["epochs"]) for r in records] == [(1, 2), (2, 2)]
    for record in records:
        assert EPOCH_LINE.match(progress.format_epoch_line("train", record))


def fake_step(lines: list[str], failed: bool = False):
    """Stands in for kfp.local's task runner: prints as it does, returns (outputs, status)."""
    from kfp.local import status

    def run():
        for line in lines:
            print("    " + line)
        return {}, status.Status.FAILURE if failed else status.Status.SUCCESS
    return run


def marker(epoch: int) -> str:
    return configs.EPOCH_MARKER + " " + json.dumps(
        {"epoch": epoch, "epochs": 2, "loss": 1.0, "accuracy": 0.5, "val_loss": 1.0,
         "val_accuracy": 0.5, "epoch_seconds": 2.0})


def test_a_step_gets_its_lines_and_its_log(tmp_path):
    console = io.StringIO()
    reporter = progress.Reporter(console)
    lines = ['Got executor_input: {"inputs": 1}', marker(1), "Epoch 2/2", marker(2)]
    with progress.report_steps(reporter):
        print("kfp.local's banner")
        reporter.run_step("train", tmp_path / "logs", fake_step(lines))
    shown = console.getvalue().splitlines()
    assert STEP_LINE.match(shown[0]) and shown[0].split() == ["train", "started"]
    assert shown[1:3] == [progress.format_epoch_line("train", progress.parse_epoch_marker(m))
                          for m in (marker(1), marker(2))]
    assert shown[3].split()[:2] == ["train", "done"] and len(shown) == 4
    assert (tmp_path / "logs" / "train.log").read_text() == "".join(
        f"    {line}\n" for line in lines)


def test_a_failed_step_shows_its_last_lines_and_its_log(tmp_path):
    console = io.StringIO()
    reporter = progress.Reporter(console)
    lines = [f"line {i}" for i in range(100)]
    with progress.report_steps(reporter):
        reporter.run_step("evaluate", tmp_path, fake_step(lines, failed=True))
    log = tmp_path / "evaluate.log"
    assert reporter.failed_log == log
    shown = console.getvalue().splitlines()
    assert shown[1].split()[:2] == ["evaluate", "failed"]
    assert shown[2] == f"--- the last {configs.FAILURE_LOG_LINES} lines of {log}:"
    assert shown[3:-1] == [f"    line {i}" for i in range(100 - configs.FAILURE_LOG_LINES, 100)]
    assert shown[-1] == f"--- the whole log: {log}"


def test_verbose_passes_everything_through(tmp_path):
    console = io.StringIO()
    reporter = progress.Reporter(console, verbose=True)
    lines = ["Executing task", marker(1)]
    with progress.report_steps(reporter):
        print("kfp.local's banner")
        reporter.run_step("train", tmp_path, fake_step(lines))
    assert console.getvalue() == "kfp.local's banner\n" + "".join(f"    {l}\n" for l in lines)
    assert (tmp_path / "train.log").read_text() == "".join(f"    {l}\n" for l in lines)


def test_a_docker_steps_log_stream_is_followed(tmp_path):
    """DockerRunner prints a container's log as the engine streams it, in chunks that need
    not end at a line's end."""
    from types import SimpleNamespace

    from kfp.local import docker_task_handler, status

    text = f"Found nothing\n{marker(1)}\nEpoch 2/2\n{marker(2)}\n".encode()
    container = SimpleNamespace(logs=lambda stream: (text[i:i + 7] for i in range(0, len(text), 7)),
                                wait=lambda: {"StatusCode": 0})
    client = SimpleNamespace(
        images=SimpleNamespace(list=lambda: [SimpleNamespace(tags=["img:1"],
                                                             attrs={"RepoDigests": []})]),
        containers=SimpleNamespace(run=lambda **kwargs: container))

    def run():
        code = docker_task_handler.run_docker_container(client, "img:1", ["python3"], {})
        return {}, status.Status.SUCCESS if code == 0 else status.Status.FAILURE

    console = io.StringIO()
    reporter = progress.Reporter(console)
    with progress.report_steps(reporter):
        reporter.run_step("train", tmp_path, run)
    shown = console.getvalue().splitlines()
    assert shown[1:3] == [progress.format_epoch_line("train", progress.parse_epoch_marker(m))
                          for m in (marker(1), marker(2))]
    assert text.decode() in (tmp_path / "train.log").read_text()


def test_parallel_steps_write_their_own_logs(tmp_path):
    """kfp.local runs a ParallelFor's tasks in threads."""
    reporter = progress.Reporter(io.StringIO())
    barrier = threading.Barrier(2)

    def step(name):
        def run():
            barrier.wait()  # Both running at once.
            return fake_step([f"{name} {i}" for i in range(200)])()
        reporter.run_step(name, tmp_path, run)

    with progress.report_steps(reporter):
        threads = [threading.Thread(target=step, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for name in ("a", "b"):
        assert (tmp_path / f"{name}.log").read_text() == "".join(
            f"    {name} {i}\n" for i in range(200))


def test_the_run_puts_print_back():
    """kfp.local's parallel tasks can leave builtins.print indented (see _keep_print)."""
    original = builtins.print
    try:
        with progress.report_steps(progress.Reporter(io.StringIO())):
            builtins.print = lambda *args, **kwargs: None
        assert builtins.print is original
    finally:
        builtins.print = original


def test_kfp_local_still_dispatches_tasks_through_the_hooked_function():
    """progress._hook_task_dispatcher wraps a private kfp.local function (kfp 2.17.0): this
    fails when a kfp upgrade renames it, changes its arguments or stops calling it through
    its module, rather than the progress lines and logs silently vanishing."""
    from kfp.local import task_dispatcher
    from kfp.local.orchestrator import task_executor

    parameters = inspect.signature(task_dispatcher.run_single_task_implementation).parameters
    assert {"component_name", "pipeline_root", "pipeline_resource_name"} <= parameters.keys()
    source = inspect.getsource(task_executor.execute_single_task)
    assert "task_dispatcher.run_single_task_implementation(\n" in source
    assert "component_name=component_name," in source and "pipeline_root=pipeline_root," in source


def test_local_run_logs_every_step_and_prints_a_short_summary(local_run, local_run_console):
    logs = local_run.run_dir / configs.LOGS_DIR
    assert sorted(p.stem for p in logs.iterdir()) == sorted(STEPS)
    for step in STEPS:
        text = (logs / f"{step}.log").read_text()
        assert "Got executor_input:" in text and '"outputs": {' in text, step
    for step in ("train", "fine-tune"):
        assert configs.EPOCH_MARKER in (logs / f"{step}.log").read_text()
    shown = local_run_console.getvalue().splitlines()
    assert [line.split()[0] for line in shown if STEP_LINE.match(line)] == [
        step for step in STEPS for _ in ("started", "done")]
    assert sum(bool(EPOCH_LINE.match(line)) for line in shown) == 2  # One epoch each.
    assert len(shown) == 12, shown
