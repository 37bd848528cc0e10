"""The client's persistent query log: every answered query, so none is ever paid for twice.

An answer is stored under ``sha256(model, output name, the exact float64 bytes of the input
row)``. A :class:`~model_extraction.remote.RemoteOracle` with a log looks every row up before
sending anything, so an attack that is killed and restarted with the same seed pays only for the
queries it had not been answered yet, and a finished attack can be replayed offline with
:class:`ReplayOracle` (no server, no cost). SQLite (stdlib) keeps each stored batch atomic: a
kill loses at most the requests in flight.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_extraction.oracle import Oracle, OutputKind

__all__ = ["LogScope", "NotInLogError", "QueryLog", "ReplayOracle"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scopes (
    id          INTEGER PRIMARY KEY,
    model       TEXT    NOT NULL,
    output      TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    input_dim   INTEGER NOT NULL,
    num_outputs INTEGER NOT NULL,
    dtype       TEXT    NOT NULL,
    url         TEXT,
    UNIQUE (model, output)
);
CREATE TABLE IF NOT EXISTS answers (
    key    BLOB    PRIMARY KEY,
    scope  INTEGER NOT NULL REFERENCES scopes (id),
    output BLOB    NOT NULL,
    time   REAL    NOT NULL
) WITHOUT ROWID;
"""
_CHUNK = 500  # keys per SELECT (SQLite's variable limit is far higher)


class NotInLogError(LookupError):
    """An offline replay was asked a query that the log never answered."""


@dataclass(frozen=True)
class LogScope:
    """One (model, output) pair whose answers a log holds, and what they look like."""

    id: int
    model: str
    output: str
    kind: OutputKind
    input_dim: int
    num_outputs: int
    dtype: np.dtype[Any]
    url: str | None


class QueryLog:
    """SQLite store of answered queries, shared safely between threads of one process.

    Raises ``sqlite3.DatabaseError`` naming the file when it is not a usable SQLite database
    (truncated, or another kind of file).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.commit()
            self._db.execute("SELECT COUNT(*) FROM scopes").fetchone()
        except sqlite3.DatabaseError as err:
            self._db.close()
            raise sqlite3.DatabaseError(
                f"{self.path}: not a usable query log ({err}); move it away or give another "
                "log path (the answers it held are lost)") from err

    # -------------------------------------------------------------- scopes
    def scopes(self) -> list[LogScope]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, model, output, kind, input_dim, num_outputs, dtype, url FROM scopes"
            ).fetchall()
        return [LogScope(i, m, o, OutputKind(k), d, c, np.dtype(t), u)
                for i, m, o, k, d, c, t, u in rows]

    def scope(self, model: str | None = None, output: str | None = None) -> LogScope:
        """The scope of ``model``/``output`` (either may be omitted if the log holds one)."""
        found = [s for s in self.scopes()
                 if (model is None or s.model == model) and (output is None or s.output == output)]
        if len(found) != 1:
            have = [(s.model, s.output) for s in self.scopes()]
            what = "no" if not found else "several"
            raise LookupError(f"{self.path}: {what} logged (model, output) pairs match "
                              f"model={model!r}, output={output!r}; the log holds {have}")
        return found[0]

    def open_scope(self, *, model: str, output: str, kind: OutputKind, input_dim: int,
                   num_outputs: int, dtype: np.dtype[Any], url: str | None) -> LogScope:
        """The scope for answers of ``model``/``output``, created if new, checked if not."""
        dtype = np.dtype(dtype).newbyteorder("<")
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO scopes (model, output, kind, input_dim, num_outputs, "
                "dtype, url) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (model, output, OutputKind(kind).value, input_dim, num_outputs, dtype.str, url),
            )
            self._db.commit()
        scope = self.scope(model, output)
        if (scope.input_dim, scope.num_outputs, scope.dtype) != (input_dim, num_outputs, dtype):
            raise ValueError(
                f"{self.path} holds answers of {model!r}/{output!r} with input width "
                f"{scope.input_dim}, {scope.num_outputs} outputs of type {scope.dtype}; the "
                f"server now says {input_dim}, {num_outputs}, {dtype}. The deployment changed: "
                "use a new log file."
            )
        return scope

    # ------------------------------------------------------------- answers
    @staticmethod
    def row_keys(scope: LogScope, x: NDArray[np.float64]) -> list[bytes]:
        """The key of each row of ``x``: a hash of the model, the output and the row's bytes."""
        rows = np.ascontiguousarray(x, dtype="<f8")
        prefix = hashlib.sha256(f"{scope.model}\0{scope.output}\0".encode())
        width = rows.shape[1] * 8
        buf = rows.tobytes()
        keys = []
        for i in range(len(rows)):
            h = prefix.copy()
            h.update(buf[i * width : (i + 1) * width])
            keys.append(h.digest())
        return keys

    def lookup(self, scope: LogScope, keys: list[bytes]) -> dict[bytes, NDArray[Any]]:
        """The stored answers among ``keys``."""
        found: dict[bytes, NDArray[Any]] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            for s in range(0, len(unique), _CHUNK):
                part = unique[s : s + _CHUNK]
                marks = ",".join("?" * len(part))
                for key, blob in self._db.execute(
                    f"SELECT key, output FROM answers WHERE key IN ({marks})", part
                ):
                    found[key] = np.frombuffer(blob, dtype=scope.dtype)
        return found

    def store(self, scope: LogScope, keys: list[bytes], outputs: NDArray[Any]) -> None:
        """Store answers (one transaction: a kill keeps all of them or none)."""
        y = np.ascontiguousarray(outputs, dtype=scope.dtype)
        now = time.time()
        with self._lock:
            self._db.executemany(
                "INSERT OR IGNORE INTO answers (key, scope, output, time) VALUES (?, ?, ?, ?)",
                [(k, scope.id, row.tobytes(), now) for k, row in zip(keys, y, strict=True)],
            )
            self._db.commit()

    def count(self, scope: LogScope | None = None) -> int:
        """Answers stored (for one scope, or in all)."""
        with self._lock:
            if scope is None:
                (n,) = self._db.execute("SELECT COUNT(*) FROM answers").fetchone()
            else:
                (n,) = self._db.execute("SELECT COUNT(*) FROM answers WHERE scope = ?",
                                        (scope.id,)).fetchone()
        return int(n)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> QueryLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ReplayOracle(Oracle):
    """An oracle answering only from a query log: replay a finished attack offline, for free.

    Parameters
    ----------
    log:
        The log file (or an open :class:`QueryLog`) a :class:`RemoteOracle` wrote.
    model, output:
        Which logged (model, output) to replay; may be omitted when the log holds only one.
    budget:
        Query budget, as for any oracle.

    A query the log does not hold raises :class:`NotInLogError`: replay the same attack with
    the same seed and options.
    """

    def __init__(self, log: str | Path | QueryLog, *, model: str | None = None,
                 output: str | None = None, budget: int | None = None) -> None:
        self.log = log if isinstance(log, QueryLog) else QueryLog(log)
        self.scope = self.log.scope(model, output)
        super().__init__(input_dim=self.scope.input_dim, output_kind=self.scope.kind,
                         budget=budget)

    def _evaluate(self, x: NDArray[np.float64]) -> NDArray[Any]:
        keys = self.log.row_keys(self.scope, x)
        found = self.log.lookup(self.scope, keys)
        missing = sum(k not in found for k in keys)
        if missing:
            raise NotInLogError(
                f"{missing} of {len(keys)} queries are not in {self.log.path}: an offline replay "
                "can only ask the queries the logged attack asked (same attack, seed, options)"
            )
        return np.stack([found[k] for k in keys])
