"""Chooses the Keras backend of a step. Keras reads KERAS_BACKEND once, when it is first
imported, so a step calls `select` before it imports keras or any module that does; this
module imports neither (import_tensorflow_quietly imports TensorFlow when called)."""
import os
import sys
import tempfile

from components import configs
from components.errors import TlpError


def validate(backend: str) -> None:
    if backend not in configs.BACKENDS:
        raise TlpError(f"backend={backend!r}; choose one of {', '.join(configs.BACKENDS)}.")


def select(backend: str) -> None:
    """Makes Keras use `backend` (tf.data still feeds it). Fails if Keras was already
    imported with another one: the process cannot switch."""
    validate(backend)
    keras = sys.modules.get("keras")
    if keras is not None:
        if keras.backend.backend() != backend:
            raise TlpError(f"backend={backend}: Keras was already imported with the "
                           f"{keras.backend.backend()} backend in this process.")
        return
    os.environ["KERAS_BACKEND"] = backend
    # As TensorFlow's memory growth: take GPU memory on demand, not 75% of it up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow without its C++ start-up notices (absl, oneDNN): they are logged
    before TensorFlow configures logging, ignore TF_CPP_MIN_LOG_LEVEL and go straight to file
    descriptor 2. Held in a temporary file, they are shown only if the import fails."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            held.seek(0)
            os.write(saved, held.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
