"""``model-extraction serve``: a victim behind the Open Inference Protocol, with keys, budgets,
rate limits, an audit log and an output policy."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from .common import out


class OutputView(StrEnum):
    logits = "logits"
    probabilities = "probabilities"
    top_k = "top_k"
    label = "label"


def serve(
    victim: Annotated[Path, typer.Argument(
        exists=True, dir_okay=False, help="The victim to serve (.safetensors, from extract "
        "--save-victim).")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free "
                                      "port).")] = 8000,
    model_name: Annotated[str, typer.Option(help="Name in /v2/models/{name}.")] = "victim",
    output: Annotated[OutputView, typer.Option(help="What the API returns.")]
    = OutputView.logits,
    k: Annotated[int, typer.Option(min=1, help="top_k: probabilities revealed.")] = 5,
    decimals: Annotated[int | None, typer.Option(help="Defence: round outputs to this many "
                                                 "decimals.")] = None,
    noise_sigma: Annotated[float, typer.Option(help="Defence: Gaussian noise of this standard "
                                               "deviation.")] = 0.0,
    reverse_sigmoid_beta: Annotated[float | None, typer.Option(
        help="Defence: reverse sigmoid (Lee et al. 2019) of this strength.")] = None,
    reverse_sigmoid_gamma: Annotated[float, typer.Option(help="Reverse sigmoid's γ.")] = 0.5,
    key: Annotated[list[str] | None, typer.Option(
        help="API key as SECRET or SECRET:BUDGET (rows); repeat for several.")] = None,
    keys_file: Annotated[Path | None, typer.Option(
        help='JSON list of {"key", "name", "budget", "rate", "burst"}.')] = None,
    rate_limit: Annotated[float | None, typer.Option(help="Requests per second per key.")]
    = None,
    burst: Annotated[float | None, typer.Option(help="Rate-limit bucket size.")] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="Most rows per request.")] = 4096,
    max_request_bytes: Annotated[int, typer.Option(min=1, help="Largest request body.")]
    = 64 * 2**20,
    input_range: Annotated[tuple[float, float] | None, typer.Option(
        help="Refuse input values outside LOW HIGH.")] = None,
    log: Annotated[Path | None, typer.Option(
        help="SQLite audit log of every request; it also keeps spent budgets and answered "
             "request ids across restarts (without it a restart forgets them).")] = None,
    audit_inputs: Annotated[bool, typer.Option(
        help="Keep the input rows of answered requests in the audit log.")] = True,
    audit_inputs_mb: Annotated[int, typer.Option(
        min=0, help="Most MiB of input rows the audit log keeps (oldest dropped first; "
                    "their charges stay).")] = 1024,
    seed: Annotated[int | None, typer.Option(
        help="Seed of the noise defence (default: a random secret kept in the --log "
             "database). Anyone who knows it can remove the noise.")] = None,
    tensor_metadata: Annotated[bool, typer.Option(
        help="Publish the input and output tensors in the model's metadata (--no-tensor-"
             "metadata: empty lists, as some third-party runtimes).")] = True,
    docs: Annotated[bool, typer.Option(
        help="Serve the interactive API documentation (/docs, /openapi.json).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check the options, print the "
                                          "deployment, do not serve.")] = False,
) -> None:
    """Serve a victim over HTTP (Open Inference Protocol / KServe v2) with keys and budgets.

    Attack it with model_extraction.remote.RemoteOracle("http://HOST:PORT/v2/models/NAME").
    """
    from model_extraction.serving.launch import launch

    summary = launch(
            victim, host=host, port=port, model_name=model_name, output=output.value, k=k,
            decimals=decimals, noise_sigma=noise_sigma,
            reverse_sigmoid_beta=reverse_sigmoid_beta,
            reverse_sigmoid_gamma=reverse_sigmoid_gamma, keys=key, keys_file=keys_file,
            rate_limit=rate_limit, burst=burst, max_batch=max_batch,
            max_request_bytes=max_request_bytes, input_range=input_range, log=log,
            audit_inputs=audit_inputs, audit_inputs_mb=audit_inputs_mb, seed=seed,
            publish_tensors=tensor_metadata, docs=docs, dry_run=dry_run,
        )
    if dry_run:
        out.print(summary)
