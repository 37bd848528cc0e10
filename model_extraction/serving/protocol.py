"""The Open Inference Protocol ("KServe v2") REST messages, as pydantic models.

The protocol (https://github.com/kserve/open-inference-protocol, REST section) is spoken by
KServe, NVIDIA Triton, Seldon MLServer and this project's server:

* ``GET  /v2/health/live``, ``GET /v2/health/ready``: liveness and readiness;
* ``GET  /v2``: server metadata; ``GET /v2/models/{name}``: model metadata (its tensors);
* ``POST /v2/models/{name}/infer``: a batch of named input tensors in, named outputs out, each
  tensor as ``{"name", "shape", "datatype", "data"}`` with ``data`` in row-major order.

Errors are ``{"error": "<message>"}`` with a 4xx or 5xx status.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

__all__ = [
    "DATATYPES",
    "ErrorResponse",
    "InferRequest",
    "InferResponse",
    "InputTensor",
    "ModelMetadata",
    "OutputTensor",
    "RequestedOutput",
    "ServerMetadata",
    "TensorMetadata",
]

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
"""The protocol's numeric datatypes and their numpy equivalents (``BYTES`` has none)."""

Number = StrictFloat
"""A JSON number (integers included); strings and booleans are refused (strict mode)."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")


class InputTensor(_Message):
    """One input tensor of an inference request."""

    name: str
    shape: list[StrictInt]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Number] | list[list[Number]] = Field(
        description="Row-major tensor data, flat or nested one level per row."
    )


class RequestedOutput(_Message):
    """An output the client asks for (all of the model's outputs when none is named)."""

    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(_Message):
    """``POST /v2/models/{name}/infer`` body.

    ``id`` is echoed back; this project's server also uses it as an idempotency key: a retried
    request with the same ``id`` and the same inputs is answered again without being charged.
    """

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InputTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class OutputTensor(_Message):
    """One output tensor of an inference response."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any]


class InferResponse(_Message):
    """Inference response. This server's ``parameters`` report ``charged_rows`` (what this
    request cost) and ``budget_remaining`` (rows left for the key, absent when unlimited)."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[OutputTensor]


class TensorMetadata(_Message):
    """Name, datatype and shape (``-1`` for the batch dimension) of a model tensor."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(_Message):
    """``GET /v2/models/{name}``."""

    name: str
    versions: list[str] | None = None
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(_Message):
    """``GET /v2``."""

    name: str
    version: str
    extensions: list[str]


class ErrorResponse(_Message):
    """Any error: a message saying what was wrong and what to do."""

    error: str
