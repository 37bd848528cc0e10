"""Functionally-equivalent extraction of one-hidden-layer ReLU networks (paper §6)."""

from .checks import OracleMismatchError, check_logit_oracle
from .extract import FunctionalExtraction, extract_functional
from .result import ExtractionError, ExtractionResult, PhaseCost

__all__ = [
    "ExtractionError",
    "ExtractionResult",
    "FunctionalExtraction",
    "OracleMismatchError",
    "PhaseCost",
    "check_logit_oracle",
    "extract_functional",
]
