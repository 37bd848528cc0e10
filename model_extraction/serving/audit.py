"""The server's query log: every request, per key, for an auditor, and the server's memory.

Each request is one row of an SQLite table: when, which key (its name, never the secret), the
request id, the HTTP status, the rows asked for and the rows charged, a digest of the body, and
(optionally, for answered requests, within a retention bound) the input rows themselves as
float64, so that an auditor can look at what each client asked (the query distribution is what
extraction detectors such as PRADA examine).

The log is also what makes the server's promises survive a restart, forced or not: the rows
charged to each key are summed from it at start-up (no refund), and an answered request id is
looked up in it (no second charge). A charge is committed before its answer is sent.
"""

from __future__ import annotations

import secrets
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
    message    TEXT,
    digest     BLOB
);
CREATE INDEX IF NOT EXISTS requests_by_key ON requests (key, seq);
CREATE TABLE IF NOT EXISTS input_parts (
    seq   INTEGER NOT NULL,
    part  INTEGER NOT NULL,
    data  BLOB    NOT NULL,
    PRIMARY KEY (seq, part)
);
CREATE TABLE IF NOT EXISTS secrets (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"""
PART_BYTES = 2**20
"""Inputs larger than this are stored in parts of this size, each its own transaction, so that
a large request's rows never hold the log (and every other request's commit) for long."""
_STORED = """
SELECT seq, LENGTH(inputs) AS size FROM requests WHERE inputs IS NOT NULL
UNION ALL SELECT seq, SUM(LENGTH(data)) AS size FROM input_parts GROUP BY seq
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS requests_by_id ON requests (key, request_id) WHERE charged > 0;
CREATE INDEX IF NOT EXISTS requests_with_inputs ON requests (seq) WHERE inputs IS NOT NULL;
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
    max_input_bytes:
        Retention bound of the stored inputs in bytes (``None``: keep all): beyond it the
        oldest requests' inputs are dropped (their records and charges stay).

    Raises ``sqlite3.DatabaseError`` naming the file when it is not an SQLite database (a
    truncated or foreign file).
    """

    def __init__(self, path: str | Path, *, store_inputs: bool = True,
                 max_input_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.store_inputs, self.max_input_bytes = store_inputs, max_input_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(requests)")}
            if "digest" not in columns:  # a log written before digests were kept
                self._db.execute("ALTER TABLE requests ADD COLUMN digest BLOB")
            self._db.executescript(_INDEXES)
            self._db.commit()
            (stored,) = self._db.execute(
                f"SELECT COALESCE(SUM(size), 0) FROM ({_STORED})"
            ).fetchone()
        except sqlite3.DatabaseError as err:
            self._db.close()
            raise sqlite3.DatabaseError(f"{self.path}: not a usable audit log ({err}); move it "
                                        "away or give another --log path") from err
        self._stored_bytes = int(stored)

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
        digest: bytes | None = None,
    ) -> None:
        """Record one request (committed when this returns: it survives a ``kill -9``).

        ``digest`` (of the request body) lets :meth:`answered` recognise a retried request.
        """
        blob, dim = b"", None
        if inputs is not None and self.store_inputs and inputs.size:
            x = np.ascontiguousarray(inputs, dtype="<f8")
            if self.max_input_bytes is None or x.nbytes <= self.max_input_bytes:
                blob, dim = x.tobytes(), int(x.shape[1])
        inline = blob if dim is not None and len(blob) <= PART_BYTES else None
        with self._lock:
            seq = self._db.execute(
                "INSERT INTO requests (time, key, request_id, status, rows, charged, input_dim, "
                "inputs, message, digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), key, request_id, status, rows, charged, dim, inline, message,
                 digest),
            ).lastrowid
            self._db.commit()
        if dim is None:
            return
        if inline is None:
            for part, start in enumerate(range(0, len(blob), PART_BYTES)):
                with self._lock:
                    self._db.execute("INSERT INTO input_parts (seq, part, data) VALUES (?, ?, ?)",
                                     (seq, part, blob[start : start + PART_BYTES]))
                    self._db.commit()
        with self._lock:
            self._stored_bytes += len(blob)
            self._enforce_retention()
            self._db.commit()

    def _enforce_retention(self) -> None:
        """Drop the oldest stored inputs until they fit ``max_input_bytes`` (lock held)."""
        if self.max_input_bytes is None:
            return
        while self._stored_bytes > self.max_input_bytes:
            oldest = self._db.execute(f"{_STORED} ORDER BY seq LIMIT 64").fetchall()
            if not oldest:
                self._stored_bytes = 0
                return
            for seq, size in oldest:
                self._db.execute("UPDATE requests SET inputs = NULL, input_dim = NULL "
                                 "WHERE seq = ?", (seq,))
                self._db.execute("DELETE FROM input_parts WHERE seq = ?", (seq,))
                self._stored_bytes -= int(size)
                if self._stored_bytes <= self.max_input_bytes:
                    return

    def answered(self, key: str, request_id: str, digest: bytes) -> bool:
        """Whether ``key`` (by name) was charged for a request with this id and body digest."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM requests WHERE key = ? AND request_id = ? AND charged > 0 AND "
                "digest = ? LIMIT 1", (key, request_id, digest)).fetchone()
        return row is not None

    def charged_by_key(self) -> tuple[dict[str, int], dict[str, int]]:
        """Per key (by name): the rows charged over the whole log, and the most charged in one
        request."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, SUM(charged), MAX(charged) FROM requests GROUP BY key").fetchall()
        return ({key: int(total) for key, total, _ in rows},
                {key: int(most) for key, _, most in rows})

    def secret(self, name: str, size: int = 32) -> bytes:
        """A random secret stored in the log under ``name``: created once, the same after
        every restart (the noise defence's key)."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO secrets (name, value) VALUES (?, ?)",
                             (name, secrets.token_bytes(size)))
            self._db.commit()
            (value,) = self._db.execute("SELECT value FROM secrets WHERE name = ?",
                                        (name,)).fetchone()
        return bytes(value)

    def records(self, key: str | None = None) -> list[AuditRecord]:
        """All requests, oldest first, of one key (by name) or of every key."""
        query = ("SELECT seq, time, key, request_id, status, rows, charged, input_dim, inputs, "
                 "message FROM requests")
        args: tuple[str, ...] = ()
        if key is not None:
            query, args = query + " WHERE key = ?", (key,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq", args).fetchall()
            parts: dict[int, list[bytes]] = {}
            for seq, data in self._db.execute("SELECT seq, data FROM input_parts ORDER BY seq, "
                                              "part"):
                parts.setdefault(seq, []).append(data)
        out = []
        for seq, t, k, rid, status, n, charged, dim, blob, message in rows:
            x = None
            if blob is None and seq in parts:
                blob = b"".join(parts[seq])
            if blob is not None and dim is not None:
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
        """Every input row a key was charged for and the log still holds, in order (needs
        ``store_inputs``; beyond ``max_input_bytes`` the oldest are gone)."""
        xs = [r.inputs for r in self.records(key) if r.charged and r.inputs is not None]
        return np.concatenate(xs) if xs else np.zeros((0, 0))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
