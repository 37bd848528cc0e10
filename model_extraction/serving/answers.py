"""One answer per row: the output policy applied once, its noise seeded by the key and the row.

A defence that draws fresh noise for every answer is averaged away by asking the same question
many times (or naming the same output many times in one request). Here the noise of a row is a
function of the server's secret, the API key's name and the row's float64 bytes: a repeated
query (in one request or another, before or after a restart) gets the same answer, so averaging
gains nothing. Every output of a response derives from that one answer.

The functions here run in worker threads, a bounded chunk of rows at a time, so that a large
request never holds the event loop (or the interpreter) for long.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pydantic_core
from numpy.typing import NDArray

from model_extraction.defenses import OutputPolicy

__all__ = ["LogitModel", "Overflow", "evaluate_chunk", "noise_prefix", "row_normals",
           "serialize"]

_TWO_PI = 2.0 * np.pi


class LogitModel(Protocol):
    """What the server needs of a model: float64 logits and its input width."""

    @property
    def input_dim(self) -> int: ...

    def logits(self, x: NDArray[np.float64]) -> NDArray[np.float64]: ...


class Overflow(ValueError):
    """The model's outputs are not finite for some rows (inputs of too large a magnitude)."""

    def __init__(self, rows: int, first: int) -> None:
        self.rows, self.first = rows, first
        super().__init__(f"the model's outputs overflow float64 for {rows} rows (first: row "
                         f"{first}); send inputs of smaller magnitude")


def noise_prefix(secret: bytes, key_name: str) -> Any:
    """The hash state that seeds one key's noise (``hashlib.shake_256``, copied per row)."""
    return hashlib.shake_256(b"model-extraction noise\0" + secret + b"\0" + key_name.encode()
                             + b"\0")


def row_normals(prefix: Any, x: NDArray[np.float64], width: int) -> NDArray[np.float64]:
    """Standard normal draws, ``width`` per row of ``x``, each row's a function of its bytes.

    Each row's ``16 * width`` bytes of SHAKE-256 output give ``2 * width`` uniform 53-bit
    numbers, turned into normals by the Box-Muller transform. Identical rows get identical
    draws; any other row gets independent ones.
    """
    rows = np.ascontiguousarray(x, dtype="<f8")
    stride = rows.shape[1] * 8
    buf = rows.tobytes()
    out = bytearray()
    for i in range(len(rows)):
        h = prefix.copy()
        h.update(buf[i * stride : (i + 1) * stride])
        out += h.digest(16 * width)
    bits = np.frombuffer(bytes(out), dtype="<u8").reshape(len(rows), 2 * width) >> np.uint64(11)
    u1 = (bits[:, :width].astype(np.float64) + 1.0) * 2.0**-53  # (0, 1]
    u2 = bits[:, width:].astype(np.float64) * 2.0**-53  # [0, 1)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(_TWO_PI * u2)


def evaluate_chunk(model: LogitModel, policy: OutputPolicy, x: NDArray[np.float64],
                   names: Sequence[str], prefix: Any) -> list[NDArray[Any]]:
    """The outputs ``names`` (in order) for the rows ``x``: one policy answer per row.

    ``label`` is the argmax of the logits, or of the noisy answer when the policy adds noise
    (so that it agrees with the numeric output); any other name is the policy's answer.
    Raises :class:`Overflow` when the logits or the answer are not finite.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        logits = np.asarray(model.logits(x), dtype=np.float64)
        _check_finite(logits)
        answer = None
        noisy = policy.noise_sigma > 0
        if noisy or any(name != "label" for name in names):
            normal = row_normals(prefix, x, logits.shape[1]) if noisy else None
            answer = policy.apply(logits, normal=normal)
            if answer.dtype.kind == "f":
                _check_finite(answer)
    out = []
    for name in names:
        if name == "label":
            source = answer if noisy and answer is not None else logits
            out.append(np.argmax(source, axis=1).astype(np.int64)[:, None])
        else:
            assert answer is not None
            out.append(answer)
    return out


def _check_finite(y: NDArray[np.float64]) -> None:
    finite = np.isfinite(y).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise Overflow(len(bad), int(bad[0]))


def serialize(envelope: dict[str, Any], outputs: Sequence[tuple[str, NDArray[Any]]],
              chunk_rows: int) -> bytes:
    """The JSON response: ``envelope`` plus ``outputs``, each tensor's data written
    ``chunk_rows`` rows at a time (pydantic-core), so no single call holds the interpreter for
    long and no Python list of the whole output is built."""
    parts = [pydantic_core.to_json(envelope)[:-1], b',"outputs":[']
    for i, (name, y) in enumerate(outputs):
        head = pydantic_core.to_json({"name": name,
                                      "datatype": "INT64" if y.dtype.kind == "i" else "FP64",
                                      "shape": list(y.shape), "data": []})
        parts.append((b"," if i else b"") + head[:-2])  # ends with '"data":['
        for s in range(0, len(y), chunk_rows):
            parts.append((b"," if s else b"") + pydantic_core.to_json(
                y[s : s + chunk_rows].ravel().tolist())[1:-1])
        parts.append(b"]}")
    parts.append(b"]}")
    return b"".join(parts)
