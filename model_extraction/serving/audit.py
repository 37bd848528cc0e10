"""The server's query log: every request, per key, for an auditor.

Each request is one row of an SQLite table: when, which key (its name, never the secret), the
request id, the HTTP status, the rows asked for and the rows charged, and (for answered
requests) the input rows themselves as float64, so that an auditor can look at what each client
asked (the query distribution is what extraction detectors such as PRADA examine).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

__all__ = ["AuditLog", "AuditRecord"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    time       REAL    NOT NULL,
    key        TEXT    NOT NULL,
    request_id TEXT,
    status     INTEGER NOT NULL,
    rows       INTEGER NOT NULL,
    charged    INTEGER NOT NULL,
    input_dim  INTEGER,
    inputs     BLOB,
    message    TEXT
);
CREATE INDEX IF NOT EXISTS requests_by_key ON requests (key, seq);
"""


@dataclass(frozen=True)
class AuditRecord:
    """One logged request."""

    seq: int
    time: float
    key: str
    request_id: str | None
    status: int
    rows: int
    charged: int
    inputs: NDArray[np.float64] | None
    message: str | None


class AuditLog:
    """Append-only SQLite log of requests; open the same path to read it (also while serving).

    Parameters
    ----------
    path:
        The database file (created if missing).
    store_inputs:
        Keep the input rows of answered requests (8 bytes per value).
    """

    def __init__(self, path: str | Path, *, store_inputs: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.store_inputs = store_inputs
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.commit()

    def write(
        self,
        *,
        key: str,
        status: int,
        rows: int = 0,
        charged: int = 0,
        request_id: str | None = None,
        inputs: NDArray[np.float64] | None = None,
        message: str | None = None,
    ) -> None:
        """Record one request."""
        blob = dim = None
        if inputs is not None and self.store_inputs:
            x = np.ascontiguousarray(inputs, dtype="<f8")
            blob, dim = x.tobytes(), int(x.shape[1])
        with self._lock:
            self._db.execute(
                "INSERT INTO requests (time, key, request_id, status, rows, charged, input_dim, "
                "inputs, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), key, request_id, status, rows, charged, dim, blob, message),
            )
            self._db.commit()

    def records(self, key: str | None = None) -> list[AuditRecord]:
        """All requests, oldest first, of one key (by name) or of every key."""
        query = ("SELECT seq, time, key, request_id, status, rows, charged, input_dim, inputs, "
                 "message FROM requests")
        args: tuple[str, ...] = ()
        if key is not None:
            query, args = query + " WHERE key = ?", (key,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq", args).fetchall()
        out = []
        for seq, t, k, rid, status, n, charged, dim, blob, message in rows:
            x = None
            if blob is not None:
                x = np.frombuffer(blob, dtype="<f8").reshape(-1, dim).astype(np.float64)
            out.append(AuditRecord(seq, t, k, rid, status, n, charged, x, message))
        return out

    def charged(self, key: str) -> int:
        """Rows charged to a key (by name) over the whole log."""
        with self._lock:
            (total,) = self._db.execute(
                "SELECT COALESCE(SUM(charged), 0) FROM requests WHERE key = ?", (key,)
            ).fetchone()
        return int(total)

    def charged_inputs(self, key: str) -> NDArray[np.float64]:
        """Every input row a key was charged for, in order (needs ``store_inputs``)."""
        xs = [r.inputs for r in self.records(key) if r.charged and r.inputs is not None]
        return np.concatenate(xs) if xs else np.zeros((0, 0))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
