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
  400   malformed JSON; unknown or repeated output name; unknown input name; wrong
        datatype or shape; data that does not fill the shape; NaN or inf; values outside
        the input range; an id longer than ``max_id_length``; inputs so large that the
        model's outputs overflow float64 (not charged)
  401   no API key; 403: an unknown API key
  402   the key's query budget cannot pay for the batch (nothing is evaluated); a body
        larger than the key's remaining rows could fill is refused before it is read
  404   unknown model
  413   request body or batch larger than the server's limits
  422   a body that is JSON but not an inference request (e.g. strings as data)
  429   rate limit: retry after the ``Retry-After`` header (whole seconds; the body's
        ``retry_after`` gives the exact value)
  499   (audit log only) the client disconnected before sending its whole body
  ====  ===========================================================================

Promises kept under attack:

* **One answer per charged row.** The policy is applied once per row; its noise is a function
  of a server secret, the key and the row's bytes (:mod:`.answers`), so a repeated row (in one
  request or many, before or after a restart) gets the same answer and averaging gains nothing;
  an output may be named once per request.
* **Durable budgets and ids.** With an audit log, each charge is committed before its answer is
  sent, budgets are restored from the log at start-up, and an answered request id is found in
  the log: a restart, even ``kill -9``, neither refunds nor charges twice.
* **Bounded cost before payment.** The key is authenticated, rate-limited and its budget checked
  before the body is read; a body is read only up to what the key's remaining rows can fill;
  every field is bounded.
* **No request stalls the others.** Large bodies are parsed in a worker process
  (``anyio.to_process``), small ones and the evaluation in worker threads, a bounded chunk of
  rows at a time; the event loop only moves bytes.

A request ``id`` is an idempotency key: a request retried with the same id and the same body
(after a lost response, say) is answered again and not charged again.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import anyio.to_process
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from numpy.typing import NDArray
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from model_extraction.defenses import OutputPolicy
from model_extraction.oracle import OutputKind

from .answers import LogitModel, Overflow, evaluate_chunk, noise_prefix, serialize
from .audit import AuditLog
from .keys import ApiKey, BudgetRefusal, KeyRing, retry_after_header
from .protocol import ErrorResponse, InferResponse, ModelMetadata, ServerMetadata, TensorMetadata
from .request import ParsedRequest, Refusal, RequestRules, describe_errors, parse_request

__all__ = ["ApiError", "LogitModel", "ServerConfig", "ServingState", "create_app"]

SERVER_NAME = "model-extraction"
_INTERNAL = ("internal server error ({}); the request was not charged. Retry, or report it to the "
             "model's owner.")
_logger = logging.getLogger("model_extraction.serving")
BODY_OVERHEAD = 64 * 1024
"""Bytes of a request body beyond its rows (names, id, outputs); also what a key with no rows
left may still send (a retried request it already paid for)."""


def row_bytes(input_dim: int) -> int:
    """Most JSON bytes one row of ``input_dim`` float64 values takes: 32 per value (the
    shortest repr of a float64 has at most 24 characters, plus separators) and 16 per row."""
    return 32 * input_dim + 16


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
        Largest request body in bytes (larger: 413).
    input_range:
        ``(low, high)`` every input value must lie in (``None``: any finite value).
    log_path:
        SQLite audit log of every request (``None``: no log; budgets and answered ids then live
        in memory only, and a restart forgets them).
    store_inputs, audit_input_bytes:
        Whether the audit log keeps the input rows of answered requests, and at most how many
        bytes of them (the oldest dropped first; ``None``: no bound).
    seed:
        Seed of the noise defence. ``None`` (the default): a random secret, kept in the audit
        log so that a restart answers the same. Anyone who knows the seed can remove the noise.
    replay_cache:
        How many answered request ids (with a digest of their body) are remembered in memory
        for idempotent retries; the audit log remembers all of them.
    max_id_length:
        Longest request id, in characters (longer: 400).
    chunk_rows:
        Rows evaluated (and written to the response) per step in a worker thread.
    process_parse_bytes:
        Bodies larger than this are parsed in a worker process (``None``: always in a thread).
    input_name:
        Name of the input tensor.
    publish_tensors:
        Whether ``GET /v2/models/{name}`` lists the input and output tensors. The protocol
        allows empty lists, and some runtimes (MLServer's scikit-learn one) publish nothing;
        ``False`` serves like them, so clients must be told names and widths.
    docs:
        Serve the interactive documentation (``/docs``, ``/redoc``, ``/openapi.json``).
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
    audit_input_bytes: int | None = 2**30
    seed: int | None = None
    replay_cache: int = 65_536
    max_id_length: int = 256
    chunk_rows: int = 4096
    process_parse_bytes: int | None = 2**20
    input_name: str = "input"
    publish_tensors: bool = True
    docs: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(self.keys))
        if self.max_batch < 1 or self.max_request_bytes < 1:
            raise ValueError("max_batch and max_request_bytes must be positive")
        if self.input_range is not None and not self.input_range[0] < self.input_range[1]:
            raise ValueError(f"input_range must be (low, high) with low < high, got "
                             f"{self.input_range}")
        if self.replay_cache < 0:
            raise ValueError("replay_cache must be >= 0")
        if self.max_id_length < 1 or self.chunk_rows < 1:
            raise ValueError("max_id_length and chunk_rows must be positive")
        if self.audit_input_bytes is not None and self.audit_input_bytes < 0:
            raise ValueError("audit_input_bytes must be >= 0 (or None: no bound)")


class ApiError(Exception):
    """A request refused with an HTTP status and a message (sent as ``{"error": ...}``)."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.extra = status, message, headers, extra


@dataclass
class ServingState:
    """Everything the running server holds: the model, keys and budgets, the log, the ids."""

    model: LogitModel
    config: ServerConfig
    num_outputs: int
    keyring: KeyRing
    audit: AuditLog | None
    noise_secret: bytes
    answered: OrderedDict[tuple[str, str], bytes] = field(default_factory=OrderedDict)
    """Request ids answered (and charged), per key: (key name, id) → digest of the body."""
    admit_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def output_names(self) -> list[str]:
        """The output tensors this deployment exposes."""
        kind = self.config.policy.kind
        if kind is OutputKind.LABEL:
            return ["label"]
        return ["logits" if kind is OutputKind.LOGITS else "probabilities", "label"]

    @cached_property
    def rules(self) -> RequestRules:
        """What a request must look like (:func:`~.request.parse_request`)."""
        cfg = self.config
        return RequestRules(cfg.input_name, self.model.input_dim, cfg.max_batch,
                            cfg.input_range, tuple(self.output_names), cfg.max_id_length)

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

    def admit(self, key: ApiKey, request_id: str | None, digest: bytes,
              rows: int) -> int | BudgetRefusal:
        """Charge a request: 0 rows for a request id already answered with this body (in
        memory, else in the audit log), else ``rows`` if the budget pays, else the refusal.
        Atomic: two copies of one request in flight are charged once. Blocking (SQLite)."""
        with self.admit_lock:
            if request_id is not None:
                slot = (key.name, request_id)
                if self.answered.get(slot) == digest or (
                        self.audit is not None
                        and self.audit.answered(key.name, request_id, digest)):
                    self._remember(slot, digest)
                    return 0
            refusal = self.keyring.reserve(key, rows)
            if refusal is not None:
                return refusal
            if request_id is not None:
                self._remember((key.name, request_id), digest)
            return rows

    def release(self, key: ApiKey, request_id: str | None, rows: int) -> None:
        """Undo :meth:`admit` for a request that was not answered: refund, forget the id."""
        with self.admit_lock:
            if rows:
                self.keyring.refund(key, rows)
                if request_id is not None:
                    self.answered.pop((key.name, request_id), None)

    def _remember(self, slot: tuple[str, str], digest: bytes) -> None:
        if not self.config.replay_cache:
            return
        self.answered[slot] = digest
        self.answered.move_to_end(slot)
        while len(self.answered) > self.config.replay_cache:
            self.answered.popitem(last=False)

    def log(self, **record: Any) -> None:
        """Write one audit record (blocking; a no-op without a log)."""
        if self.audit is not None:
            self.audit.write(**record)

    async def record(self, **record: Any) -> None:
        """:meth:`log` in a worker thread (SQLite may wait for a large write)."""
        if self.audit is not None:
            await run_in_threadpool(self.log, **record)


def _noise_secret(config: ServerConfig, audit: AuditLog | None) -> bytes:
    if config.seed is not None:
        return hashlib.sha256(f"model-extraction seed {config.seed}".encode()).digest()
    if audit is not None:
        return audit.secret("noise")
    return secrets.token_bytes(32)


def _make_state(model: LogitModel, config: ServerConfig) -> ServingState:
    probe = np.zeros((1, model.input_dim))
    num_outputs = int(np.asarray(model.logits(probe)).shape[1])
    audit = None
    if config.log_path is not None:
        audit = AuditLog(config.log_path, store_inputs=config.store_inputs,
                         max_input_bytes=config.audit_input_bytes)
    keyring = KeyRing(config.keys, rate=config.rate_limit, burst=config.burst)
    if audit is not None:
        keyring.restore(*audit.charged_by_key())
    return ServingState(model=model, config=config, num_outputs=num_outputs, keyring=keyring,
                        audit=audit, noise_secret=_noise_secret(config, audit))


def create_app(model: LogitModel, config: ServerConfig | None = None, **options: Any) -> FastAPI:
    """A FastAPI application serving ``model`` with the Open Inference Protocol.

    ``model`` is a :class:`~model_extraction.network.ReLUNetwork` or anything with
    ``input_dim`` and ``logits``; ``config`` (or keyword ``options``) sets how it is deployed
    (:class:`ServerConfig`). ``app.state.serving`` is the :class:`ServingState` (budgets used,
    the audit log), for tests and administration. Run it with uvicorn, or with
    :func:`~model_extraction.serving.run.serve` / :class:`~model_extraction.serving.ServerThread`.
    Raises ``ValueError`` for inconsistent options and ``sqlite3.DatabaseError`` for an
    unusable audit log.
    """
    if config is None:
        config = ServerConfig(**options)
    elif options:
        raise TypeError("pass either a ServerConfig or keyword options, not both")
    state = _make_state(model, config)

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
        docs_url="/docs" if config.docs else None,
        redoc_url="/redoc" if config.docs else None,
        openapi_url="/openapi.json" if config.docs else None,
    )
    app.state.serving = state
    _install_error_handlers(app)
    _add_routes(app, state)
    return app


def _add_routes(app: FastAPI, state: ServingState) -> None:
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
        return _error(422, describe_errors(list(err.errors())))

    @app.exception_handler(Exception)
    async def internal_error(_: Request, err: Exception) -> JSONResponse:
        return _error(500, _INTERNAL.format(type(err).__name__))


# ---------------------------------------------------------------------------- infer
def _check_model(state: ServingState, name: str, version: str | None) -> None:
    cfg = state.config
    if name != cfg.model_name:
        raise ApiError(404, f"unknown model {name[:100]!r}; this server serves "
                            f"{cfg.model_name!r} (GET /v2/models/{{name}} for its metadata)")
    if version is not None and version != cfg.model_version:
        raise ApiError(404, f"unknown version {version[:100]!r} of {name!r}; versions: "
                            f"[{cfg.model_version!r}]")


def _api_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def _authenticate(state: ServingState, request: Request) -> ApiKey:
    """The request's key (401 without one, 403 for an unknown one), rate-limited (429)."""
    secret = _api_key(request)
    key = state.keyring.authenticate(secret)
    if key is None:
        if not secret:
            raise ApiError(401, "an API key is required: send 'Authorization: Bearer <key>' "
                                "(or 'X-API-Key: <key>')",
                           headers={"WWW-Authenticate": "Bearer"})
        raise ApiError(403, "invalid API key")
    wait = state.keyring.throttle(key)
    if wait > 0:
        raise ApiError(429, f"rate limit exceeded for this key; retry in {wait:.3f} s",
                       headers={"Retry-After": retry_after_header(wait)}, retry_after=wait)
    return key


def _body_limit(state: ServingState, key: ApiKey) -> tuple[int, ApiError]:
    """The most body bytes this key may send now, and the error for a larger body: the
    server's limit (413), or what the key's remaining rows, or a retry of its largest paid
    request, can fill (402)."""
    cfg = state.config
    too_big = ApiError(413, f"request body larger than the server's limit of "
                            f"{cfg.max_request_bytes:,} bytes; send fewer rows per request")
    left = state.keyring.remaining(key)
    if left is None:
        return cfg.max_request_bytes, too_big
    rows = max(left, state.keyring.largest(key))
    allowance = BODY_OVERHEAD + rows * row_bytes(state.model.input_dim)
    if allowance >= cfg.max_request_bytes:
        return cfg.max_request_bytes, too_big
    budget = key.budget or 0
    return allowance, ApiError(
        402, f"query budget exhausted: {budget - left:,} of {budget:,} rows used; a body over "
             f"{allowance:,} bytes holds more rows than the {left:,} left (or than a retry of "
             "this key's largest paid request), and was refused before it was read (nothing "
             "was evaluated)",
        budget=budget, used=budget - left, requested=left + 1)


async def _read_body(request: Request, limit: int, too_big: ApiError) -> bytearray:
    """The body, refused with ``too_big`` as soon as it is known to exceed ``limit`` bytes
    (from ``Content-Length``, before reading anything, or while reading)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    return body  # not copied into bytes: 20 ms per 40 MB holding the interpreter


async def _parse_in_process(state: ServingState, body: bytearray) -> ParsedRequest | None:
    """A large body parsed in a worker process (``None``: small, parse it in the thread)."""
    threshold = state.config.process_parse_bytes
    if threshold is None or len(body) <= threshold:
        return None
    return _parsed(await anyio.to_process.run_sync(parse_request, body, state.rules))


def _parsed(result: ParsedRequest | Refusal) -> ParsedRequest:
    if isinstance(result, Refusal):
        raise ApiError(result.status, result.message)
    return result


def _evaluate(state: ServingState, key: ApiKey,
              req: ParsedRequest) -> list[tuple[str, NDArray[Any]]]:
    """The outputs, ``chunk_rows`` rows at a time (each numpy call on a bounded chunk, so the
    event loop's thread gets the interpreter between them); 400 on overflow."""
    cfg, x, step = state.config, req.x, state.config.chunk_rows
    prefix = noise_prefix(state.noise_secret, key.name)
    parts = []
    for s in range(0, len(x), step):
        try:
            parts.append(evaluate_chunk(state.model, cfg.policy, x[s : s + step], req.outputs,
                                        prefix))
        except Overflow as err:
            raise ApiError(400, f"the model's outputs overflow float64 for {err.rows} rows "
                                f"(first: row {s + err.first}); send inputs of smaller "
                                "magnitude (the request was not charged)") from None
    return [(name, np.concatenate([p[i] for p in parts]) if len(parts) > 1 else parts[0][i])
            for i, name in enumerate(req.outputs)]


@dataclass
class _Trace:
    """What the audit log records of a request, filled in as it is learned."""

    key: str = "?"
    rows: int = 0
    request_id: str | None = None


async def _infer(state: ServingState, request: Request, name: str,
                 version: str | None) -> Response:
    trace = _Trace()
    try:
        return await _answer(state, request, name, version, trace)
    except ClientDisconnect:
        await state.record(key=trace.key, status=499, rows=trace.rows,
                           request_id=trace.request_id,
                           message="the client disconnected before sending its whole body")
        return Response(status_code=499)
    except ApiError as err:
        await state.record(key=trace.key, status=err.status, rows=trace.rows,
                           request_id=trace.request_id, message=err.message)
        raise
    except Exception as err:  # the model failed: a 500 for this request, the server carries on
        _logger.exception("inference failed")
        await state.record(key=trace.key, status=500, rows=trace.rows,
                           request_id=trace.request_id, message=f"{type(err).__name__}: {err}")
        raise ApiError(500, _INTERNAL.format(type(err).__name__)) from err


async def _answer(state: ServingState, request: Request, name: str, version: str | None,
                  trace: _Trace) -> Response:
    """Authenticate, bound and read the body, then (off the event loop) parse, charge,
    evaluate, log and serialise the answer."""
    _check_model(state, name, version)
    key = _authenticate(state, request)
    trace.key = key.name
    body = await _read_body(request, *_body_limit(state, key))
    parsed = await _parse_in_process(state, body)
    payload = await run_in_threadpool(_respond, state, key, body, parsed, trace)
    return Response(payload, media_type="application/json")


def _respond(state: ServingState, key: ApiKey, body: bytearray, parsed: ParsedRequest | None,
             trace: _Trace) -> bytes:
    """The answer's bytes, the charge committed to the audit log first (blocking: runs in a
    worker thread). Raises :class:`ApiError` for a refused request."""
    req = parsed if parsed is not None else _parsed(parse_request(body, state.rules))
    trace.request_id, trace.rows = req.id, len(req.x)
    digest = hashlib.sha256(body).digest()
    charged = state.admit(key, req.id, digest, trace.rows)
    if isinstance(charged, BudgetRefusal):
        raise ApiError(
            402, f"query budget exhausted: {charged.used:,} of {charged.budget:,} rows used, "
                 f"a batch of {charged.requested:,} was refused (nothing was evaluated)",
            budget=charged.budget, used=charged.used, requested=charged.requested,
        )
    try:
        outputs = _evaluate(state, key, req)
        params: dict[str, Any] = {"charged_rows": charged}
        if not charged:
            params["replayed"] = True
        left = state.keyring.remaining(key)
        if left is not None:
            params["budget_remaining"] = left
        envelope = {"model_name": state.config.model_name,
                    "model_version": state.config.model_version, "parameters": params}
        if req.id is not None:
            envelope["id"] = req.id
        payload = serialize(envelope, outputs, state.config.chunk_rows)
        # Committed before the answer leaves: a kill after this neither refunds nor recharges.
        state.log(key=key.name, status=200, rows=trace.rows, charged=charged, request_id=req.id,
                  inputs=req.x if charged else None, digest=digest if charged else None,
                  message=None if charged else "replayed")
    except BaseException:
        state.release(key, req.id, charged)
        raise
    return payload
