"""API keys, query budgets (counted per input row) and per-key rate limits.

A prediction API charges per query (Jagielski et al. 2020, §3: the adversary's cost is the number
of queries). Each key has a budget of input rows; a request that would overrun it is refused
whole, before anything is evaluated, and budgets are reserved under a lock so that concurrent
requests can never overrun them together; with an audit log, the rows charged are restored from
it at start-up (:meth:`KeyRing.restore`). Rate limits are token buckets of requests per second.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ApiKey", "BudgetRefusal", "KeyRing", "TokenBucket", "load_keys", "parse_key_option"]


def fingerprint(secret: str) -> str:
    """A short, non-secret name for a key (the audit log never stores secrets)."""
    return "key-" + hashlib.sha256(secret.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ApiKey:
    """One client's credentials and limits.

    ``secret`` is what the client sends (``Authorization: Bearer <secret>`` or ``X-API-Key``);
    ``name`` is what the audit log records; ``budget`` is in input rows (``None``: unlimited);
    ``rate``/``burst`` override the server's default rate limit (requests per second).
    """

    secret: str
    name: str = ""
    budget: int | None = None
    rate: float | None = None
    burst: float | None = None

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("an API key cannot be empty")
        if not self.name:
            object.__setattr__(self, "name", fingerprint(self.secret))
        if self.budget is not None and self.budget < 0:
            raise ValueError(f"budget of {self.name} must be >= 0 rows, got {self.budget}")
        if self.rate is not None and self.rate <= 0:
            raise ValueError(f"rate of {self.name} must be > 0 requests/s, got {self.rate}")


def parse_key_option(text: str) -> ApiKey:
    """Parse ``SECRET`` or ``SECRET:BUDGET`` (the ``--key`` option of ``serve``)."""
    secret, sep, budget = text.rpartition(":")
    if not sep:
        return ApiKey(text)
    if budget.lower() in ("", "inf", "none", "unlimited"):
        return ApiKey(secret)
    try:
        rows = int(budget)
    except ValueError:
        raise ValueError(f"--key expects SECRET or SECRET:BUDGET (rows), got {text!r}") from None
    return ApiKey(secret, budget=rows)


def load_keys(path: str | Path) -> list[ApiKey]:
    """Read keys from a JSON file: a list of ``{"key", "name"?, "budget"?, "rate"?, "burst"?}``."""
    raw = json.loads(Path(path).read_text())
    if not isinstance(raw, list):
        raise ValueError(f"{path}: expected a JSON list of key objects")
    keys = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or "key" not in item:
            raise ValueError(f"{path}: entry {i} needs a 'key' field")
        unknown = set(item) - {"key", "name", "budget", "rate", "burst"}
        if unknown:
            raise ValueError(f"{path}: entry {i} has unknown fields {sorted(unknown)}")
        keys.append(ApiKey(str(item["key"]), str(item.get("name", "")), item.get("budget"),
                           item.get("rate"), item.get("burst")))
    return keys


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` stored; one token per request."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        if rate <= 0 or burst < 1:
            raise ValueError(f"need rate > 0 and burst >= 1, got rate={rate}, burst={burst}")
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.stamp = burst, clock()

    def take(self) -> float:
        """Take a token; return 0 on success, else the seconds until one is available."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


@dataclass
class BudgetRefusal:
    """Why a request was refused: the key's budget, the rows used, and the rows asked for."""

    budget: int
    used: int
    requested: int


@dataclass
class _Account:
    key: ApiKey
    used: int = 0
    bucket: TokenBucket | None = None
    largest: int = 0  # most rows charged in one request (a retry of it may be that large)


@dataclass
class KeyRing:
    """The server's keys, their budgets and rate limits; thread-safe.

    With no keys the server is open: every client shares one anonymous account (no budget), which
    still gets the default rate limit if one is set.
    """

    keys: Iterable[ApiKey] = ()
    rate: float | None = None
    burst: float | None = None
    _accounts: dict[str, _Account] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        keys = list(self.keys)
        self.keys = keys
        names = [k.name for k in keys]
        if len(set(names)) != len(names) or len({k.secret for k in keys}) != len(keys):
            raise ValueError("API keys and their names must be unique")
        for key in keys or [ApiKey("anonymous", name="anonymous")]:
            rate = key.rate if key.rate is not None else self.rate
            burst = key.burst if key.burst is not None else self.burst
            bucket = None if rate is None else TokenBucket(rate, burst or max(1.0, rate))
            self._accounts[key.secret] = _Account(key, 0, bucket)

    @property
    def open(self) -> bool:
        """True when no keys are configured (anyone may query)."""
        return not self.keys

    def authenticate(self, secret: str | None) -> ApiKey | None:
        """The key for ``secret`` (compared in constant time), or ``None``."""
        if self.open:
            return self._accounts["anonymous"].key
        if not secret:
            return None
        for stored, account in self._accounts.items():
            if hmac.compare_digest(stored.encode(), secret.encode()):
                return account.key
        return None

    def throttle(self, key: ApiKey) -> float:
        """Take one request token; 0 if allowed, else seconds to wait before retrying."""
        with self._lock:
            bucket = self._accounts[key.secret].bucket
            return 0.0 if bucket is None else bucket.take()

    def reserve(self, key: ApiKey, rows: int) -> BudgetRefusal | None:
        """Charge ``rows`` to ``key``, or refuse (charging nothing) if it would overrun."""
        with self._lock:
            account = self._accounts[key.secret]
            if key.budget is not None and account.used + rows > key.budget:
                return BudgetRefusal(key.budget, account.used, rows)
            account.used += rows
            account.largest = max(account.largest, rows)
            return None

    def restore(self, used: dict[str, int], largest: dict[str, int] | None = None) -> None:
        """Set the rows already charged per key name, and the most rows charged in one request
        (from the audit log, at start-up), so a restart refunds nothing; names of keys no
        longer configured are ignored."""
        with self._lock:
            for account in self._accounts.values():
                account.used = int(used.get(account.key.name, 0))
                account.largest = int((largest or {}).get(account.key.name, 0))

    def largest(self, key: ApiKey) -> int:
        """The most rows charged to ``key`` in one request (what a retry may resend)."""
        return self._account(key).largest

    def refund(self, key: ApiKey, rows: int) -> None:
        """Give back rows charged for a request that could not be answered."""
        with self._lock:
            self._accounts[key.secret].used -= rows

    def used(self, key: ApiKey | str) -> int:
        """Rows charged so far to a key (an :class:`ApiKey`, its name or its secret)."""
        return self._account(key).used

    def remaining(self, key: ApiKey) -> int | None:
        """Rows left in the key's budget (``None`` if unlimited)."""
        account = self._account(key)
        return None if key.budget is None else key.budget - account.used

    def usage(self) -> dict[str, dict[str, Any]]:
        """``{name: {"used", "budget"}}`` for every key."""
        with self._lock:
            return {a.key.name: {"used": a.used, "budget": a.key.budget}
                    for a in self._accounts.values()}

    def _account(self, key: ApiKey | str) -> _Account:
        secret = key.secret if isinstance(key, ApiKey) else key
        if secret in self._accounts:
            return self._accounts[secret]
        for account in self._accounts.values():
            if account.key.name == secret:
                return account
        raise KeyError(f"no such key: {secret!r}")


def retry_after_header(seconds: float) -> str:
    """HTTP ``Retry-After`` is a whole number of seconds: round up."""
    return str(max(0, math.ceil(seconds)))
