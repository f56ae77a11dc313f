"""Readable progress for `tlp run --local`: one console line per step as it starts and ends,
one per training epoch, and each step's whole output (kfp.local's executor JSON included) in
<run>/logs/<step>.log; a failed step's last lines and its log's path.

kfp.local prints everything a task does to this process's stdout, from the thread that runs
the task (a ParallelFor's tasks run in threads). So, during the run, sys.stdout is a router
that sends each thread's writes to the log of the step it runs; the hook around kfp.local's
task dispatcher (_hook_task_dispatcher) says which step that is. Plain lines only, no
carriage returns: the same output reads well in a terminal and in a CI log.
"""
import builtins
import contextlib
import io
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from components import configs

_ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # kfp.local colours task names and statuses.
_NAME_WIDTH = 11  # "fine-tune" and "preprocess" line up.
# Shown per epoch, in this order, when the epoch's logs have them.
_EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def strip_colours(text: str) -> str:
    return _ANSI_COLOUR.sub("", text)


def format_step_line(step: str, status: str, seconds: float | None = None) -> str:
    """`train       done     81.3 s`: a step's name, its status and, once ended, its seconds."""
    line = f"{step:<{_NAME_WIDTH}} {status:<8}"
    return (line if seconds is None else f"{line} {seconds:.1f} s").rstrip()


def format_epoch_line(step: str, record: dict) -> str:
    """`train         epoch  3/10  loss 0.5233  accuracy 0.8125 ... 7.9 s`, from the JSON
    record training's PrintEpochMarker prints."""
    width = len(str(record["epochs"]))
    metrics = "  ".join(f"{name} {record[name]:.4f}" for name in _EPOCH_METRICS
                        if name in record)
    seconds = f"  {record['epoch_seconds']:.1f} s" if "epoch_seconds" in record else ""
    return (f"{step:<{_NAME_WIDTH}}   epoch {record['epoch']:>{width}}/{record['epochs']}  "
            f"{metrics}{seconds}")


def parse_epoch_marker(line: str) -> dict | None:
    """The record of an epoch-marker line (kfp.local indents a step's lines), else None."""
    text = line.strip()
    if not text.startswith(configs.EPOCH_MARKER + " "):
        return None
    try:
        return json.loads(text[len(configs.EPOCH_MARKER):])
    except json.JSONDecodeError:  # A line that merely starts like one.
        return None


def log_tail(path: Path, lines: int = configs.FAILURE_LOG_LINES) -> list[str]:
    with path.open(encoding="utf-8", errors="replace") as log:
        return [line.rstrip("\n") for line in deque(log, lines)]


class Console:
    """The terminal (or CI log) the progress lines go to, one whole line at a time."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()  # Parallel steps print whole lines, never mixed.

    def line(self, text: str) -> None:
        with self._lock:
            self.stream.write(text + "\n")
            self.stream.flush()


class StepLog(io.TextIOBase):
    """A running step's output: all of it to its log file; each epoch marker, rendered, to
    the console; with verbose, everything to the console too, as kfp.local prints it."""

    def __init__(self, path: Path, step: str, console: Console, verbose: bool) -> None:
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Appended: the tasks of a ParallelFor share one step name.
        self._file = path.open("a", encoding="utf-8", errors="replace")
        self._step, self._console, self._verbose = step, console, verbose
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._file.write(strip_colours(text))
        if self._verbose:
            self._console.stream.write(text)
            return len(text)
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            if (record := parse_epoch_marker(line)) is not None:
                self._console.line(format_epoch_line(self._step, record))
        return len(text)

    def flush(self) -> None:
        self._file.flush()
        if self._verbose:
            self._console.stream.flush()

    def close(self) -> None:
        super().close()  # Flushes first.
        self._file.close()


class _ThreadRouter(io.TextIOBase):
    """sys.stdout during a run: a thread running a step writes to that step's StepLog; any
    other write (kfp.local's lines around the steps) goes to `elsewhere`."""

    def __init__(self, elsewhere: TextIO) -> None:
        super().__init__()
        self.elsewhere = elsewhere
        self._current = threading.local()

    def writable(self) -> bool:
        return True

    def target(self) -> TextIO:
        return getattr(self._current, "log", None) or self.elsewhere

    def write(self, text: str) -> int:
        return self.target().write(text)

    def flush(self) -> None:
        self.target().flush()

    @contextlib.contextmanager
    def routed_to(self, log: StepLog) -> Iterator[None]:
        self._current.log = log
        try:
            yield
        finally:
            self._current.log = None


class Reporter:
    """Runs each step with its output in its log and reports it on the console."""

    def __init__(self, console: TextIO, verbose: bool = False) -> None:
        self.console = Console(console)
        self.verbose = verbose
        self.router = _ThreadRouter(console if verbose else io.StringIO())
        self.logs_dir: Path | None = None
        self.failed_log: Path | None = None  # The first failed step's log.

    def run_step(self, step: str, logs_dir: Path, run: Callable[[], tuple]) -> tuple:
        """Runs a step (`run` returns kfp.local's (outputs, status)), logging it to
        logs_dir/<step>.log; returns what `run` returns."""
        from kfp.local import status

        self.logs_dir = logs_dir
        path = logs_dir / f"{step}.log"
        if not self.verbose:
            self.console.line(format_step_line(step, "started"))
        started = time.monotonic()
        with StepLog(path, step, self.console, self.verbose) as log, self.router.routed_to(log):
            outputs, task_status = run()
        failed = task_status == status.Status.FAILURE
        if failed and self.failed_log is None:
            self.failed_log = path
        if not self.verbose:
            self.console.line(format_step_line(step, "failed" if failed else "done",
                                               time.monotonic() - started))
            if failed:
                self._print_tail(path)
        return outputs, task_status

    def _print_tail(self, path: Path) -> None:
        tail = log_tail(path)
        self.console.line(f"--- the last {len(tail)} lines of {path}:")
        for line in tail:
            self.console.line(line)
        self.console.line(f"--- the whole log: {path}")


@contextlib.contextmanager
def report_steps(reporter: Reporter) -> Iterator[Reporter]:
    """Within it, kfp.local's steps run through reporter (stdout routed as the module says)."""
    with _hook_task_dispatcher(reporter), contextlib.redirect_stdout(reporter.router), \
            _keep_print():
        yield reporter


@contextlib.contextmanager
def _keep_print() -> Iterator[None]:
    """kfp.local indents a task's prints by replacing builtins.print and putting back the one
    it found; tasks in parallel threads can put back another's, which stays on after the run
    (every later print indented)."""
    original = builtins.print
    try:
        yield
    finally:
        builtins.print = original


@contextlib.contextmanager
def _hook_task_dispatcher(reporter: Reporter) -> Iterator[None]:
    """Wraps kfp.local's per-task entry point, task_dispatcher.run_single_task_implementation,
    which kfp 2.17.0's orchestrator (orchestrator/task_executor.py) calls through the module
    for every container task, for SubprocessRunner and DockerRunner alike. A private
    function: tests/test_progress.py fails if a kfp upgrade changes it."""
    from kfp.local import executor_input_utils, task_dispatcher

    original = task_dispatcher.run_single_task_implementation

    def run_single_task_implementation(**kwargs):
        step = executor_input_utils.get_local_task_resource_name(kwargs["component_name"])
        logs_dir = Path(kwargs["pipeline_root"], kwargs["pipeline_resource_name"],
                        configs.LOGS_DIR)
        return reporter.run_step(step, logs_dir, lambda: original(**kwargs))

    task_dispatcher.run_single_task_implementation = run_single_task_implementation
    try:
        yield
    finally:
        task_dispatcher.run_single_task_implementation = original
