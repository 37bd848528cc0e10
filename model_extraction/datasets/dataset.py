"""`Dataset`: one split of an image-classification dataset, held in memory as uint8 NCHW."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

SPLITS: tuple[str, ...] = ("train", "test")


@dataclass(frozen=True, eq=False)
class Dataset:
    """One split of a dataset: images as uint8 ``(N, C, H, W)`` and int64 labels ``(N,)``.

    Pixel values run from 0 to ``pixel_max`` (255 for photos, 16 for scikit-learn's digits).
    ``source`` says where the files came from (a path, or ``"scikit-learn"``); ``verified`` is
    True only when the content matched a known checksum. The arrays are made read-only, so a
    ``Dataset`` can be shared freely; ``to_float``, ``flat`` and ``to_tensors`` return copies.
    Equality is identity (arrays have no useful ``==``).
    """

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    pixel_max: int
    source: str
    verified: bool

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError("images must be a uint8 array of shape (N, C, H, W)")
        if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or labels.ndim != 1:
            raise ValueError("labels must be an int64 array of shape (N,)")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if not self.classes:
            raise ValueError("classes must not be empty")
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise ValueError(f"labels must lie in [0, {len(self.classes)})")
        if not 0 < self.pixel_max <= 255:
            raise ValueError("pixel_max must be in 1..255")
        if images.size and int(images.max()) > self.pixel_max:
            raise ValueError(f"pixel values exceed pixel_max={self.pixel_max}")
        # Read-only views: the caller's arrays keep their flags, this object cannot be mutated.
        images, labels = images.view(), labels.view()
        images.setflags(write=False)
        labels.setflags(write=False)
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"input_shape={self.input_shape}, classes={len(self.classes)}, "
            f"source={self.source!r}, verified={self.verified})"
        )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_float(self, dtype: npt.DTypeLike = np.float32) -> np.ndarray:
        """Images as a new ``(N, C, H, W)`` float array in [0, 1] (``images / pixel_max``)."""
        out = self.images.astype(dtype)
        out /= out.dtype.type(self.pixel_max)
        return out

    def flat(self, dtype: npt.DTypeLike = np.float64) -> np.ndarray:
        """Images as a new ``(N, C*H*W)`` float array in [0, 1], rows in C, H, W order."""
        return self.to_float(dtype).reshape(len(self), -1)

    def to_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(float32 NCHW tensor in [0, 1], int64 label tensor)``, both new memory."""
        import torch

        return torch.from_numpy(self.to_float(np.float32)), torch.from_numpy(self.labels.copy())

    def subset(self, indices: Any) -> Dataset:
        """A new ``Dataset`` of the rows picked by ``indices`` (a slice, int array or bool mask).

        Name, split, classes, source and verification status are kept.
        """
        if not isinstance(indices, slice):
            indices = np.asarray(indices)
            if indices.ndim != 1:
                raise ValueError("indices must be a slice or a 1-D array of ints or bools")
            if indices.size == 0:
                indices = indices.astype(np.intp)
        return Dataset(
            name=self.name,
            split=self.split,
            images=np.ascontiguousarray(self.images[indices]),
            labels=np.ascontiguousarray(self.labels[indices]),
            classes=self.classes,
            pixel_max=self.pixel_max,
            source=self.source,
            verified=self.verified,
        )
