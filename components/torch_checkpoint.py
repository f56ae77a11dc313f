"""Reads a PyTorch state dict saved in torch's legacy (before 1.6, not zip) format as NumPy
arrays, without torch (a 200 MB dependency for one file). Only tensors, their storages and
OrderedDict are unpickled; anything else in the file is refused, so it cannot run code."""
import pickle
import struct
from collections import OrderedDict
from pathlib import Path

import numpy as np

from components.errors import TlpError

_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64,
                   "HalfStorage": np.float16, "LongStorage": np.int64, "IntStorage": np.int32,
                   "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
                   "BoolStorage": np.bool_}


def _rebuild_tensor_v2(storage, offset, size, stride, *_):
    return storage, offset, tuple(size), tuple(stride)


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, file):
        super().__init__(file)
        self.storages: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a plain state dict")

    def persistent_load(self, saved_id):
        _, dtype, key = saved_id[:3]  # ('storage', type, key, location, size, ...)
        self.storages[key] = dtype
        return key


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """name -> array, in the file's order."""
    try:
        with open(path, "rb") as f:
            if pickle.load(f) != _MAGIC:
                raise TlpError(f"{path} is not a legacy torch.save file (its magic number "
                               "differs); save it with _use_new_zipfile_serialization=False")
            pickle.load(f)  # Protocol version.
            pickle.load(f)  # System information (endianness, sizes).
            unpickler = _StateDictUnpickler(f)
            tensors = unpickler.load()
            storages = {}
            for key in pickle.load(f):
                dtype = np.dtype(unpickler.storages[key])
                (count,) = struct.unpack("<q", f.read(8))
                storages[key] = np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype)
    except (pickle.UnpicklingError, EOFError, struct.error, KeyError, ValueError) as error:
        raise TlpError(f"{path}: not a readable torch state dict ({error})") from error
    return OrderedDict(
        (name, np.lib.stride_tricks.as_strided(
            storages[key][offset:], shape=size,
            strides=[step * storages[key].itemsize for step in stride]).copy())
        for name, (key, offset, size, stride) in tensors.items())
