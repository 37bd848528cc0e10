"""An inference request body read into an array, every field checked and bounded.

:func:`parse_request` is a pure function of the body's bytes and the deployment's
:class:`RequestRules`, so the server can run it in a thread for small bodies and in a worker
process (``anyio.to_process``) for large ones: parsing megabytes of JSON holds the Python
interpreter for a while, and in another process it holds nobody else's requests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError

from .protocol import InferRequest

__all__ = ["ACCEPTED_INPUT_DATATYPES", "ParsedRequest", "Refusal", "RequestRules",
           "describe_errors", "parse_request"]

ACCEPTED_INPUT_DATATYPES = ("FP64", "FP32")


@dataclass(frozen=True)
class RequestRules:
    """What a request must look like for this deployment.

    ``output_names`` are the outputs the model exposes; ``max_id_length`` bounds the request
    id (characters); ``input_range`` is ``(low, high)`` or ``None`` (any finite value).
    """

    input_name: str
    input_dim: int
    max_batch: int
    input_range: tuple[float, float] | None
    output_names: tuple[str, ...]
    max_id_length: int


@dataclass(frozen=True)
class ParsedRequest:
    """A valid request: its id, its ``(n, d)`` float64 rows, and the outputs asked for."""

    id: str | None
    x: NDArray[np.float64]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Refusal:
    """An invalid request: the HTTP status and the message for the client."""

    status: int
    message: str


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.refusal = Refusal(status, message)


def describe_errors(errors: list[dict[str, object]] | list[object]) -> str:
    """pydantic's validation errors as one message (the first three)."""
    parts = []
    for e in list(errors)[:3]:
        if not isinstance(e, dict):
            parts.append(str(e))
            continue
        loc = ".".join(str(p) for p in e.get("loc", ()) if not str(p).startswith("list["))
        parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "not a valid inference request: " + "; ".join(parts) + more


def parse_request(body: bytes | bytearray, rules: RequestRules) -> ParsedRequest | Refusal:
    """Parse and check a ``POST .../infer`` body; never raises for a bad body.

    Returns the request, or the :class:`Refusal` (400 malformed JSON, bad names, shapes, values
    or fields too long; 413 too many rows; 422 JSON that is not an inference request).
    """
    try:
        try:
            req = InferRequest.model_validate_json(body)
        except ValidationError as err:
            errors = err.errors()
            if any(e.get("type") == "json_invalid" for e in errors):
                raise _Refused(400, f"malformed JSON: {errors[0].get('msg')}") from None
            raise _Refused(422, describe_errors(list(errors))) from None
        if req.id is not None and len(req.id) > rules.max_id_length:
            raise _Refused(400, f"request id of {len(req.id):,} characters; at most "
                                f"{rules.max_id_length:,}")
        outputs = _outputs(req, rules)
        return ParsedRequest(req.id, _rows(req, rules), outputs)
    except _Refused as refused:
        return refused.refusal


def _outputs(req: InferRequest, rules: RequestRules) -> tuple[str, ...]:
    available = rules.output_names
    if not req.outputs:
        return available
    names = [o.name for o in req.outputs]
    unknown = [nm for nm in names if nm not in available]
    if unknown:
        raise _Refused(400, f"unknown output {unknown[0][:100]!r}; this model exposes "
                            f"{list(available)}")
    if len(set(names)) != len(names):
        raise _Refused(400, f"outputs named more than once ({len(names)} names, "
                            f"{len(set(names))} distinct): name each output at most once")
    return tuple(names)


def _rows(req: InferRequest, rules: RequestRules) -> NDArray[np.float64]:
    d = rules.input_dim
    if len(req.inputs) != 1 or req.inputs[0].name != rules.input_name:
        names = [t.name[:100] for t in req.inputs[:5]]
        raise _Refused(400, f"this model takes one input tensor named {rules.input_name!r}; "
                            f"got {names}" + (" ..." if len(req.inputs) > 5 else ""))
    tensor = req.inputs[0]
    if tensor.datatype not in ACCEPTED_INPUT_DATATYPES:
        raise _Refused(400, f"input datatype {tensor.datatype[:20]!r} is not accepted; send "
                            "FP64 (or FP32)")
    shape = tensor.shape
    if len(shape) != 2 or shape[1] != d or shape[0] < 1:
        raise _Refused(400, f"input shape {shape[:4]} does not match [n, {d}] with n >= 1")
    n = shape[0]
    if n > rules.max_batch:
        raise _Refused(413, f"batch of {n:,} rows exceeds the server's limit of "
                            f"{rules.max_batch:,} rows per request; split it")
    data = tensor.data
    nested = bool(data) and isinstance(data[0], list)
    if nested and (len(data) != n or any(len(row) != d for row in data)):  # type: ignore[arg-type]
        raise _Refused(400, f"nested input data does not form the shape {shape}")
    x = np.asarray(data, dtype=np.float64)
    if x.size != n * d:
        raise _Refused(400, f"input data has {x.size:,} values; shape {shape} needs {n * d:,}")
    x = x.reshape(n, d)
    if tensor.datatype == "FP32":
        x = x.astype(np.float32).astype(np.float64)
    _check_values(x, rules.input_range)
    x += 0.0  # -0.0 becomes 0.0: one input, one byte pattern (the noise is seeded by it)
    return x


def _check_values(x: NDArray[np.float64], input_range: tuple[float, float] | None) -> None:
    finite = np.isfinite(x)
    if not finite.all():
        rows = np.flatnonzero(~finite.all(axis=1))
        raise _Refused(400, f"input contains NaN or inf in {len(rows)} rows (first: row "
                            f"{int(rows[0])}); send finite values")
    if input_range is not None:
        lo, hi = input_range
        bad = (x < lo) | (x > hi)
        if bad.any():
            rows = np.flatnonzero(bad.any(axis=1))
            raise _Refused(400, f"input values must lie in [{lo:g}, {hi:g}]; {len(rows)} rows "
                                f"do not (first: row {int(rows[0])})")
