"""Query a remote victim: the Open Inference Protocol client oracle and its query log."""

from .oracle import RemoteOracle, RemoteOracleError, RemoteRefusedError
from .querylog import NotInLogError, QueryLog, ReplayOracle

__all__ = [
    "NotInLogError",
    "QueryLog",
    "RemoteOracle",
    "RemoteOracleError",
    "RemoteRefusedError",
    "ReplayOracle",
]
