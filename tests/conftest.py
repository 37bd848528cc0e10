import numpy as np
import pytest
from sklearn.datasets import load_digits

from model_extraction.network import ReLUNetwork
from model_extraction.victims import train_victim


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    return d.data / 16.0, d.target


@pytest.fixture(scope="session")
def trained_victim(digits) -> ReLUNetwork:
    x, y = digits
    return train_victim(x[:1500], y[:1500], 24, epochs=5, seed=0, x_test=x[1500:],
                        y_test=y[1500:])


@pytest.fixture()
def random_victim() -> ReLUNetwork:
    return ReLUNetwork.random(50, 12, 4, seed=3)
