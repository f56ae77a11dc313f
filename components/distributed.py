"""Training over several processes, one per node, on Keras's JAX backend: the variables
Kubeflow Trainer's jax-distributed runtime gives each node, keras.distribution.initialize,
which process is the chief (the one that writes), and which TFRecord shards each reads.

Every process runs the same code on its own part of the data; Keras's DataParallel spans the
devices of every process, so the weights stay identical and each global batch is split over
all devices. Imports neither Keras nor JAX at module level: keras_backend.select comes first.
"""
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from components import configs
from components.errors import TlpError


@dataclass(frozen=True)
class Processes:
    count: int
    index: int
    coordinator: str  # host:port of process 0

    @property
    def chief(self) -> bool:
        return self.index == 0

    def environment(self) -> dict[str, str]:
        """The JAX_* variables that describe this process, as the runtime sets them
        (from_environment reads them back): for processes started on one machine."""
        return {configs.JAX_NUM_PROCESSES_ENV: str(self.count),
                configs.JAX_PROCESS_ID_ENV: str(self.index),
                configs.JAX_COORDINATOR_ADDRESS_ENV: self.coordinator}


def from_environment(environ: Mapping[str, str] = os.environ) -> Processes | None:
    """The processes the runtime's JAX_* variables describe; None without them (one process)."""
    count = environ.get(configs.JAX_NUM_PROCESSES_ENV)
    if not count:
        return None
    names = (configs.JAX_PROCESS_ID_ENV, configs.JAX_COORDINATOR_ADDRESS_ENV)
    missing = [name for name in names if not environ.get(name)]
    if missing:
        raise TlpError(f"{configs.JAX_NUM_PROCESSES_ENV}={count} but {', '.join(missing)} "
                       "unset: run on Kubeflow Trainer's jax-distributed runtime, which sets "
                       "them all.")
    address = environ[configs.JAX_COORDINATOR_ADDRESS_ENV]
    port = environ.get(configs.JAX_COORDINATOR_PORT_ENV)
    if port and ":" not in address:
        address = f"{address}:{port}"
    processes = Processes(int(count), int(environ[configs.JAX_PROCESS_ID_ENV]), address)
    if not 0 <= processes.index < processes.count:
        raise TlpError(f"{configs.JAX_PROCESS_ID_ENV}={processes.index} is not in "
                       f"[0, {processes.count}).")
    return processes


def initialize(processes: Processes) -> None:
    """Joins the processes (blocks until all have joined): keras.distribution.initialize
    starts jax.distributed with process 0 as coordinator. Before any JAX computation."""
    import keras

    if keras.backend.backend() != "jax":
        raise TlpError(f"training over {processes.count} processes needs Keras's jax backend, "
                       f"not {keras.backend.backend()}.")
    keras.distribution.initialize(processes.coordinator, processes.count, processes.index)
    import jax

    print(f"distributed: process {jax.process_index()} of {jax.process_count()} "
          f"(coordinator {processes.coordinator}): {jax.local_device_count()} local of "
          f"{jax.device_count()} device(s)", flush=True)


def current() -> tuple[int, int]:
    """(this process's index, the process count): (0, 1) unless jax.distributed runs."""
    keras = sys.modules.get("keras")
    if keras is None or keras.backend.backend() != "jax":
        return 0, 1
    import jax

    return jax.process_index(), jax.process_count()


def is_chief() -> bool:
    return current()[0] == 0


def own_shards(files: list[str], index: int, count: int) -> tuple[list[str], bool]:
    """The shard files process `index` of `count` reads, and whether it must also keep only
    every count-th record of them: with at least one shard per process each reads its own
    (files index, index + count, ...); with fewer, every process reads them all and keeps
    its share of the records (tf.data's shard)."""
    if count == 1:
        return files, False
    if len(files) >= count:
        return files[index::count], False
    return files, True


def describe_shards(split: str, files: list[str], by_record: bool, index: int,
                    count: int) -> str:
    names = ", ".join(Path(file).name for file in files)
    share = f" (every {count}th record from {index})" if by_record else ""
    return f"distributed: process {index} of {count} reads {split} shards {names}{share}"
