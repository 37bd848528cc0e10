"""Serve a victim over HTTP with the Open Inference Protocol (KServe v2 REST).

``model-extraction serve victim.safetensors --output probabilities --key SECRET:100000`` or,
from Python, :func:`create_app` and :class:`ServerThread`. The client side is
:class:`model_extraction.remote.RemoteOracle`.
"""

from .audit import AuditLog, AuditRecord
from .keys import ApiKey, KeyRing, load_keys, parse_key_option
from .run import ServerThread, serve
from .server import ApiError, ServerConfig, ServingState, create_app

__all__ = [
    "ApiError",
    "ApiKey",
    "AuditLog",
    "AuditRecord",
    "KeyRing",
    "ServerConfig",
    "ServerThread",
    "ServingState",
    "create_app",
    "load_keys",
    "parse_key_option",
    "serve",
]
