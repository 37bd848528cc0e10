"""Image classifiers for learning-based extraction (§4) and the non-determinism study (§5).

Every model maps an ``(n, C, H, W)`` float32 batch in ``[0, 1]`` to ``(n, K)`` logits and splits
into :meth:`features` (the trunk) and :attr:`classifier` (a linear head), so an auxiliary head
(the rotation loss of §4.1) can share the trunk. Build one by name with :func:`build_model`:

- ``"cnn"``: a small convolutional network that trains in minutes on a CPU;
- ``"wrn-28-2"``: WideResNet-28-2 (Zagoruyko & Komodakis 2016), the architecture the paper and
  MixMatch (Berthelot et al. 2019) use for SVHN and CIFAR-10 (§4.2, Table 3);
- ``"mlp"``: one hidden ReLU layer on the flattened image (the victims of §6).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MODEL_NAMES", "Classifier", "SmallCNN", "WideResNet", "MLP", "build_model"]


class Classifier(nn.Module):
    """A trunk (:meth:`features`, ``(n, feature_dim)``) followed by a linear :attr:`classifier`."""

    feature_dim: int
    classifier: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SmallCNN(Classifier):
    """Two 3×3 conv blocks (``width``, ``2·width`` channels, max-pooled) and a dense layer.

    With ``batchnorm`` (the default) every convolution is followed by batch normalisation
    before its ReLU, as in the WideResNet that MixMatch and the paper use (§4.2): without it
    this network learned markedly slower at the step counts a CPU affords (see the README's
    §4 section for the measurement). ``batchnorm=0`` builds the earlier plain network, whose
    saved weights have no batch-norm entries.
    """

    def __init__(
        self, in_channels: int, num_classes: int, *, width: int = 32, batchnorm: int = 1
    ) -> None:
        super().__init__()
        w = width

        def conv(cin: int, cout: int) -> list[nn.Module]:
            if not batchnorm:
                return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                    nn.ReLU()]

        self.trunk = nn.Sequential(
            *conv(in_channels, w), *conv(w, w), nn.MaxPool2d(2),
            *conv(w, 2 * w), *conv(2 * w, 2 * w),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(2 * w, 4 * w), nn.ReLU(),
        )
        self.feature_dim = 4 * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)


class _WideBlock(nn.Module):
    """Pre-activation residual block of a WideResNet."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, momentum=0.001)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=0.001)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.act = nn.LeakyReLU(0.1)
        self.shortcut = (
            None if cin == cout and stride == 1
            else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.act(self.bn1(x))
        y = self.conv2(self.act(self.bn2(self.conv1(o))))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(Classifier):
    """WideResNet-``depth``-``widen`` as in MixMatch: depth 28, widen 2 has 1.5 M parameters."""

    def __init__(
        self, in_channels: int, num_classes: int, *, depth: int = 28, widen: int = 2
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4 (e.g. 28), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)]
        for stage in range(3):
            for i in range(n):
                cin = widths[stage] if i == 0 else widths[stage + 1]
                stride = 2 if (i == 0 and stage > 0) else 1
                layers.append(_WideBlock(cin, widths[stage + 1], stride))
        layers += [nn.BatchNorm2d(widths[3], momentum=0.001), nn.LeakyReLU(0.1),
                   nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.trunk = nn.Sequential(*layers)
        self.feature_dim = widths[3]
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)


class MLP(Classifier):
    """``flatten → Linear(d, hidden) → ReLU → Linear(hidden, K)``: the victims of §6."""

    def __init__(self, in_features: int, num_classes: int, *, hidden: int = 128) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU())
        self.feature_dim = hidden
        self.classifier = nn.Linear(hidden, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)


MODEL_NAMES = ("cnn", "wrn-28-2", "mlp")


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, **options: int
) -> Classifier:
    """Build an architecture by name for inputs of shape ``(C, H, W)`` and ``num_classes``.

    ``options`` go to the constructor (``width`` and ``batchnorm`` for ``cnn``, ``hidden`` for
    ``mlp``, ``depth``/``widen`` for ``wrn-*``). The weights are drawn from torch's global
    generator: seed it (:func:`model_extraction.training.seeded`) to control the
    initialisation.
    """
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    c, h, w = (int(s) for s in input_shape)
    key = name.lower()
    if key == "cnn":
        return SmallCNN(c, num_classes, **options)
    if key == "mlp":
        return MLP(c * h * w, num_classes, **options)
    if key.startswith("wrn"):
        parts = key.split("-")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            options = {"depth": int(parts[1]), "widen": int(parts[2]), **options}
        return WideResNet(c, num_classes, **options)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
