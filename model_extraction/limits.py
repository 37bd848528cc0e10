"""The limits of learning-based extraction: the non-determinism experiment (§5, Table 4).

Jagielski et al. (2020, §5) ask how much fidelity an attacker can reach by *learning* even when
it knows everything about the victim's training: the training inputs, the architecture and the
hyper-parameters. The experiment:

1. train an oracle with initialisation seed 0 and SGD (batch order) seed 0 on the true labels;
2. query it on the training inputs to get a labelled substitute dataset ``D`` (label-only
   oracle, :class:`~model_extraction.oracle.ModelOracle`, so the query cost is counted);
3. train ``models_per_setting`` models on ``D`` in each of four settings — same initialisation
   and same SGD seed as the oracle, same SGD seed only, same initialisation only, both
   different — with fully supervised SGD and the oracle's hyper-parameters;
4. measure agreement of predicted labels on three query sets: the test set, FGSM adversarial
   examples crafted against the oracle from the test set (``eps = 25/255``,
   :func:`~model_extraction.adversarial.fgsm`), and uniform random inputs in ``[0, 1]``.

Agreement is reported two ways, each labelled: **vs oracle** (each model against the oracle:
the fidelity of the extraction) and **pairwise** (the mean over the pairs of models within a
setting: how much the attack's own randomness decides the predictions); and, because a query
set that the oracle sends almost entirely to one class (uniform noise, for an MLP) makes raw
agreement high whatever was learnt, also as Cohen's kappa with the oracle (agreement beyond
chance, :func:`chance_corrected_agreement`).

On a CPU with a fixed number of threads and deterministic algorithms, fixing both seeds makes
training bit-identical, so the "same init & same SGD" models are one model repeated (pairwise
100%); what separates it from the oracle is only that ``D``'s labels are the oracle's
predictions, not the true labels. The platform non-determinism the paper's GPU added is
measured separately by :func:`measure_residual_nondeterminism` (the same run with more
threads, with non-deterministic algorithms allowed, and with every initial weight moved by one
float32 ulp, the size of a rounding difference), and can be injected into the main experiment
with :attr:`LimitsConfig.init_ulps`.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from model_extraction.adversarial import fgsm
from model_extraction.datasets import Dataset
from model_extraction.models import MODEL_NAMES, Classifier, build_model
from model_extraction.oracle import ModelOracle
from model_extraction.training import deterministic, fit, predict, seeded
from model_extraction.victims import TorchVictim

__all__ = [
    "PAPER_TABLE4",
    "QUERY_SETS",
    "SETTINGS",
    "SETTING_TITLES",
    "LimitsConfig",
    "LimitsExperiment",
    "LimitsResult",
    "MEASURES",
    "ResidualVariant",
    "RunRecord",
    "chance_corrected_agreement",
    "measure_residual_nondeterminism",
    "pairwise_agreement",
    "run_limits",
    "weights_digest",
]

SETTINGS: tuple[str, ...] = ("same_init_same_sgd", "same_sgd", "same_init", "different")
"""The four settings of Table 4, as JSON keys."""

SETTING_TITLES: dict[str, str] = {
    "same_init_same_sgd": "Init & SGD",
    "same_sgd": "Same SGD",
    "same_init": "Same Init",
    "different": "Different",
}
"""Column titles as the paper prints them."""

QUERY_SETS: tuple[str, ...] = ("test", "adversarial", "uniform")
"""Rows of Table 4: test inputs, FGSM examples against the oracle, uniform random inputs."""

PAPER_TABLE4: dict[str, dict[str, float]] = {
    "test": {"same_init_same_sgd": 0.937, "same_sgd": 0.932, "same_init": 0.931,
             "different": 0.934},
    "adversarial": {"same_init_same_sgd": 0.736, "same_sgd": 0.654, "same_init": 0.653,
                    "different": 0.671},
    "uniform": {"same_init_same_sgd": 0.657, "same_sgd": 0.602, "same_init": 0.590,
                "different": 0.602},
}
"""Table 4 of the paper (Fashion-MNIST, GPU), for side-by-side printing; never used as a result."""

MEASURES: dict[str, str] = {
    "vs_oracle": "agreement with the oracle (fidelity)",
    "pairwise": "pairwise agreement among the models of a setting",
    "kappa_vs_oracle": "agreement with the oracle beyond chance (Cohen's kappa)",
}
"""The three ways agreement is reported, and their titles."""

ProgressFn = Callable[[str, int, int], None]
"""``progress(description, done, total)``, called as models finish."""


@dataclass(frozen=True)
class LimitsConfig:
    """Everything that defines one run of the experiment (recorded in its JSON).

    The defaults are the Fashion-MNIST benchmark of this project: a one-hidden-layer MLP (256
    units) trained with SGD (momentum 0.9), which reaches about 88% test accuracy in 20 epochs
    on a CPU (the paper's oracle: about 90%).
    """

    arch: str = "mlp"
    """Architecture name for :func:`~model_extraction.models.build_model`."""
    options: Mapping[str, int] = field(default_factory=lambda: {"hidden": 256})
    """Constructor options (``hidden`` for ``mlp``, ``width`` for ``cnn``)."""
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    models_per_setting: int = 10
    """The paper: 10 per setting."""
    settings: tuple[str, ...] = SETTINGS
    eps: float = 25 / 255
    """FGSM step (L∞), the paper's 25/255."""
    n_uniform: int = 10_000
    """Uniform random query inputs."""
    uniform_seed: int = 0
    oracle_init_seed: int = 0
    oracle_order_seed: int = 0
    seed_base: int = 1000
    """Seeds that must differ from the oracle's are ``seed_base + offset + i``, all distinct
    (see :meth:`seeds`)."""
    train_size: int | None = None
    """Use only the first ``train_size`` training images (``None``: all)."""
    test_size: int | None = None
    """Use only the first ``test_size`` test images (``None``: all)."""
    threads: int = 1
    """``torch`` intra-op threads while training (1: bit-reproducible on a CPU)."""
    deterministic_algorithms: bool = True
    """Train under ``torch.use_deterministic_algorithms(True)``."""
    init_ulps: int = 0
    """Move every initial weight of every extracted model by this many float32 ulps in a
    random direction (seeded per run): injects rounding-sized platform noise, as a GPU's
    non-associative sums would. 0: off (the CPU's own determinism)."""
    device: str = "cpu"
    """Where to train and evaluate (``"cuda"`` measures a GPU's own non-determinism; with
    ``deterministic_algorithms`` PyTorch then needs ``CUBLAS_WORKSPACE_CONFIG=:4096:8``).
    Initial weights are always drawn on the CPU, so they do not depend on the device."""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field and what to do about it."""
        if self.arch.lower() not in MODEL_NAMES and not self.arch.lower().startswith("wrn"):
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {', '.join(MODEL_NAMES)}")
        for name in ("epochs", "batch_size", "models_per_setting", "n_uniform", "threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.eps) and 0 <= self.eps <= 1):
            raise ValueError(f"eps must lie in [0, 1] (inputs are in [0, 1]), got {self.eps}")
        if not self.settings or len(set(self.settings)) != len(self.settings):
            raise ValueError(f"settings must be distinct names from {SETTINGS}")
        unknown = [s for s in self.settings if s not in SETTINGS]
        if unknown:
            raise ValueError(f"unknown settings {unknown}; choose from {', '.join(SETTINGS)}")
        for name in ("train_size", "test_size"):
            v = getattr(self, name)
            if v is not None and v < 2:
                raise ValueError(f"{name} must be at least 2 (or None for all), got {v}")
        if self.init_ulps < 0:
            raise ValueError(f"init_ulps must be >= 0, got {self.init_ulps}")
        oracle = {self.oracle_init_seed, self.oracle_order_seed}
        fresh = {i for i, _ in self.seeds("same_sgd")} | {o for _, o in self.seeds("same_init")}
        fresh |= {s for pair in self.seeds("different") for s in pair}
        if oracle & fresh:
            raise ValueError(
                f"seed_base={self.seed_base} makes a fresh seed equal to an oracle seed "
                f"{sorted(oracle)}; choose a seed_base above the oracle's seeds"
            )

    def seeds(self, setting: str) -> list[tuple[int, int]]:
        """``(init_seed, order_seed)`` of each run of ``setting``.

        With ``n = models_per_setting`` and ``b = seed_base``: ``same_sgd`` uses init seeds
        ``b .. b+n-1``; ``same_init`` order seeds ``b+n .. b+2n-1``; ``different`` init seeds
        ``b+2n ..`` and order seeds ``b+3n ..``: every fresh seed is used once.
        """
        n, b = self.models_per_setting, self.seed_base
        oi, oo = self.oracle_init_seed, self.oracle_order_seed
        if setting == "same_init_same_sgd":
            return [(oi, oo)] * n
        if setting == "same_sgd":
            return [(b + i, oo) for i in range(n)]
        if setting == "same_init":
            return [(oi, b + n + i) for i in range(n)]
        if setting == "different":
            return [(b + 2 * n + i, b + 3 * n + i) for i in range(n)]
        raise ValueError(f"unknown setting {setting!r}; choose from {', '.join(SETTINGS)}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["options"] = dict(self.options)
        d["settings"] = list(self.settings)
        return d


@dataclass
class RunRecord:
    """One trained model: its seeds, accuracy, agreement with the oracle and weight digest."""

    setting: str
    index: int
    init_seed: int
    order_seed: int
    test_accuracy: float
    agreement_with_oracle: dict[str, float]
    kappa_with_oracle: dict[str, float]
    weights_sha256: str
    final_loss: float
    seconds: float
    jitter_seed: int | None = None


@dataclass
class ResidualVariant:
    """A way of re-running the same-seed training that a platform might differ by."""

    name: str
    threads: int = 1
    deterministic_algorithms: bool = True
    init_ulps: int = 0


DEFAULT_VARIANTS: tuple[ResidualVariant, ...] = (
    ResidualVariant("repeat (1 thread, deterministic)"),
    ResidualVariant("2 threads", threads=2),
    ResidualVariant("initial weights moved by 1 float32 ulp", init_ulps=1),
)
"""Run-to-run, thread count, and a rounding-sized change. On a GPU (``device="cuda"``) add
``ResidualVariant("non-deterministic kernels", deterministic_algorithms=False)``; on the CPU it
changed nothing here (the MLP on Fashion-MNIST with 2 threads: the same weights either way)."""


def _stats(values: Sequence[float]) -> dict[str, float | int | None]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
            "max": float(v.max()), "n": int(v.size)}


def pairwise_agreement(predictions: NDArray[np.integer]) -> NDArray[np.float64]:
    """Agreement of every pair ``i < j`` of rows of ``(m, n)`` predicted labels (``m(m-1)/2``)."""
    p = np.asarray(predictions)
    if p.ndim != 2:
        raise ValueError(f"predictions must be (models, inputs), got shape {p.shape}")
    eq = (p[:, None, :] == p[None, :, :]).mean(axis=2)
    i, j = np.triu_indices(len(p), k=1)
    return eq[i, j]


def chance_corrected_agreement(a: NDArray[np.integer], b: NDArray[np.integer]) -> float:
    """Cohen's kappa of two label vectors: ``(p_o - p_e) / (1 - p_e)``.

    ``p_o`` is the agreement, ``p_e = Σ_k P(a = k) P(b = k)`` the agreement two independent
    predictors with the same label frequencies would reach. 1: identical; 0: no better than
    chance. Needed where one class takes almost every input (uniform noise), which makes raw
    agreement high whatever the models learnt. ``nan`` when both are one and the same constant.
    """
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"label arrays must be non-empty and match: {a.shape} vs {b.shape}")
    k = int(max(a.max(), b.max())) + 1
    p_o = float(np.mean(a == b))
    p_e = float(np.dot(np.bincount(a, minlength=k), np.bincount(b, minlength=k))) / a.size**2
    return float("nan") if p_e >= 1.0 else (p_o - p_e) / (1.0 - p_e)


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers, in state-dict order: equal iff bit-equal."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _perturb_ulps(model: torch.nn.Module, ulps: int, seed: int) -> None:
    """Move every parameter by ``ulps`` float32 ulps, each in a seeded random direction."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            up = torch.rand(p.shape, generator=gen) < 0.5
            target = torch.where(up, torch.full_like(p, math.inf), torch.full_like(p, -math.inf))
            for _ in range(ulps):
                p.copy_(torch.nextafter(p, target))


@contextlib.contextmanager
def _platform(threads: int, deterministic_algorithms: bool) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with deterministic(deterministic_algorithms):
            yield
    finally:
        torch.set_num_threads(before)


@dataclass
class LimitsResult:
    """The measured Table 4 and everything needed to audit it.

    ``vs_oracle[setting][query_set]``, ``pairwise[setting][query_set]`` and
    ``kappa_vs_oracle[setting][query_set]`` (Cohen's kappa with the oracle,
    :func:`chance_corrected_agreement`) are statistics (``mean``, ``std``, ``min``, ``max``,
    ``n``) over the models, or over the pairs of models, of a setting.
    """

    config: LimitsConfig
    dataset: str
    sizes: dict[str, int]
    oracle: dict[str, Any]
    runs: list[RunRecord]
    vs_oracle: dict[str, dict[str, dict[str, Any]]]
    kappa_vs_oracle: dict[str, dict[str, dict[str, Any]]]
    pairwise: dict[str, dict[str, dict[str, Any]]]
    distinct_weights: dict[str, int]
    control: dict[str, Any] | None
    residual: list[dict[str, Any]] | None
    seconds: float

    def agreement(self, measure: str = "vs_oracle") -> dict[str, dict[str, float | None]]:
        """Means as ``{query_set: {setting: value}}``.

        ``measure``: ``vs_oracle`` (fidelity), ``pairwise`` (among the models of a setting) or
        ``kappa_vs_oracle`` (fidelity beyond chance).
        """
        table = self._measure(measure)
        return {q: {s: table[s][q]["mean"] for s in self.config.settings} for q in QUERY_SETS}

    def table_rows(self, measure: str = "vs_oracle") -> list[dict[str, Any]]:
        """One row per query set: ``query_set`` and one mean agreement per setting."""
        return [{"query_set": q, **v} for q, v in self.agreement(measure).items()]

    def _measure(self, measure: str) -> dict[str, dict[str, dict[str, Any]]]:
        if measure == "vs_oracle":
            return self.vs_oracle
        if measure == "pairwise":
            return self.pairwise
        if measure == "kappa_vs_oracle":
            return self.kappa_vs_oracle
        raise ValueError(f"measure must be one of {', '.join(MEASURES)}, got {measure!r}")

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (NaN becomes ``null``)."""
        d = {
            "experiment": "limits of learning-based extraction (Jagielski et al. 2020, §5)",
            "dataset": self.dataset,
            "config": self.config.to_json(),
            "sizes": self.sizes,
            "oracle": self.oracle,
            "table_vs_oracle": self.table_rows("vs_oracle"),
            "table_pairwise": self.table_rows("pairwise"),
            "table_kappa_vs_oracle": self.table_rows("kappa_vs_oracle"),
            "paper_table4": [{"query_set": q, **PAPER_TABLE4[q]} for q in QUERY_SETS],
            "vs_oracle": self.vs_oracle,
            "pairwise": self.pairwise,
            "kappa_vs_oracle": self.kappa_vs_oracle,
            "distinct_weights": self.distinct_weights,
            "control": self.control,
            "residual": self.residual,
            "runs": [asdict(r) for r in self.runs],
            "seconds": self.seconds,
        }
        return _clean(d)

    def markdown(self) -> str:
        """Table 4 shaped Markdown: vs oracle, pairwise and the paper, in percent."""
        cols = list(self.config.settings)
        head = "| query set | " + " | ".join(SETTING_TITLES[s] for s in cols) + " |\n|---" \
            + "|---:" * len(cols) + "|\n"
        parts = []
        for measure, title in MEASURES.items():
            rows = self.agreement(measure)
            fmt = _kappa if measure.startswith("kappa") else _pct
            body = "".join(f"| {q} | " + " | ".join(fmt(rows[q][s]) for s in cols) + " |\n"
                           for q in QUERY_SETS)
            parts.append(f"**{title}**\n\n{head}{body}")
        body = "".join(f"| {q} | " + " | ".join(_pct(PAPER_TABLE4[q][s]) for s in cols) + " |\n"
                       for q in QUERY_SETS)
        parts.append(f"**the paper's Table 4 (Fashion-MNIST, GPU)**\n\n{head}{body}")
        return "\n".join(parts)


def _kappa(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


class LimitsExperiment:
    """The experiment of §5 on one dataset, step by step.

    :meth:`prepare` trains the oracle, labels ``D`` through a label-only oracle and builds the
    three query sets; :meth:`train` trains one model on ``D``; :meth:`run` does all settings
    and returns a :class:`LimitsResult`. Use :func:`run_limits` for the whole thing.
    """

    def __init__(self, train: Dataset, test: Dataset, config: LimitsConfig | None = None,
                 *, progress: ProgressFn | None = None) -> None:
        self.config = config or LimitsConfig()
        self.config.validate()
        if train.input_shape != test.input_shape or train.num_classes != test.num_classes:
            raise ValueError(
                f"train and test splits do not match: shapes {train.input_shape} vs "
                f"{test.input_shape}, {train.num_classes} vs {test.num_classes} classes"
            )
        c = self.config
        if c.train_size is not None:
            train = train.subset(slice(0, c.train_size))
        if c.test_size is not None:
            test = test.subset(slice(0, c.test_size))
        if len(train) < 2 or len(test) < 1:
            raise ValueError(f"need at least 2 training and 1 test image, got {len(train)} "
                             f"and {len(test)}")
        self.dataset = train.name
        self.input_shape = train.input_shape
        self.num_classes = train.num_classes
        self.x_train = torch.from_numpy(train.to_float(np.float32))
        self.y_true = torch.from_numpy(train.labels.copy())
        self.x_test = torch.from_numpy(test.to_float(np.float32))
        self.y_test = test.labels.copy()
        self.progress = progress
        self.victim: TorchVictim | None = None
        self.labels_d: torch.Tensor | None = None
        self.query_sets: dict[str, torch.Tensor] = {}
        self.oracle_predictions: dict[str, NDArray[np.int64]] = {}
        self.oracle_info: dict[str, Any] = {}

    # -- building blocks -------------------------------------------------------------------
    def build(self, init_seed: int, *, init_ulps: int = 0, jitter_seed: int = 0) -> Classifier:
        """The architecture with the initial weights of ``init_seed`` (optionally jittered)."""
        with seeded(init_seed):
            model = build_model(self.config.arch, self.input_shape, self.num_classes,
                                **dict(self.config.options))
        if init_ulps:
            _perturb_ulps(model, init_ulps, jitter_seed)
        return model

    def fit(self, model: Classifier, targets: torch.Tensor, order_seed: int, *,
            threads: int | None = None, deterministic_algorithms: bool | None = None) -> float:
        """Train with the configured SGD recipe; returns the last epoch's mean loss."""
        c = self.config
        with _platform(threads or c.threads,
                       c.deterministic_algorithms if deterministic_algorithms is None
                       else deterministic_algorithms):
            history = fit(model, self.x_train, targets, epochs=c.epochs,
                          batch_size=c.batch_size, lr=c.lr, optimizer="sgd",
                          momentum=c.momentum, weight_decay=c.weight_decay,
                          order_seed=order_seed, device=c.device)
        return history[-1]

    def labels(self, model: torch.nn.Module, query_set: str) -> NDArray[np.int64]:
        """Predicted labels of ``model`` (on whatever device it is) on one of :data:`QUERY_SETS`."""
        device = next(model.parameters()).device
        return predict(model, self.query_sets[query_set], device=device).argmax(dim=1).numpy()

    def _tick(self, description: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(description, done, total)

    # -- the experiment --------------------------------------------------------------------
    def prepare(self) -> None:
        """Train the oracle on the true labels, label ``D`` through it, build the query sets."""
        c = self.config
        start = time.perf_counter()
        model = self.build(c.oracle_init_seed)
        loss = self.fit(model, self.y_true, c.oracle_order_seed)
        model.cpu()  # the oracle serves float64 rows from the CPU (TorchVictim)
        spec = {"arch": c.arch, "input_shape": list(self.input_shape),
                "num_classes": self.num_classes, "options": dict(c.options)}
        self.victim = TorchVictim(model, spec, {"init_seed": c.oracle_init_seed,
                                                "order_seed": c.oracle_order_seed})
        oracle = ModelOracle(self.victim, output="label")
        flat = self.x_train.reshape(len(self.x_train), -1).numpy()
        self.labels_d = torch.from_numpy(oracle(flat)[:, 0].astype(np.int64))
        adv = fgsm(model, self.x_test, eps=c.eps)
        gen = torch.Generator().manual_seed(c.uniform_seed)
        uniform = torch.rand((c.n_uniform, *self.input_shape), generator=gen)
        self.query_sets = {"test": self.x_test, "adversarial": adv, "uniform": uniform}
        self.oracle_predictions = {q: self.labels(model, q) for q in QUERY_SETS}
        test_acc = float(np.mean(self.oracle_predictions["test"] == self.y_test))
        # The share of the oracle's most frequent label: what a constant model would agree on.
        majority = {q: float(np.bincount(p, minlength=self.num_classes).max() / len(p))
                    for q, p in self.oracle_predictions.items()}
        self.oracle_info = {
            "init_seed": c.oracle_init_seed,
            "order_seed": c.oracle_order_seed,
            "test_accuracy": test_acc,
            "train_accuracy": float((self.labels_d == self.y_true).float().mean()),
            "accuracy_on_adversarial": float(
                np.mean(self.oracle_predictions["adversarial"] == self.y_test)),
            "label_queries": oracle.queries,
            "majority_label_fraction": majority,
            "final_loss": loss,
            "weights_sha256": weights_digest(model),
            "seconds": time.perf_counter() - start,
        }

    def train(self, setting: str, index: int) -> tuple[RunRecord, dict[str, NDArray[np.int64]]]:
        """Train run ``index`` of ``setting`` on ``D``; its record and its predicted labels."""
        if self.victim is None or self.labels_d is None:
            self.prepare()
        assert self.labels_d is not None
        c = self.config
        init_seed, order_seed = c.seeds(setting)[index]
        jitter_seed = c.seed_base + (4 + SETTINGS.index(setting)) * c.models_per_setting + index
        start = time.perf_counter()
        model = self.build(init_seed, init_ulps=c.init_ulps, jitter_seed=jitter_seed)
        loss = self.fit(model, self.labels_d, order_seed)
        preds = {q: self.labels(model, q) for q in QUERY_SETS}
        record = RunRecord(
            setting=setting, index=index, init_seed=init_seed, order_seed=order_seed,
            test_accuracy=float(np.mean(preds["test"] == self.y_test)),
            agreement_with_oracle={q: float(np.mean(preds[q] == self.oracle_predictions[q]))
                                   for q in QUERY_SETS},
            kappa_with_oracle={q: chance_corrected_agreement(preds[q], self.oracle_predictions[q])
                               for q in QUERY_SETS},
            weights_sha256=weights_digest(model), final_loss=loss,
            seconds=time.perf_counter() - start,
            jitter_seed=jitter_seed if c.init_ulps else None,
        )
        return record, preds

    def control(self) -> dict[str, Any]:
        """Retrain with the oracle's seeds on the *true* labels: is it the oracle again?

        Separates the two causes of imperfect same-seed fidelity: if this copy is bit-identical
        to the oracle, the platform is deterministic and the gap comes from ``D`` alone.
        """
        if self.victim is None:
            self.prepare()
        assert self.victim is not None
        c = self.config
        model = self.build(c.oracle_init_seed)
        self.fit(model, self.y_true, c.oracle_order_seed)
        digest = weights_digest(model)
        return {
            "description": "oracle's seeds, true labels (not D)",
            "bit_identical_to_oracle": digest == self.oracle_info["weights_sha256"],
            "agreement_with_oracle": {q: float(np.mean(self.labels(model, q)
                                                       == self.oracle_predictions[q]))
                                      for q in QUERY_SETS},
        }

    def residual(self, variants: Sequence[ResidualVariant] = DEFAULT_VARIANTS
                 ) -> list[dict[str, Any]]:
        """Re-run the same-seed model on ``D`` under each variant and compare to a reference.

        The reference is the configured platform (``config.threads``, deterministic
        algorithms as configured, no jitter). For each variant: whether its weights are
        bit-identical to the reference, the largest weight difference, and its label agreement
        with the reference and with the oracle on each query set.
        """
        if self.labels_d is None:
            self.prepare()
        assert self.labels_d is not None
        c = self.config
        ref = self.build(c.oracle_init_seed)
        self.fit(ref, self.labels_d, c.oracle_order_seed)
        ref_state = {k: v.clone() for k, v in ref.state_dict().items()}
        ref_preds = {q: self.labels(ref, q) for q in QUERY_SETS}
        rows = []
        for v in variants:
            if v.threads < 1 or v.init_ulps < 0:
                raise ValueError(f"variant {v.name!r}: threads must be >= 1, init_ulps >= 0")
            model = self.build(c.oracle_init_seed, init_ulps=v.init_ulps,
                               jitter_seed=c.seed_base + 8 * c.models_per_setting)
            self.fit(model, self.labels_d, c.oracle_order_seed, threads=v.threads,
                     deterministic_algorithms=v.deterministic_algorithms)
            diff = max(float((model.state_dict()[k] - t).abs().max()) for k, t in
                       ref_state.items())
            preds = {q: self.labels(model, q) for q in QUERY_SETS}
            rows.append({
                **asdict(v),
                "bit_identical_to_reference": diff == 0.0,
                "max_abs_weight_difference": diff,
                "agreement_with_reference": {q: float(np.mean(preds[q] == ref_preds[q]))
                                             for q in QUERY_SETS},
                "agreement_with_oracle": {q: float(np.mean(preds[q]
                                                           == self.oracle_predictions[q]))
                                          for q in QUERY_SETS},
            })
        return rows

    def run(self, *, control: bool = True,
            residual: Sequence[ResidualVariant] | None = None) -> LimitsResult:
        """All settings, then the optional control and residual measurements."""
        start = time.perf_counter()
        c = self.config
        extra = int(control) + (len(residual) + 1 if residual else 0)
        total = 1 + len(c.settings) * c.models_per_setting + extra
        self._tick("training the oracle", 0, total)
        if self.victim is None:
            self.prepare()
        done = 1
        runs: list[RunRecord] = []
        vs_oracle: dict[str, dict[str, dict[str, Any]]] = {}
        kappa: dict[str, dict[str, dict[str, Any]]] = {}
        pairwise: dict[str, dict[str, dict[str, Any]]] = {}
        distinct: dict[str, int] = {}
        for setting in c.settings:
            records, preds = [], []
            for i in range(c.models_per_setting):
                self._tick(f"{SETTING_TITLES[setting]}: model {i + 1}/{c.models_per_setting}",
                           done, total)
                record, p = self.train(setting, i)
                records.append(record)
                preds.append(p)
                done += 1
            runs += records
            vs_oracle[setting], kappa[setting], pairwise[setting], distinct[setting] = \
                summarise_setting(records, preds)
        ctrl = None
        if control:
            self._tick("control: oracle's seeds on the true labels", done, total)
            ctrl = self.control()
            done += 1
        res = None
        if residual:
            self._tick("residual non-determinism", done, total)
            res = self.residual(residual)
            done += len(residual) + 1
        self._tick("done", total, total)
        return LimitsResult(
            config=c, dataset=self.dataset,
            sizes={"train": len(self.x_train), "test": len(self.x_test),
                   "adversarial": len(self.query_sets["adversarial"]),
                   "uniform": len(self.query_sets["uniform"])},
            oracle=self.oracle_info, runs=runs, vs_oracle=vs_oracle, kappa_vs_oracle=kappa,
            pairwise=pairwise,
            distinct_weights=distinct, control=ctrl, residual=res,
            seconds=time.perf_counter() - start + self.oracle_info["seconds"],
        )


def summarise_setting(
    records: Sequence[RunRecord], preds: Sequence[dict[str, NDArray[np.int64]]],
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], dict[str, dict[str, Any]],
           int]:
    """One column of Table 4 from the models of one seed setting: per query set, the
    statistics of their agreement with the oracle, of their kappa with it, and of their
    pairwise agreement; and how many distinct weight vectors they have."""
    vs_oracle = {q: _stats([r.agreement_with_oracle[q] for r in records]) for q in QUERY_SETS}
    kappa = {q: _stats([r.kappa_with_oracle[q] for r in records]) for q in QUERY_SETS}
    pairwise = {q: _stats(pairwise_agreement(np.stack([p[q] for p in preds])))
                for q in QUERY_SETS}
    return vs_oracle, kappa, pairwise, len({r.weights_sha256 for r in records})


def run_limits(train: Dataset, test: Dataset, config: LimitsConfig | None = None, *,
               control: bool = True, residual: bool | Sequence[ResidualVariant] = False,
               progress: ProgressFn | None = None) -> LimitsResult:
    """Run the §5 experiment (Table 4) on ``train``/``test`` and return the result.

    ``residual=True`` adds :data:`DEFAULT_VARIANTS` (more threads, non-deterministic
    algorithms, a 1-ulp perturbation of the initial weights); a sequence picks the variants.
    """
    variants = DEFAULT_VARIANTS if residual is True else (residual or None)
    experiment = LimitsExperiment(train, test, config, progress=progress)
    return experiment.run(control=control, residual=variants)


def measure_residual_nondeterminism(
    train: Dataset, test: Dataset, config: LimitsConfig | None = None,
    variants: Sequence[ResidualVariant] = DEFAULT_VARIANTS,
) -> list[dict[str, Any]]:
    """How much a platform difference changes a fully-seeded run (see
    :meth:`LimitsExperiment.residual`): the non-determinism a GPU or a multi-threaded run adds.
    """
    experiment = LimitsExperiment(train, test, config)
    experiment.prepare()
    return experiment.residual(variants)
