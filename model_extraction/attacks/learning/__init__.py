"""Learning-based extraction (Jagielski et al. 2020, §4, Tables 2–3).

Label a random subset of an unlabeled pool through the victim's API and train a substitute on
it: fully supervised, with MixMatch (semi-supervised), or with the self-supervised rotation loss.
The entry points are :class:`LearningExtraction` (a configuration; ``.run(oracle, pool)``
performs it) and :func:`extract_learning`.
"""

from .augment import Augmentation, default_augmentation, random_crop, random_flip
from .evaluate import Checkpoint, EvaluationSet, Metrics, evaluate, median_of_last, topk_agreement
from .extract import METHODS, LearningExtraction, LearningResult, extract_learning
from .loop import Regularisation
from .mixmatch import MixMatchConfig, mixup, sharpen, train_mixmatch
from .query import (
    Answers,
    LabelledQueries,
    as_images,
    query_pool,
    read_answers,
    select_queries,
    targets_from_outputs,
)
from .rotation import RotationHead, rotate, train_with_rotation
from .supervised import Trained, train_supervised

__all__ = [
    "METHODS",
    "Answers",
    "Augmentation",
    "Checkpoint",
    "EvaluationSet",
    "LabelledQueries",
    "LearningExtraction",
    "LearningResult",
    "Metrics",
    "MixMatchConfig",
    "Regularisation",
    "RotationHead",
    "Trained",
    "as_images",
    "default_augmentation",
    "evaluate",
    "extract_learning",
    "median_of_last",
    "mixup",
    "query_pool",
    "random_crop",
    "random_flip",
    "read_answers",
    "rotate",
    "select_queries",
    "sharpen",
    "targets_from_outputs",
    "topk_agreement",
    "train_mixmatch",
    "train_supervised",
    "train_with_rotation",
]
