"""``model-extraction serve``: build a deployment from command-line options and run it."""

from __future__ import annotations

import socket
from pathlib import Path

from model_extraction.defenses import OutputPolicy
from model_extraction.network import ReLUNetwork

from .keys import ApiKey, load_keys, parse_key_option
from .run import serve
from .server import ServerConfig, create_app

__all__ = ["launch"]


def _check_port(host: str, port: int) -> None:
    """Raise ``OSError`` saying what to do when ``host:port`` cannot be listened on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise OSError(f"cannot listen on {host}:{port} ({err.strerror}): choose another "
                          "--port (0: any free one) or --host") from None


def launch(
    victim: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str = "victim",
    output: str = "logits",
    k: int = 5,
    decimals: int | None = None,
    noise_sigma: float = 0.0,
    reverse_sigmoid_beta: float | None = None,
    reverse_sigmoid_gamma: float = 0.5,
    keys: list[str] | None = None,
    keys_file: Path | None = None,
    rate_limit: float | None = None,
    burst: float | None = None,
    max_batch: int = 4096,
    max_request_bytes: int = 64 * 2**20,
    input_range: tuple[float, float] | None = None,
    log: Path | None = None,
    audit_inputs: bool = True,
    audit_inputs_mb: int | None = 1024,
    seed: int | None = None,
    publish_tensors: bool = True,
    docs: bool = False,
    dry_run: bool = False,
    log_level: str = "info",
) -> str:
    """Load ``victim``, build the app, and serve it (unless ``dry_run``); return a summary.

    ``audit_inputs_mb`` bounds the input rows the audit log keeps (MiB; ``None``: no bound).
    Raises ``ValueError`` with a message for inconsistent options, ``OSError`` or
    ``sqlite3.DatabaseError`` for an unusable victim or log file.
    """
    network = ReLUNetwork.load(victim)
    policy = OutputPolicy(kind=output, k=k, decimals=decimals, noise_sigma=noise_sigma,
                          reverse_sigmoid_beta=reverse_sigmoid_beta,
                          reverse_sigmoid_gamma=reverse_sigmoid_gamma)
    api_keys: list[ApiKey] = [parse_key_option(text) for text in keys or []]
    if keys_file is not None:
        api_keys += load_keys(keys_file)
    config = ServerConfig(
        model_name=model_name, policy=policy, keys=tuple(api_keys), rate_limit=rate_limit,
        burst=burst, max_batch=max_batch, max_request_bytes=max_request_bytes,
        input_range=input_range, log_path=log, store_inputs=audit_inputs,
        audit_input_bytes=None if audit_inputs_mb is None else audit_inputs_mb * 2**20,
        seed=seed, publish_tensors=publish_tensors, docs=docs,
    )
    app = create_app(network, config)
    kept = ("none" if not audit_inputs else "all" if audit_inputs_mb is None
            else f"the latest {audit_inputs_mb:,} MiB")
    budgets = ", ".join(f"{key.name}: {'unlimited' if key.budget is None else f'{key.budget:,}'}"
                        for key in api_keys) or "none (open server, no budget)"
    summary = (
        f"serving {victim} ({network.input_dim}-{network.hidden}-{network.num_outputs}) as "
        f"{model_name!r} on http://{host}:{port}/v2/models/{model_name}\n"
        f"outputs: {policy.describe()}\n"
        f"API keys (rows of budget): {budgets}\n"
        f"rate limit: {'none' if rate_limit is None else f'{rate_limit:g} requests/s per key'}; "
        f"max batch {max_batch:,} rows; max request {max_request_bytes:,} bytes\n"
        f"audit log: {log or 'none'}"
        + (f" (inputs kept: {kept})" if log else "")
        + "\nbudgets and answered request ids: "
        + ("durable (restored from the audit log at start-up)" if log
           else "in memory only (a restart refunds them; give --log to keep them)")
        + ("\ninteractive docs: /docs" if docs else "")
        + ("" if publish_tensors else "\nmetadata: no tensors published (clients must name "
                                      "them and give the input width)")
    )
    if not dry_run:
        _check_port(host, port)
        print(summary, flush=True)
        serve(app, host=host, port=port, log_level=log_level)
    return summary
