"""The base-model protocol every kind implements, and the helpers they share.

A base model is a small class: its constructor takes its validated params section plus what the
orchestrator decides for it (number of classes, device, seed, cache directory); `fit` returns self;
`predict_proba` returns rows x classes with rows summing to 1; `save`/`load` use no pickle.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np
from pydantic import BaseModel as _PydanticModel
from pydantic import ConfigDict


class ModelParams(_PydanticModel):
    """Base class of a kind's params section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@runtime_checkable
class BaseModel(Protocol):
    kind: ClassVar[str]
    Params: ClassVar[type[ModelParams]]

    def fit(self, texts: Sequence[str], y: np.ndarray) -> Self: ...

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray: ...

    def save(self, directory: Path) -> None: ...

    @classmethod
    def load(cls, directory: Path, *, device: str = "cpu", cache_dir: Path | None = None) -> Self: ...


@runtime_checkable
class SoftTargetModel(BaseModel, Protocol):
    """A kind that can also learn from soft targets (a distilled student): `soft_targets = True` and
    `fit_soft(texts, targets)` with targets rows x n_classes, each row a probability distribution. Fitting
    one-hot targets is the same objective as `fit` on their codes (cross-entropy)."""

    soft_targets: ClassVar[bool]

    def fit_soft(self, texts: Sequence[str], targets: np.ndarray) -> Self: ...


class ModelContext(_PydanticModel):
    """What the orchestrator gives a model: never chosen by the model itself."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    n_classes: int
    device: str = "cpu"
    seed: int = 0
    cache_dir: Path | None = None
    # Relative local paths in a model's params (e.g. a model directory) are relative to this: the params
    # file's directory, as every other path in params is. None: the working directory.
    base_dir: Path | None = None


def check_proba(proba: np.ndarray, n_rows: int, n_classes: int, who: str) -> np.ndarray:
    """Assert the protocol's promise on a prediction: shape, finiteness, rows summing to 1."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape != (n_rows, n_classes):
        raise AssertionError(f"{who}: predict_proba gave shape {proba.shape}, expected {(n_rows, n_classes)}")
    if not np.all(np.isfinite(proba)):
        raise AssertionError(f"{who}: predict_proba gave non-finite values")
    sums = proba.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-4):
        raise AssertionError(f"{who}: predict_proba rows do not sum to 1 (min {sums.min()}, max {sums.max()})")
    return proba / sums[:, None]


def check_labels(y: np.ndarray, n_rows: int, n_classes: int, who: str) -> np.ndarray:
    """`y` as int64 codes in 0..n_classes-1, one per row, or an error saying what is wrong: a TypeError for
    codes that are no integers (labels not mapped to codes), a ValueError for the wrong shape or range.

    For everything that fits on class codes: the base-model kinds (one code per text) and the meta-learners
    (one per row of the base models' probabilities).
    """
    y = np.asarray(y)
    if y.shape != (n_rows,):
        raise ValueError(f"{who}: y has shape {y.shape}; expected ({n_rows},), one class code per row")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(
            f"{who}: y must hold integer class codes 0..{n_classes - 1}, got dtype {y.dtype}; labels are mapped "
            f"to codes by the snapshot's label map"
        )
    if n_rows and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{who}: y holds codes outside 0..{n_classes - 1} (min {y.min()}, max {y.max()})")
    return y.astype(np.int64)


def check_soft_targets(targets: np.ndarray, n_rows: int, n_classes: int, who: str) -> np.ndarray:
    """`targets` as float64 rows x n_classes of probability distributions, or a ValueError saying what is wrong."""
    targets = np.asarray(targets, dtype=np.float64)
    if targets.shape != (n_rows, n_classes):
        raise ValueError(f"{who}: soft targets have shape {targets.shape}; expected ({n_rows}, {n_classes})")
    if not np.all(np.isfinite(targets)) or (targets.size and targets.min() < 0):
        raise ValueError(f"{who}: soft targets must be finite and non-negative")
    sums = targets.sum(axis=1)
    if n_rows and not np.allclose(sums, 1.0, atol=1e-6):
        raise ValueError(f"{who}: soft target rows must sum to 1 (min {sums.min()}, max {sums.max()})")
    return targets


def expand_soft_targets(targets: np.ndarray, min_weight: float = 1e-6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft targets as weighted hard labels: (row, class, weight) for every entry above `min_weight`.

    A classifier minimising sample-weighted log loss over these rows minimises the soft cross-entropy
    exactly (each row's weights sum to 1, so the regularisation keeps its scale): how the scikit-learn
    students learn soft targets without a loss of their own.
    """
    rows, classes = np.nonzero(targets > min_weight)
    return rows, classes, targets[rows, classes]


def params_dict(params: ModelParams) -> dict[str, Any]:
    return params.model_dump(mode="json")
