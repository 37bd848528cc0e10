"""Serve a victim over HTTP with the Open Inference Protocol, as a model owner would deploy it.

Jagielski et al. (2020, §3) model the adversary as a client of a prediction API that answers
queries, charges for them, and reveals logits, probabilities, top-k or labels. This module is
such an API: :func:`create_app` returns a FastAPI application speaking the KServe v2 REST
protocol (see :mod:`.protocol`) with

* API keys, a query budget per key counted in input rows, a token-bucket rate limit per key
  (``429`` with ``Retry-After``), and an audit log of every request per key (:mod:`.audit`);
* an output policy chosen at start-up (:class:`~model_extraction.defenses.OutputPolicy`): raw
  float64 logits, probabilities, top-k, label only, rounding, Gaussian noise, reverse sigmoid;
* validation of every request at the boundary, each failure a 4xx with a message:

  ====  ===========================================================================
  400   malformed JSON; unknown input or output name; wrong datatype or shape; data
        that does not fill the shape; NaN or inf; values outside the input range
  401   no API key; 403: an unknown API key
  402   the key's query budget cannot pay for the batch (nothing is evaluated)
  404   unknown model
  413   request body or batch larger than the server's limits
  422   a body that is JSON but not an inference request (e.g. strings as data)
  429   rate limit: retry after the ``Retry-After`` header (whole seconds; the body's
        ``retry_after`` gives the exact value)
  ====  ===========================================================================

A request ``id`` is an idempotency key: a request retried with the same id and the same body
(after a lost response, say) is answered from a small cache and not charged again.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pydantic_core
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from numpy.typing import NDArray
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from model_extraction.defenses import OutputPolicy
from model_extraction.oracle import OutputKind

from .audit import AuditLog
from .keys import ApiKey, KeyRing, retry_after_header
from .protocol import (
    ErrorResponse,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ServerMetadata,
    TensorMetadata,
)

__all__ = ["ApiError", "ServerConfig", "ServingState", "create_app"]

SERVER_NAME = "model-extraction"
_INTERNAL = ("internal server error ({}); the request was not charged. Retry, or report it to the "
             "model's owner.")
_logger = logging.getLogger("model_extraction.serving")
ACCEPTED_INPUT_DATATYPES = ("FP64", "FP32")


class LogitModel(Protocol):
    """What the server needs of a model: float64 logits and its input width."""

    @property
    def input_dim(self) -> int: ...

    def logits(self, x: NDArray[np.float64]) -> NDArray[np.float64]: ...


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """How the victim is deployed.

    Parameters
    ----------
    model_name, model_version:
        The name in ``/v2/models/{name}`` and the version reported.
    policy:
        What the API returns (:class:`~model_extraction.defenses.OutputPolicy`).
    keys:
        API keys with their budgets; none: an open server (no key needed, no budget).
    rate_limit, burst:
        Default per-key rate limit in requests per second (``None``: none) and bucket size.
    max_batch:
        Most input rows per request (larger: 413).
    max_request_bytes:
        Largest request body (larger: 413).
    input_range:
        ``(low, high)`` every input value must lie in (``None``: any finite value).
    log_path:
        SQLite audit log of every request (``None``: no log).
    store_inputs:
        Whether the audit log keeps the input rows of answered requests.
    seed:
        Seed of the noise defence.
    replay_cache:
        How many answered requests are kept for idempotent retries.
    input_name:
        Name of the input tensor.
    publish_tensors:
        Whether ``GET /v2/models/{name}`` lists the input and output tensors. The protocol
        allows empty lists, and some runtimes (MLServer's scikit-learn one) publish nothing;
        ``False`` serves like them, so clients must be told names and widths.
    """

    model_name: str = "victim"
    model_version: str = "1"
    policy: OutputPolicy = field(default_factory=OutputPolicy)
    keys: tuple[ApiKey, ...] = ()
    rate_limit: float | None = None
    burst: float | None = None
    max_batch: int = 4096
    max_request_bytes: int = 64 * 2**20
    input_range: tuple[float, float] | None = None
    log_path: Path | None = None
    store_inputs: bool = True
    seed: int | None = 0
    replay_cache: int = 128
    input_name: str = "input"
    publish_tensors: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(self.keys))
        if self.max_batch < 1 or self.max_request_bytes < 1:
            raise ValueError("max_batch and max_request_bytes must be positive")
        if self.input_range is not None and not self.input_range[0] < self.input_range[1]:
            raise ValueError(f"input_range must be (low, high) with low < high, got "
                             f"{self.input_range}")
        if self.replay_cache < 0:
            raise ValueError("replay_cache must be >= 0")


class ApiError(Exception):
    """A request refused with an HTTP status and a message (sent as ``{"error": ...}``)."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.extra = status, message, headers, extra


@dataclass
class ServingState:
    """Everything the running server holds: the model, keys and budgets, the log, the cache."""

    model: LogitModel
    config: ServerConfig
    num_outputs: int
    keyring: KeyRing
    audit: AuditLog | None
    rng: np.random.Generator
    rng_lock: threading.Lock = field(default_factory=threading.Lock)
    replays: OrderedDict[tuple[str, str], tuple[bytes, list[tuple[str, NDArray[Any]]]]] = (
        field(default_factory=OrderedDict)
    )
    """Answers kept for idempotent retries: (key, request id) → (body digest, outputs)."""
    replay_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def output_names(self) -> list[str]:
        """The output tensors this deployment exposes."""
        kind = self.config.policy.kind
        if kind is OutputKind.LABEL:
            return ["label"]
        return ["logits" if kind is OutputKind.LOGITS else "probabilities", "label"]

    def metadata(self) -> ModelMetadata:
        cfg = self.config
        outputs = [
            TensorMetadata(name=name, datatype="INT64", shape=[-1, 1]) if name == "label"
            else TensorMetadata(name=name, datatype="FP64", shape=[-1, self.num_outputs])
            for name in self.output_names
        ]
        inputs = [TensorMetadata(name=cfg.input_name, datatype="FP64",
                                 shape=[-1, self.model.input_dim])]
        if not cfg.publish_tensors:
            inputs, outputs = [], []
        return ModelMetadata(name=cfg.model_name, versions=[cfg.model_version],
                             platform="numpy_relu_fp64", inputs=inputs, outputs=outputs)

    def log(self, **record: Any) -> None:
        if self.audit is not None:
            self.audit.write(**record)


def create_app(model: LogitModel, config: ServerConfig | None = None, **options: Any) -> FastAPI:
    """A FastAPI application serving ``model`` with the Open Inference Protocol.

    ``model`` is a :class:`~model_extraction.network.ReLUNetwork` or anything with
    ``input_dim`` and ``logits``; ``config`` (or keyword ``options``) sets how it is deployed
    (:class:`ServerConfig`). ``app.state.serving`` is the :class:`ServingState` (budgets used,
    the audit log), for tests and administration. Run it with uvicorn, or with
    :func:`~model_extraction.serving.run.serve` / :class:`~model_extraction.serving.ServerThread`.
    """
    if config is None:
        config = ServerConfig(**options)
    elif options:
        raise TypeError("pass either a ServerConfig or keyword options, not both")
    probe = np.zeros((1, model.input_dim))
    num_outputs = int(np.asarray(model.logits(probe)).shape[1])
    state = ServingState(
        model=model, config=config, num_outputs=num_outputs,
        keyring=KeyRing(config.keys, rate=config.rate_limit, burst=config.burst),
        audit=None if config.log_path is None else AuditLog(config.log_path,
                                                           store_inputs=config.store_inputs),
        rng=np.random.default_rng(config.seed),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if state.audit is not None:
            state.audit.close()

    app = FastAPI(
        title=f"{SERVER_NAME}: {config.model_name}",
        description="Open Inference Protocol (KServe v2) REST endpoint serving a victim model "
                    f"({config.policy.describe()}).",
        lifespan=lifespan,
    )
    app.state.serving = state
    _install_error_handlers(app)

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.get("/v2", response_model=ServerMetadata)
    async def server_metadata() -> ServerMetadata:
        from model_extraction import __version__

        return ServerMetadata(name=SERVER_NAME, version=__version__, extensions=[])

    @app.get("/v2/models/{name}", response_model=ModelMetadata,
             responses={404: {"model": ErrorResponse}})
    async def model_metadata(name: str) -> ModelMetadata:
        _check_model(state, name, None)
        return state.metadata()

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str) -> dict[str, Any]:
        _check_model(state, name, None)
        return {"name": name, "ready": True}

    responses: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse} for code in (400, 401, 402, 403, 404, 413, 422, 429)
    }

    @app.post("/v2/models/{name}/infer", response_model=InferResponse, responses=responses)
    async def infer(name: str, request: Request) -> Response:
        return await _infer(state, request, name, None)

    @app.post("/v2/models/{name}/versions/{version}/infer", response_model=InferResponse,
              responses=responses)
    async def infer_version(name: str, version: str, request: Request) -> Response:
        return await _infer(state, request, name, version)

    return app


# --------------------------------------------------------------------------- errors
def _error(status: int, message: str, headers: dict[str, str] | None = None,
           **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return _error(err.status, err.message, err.headers, **err.extra)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return _error(err.status_code, str(err.detail), dict(err.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
        return _error(422, _describe_errors(err.errors()))

    @app.exception_handler(Exception)
    async def internal_error(_: Request, err: Exception) -> JSONResponse:
        return _error(500, _INTERNAL.format(type(err).__name__))


def _describe_errors(errors: Any) -> str:
    parts = []
    for e in list(errors)[:3]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if not str(p).startswith("list["))
        parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "not a valid inference request: " + "; ".join(parts) + more


# ---------------------------------------------------------------------------- infer
def _check_model(state: ServingState, name: str, version: str | None) -> None:
    cfg = state.config
    if name != cfg.model_name:
        raise ApiError(404, f"unknown model {name!r}; this server serves {cfg.model_name!r} "
                            "(GET /v2/models/{name} for its metadata)")
    if version is not None and version != cfg.model_version:
        raise ApiError(404, f"unknown version {version!r} of {name!r}; versions: "
                            f"[{cfg.model_version!r}]")


def _api_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


async def _read_body(request: Request, limit: int) -> bytes:
    too_big = ApiError(413, f"request body larger than the server's limit of {limit:,} bytes; "
                            "send fewer rows per request")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    return bytes(body)


def _parse(body: bytes) -> InferRequest:
    try:
        return InferRequest.model_validate_json(body)
    except ValidationError as err:
        errors = err.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            raise ApiError(400, f"malformed JSON: {errors[0].get('msg')}") from None
        raise ApiError(422, _describe_errors(errors)) from None


def _inputs(state: ServingState, req: InferRequest) -> NDArray[np.float64]:
    cfg = state.config
    d = state.model.input_dim
    if len(req.inputs) != 1 or req.inputs[0].name != cfg.input_name:
        names = [t.name for t in req.inputs]
        raise ApiError(400, f"this model takes one input tensor named {cfg.input_name!r}; got "
                            f"{names}")
    tensor = req.inputs[0]
    if tensor.datatype not in ACCEPTED_INPUT_DATATYPES:
        raise ApiError(400, f"input datatype {tensor.datatype!r} is not accepted; send FP64 "
                            "(or FP32)")
    shape = tensor.shape
    if len(shape) != 2 or shape[1] != d or shape[0] < 1:
        raise ApiError(400, f"input shape {shape} does not match [n, {d}] with n >= 1")
    n = shape[0]
    if n > cfg.max_batch:
        raise ApiError(413, f"batch of {n:,} rows exceeds the server's limit of "
                            f"{cfg.max_batch:,} rows per request; split it")
    data = tensor.data
    nested = bool(data) and isinstance(data[0], list)
    if nested and (len(data) != n or any(len(row) != d for row in data)):  # type: ignore[arg-type]
        raise ApiError(400, f"nested input data does not form the shape {shape}")
    x = np.asarray(data, dtype=np.float64)
    if x.size != n * d:
        raise ApiError(400, f"input data has {x.size:,} values; shape {shape} needs {n * d:,}")
    x = x.reshape(n, d)
    if tensor.datatype == "FP32":
        x = x.astype(np.float32).astype(np.float64)
    finite = np.isfinite(x)
    if not finite.all():
        rows = np.flatnonzero(~finite.all(axis=1))
        raise ApiError(400, f"input contains NaN or inf in {len(rows)} rows (first: row "
                            f"{int(rows[0])}); send finite values")
    if cfg.input_range is not None:
        lo, hi = cfg.input_range
        bad = (x < lo) | (x > hi)
        if bad.any():
            rows = np.flatnonzero(bad.any(axis=1))
            raise ApiError(400, f"input values must lie in [{lo:g}, {hi:g}]; {len(rows)} rows do "
                                f"not (first: row {int(rows[0])})")
    return x


def _requested_outputs(state: ServingState, req: InferRequest) -> list[str]:
    available = state.output_names
    if not req.outputs:
        return available
    names = [o.name for o in req.outputs]
    unknown = [nm for nm in names if nm not in available]
    if unknown:
        raise ApiError(400, f"unknown output {unknown[0]!r}; this model exposes {available}")
    return names


def _evaluate(
    state: ServingState, x: NDArray[np.float64], names: list[str]
) -> list[tuple[str, NDArray[Any]]]:
    logits = np.asarray(state.model.logits(x), dtype=np.float64)
    out = []
    for name in names:
        if name == "label":
            y: NDArray[Any] = np.argmax(logits, axis=1).astype(np.int64)[:, None]
        else:
            with state.rng_lock:
                y = state.config.policy.apply(logits, state.rng)
        if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
            raise RuntimeError("the model produced NaN or inf")
        out.append((name, y))
    return out


def _answer(state: ServingState, request_id: str | None, outputs: list[tuple[str, NDArray[Any]]],
            parameters: dict[str, Any]) -> Response:
    payload: dict[str, Any] = {
        "model_name": state.config.model_name,
        "model_version": state.config.model_version,
        "outputs": [{"name": name, "datatype": "INT64" if y.dtype.kind == "i" else "FP64",
                     "shape": list(y.shape), "data": y.ravel().tolist()}
                    for name, y in outputs],
        "parameters": parameters,
    }
    if request_id is not None:
        payload["id"] = request_id
    return Response(pydantic_core.to_json(payload), media_type="application/json")


async def _infer(state: ServingState, request: Request, name: str,
                 version: str | None) -> Response:
    cfg = state.config
    key_name, rows, request_id = "?", 0, None
    x = None
    try:
        _check_model(state, name, version)
        secret = _api_key(request)
        key = state.keyring.authenticate(secret)
        if key is None:
            if not secret:
                raise ApiError(401, "an API key is required: send 'Authorization: Bearer <key>' "
                                    "(or 'X-API-Key: <key>')",
                               headers={"WWW-Authenticate": "Bearer"})
            raise ApiError(403, "invalid API key")
        key_name = key.name
        wait = state.keyring.throttle(key)
        if wait > 0:
            raise ApiError(429, f"rate limit exceeded for this key; retry in {wait:.3f} s",
                           headers={"Retry-After": retry_after_header(wait)}, retry_after=wait)
        body = await _read_body(request, cfg.max_request_bytes)
        req = _parse(body)
        request_id = req.id
        x = _inputs(state, req)
        rows = len(x)
        names = _requested_outputs(state, req)
        digest = hashlib.sha256(body).digest()
        if request_id is not None and cfg.replay_cache:
            with state.replay_lock:
                hit = state.replays.get((key.name, request_id))
            if hit is not None and hit[0] == digest:
                state.log(key=key_name, status=200, rows=rows, charged=0,
                          request_id=request_id, message="replayed")
                return _answer(state, request_id, hit[1], {
                    "charged_rows": 0, "replayed": True, **_remaining(state, key)})
        refusal = state.keyring.reserve(key, rows)
        if refusal is not None:
            raise ApiError(
                402, f"query budget exhausted: {refusal.used:,} of {refusal.budget:,} rows used, "
                     f"a batch of {refusal.requested:,} was refused (nothing was evaluated)",
                budget=refusal.budget, used=refusal.used, requested=refusal.requested,
            )
        try:
            outputs = _evaluate(state, x, names)
        except Exception:
            state.keyring.refund(key, rows)
            raise
        if request_id is not None and cfg.replay_cache:
            with state.replay_lock:
                state.replays[(key.name, request_id)] = (digest, outputs)
                while len(state.replays) > cfg.replay_cache:
                    state.replays.popitem(last=False)
        response = _answer(state, request_id, outputs,
                           {"charged_rows": rows, **_remaining(state, key)})
        state.log(key=key_name, status=200, rows=rows, charged=rows, request_id=request_id,
                  inputs=x)
        return response
    except ApiError as err:
        state.log(key=key_name, status=err.status, rows=rows, request_id=request_id,
                  message=err.message)
        raise
    except Exception as err:  # the model failed: a 500 for this request, the server carries on
        _logger.exception("inference failed")
        state.log(key=key_name, status=500, rows=rows, request_id=request_id,
                  message=f"{type(err).__name__}: {err}")
        raise ApiError(500, _INTERNAL.format(type(err).__name__)) from err


def _remaining(state: ServingState, key: ApiKey) -> dict[str, int]:
    left = state.keyring.remaining(key)
    return {} if left is None else {"budget_remaining": left}
