"""A remote victim as an oracle: the Open Inference Protocol (KServe v2 REST) over HTTP.

Jagielski et al. (2020, §3) attack a model behind a prediction API. :class:`RemoteOracle` is
that API seen from the attacker: an :class:`~model_extraction.oracle.Oracle` like any other, so
every attack of this project runs against a URL exactly as against an in-process victim. It
speaks the v2 protocol (``POST /v2/models/{name}/infer``), so it also works against KServe,
Triton or MLServer, and it

* names the input tensor and the output tensor it wants (``outputs`` in the request), and
  checks the datatype that comes back (float64 for logits, §6.1; an integer type for labels);
* splits a batch into requests of ``batch_size`` rows sent ``concurrency`` at a time;
* retries timeouts, connection errors and ``5xx`` with jittered exponential backoff
  (tenacity), reusing the request id so that this project's server does not charge a retried
  request twice;
* against a rate limit (``429``), waits the server's ``Retry-After`` times a random factor in
  [1, 2) (so that workers do not retry in lockstep) and paces every worker's requests with a
  shared interval that doubles on each ``429`` and shrinks by 5% on each success (AIMD):
  an attack at any concurrency finishes against any rate limit, only slower. A ``429`` does
  not use up ``retries`` (at most :data:`MAX_RATE_LIMITED` in a row per request);
* keeps a client-side budget (:attr:`budget`, in rows asked, as every oracle does) and follows
  the server's (a ``402`` becomes :class:`~model_extraction.oracle.BudgetExhaustedError`);
* with ``log=path``, stores every answer in SQLite (:mod:`.querylog`) and never pays for a row
  already answered: a killed attack restarted with the same seed resumes for free.

:attr:`queries` counts rows asked (as in process); :attr:`paid` counts rows the server charged.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydantic_core
from numpy.typing import NDArray
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    wait_exponential,
    wait_random,
)

from model_extraction.oracle import BudgetExhaustedError, Oracle, OracleOutputError, OutputKind
from model_extraction.serving.protocol import DATATYPES

from .querylog import LogScope, QueryLog

__all__ = ["MAX_RATE_LIMITED", "RemoteOracle", "RemoteOracleError", "RemoteRefusedError"]

MAX_RATE_LIMITED = 1000
"""Most ``429`` answers in a row to one request before the oracle gives up."""

_FLOAT_TYPES = ("FP64", "FP32", "FP16")
_INT_TYPES = ("INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT16", "UINT8")
_RETRY_STATUS = (429, 500, 502, 503, 504)
_DEFAULT_OUTPUT = {
    OutputKind.LOGITS: ("logits", "logit", "scores"),
    OutputKind.PROBABILITIES: ("probabilities", "probs", "probability", "softmax"),
    OutputKind.TOP_K: ("probabilities", "probs", "top_k", "top_k_probabilities"),
    OutputKind.LABEL: ("label", "labels", "class", "classes", "predictions"),
}
_KNOWN_OUTPUTS = {"predict_proba": OutputKind.PROBABILITIES, "predict": OutputKind.LABEL}
"""Output names of MLServer's scikit-learn runtime, recognised but never chosen by default."""


def _check_output_type(name: str, kind: OutputKind, datatype: str) -> None:
    if kind is OutputKind.LABEL and datatype not in _INT_TYPES:
        raise ValueError(f"output {name!r} is {datatype}, not an integer label")
    if kind is not OutputKind.LABEL and datatype not in _FLOAT_TYPES:
        raise ValueError(f"output {name!r} is {datatype}; {kind.value} needs a "
                         "floating-point output")


class RemoteOracleError(RuntimeError):
    """The server could not be used: unreachable after all retries, or an unusable answer."""


class RemoteRefusedError(RemoteOracleError):
    """The server refused the request for good (a 4xx other than 402 and 429)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"the server answered {status}: {message}")


class _Transient(Exception):
    """A failure worth retrying: 429 or 5xx (``retry_after``: the server's requested wait)."""

    def __init__(self, status: int, message: str, retry_after: float | None) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.retry_after = status, retry_after


def _transient(err: BaseException) -> bool:
    if isinstance(err, _Transient | httpx.TimeoutException):
        return True
    return isinstance(err, httpx.TransportError) and not isinstance(err, httpx.UnsupportedProtocol)


def _error_text(resp: httpx.Response) -> tuple[str, dict[str, Any]]:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300] or resp.reason_phrase, {}
    if isinstance(body, dict):
        return str(body.get("error", body)), body
    return str(body)[:300], {}


def _retry_after(resp: httpx.Response, body: dict[str, Any]) -> float | None:
    """The server's requested wait: the body's exact ``retry_after``, else the header."""
    for value in (body.get("retry_after"), resp.headers.get("retry-after")):
        try:
            if value is not None:
                return max(0.0, float(value))
        except (TypeError, ValueError):
            continue
    return None


class _Pacer:
    """The client-side request rate shared by all workers, adapted to the server's 429s.

    Request starts are spaced by ``interval`` seconds (0: unpaced); a ``429`` doubles it (to at
    least 10 ms, at most ``ceiling``), each success shrinks it by 5%, below 1 ms to 0.
    """

    def __init__(self, ceiling: float) -> None:
        self.interval, self.ceiling = 0.0, ceiling
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Sleep until this worker's turn to start a request."""
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)

    def throttled(self) -> None:
        with self._lock:
            self.interval = min(self.ceiling, max(0.01, 2.0 * self.interval))

    def succeeded(self) -> None:
        with self._lock:
            self.interval = 0.0 if self.interval < 1e-3 else 0.95 * self.interval


class RemoteOracle(Oracle):
    """An oracle that queries a victim served with the Open Inference Protocol.

    Parameters
    ----------
    url:
        The server (``http://host:port``), or the model's URL
        (``http://host:port/v2/models/NAME``), which then also gives ``model``.
    model:
        The model's name.
    api_key:
        Sent as ``Authorization: Bearer <api_key>``.
    input_name, output_name:
        The input tensor to fill and the output tensor to ask for; by default the model's only
        input, and the output named after ``output_kind`` (``logits``, ``probabilities``,
        ``label``).
    output_kind:
        What the output is (:class:`~model_extraction.oracle.OutputKind`); by default guessed
        from ``output_name``, else ``logits``.
    input_dim:
        ``d``; by default read from the model's metadata.
    batch_size, concurrency:
        Rows per request, and requests in flight at once.
    timeout:
        Seconds for each request.
    retries, backoff, backoff_max:
        Retries per request after the first attempt; first and largest backoff in seconds
        (exponential, with jitter). A ``429`` is not counted: its ``Retry-After`` is honoured
        (times a random factor in [1, 2)) and the shared request rate adapts.
    budget:
        Client-side query budget in rows (see :class:`~model_extraction.oracle.Oracle`).
    log:
        SQLite query log path (or an open :class:`QueryLog`): answered rows are never paid
        for again. A log opened from a path is closed by :meth:`close`.
    transport:
        An httpx transport (tests, proxies); ``headers``: extra HTTP headers.
    """

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        input_name: str | None = None,
        output_name: str | None = None,
        output_kind: OutputKind | str | None = None,
        input_dim: int | None = None,
        batch_size: int = 512,
        concurrency: int = 4,
        timeout: float = 30.0,
        retries: int = 8,
        backoff: float = 0.05,
        backoff_max: float = 5.0,
        budget: int | None = None,
        log: str | Path | QueryLog | None = None,
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the URL must start with http:// or https://; got {url!r}")
        match = re.match(r"^(?P<base>.*?)/v2/models/(?P<model>[^/]+)/?$", url)
        if match:
            url, url_model = match["base"], match["model"]
            if model is not None and model != url_model:
                raise ValueError(f"the URL names model {url_model!r} but model={model!r}")
            model = url_model
        if model is None:
            raise ValueError("name the model: a URL ending in /v2/models/NAME (or model='NAME')")
        if batch_size < 1 or concurrency < 1 or retries < 0 or timeout <= 0:
            raise ValueError("batch_size, concurrency >= 1, retries >= 0 and timeout > 0 needed")
        self.url, self.model = url.rstrip("/"), model
        self.batch_size, self.concurrency, self.retries = batch_size, concurrency, retries
        self.backoff, self.backoff_max = backoff, backoff_max
        self._pacer = _Pacer(ceiling=max(backoff_max, 1.0))
        self.paid = 0
        """Rows the server charged for through this oracle."""
        self.requests = 0
        """HTTP attempts made (retries included)."""
        self.retried = 0
        """Attempts that failed and were retried."""
        self.cached = 0
        """Rows answered from the query log instead of the server."""
        self.network_seconds = 0.0
        """Wall time spent waiting for the server."""
        self.server_budget_remaining: int | None = None
        """Rows left in the server's budget for this key, as last reported."""
        all_headers = {"content-type": "application/json", **(headers or {})}
        if api_key:
            all_headers["authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(
            base_url=self.url, headers=all_headers, timeout=timeout, transport=transport,
            limits=httpx.Limits(max_connections=concurrency,
                                max_keepalive_connections=concurrency),
        )
        self._pool: ThreadPoolExecutor | None = None
        self._answered: set[str] = set()  # request ids answered to this client
        try:
            meta = self._request("GET", f"/v2/models/{model}")
            spec = self._choose_tensors(meta, input_name, output_name, output_kind, input_dim)
        except BaseException:
            self._client.close()
            raise
        self.input_name, self.input_datatype, self.output_name, kind, d, self.num_outputs, \
            self.output_datatype = spec
        super().__init__(input_dim=d, output_kind=kind, budget=budget)
        self.log: QueryLog | None = None
        self._owns_log = False
        self._scope: LogScope | None = None
        if log is not None:
            try:
                self._open_log(log, model, kind, d)
            except BaseException:
                self.close()
                raise

    def _open_log(self, log: str | Path | QueryLog, model: str, kind: OutputKind,
                  d: int) -> None:
        self._owns_log = not isinstance(log, QueryLog)
        self.log = log if isinstance(log, QueryLog) else QueryLog(log)
        self._scope = self.log.open_scope(
            model=model, output=self.output_name, kind=kind, input_dim=d,
            num_outputs=self.num_outputs, dtype=self._log_dtype(), url=self.url,
        )

    # ------------------------------------------------------------- metadata
    def _choose_tensors(
        self, meta: dict[str, Any], input_name: str | None, output_name: str | None,
        output_kind: OutputKind | str | None, input_dim: int | None,
    ) -> tuple[str, str, str, OutputKind, int, int, str | None]:
        """Input and output tensors: the user's choices, else the metadata, else defaults.

        The protocol lets a server publish empty ``inputs``/``outputs`` lists (MLServer's
        scikit-learn runtime does): names and widths the user gives are then taken as they are,
        and the output's datatype is checked on the first answer instead."""
        inputs = {t["name"]: t for t in meta.get("inputs") or []}
        outputs = {t["name"]: t for t in meta.get("outputs") or []}
        self.sources: dict[str, str] = {}
        """Where each choice came from: ``given``, ``metadata`` or ``default``."""
        input_name, in_type, d = self._choose_input(inputs, input_name, input_dim)
        kind = None if output_kind is None else OutputKind(output_kind)
        if output_name is None:
            wanted = _DEFAULT_OUTPUT.get(kind or OutputKind.LOGITS, ())
            names = [n for n in wanted if n in outputs]
            if names or len(outputs) == 1:
                output_name = names[0] if names else next(iter(outputs))
                self.sources["output"] = "metadata"
            elif not outputs:
                output_name = wanted[0]
                self.sources["output"] = "default"
            else:
                raise ValueError(f"choose an output (output_name=, --output-name): the model has "
                                 f"{list(outputs)}")
        else:
            self.sources["output"] = "given"
        if outputs and output_name not in outputs:
            raise ValueError(f"the model has no output {output_name!r}; it has {list(outputs)}")
        if kind is None:
            kind = next((k for k, names in _DEFAULT_OUTPUT.items() if output_name in names),
                        _KNOWN_OUTPUTS.get(output_name, OutputKind.UNKNOWN))
            if kind is OutputKind.TOP_K:
                kind = OutputKind.PROBABILITIES
        tout = outputs.get(output_name)
        datatype = None if tout is None else tout["datatype"]
        if datatype is not None:
            _check_output_type(output_name, kind, datatype)
        out_shape = [] if tout is None else tout.get("shape", [])
        k = int(out_shape[-1]) if len(out_shape) > 1 and int(out_shape[-1]) > 0 else 0
        return input_name, in_type, output_name, kind, d, k, datatype

    def _choose_input(self, inputs: dict[str, Any], input_name: str | None,
                      input_dim: int | None) -> tuple[str, str, int]:
        self.sources["input"] = "given" if input_name is not None else "metadata"
        if input_name is None:
            if len(inputs) > 1:
                raise ValueError(f"the model has inputs {list(inputs)}: choose one (input_name=, "
                                 "--input-name)")
            if not inputs:
                self.sources["input"] = "default"
            input_name = next(iter(inputs), "input")
        if inputs and input_name not in inputs:
            raise ValueError(f"the model has no input {input_name!r}; it has {list(inputs)}")
        tin = inputs.get(input_name, {"datatype": "FP64", "shape": []})
        if tin["datatype"] not in ("FP64", "FP32"):
            raise ValueError(f"input {input_name!r} is {tin['datatype']}; this oracle sends "
                             "floating-point rows (FP64, or FP32)")
        shape = tin.get("shape") or []
        d = int(shape[-1]) if shape and int(shape[-1]) > 0 else None
        if input_dim is not None and d is not None and input_dim != d:
            raise ValueError(f"the inputs have width {input_dim} (input_dim=, --input-dim, or "
                             f"the dataset) but the server's input is [-1, {d}]")
        self.sources["input_dim"] = "given" if input_dim is not None else "metadata"
        d = input_dim if input_dim is not None else d
        if d is None:
            raise ValueError("the server does not publish the input width: give input_dim= "
                             "(--input-dim)")
        return input_name, tin["datatype"], d

    def _log_dtype(self) -> np.dtype[Any]:
        if self.output_datatype is not None:
            return DATATYPES[self.output_datatype]
        return np.dtype(np.int64 if self.output_kind is OutputKind.LABEL else np.float64)

    @property
    def plan(self) -> dict[str, Any]:
        """What this oracle will send and read, and where each choice came from (nothing is
        sent to learn it beyond the free metadata request): for a dry run or a log."""
        return {
            "url": f"{self.url}/v2/models/{self.model}",
            "input": {"name": self.input_name, "datatype": self.input_datatype,
                      "shape": [-1, self.input_dim], "from": self.sources["input"],
                      "width_from": self.sources["input_dim"]},
            "output": {"name": self.output_name, "kind": self.output_kind.value,
                       "datatype": self.output_datatype or "checked on the first answer",
                       "classes": self.num_outputs or "read from the first answer",
                       "from": self.sources["output"]},
            "batch_size": self.batch_size, "concurrency": self.concurrency,
            "budget": self.budget,
            "query_log": None if self.log is None else str(self.log.path),
        }

    # ---------------------------------------------------------------- HTTP
    def _retrying(self) -> Retrying:
        exponential = (wait_exponential(multiplier=self.backoff, max=self.backoff_max)
                       + wait_random(0, self.backoff))

        counts = {"limited": 0, "failed": 0}  # per request: 429s, and other failures

        def wait_for(state: RetryCallState) -> float:
            err = state.outcome.exception() if state.outcome else None
            if isinstance(err, _Transient) and err.status == 429:
                base = err.retry_after if err.retry_after is not None else self.backoff
                return max(base, 1e-3) * (1.0 + random.random())  # jitter: no lockstep
            return float(exponential(state))

        def stop(state: RetryCallState) -> bool:
            err = state.outcome.exception() if state.outcome else None
            if isinstance(err, _Transient) and err.status == 429:
                counts["limited"] += 1
                return counts["limited"] > MAX_RATE_LIMITED
            counts["failed"] += 1
            return counts["failed"] > self.retries

        def count_retry(_: RetryCallState) -> None:
            self.retried += 1

        return Retrying(retry=retry_if_exception(_transient), wait=wait_for, stop=stop,
                        before_sleep=count_retry, reraise=True)

    def _request(self, method: str, path: str, content: bytes | None = None) -> dict[str, Any]:
        """One request with retries; the decoded JSON answer of a 200."""
        try:
            for attempt in self._retrying():
                with attempt:
                    return self._attempt(method, path, content)
        except (_Transient, httpx.TransportError) as err:
            if isinstance(err, _Transient) and err.status == 429:
                raise RemoteOracleError(
                    f"{method} {self.url}{path} was rate-limited (429) {MAX_RATE_LIMITED} times "
                    "in a row; the server's rate limit leaves this key no room") from err
            raise RemoteOracleError(
                f"{method} {self.url}{path} failed after {self.retries + 1} attempts "
                f"({type(err).__name__}: {err}). Is the server up at that address?"
            ) from err
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(self, method: str, path: str, content: bytes | None) -> dict[str, Any]:
        self._pacer.wait()
        self.requests += 1
        resp = self._client.request(method, path, content=content)
        if resp.status_code == 429:
            self._pacer.throttled()
        elif resp.status_code == 200:
            self._pacer.succeeded()
        if resp.status_code == 200:
            try:
                body = pydantic_core.from_json(resp.content)
            except ValueError as err:
                raise _Transient(200, f"unreadable JSON answer ({err})", None) from None
            if not isinstance(body, dict):
                raise RemoteOracleError(f"expected a JSON object from {path}, got {body!r:.80}")
            return body
        message, body = _error_text(resp)
        if resp.status_code in _RETRY_STATUS:
            raise _Transient(resp.status_code, message, _retry_after(resp, body))
        if resp.status_code == 402 and "budget" in body:
            raise BudgetExhaustedError(int(body["budget"]), int(body["used"]),
                                       int(body["requested"]),
                                       progress="(The server's budget for this API key.)")
        if resp.status_code in (401, 403):
            raise RemoteRefusedError(resp.status_code, f"{message} (check the API key: "
                                     "api_key=, --api-key or $MODEL_EXTRACTION_API_KEY)")
        raise RemoteRefusedError(resp.status_code, message)

    def _infer(self, x: NDArray[np.float64]) -> tuple[NDArray[Any], int]:
        """Answer one chunk: the outputs and the rows the server charged."""
        datatype = self.input_datatype
        data = (x if datatype == "FP64" else x.astype(np.float32)).ravel().tolist()
        # The id is a hash of the chunk: a retry (or a resumed attack) sends the same id.
        rid = hashlib.sha256(f"{self.model}\0{self.output_name}\0".encode()
                             + np.ascontiguousarray(x, dtype="<f8").tobytes()).hexdigest()[:32]
        body = pydantic_core.to_json({
            "id": rid,
            "inputs": [{"name": self.input_name, "shape": list(x.shape), "datatype": datatype,
                        "data": data}],
            "outputs": [{"name": self.output_name}],
        })
        answer = self._request("POST", f"/v2/models/{self.model}/infer", body)
        y = self._read_output(answer, len(x))
        params = answer.get("parameters") or {}
        charged = int(params.get("charged_rows", len(x)))
        if params.get("replayed") and rid not in self._answered:
            # Answered from the server's idempotency cache: paid by an attempt whose answer was
            # lost (a dropped connection, a killed client), never counted here until now.
            charged = len(x)
        self._answered.add(rid)
        if "budget_remaining" in params:
            self.server_budget_remaining = int(params["budget_remaining"])
        return y, int(charged)

    def _read_output(self, answer: dict[str, Any], n: int) -> NDArray[Any]:
        tensors = {t.get("name"): t for t in answer.get("outputs", []) if isinstance(t, dict)}
        if self.output_name not in tensors:
            raise OracleOutputError(f"the answer has outputs {list(tensors)}, not the "
                                    f"{self.output_name!r} that was asked for")
        t = tensors[self.output_name]
        datatype = t.get("datatype")
        if self.output_datatype is None and datatype in DATATYPES:
            # No metadata: the first answer fixes the datatype; every later one must match.
            try:
                _check_output_type(self.output_name, self.output_kind, datatype)
            except ValueError as err:
                raise OracleOutputError(f"{err} (the server publishes no metadata; choose "
                                        "another output or output kind)") from None
            self.output_datatype = datatype
        if datatype != self.output_datatype:
            raise OracleOutputError(
                f"output {self.output_name!r} came back as {datatype}; the model's metadata "
                f"says {self.output_datatype}" + (" (functionally-equivalent extraction needs "
                                                  "FP64, §6.1)" if datatype == "FP32" else "")
            )
        shape = [int(s) for s in t.get("shape", [])]
        y = np.asarray(t.get("data"), dtype=DATATYPES[datatype])
        if self._scope is not None and y.dtype != self._scope.dtype:
            y = y.astype(self._scope.dtype)  # unknown metadata: logged as 64-bit, exactly
        if len(shape) == 1:
            shape = [shape[0], 1]
        if len(shape) != 2 or shape[0] != n or y.size != shape[0] * shape[1]:
            raise OracleOutputError(f"output {self.output_name!r} has shape {shape} and "
                                    f"{y.size} values for a batch of {n} rows")
        return y.reshape(shape)

    # ------------------------------------------------------------ the oracle
    def _evaluate(self, x: NDArray[np.float64]) -> NDArray[Any]:
        n = len(x)
        # source[i]: the row whose answer row i gets (itself, or an identical earlier row).
        source = np.arange(n)
        pieces: list[tuple[NDArray[np.int64], NDArray[Any]]] = []
        keys: list[bytes] | None = None
        if self._scope is None or self.log is None:
            todo = source
        else:
            keys = self.log.row_keys(self._scope, x)
            found = self.log.lookup(self._scope, keys)
            first: dict[bytes, int] = {}
            for i, k in enumerate(keys):
                source[i] = first.setdefault(k, i)
            hits = np.array([i for k, i in first.items() if k in found], dtype=np.int64)
            if len(hits):
                pieces.append((hits, np.stack([found[keys[i]] for i in hits])))
            todo = np.array([i for k, i in first.items() if k not in found], dtype=np.int64)
            self.cached += n - len(todo)
        remaining = self.server_budget_remaining
        if remaining is not None and len(todo) > remaining:
            used = self.paid
            raise BudgetExhaustedError(used + remaining, used, len(todo),
                                       progress="(The server's budget for this API key, as "
                                                "it last reported it.)")
        chunks = [todo[s : s + self.batch_size] for s in range(0, len(todo), self.batch_size)]
        started = time.perf_counter()
        try:
            self._run_chunks(x, chunks, keys, pieces)
        finally:
            self.network_seconds += time.perf_counter() - started
        width = max(y.shape[1] for _, y in pieces)
        out = np.empty((n, width), dtype=pieces[0][1].dtype)
        for idx, y in pieces:
            out[idx] = y
        return out if keys is None else out[source]

    def _run_chunks(self, x: NDArray[np.float64], chunks: list[NDArray[np.int64]],
                    keys: list[bytes] | None,
                    pieces: list[tuple[NDArray[np.int64], NDArray[Any]]]) -> None:
        def done(idx: NDArray[np.int64], y: NDArray[Any], charged: int) -> None:
            # Stored at once, in this thread: a kill loses only what is still in flight.
            if self.log is not None and self._scope is not None and keys is not None:
                self.log.store(self._scope, [keys[i] for i in idx], y)
            pieces.append((idx, y))
            self.paid += charged

        if len(chunks) <= 1 or self.concurrency == 1:
            for idx in chunks:
                done(idx, *self._infer(x[idx]))
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="remote-oracle")
        futures: dict[Future[tuple[NDArray[Any], int]], NDArray[np.int64]] = {
            self._pool.submit(self._infer, x[idx]): idx for idx in chunks
        }
        error: BaseException | None = None
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                if f.cancelled():
                    continue
                err = f.exception()
                if err is None:
                    done(futures[f], *f.result())
                elif error is None:
                    error = err
            if error is not None:
                for f in pending:
                    f.cancel()  # not started: nothing paid; started ones are awaited and kept
        if error is not None:
            raise error

    # ---------------------------------------------------------------- admin
    @property
    def cost(self) -> dict[str, Any]:
        """What the queries cost so far: rows asked, paid, cached; requests; network time."""
        return {"queries": self.queries, "paid": self.paid, "cached": self.cached,
                "requests": self.requests, "retried": self.retried,
                "network_seconds": self.network_seconds}

    def close(self) -> None:
        """Close the connections, and the query log if this oracle opened it from a path (a
        :class:`QueryLog` passed in stays open: its owner closes it). Idempotent."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._client.close()
        if getattr(self, "_owns_log", False) and self.log is not None:
            self.log.close()
            self.log, self._scope = None, None

    def __enter__(self) -> RemoteOracle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"RemoteOracle({self.url}/v2/models/{self.model}, output={self.output_name!r} "
                f"({self.output_kind.value}), queries={self.queries}, paid={self.paid})")

