"""``model-extraction learn``: learning-based extraction (§4, Tables 2–3) of a local victim or
of any Open Inference Protocol API."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from .common import (
    ApiKey,
    BatchSize,
    Concurrency,
    DataDir,
    Dataset,
    DryRun,
    InputName,
    JsonPath,
    OutputName,
    Progress_,
    QueryLog,
    Url,
    connect,
    console,
    fail,
    load_data,
    results,
    write_json,
)


class Arch(StrEnum):
    mlp = "mlp"
    cnn = "cnn"
    wrn = "wrn-28-2"


class LearnOutput(StrEnum):
    probabilities = "probabilities"
    top_k = "top_k"
    label = "label"
    logits = "logits"


class Method(StrEnum):
    supervised = "supervised"
    mixmatch = "mixmatch"


def learn(
    dataset: Annotated[Dataset, typer.Option(
        help="The victim's training data and the attacker's pool (unlabelled).")]
    = Dataset.digits,
    data_dir: DataDir = None,
    arch: Annotated[Arch, typer.Option(help="Victim and substitute architecture (wrn-28-2: "
                                       "the paper's).")] = Arch.mlp,
    width: Annotated[int | None, typer.Option(min=1, help="Hidden units (mlp) or channels "
                                              "(cnn).")] = None,
    victim: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="Load this saved victim (.safetensors) instead of "
        "training one; with --url, a copy of the served model to measure fidelity against.")]
    = None,
    victim_epochs: Annotated[int | None, typer.Option(
        min=1, help="Epochs of a victim trained here (default: >= 3000 steps).")] = None,
    output: Annotated[LearnOutput, typer.Option(
        "--output", "--output-kind", help="What the API reveals.")] = LearnOutput.label,
    k: Annotated[int, typer.Option(min=1, help="top_k: probabilities revealed (WSL-5: 5).")]
    = 5,
    budget: Annotated[int, typer.Option(min=1, help="Queries: pool inputs labelled through "
                                        "the API.")] = 250,
    method: Annotated[Method, typer.Option(help="Fully supervised or MixMatch.")]
    = Method.mixmatch,
    rotation: Annotated[bool, typer.Option(help="Add the rotation loss (supervised).")] = False,
    steps: Annotated[int, typer.Option(min=1, help="Training steps.")] = 1000,
    lambda_u: Annotated[float | None, typer.Option(
        min=0.0, help="MixMatch's unlabeled-loss weight (default: the dataset's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the victim, the queries and training.")]
    = 0,
    test_size: Annotated[int | None, typer.Option(min=1, help="Evaluate on N random test "
                                                  "images.")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="torch threads.")] = None,
    device: Annotated[str, typer.Option(help="Where the victim and the substitute train: cpu, "
                                        "cuda (an error without a GPU) or auto.")] = "cpu",
    save_victim: Annotated[Path | None, typer.Option(dir_okay=False,
                                                     help="Save the victim here.")] = None,
    save_substitute: Annotated[Path | None, typer.Option(dir_okay=False,
                                                         help="Save the substitute here.")]
    = None,
    json_path: JsonPath = None,
    progress: Progress_ = True,
    url: Url = None,
    api_key: ApiKey = None,
    input_name: InputName = None,
    output_name: OutputName = None,
    concurrency: Concurrency = 4,
    batch_size: BatchSize = 512,
    query_log: QueryLog = None,
    dry_run: DryRun = False,
) -> None:
    """Learning-based extraction (§4, Tables 2-3): fully supervised, MixMatch or rotation loss.

    Labels BUDGET random training images of the dataset through the API (a victim trained here,
    or the model at --url) and trains a substitute; reports its test accuracy and fidelity
    (median of the last 20 checkpoints, as the paper).
    """
    import torch

    from model_extraction.attacks.learning import command
    from model_extraction.oracle import ModelOracle

    if url is None and (dry_run or query_log or input_name or output_name):
        fail("--dry-run, --query-log, --input-name and --output-name apply to a remote API: add "
             "--url")
    attack = command.learning_attack(
        dataset=dataset.value, arch=arch.value, width=width, method=method.value,
        rotation=rotation, steps=steps, lambda_u=lambda_u, seed=seed, device=device)
    if threads is not None:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    train = load_data(dataset.value, "train", data_dir)
    if url is not None:
        oracle = connect(url, api_key=api_key, input_name=input_name, output_name=output_name,
                         output_kind=output.value, input_dim=int(np.prod(train.input_shape)),
                         budget=budget, concurrency=concurrency, batch_size=batch_size,
                         query_log=query_log, width_from="the dataset")
        if dry_run:
            return
    test = load_data(dataset.value, "test", data_dir)
    if url is not None:
        net = None if victim is None else command.load_any_victim(victim)
        about = {"url": oracle.plan["url"], "copy": victim is not None}
    else:
        net = command.local_victim(train, test, attack, path=victim, epochs=victim_epochs,
                                   console=console)
        oracle = ModelOracle(net, output=output.value, k=k, budget=budget)
        about = {"arch": getattr(net, "spec", {"arch": "relu"})["arch"],
                 "options": getattr(net, "spec", {}).get("options", {}),
                 "test_accuracy": net.metadata.get("test_accuracy")}
    if save_victim is not None and net is not None:
        net.save(save_victim)
    about["seconds_to_build"] = time.perf_counter() - started
    evaluation = command.test_set(net, test, test_size, seed)
    result = command.run_learn(attack, oracle, train, evaluation, budget=budget,
                               progress=progress, console=console)
    if save_substitute is not None:
        result.save(save_substitute)
    r = command.report(result, oracle, dataset=dataset.value, victim=about, test=evaluation,
                       device=attack.device)
    command.print_summary(r, results(json_path))
    write_json(json_path, r)
