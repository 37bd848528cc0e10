"""Learning-based extraction, end to end (Jagielski et al. 2020, §4, Tables 2–3).

The attacker holds a pool of unlabeled inputs from the victim's domain and a query budget. It
labels a seeded random subset of the pool through the oracle (:mod:`.query`) and trains a
substitute on it:

- ``method="supervised"``: on the labelled subset only (Table 3's FS);
- ``method="mixmatch"``: semi-supervised, the rest of the pool unlabeled (Table 3's MM);
- ``rotation=True`` (with ``"supervised"``): plus the self-supervised rotation loss on the
  unlabeled rest (Table 2's "+ Rot").

Every method trains with Adam and the same regularisers (:class:`~.loop.Regularisation`:
decoupled weight decay and a moving average of the weights, as MixMatch's own fully supervised
baselines), so the comparisons of Tables 2–3 differ only in the method. The oracle may be an
:class:`~model_extraction.oracle.Oracle`, a network or a plain callable (coerced by
:func:`~model_extraction.oracle.as_oracle`, as functionally-equivalent extraction does).

The result carries the substitute, the queries spent (never more than the budget), and its
accuracy and fidelity at regular checkpoints, summarised as the median over the last 20
(Table 3's convention).

>>> from model_extraction.attacks.learning import LearningExtraction
>>> attack = LearningExtraction(method="mixmatch", steps=2000)          # doctest: +SKIP
>>> result = attack.run(oracle, pool, queries=250, test=test_set)       # doctest: +SKIP
>>> result.metrics().accuracy, result.metrics().fidelity                # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import ArrayLike

from model_extraction.datasets import Dataset
from model_extraction.models import Classifier, build_model
from model_extraction.oracle import Oracle, OutputKind, as_oracle
from model_extraction.training import Augment, predict, resolve_device, seeded

from .augment import default_augmentation
from .evaluate import Checkpoint, EvaluationSet, Metrics, median_of_last
from .loop import Progress, Regularisation
from .mixmatch import MixMatchConfig, train_mixmatch
from .query import LabelledQueries, as_images, query_pool
from .rotation import train_with_rotation
from .supervised import Trained, train_supervised

__all__ = ["METHODS", "LearningExtraction", "LearningResult", "extract_learning"]

Method = Literal["supervised", "mixmatch"]
METHODS: tuple[str, ...] = ("supervised", "mixmatch")


@dataclass
class LearningResult:
    """A substitute model and what it cost.

    ``history`` holds the test metrics at each checkpoint; :meth:`metrics` is the median over
    the last ``median_of`` of them, as the paper reports (Table 3).
    """

    substitute: Classifier
    spec: dict[str, Any]
    method: str
    rotation: bool
    output_kind: str
    queries: int
    labelled: LabelledQueries
    steps: int
    history: list[Checkpoint]
    seconds: float
    median_of: int = 20
    config: dict[str, Any] = field(default_factory=dict)

    def metrics(self, last: int | None = None) -> Metrics:
        """Median of each metric over the last ``last`` (default ``median_of``) checkpoints."""
        return median_of_last(self.history, self.median_of if last is None else last)

    @property
    def final(self) -> Metrics | None:
        """The metrics at the last checkpoint (``None`` without an evaluation set)."""
        return self.history[-1].metrics if self.history else None

    def predict(self, x: ArrayLike) -> np.ndarray:
        """The substitute's labels for images ``(n, C, H, W)`` or flattened rows."""
        xs = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        return predict(self.substitute, xs.reshape(-1, *self.spec["input_shape"])).argmax(
            1).numpy()

    def to_victim(self) -> Any:
        """The substitute as a :class:`~model_extraction.victims.TorchVictim` (to save, serve,
        or attack in turn)."""
        from model_extraction.victims import TorchVictim

        meta = {"extracted_by": f"learning/{self.method}" + ("+rotation" if self.rotation else ""),
                "queries": self.queries, "output_kind": self.output_kind}
        return TorchVictim(self.substitute, self.spec, meta)

    def save(self, path: str | Path) -> None:
        """Write the substitute to a safetensors file that ``TorchVictim.load`` reads."""
        self.to_victim().save(path)

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable summary (metrics: median of the last checkpoints, and final)."""
        out: dict[str, Any] = {
            "method": self.method, "rotation": self.rotation, "output": self.output_kind,
            "k": self.labelled.k, "queries": self.queries,
            "unusable_answers": len(self.labelled.unusable), "steps": self.steps,
            "seconds": self.seconds, "median_of": self.median_of,
            "checkpoints": len(self.history), "arch": self.spec["arch"],
            "arch_options": self.spec.get("options", {}), "config": self.config,
        }
        if self.history:
            out["metrics"] = self.metrics().as_dict()
            out["final"] = self.history[-1].metrics.as_dict()
            out["history"] = [c.as_dict() for c in self.history]
        return out


@dataclass
class LearningExtraction:
    """Configuration of a learning-based extraction attack (§4); :meth:`run` performs it.

    Parameters
    ----------
    method:
        ``"supervised"`` or ``"mixmatch"``.
    rotation:
        Add the rotation loss on unlabeled inputs (supervised only; §4.1, Table 2).
    arch, arch_options:
        The substitute (:func:`~model_extraction.models.build_model`): ``"wrn-28-2"`` as in the
        paper, ``"cnn"`` to train in minutes on a CPU.
    steps:
        Optimizer steps (supervised runs round up to whole epochs).
    batch_size:
        Labelled batch size (MixMatch also draws as many unlabeled inputs per step).
    lr:
        Adam's learning rate (every method).
    weight_decay, ema_decay:
        The regularisers of every method (:class:`~.loop.Regularisation`): decoupled weight
        decay ``w ← w·(1 − weight_decay·lr)`` per step, and the decay of the moving average of
        the weights that is evaluated and returned (0: the live model). MixMatch's: 0.02 and
        0.999.
    rotation_weight:
        Weight of the rotation loss.
    mixmatch:
        :class:`~.mixmatch.MixMatchConfig`.
    augment:
        ``"auto"`` (:func:`~.augment.default_augmentation`, flips only where the dataset allows,
        known when the pool is a :class:`~model_extraction.datasets.Dataset`), ``None`` for
        none, or an ``Augment`` callable.
    eval_every:
        Evaluate every this many steps (default: 50 checkpoints per run).
    median_of:
        How many of the last checkpoints the reported metrics are the median of (paper: 20).
    seed:
        Seeds the choice of queries, the initial weights and the batch order.
    device:
        Where to train: ``"cpu"``, ``"cuda"`` or ``"auto"``
        (:func:`~model_extraction.training.resolve_device`; batches are drawn and augmented on
        the CPU). Asking for ``"cuda"`` without a GPU is a ``ValueError`` here.
    """

    method: Method = "mixmatch"
    rotation: bool = False
    arch: str = "cnn"
    arch_options: dict[str, int] = field(default_factory=dict)
    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.02
    ema_decay: float = 0.999
    rotation_weight: float = 1.0
    mixmatch: MixMatchConfig = field(default_factory=MixMatchConfig)
    augment: Augment | Literal["auto"] | None = "auto"
    eval_every: int | None = None
    median_of: int = 20
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.rotation and self.method != "supervised":
            raise ValueError("the rotation loss is implemented for method='supervised' (§4.1); "
                             "MixMatch already learns from the unlabeled inputs")
        if self.steps < 1 or self.batch_size < 1 or self.median_of < 1 or not self.lr > 0:
            raise ValueError("steps, batch_size, median_of and lr must be positive")
        Regularisation(self.weight_decay, self.ema_decay)  # a bad value fails here
        self.device = resolve_device(self.device)  # "auto"; a missing GPU fails here
        try:  # fail here, not after the queries are paid for
            with seeded(0):
                build_model(self.arch, (1, 8, 8), 2, **self.arch_options)
        except (TypeError, ValueError) as err:
            raise ValueError(f"cannot build the substitute {self.arch!r} with options "
                             f"{self.arch_options}: {err}") from None

    @property
    def regularisation(self) -> Regularisation:
        """The weight decay and moving average every method trains with."""
        return Regularisation(weight_decay=self.weight_decay, ema_decay=self.ema_decay)

    def run(
        self,
        oracle: Oracle | Any,
        pool: Dataset | ArrayLike,
        *,
        queries: int | None = None,
        test: EvaluationSet | None = None,
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
        output: OutputKind | str | None = None,
        k: int | None = None,
        progress: Progress | None = None,
    ) -> LearningResult:
        """Extract a substitute of the victim behind ``oracle``.

        Parameters
        ----------
        oracle:
            The victim's API: an :class:`~model_extraction.oracle.Oracle` (it counts the
            queries), a network (anything with ``.logits``: a logit oracle), or a plain
            callable ``(n, d) float64 -> (n, K)`` (then say what it returns with ``output``),
            coerced by :func:`~model_extraction.oracle.as_oracle`.
        pool:
            The attacker's unlabeled inputs: a ``Dataset`` (labels unused), ``(n, C, H, W)``
            images in ``[0, 1]``, or ``(n, d)`` rows with ``input_shape``.
        queries:
            How many pool inputs to label (default: the oracle's remaining budget).
        test:
            Where to measure accuracy and fidelity (:class:`~.evaluate.EvaluationSet`).
        num_classes, output, k:
            Only for oracles that do not say (a label oracle hides the number of classes; a
            :class:`~model_extraction.oracle.CallableOracle` its output kind).
        progress:
            ``progress(step, total, checkpoint_or_None)`` after each training step.

        Raises
        ------
        ValueError
            Empty pool, a budget larger than the pool, inputs of the wrong shape, a callable
            whose output kind is not given (all before any query).
        BudgetExhaustedError
            The oracle's budget cannot pay for ``queries`` (nothing is queried).
        OracleOutputError
            A first batch of answers (:data:`~.query.FIRST_BATCH` queries) that is not what the
            oracle promised (e.g. rows that are not distributions, even rounded, when
            probabilities are promised); the rest of the budget is then not spent. Later
            unusable answers label nothing (:func:`~.query.query_pool`).
        """
        started = time.perf_counter()
        images = as_images(pool, input_shape)
        oracle = as_oracle(oracle, input_dim=int(np.prod(images.shape[1:])))
        if queries is None:
            queries = oracle.remaining
            if queries is None:
                raise ValueError("give queries= (the oracle has no budget to default to)")
        shape = tuple(int(s) for s in images.shape[1:])
        uses_unlabeled = self.method == "mixmatch" or self.rotation
        if uses_unlabeled and queries == len(images):  # larger: query_pool's error
            raise ValueError(
                f"{'MixMatch' if self.method == 'mixmatch' else 'the rotation loss'} needs "
                f"unlabeled inputs, but a budget of {queries} queries labels the whole pool of "
                f"{len(images)}: use a smaller budget or method='supervised' (nothing was queried)"
            )
        if self.rotation and shape[-1] != shape[-2]:
            raise ValueError(f"the rotation loss needs square images, got {shape[-2:]}")
        labelled = query_pool(oracle, images, queries, seed=self.seed, num_classes=num_classes,
                              output=output, k=k)
        spec = {"arch": self.arch, "input_shape": list(shape),
                "num_classes": labelled.num_classes, "options": dict(self.arch_options)}
        with seeded(self.seed):
            model = build_model(self.arch, shape, labelled.num_classes, **self.arch_options)
        augment = self.augment
        if augment == "auto":
            augment = default_augmentation(shape, pool.name if isinstance(pool, Dataset) else None)
        x = torch.from_numpy(images)
        mask = np.ones(len(images), dtype=bool)
        mask[labelled.indices] = False
        unlabeled = torch.from_numpy(np.flatnonzero(mask))
        every = self.eval_every or max(1, self.steps // 50)
        common: dict[str, Any] = dict(steps=self.steps, batch_size=self.batch_size,
                                      lr=self.lr, regularisation=self.regularisation,
                                      seed=self.seed, augment=augment, data=test,
                                      eval_every=every, progress=progress,
                                      device=self.device)
        trained: Trained
        if self.method == "mixmatch":
            trained = train_mixmatch(model, x, labelled, unlabeled, config=self.mixmatch,
                                     **common)
        elif self.rotation:
            trained = train_with_rotation(model, x, labelled, unlabeled,
                                          weight=self.rotation_weight, **common)
        else:
            trained = train_supervised(model, x, labelled, **common)
        config = {"steps": self.steps, "batch_size": self.batch_size, "seed": self.seed,
                  "eval_every": every, "augment": repr(augment), "lr": self.lr,
                  **self.regularisation.as_dict()}
        if self.method == "mixmatch":
            config["mixmatch"] = self.mixmatch.as_dict()
        elif self.rotation:
            config["rotation_weight"] = self.rotation_weight
        return LearningResult(
            substitute=trained.model.cpu(), spec=spec, method=self.method, rotation=self.rotation,
            output_kind=labelled.output_kind.value, queries=labelled.spent, labelled=labelled,
            steps=trained.steps, history=trained.history,
            seconds=time.perf_counter() - started, median_of=self.median_of, config=config,
        )


def extract_learning(
    oracle: Oracle | Any,
    pool: Dataset | ArrayLike,
    *,
    queries: int | None = None,
    test: EvaluationSet | None = None,
    method: Method = "mixmatch",
    progress: Progress | None = None,
    **options: Any,
) -> LearningResult:
    """Learning-based extraction in one call: ``LearningExtraction(method=method, **options)
    .run(oracle, pool, queries=queries, test=test)``. ``oracle``: an Oracle, a network or a
    callable (:meth:`LearningExtraction.run`). ``options`` also takes ``run``'s
    ``input_shape``, ``num_classes``, ``output`` and ``k``."""
    run_keys = {"input_shape", "num_classes", "output", "k"}
    run_options = {key: options.pop(key) for key in list(options) if key in run_keys}
    return LearningExtraction(method=method, **options).run(
        oracle, pool, queries=queries, test=test, progress=progress, **run_options
    )
