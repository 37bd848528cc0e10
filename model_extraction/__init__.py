"""model-extraction: steal neural networks through their prediction APIs, and measure it.

A reproduction of Jagielski et al., "High Accuracy and High Fidelity Extraction of Neural
Networks" (USENIX Security 2020). Data flows victim → oracle → attack → extracted model →
evaluation, one module each.
"""

from model_extraction.attacks.functional import (
    ExtractionError,
    ExtractionResult,
    FunctionalExtraction,
    OracleMismatchError,
    extract_functional,
)
from model_extraction.evaluation import compare_networks
from model_extraction.network import ReLUNetwork
from model_extraction.oracle import (
    BudgetExhaustedError,
    CallableOracle,
    InsufficientPrecisionError,
    LogitDifferenceOracle,
    ModelOracle,
    Oracle,
    OracleOutputError,
    OutputKind,
    as_oracle,
)

__version__ = "0.1.0"

__all__ = [
    "BudgetExhaustedError",
    "CallableOracle",
    "InsufficientPrecisionError",
    "LogitDifferenceOracle",
    "ExtractionError",
    "ExtractionResult",
    "FunctionalExtraction",
    "ModelOracle",
    "Oracle",
    "OracleMismatchError",
    "OracleOutputError",
    "OutputKind",
    "ReLUNetwork",
    "as_oracle",
    "compare_networks",
    "extract_functional",
]
