"""A restricted unpickler for CIFAR-10's python batches.

The canonical batches are Python 2 pickles of a dict holding bytes, str, int, lists and one
numpy uint8 array. Plain `pickle` would import and call whatever a file names, so a tampered
file could run code. This unpickler resolves only a fixed allow-list: builtin containers and
scalars, and numpy's array reconstruction (with the dtype restricted to plain numbers, never
``object``). Any other global makes loading fail with `DatasetCorruptError`.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DatasetCorruptError

_ALLOWED_DTYPE_KINDS = frozenset("biuf")  # bool, signed, unsigned, float


def _safe_dtype(obj: Any, align: bool = False, copy: bool = False) -> np.dtype:
    name = obj.decode("ascii") if isinstance(obj, bytes) else obj
    if not isinstance(name, str):
        raise pickle.UnpicklingError(f"dtype from {type(name).__name__} refused")
    dtype = np.dtype(name, align=bool(align), copy=bool(copy))
    if dtype.kind not in _ALLOWED_DTYPE_KINDS or dtype.fields is not None:
        raise pickle.UnpicklingError(f"dtype {dtype} refused")
    return dtype


#: Stands for ``numpy.ndarray`` inside a pickle: it may be named, never called.
_NDARRAY = object()


def _safe_reconstruct(cls: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError("only numpy.ndarray may be reconstructed")
    # An empty array; the pickle's BUILD step then fills it via ndarray.__setstate__ with a
    # dtype that went through _safe_dtype.
    return np.ndarray((0,), np.uint8)


def _safe_frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(dtype, np.dtype) or dtype.kind not in _ALLOWED_DTYPE_KINDS:
        raise pickle.UnpicklingError(f"dtype {dtype} refused")
    array = np.frombuffer(bytes(buffer), dtype=dtype)
    return array.reshape(tuple(int(n) for n in shape), order="F" if order == "F" else "C")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "bytes"): bytes,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "str"): str,
    ("builtins", "int"): int,
    ("__builtin__", "dict"): dict,
    ("__builtin__", "list"): list,
    ("__builtin__", "str"): str,
    ("__builtin__", "int"): int,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _safe_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in the allow-list above."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def loads(data: bytes, path: Path | str = "<bytes>") -> Any:
    """Unpickle ``data`` with the allow-list; Python 2 strings come back as bytes.

    Raises `DatasetCorruptError` naming ``path`` for anything refused, truncated or malformed.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # pickle raises many types on malformed input
        raise DatasetCorruptError(path, f"not a loadable CIFAR batch pickle ({exc})") from exc
