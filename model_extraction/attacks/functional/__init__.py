"""Functionally-equivalent extraction of ReLU networks: one hidden layer (paper §6,
:func:`extract_functional`) and any number of hidden layers (after Carlini et al., CRYPTO 2020,
:func:`extract_deep`)."""

from .checks import OracleMismatchError, check_logit_oracle
from .deep import extract_deep
from .extract import FunctionalExtraction, extract_functional
from .result import ExtractionError, ExtractionResult, PhaseCost

__all__ = [
    "ExtractionError",
    "ExtractionResult",
    "FunctionalExtraction",
    "OracleMismatchError",
    "PhaseCost",
    "check_logit_oracle",
    "extract_deep",
    "extract_functional",
]
