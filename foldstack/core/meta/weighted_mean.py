"""`weighted_mean`: the mean of the base models' probabilities (uniform weights by default), the seeds'
"mean" baseline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal, Self

import numpy as np

from foldstack.core.meta.arrays import (
    check_model_count, check_probas, row_log_losses, softmax, weighted_average,
)
from foldstack.core.meta.base import MetaLearner, register_meta
from foldstack.models.base import check_labels


@register_meta("weighted_mean")
class WeightedMean(MetaLearner):
    """The mean of the base models' probabilities — the seeds' "mean" baseline.

    `weighting="uniform"` (the default, what `make_meta` builds) gives every model weight 1/M: the plain mean,
    with nothing learned from the OOF beyond the number of models. `weighting="softmax_neg_log_loss"` weighs
    model m by exp(-OOF log loss of m), normalised — better models count more, smoothly, with no search that
    could overfit the OOF.
    """

    _param_names = ("n_classes", "weighting")
    _learned_names = ("weights_", "n_models_")
    WEIGHTINGS: ClassVar[tuple[str, ...]] = ("uniform", "softmax_neg_log_loss")

    def __init__(
        self, n_classes: int, weighting: Literal["uniform", "softmax_neg_log_loss"] = "uniform"
    ) -> None:
        self.n_classes = n_classes
        self.weighting = weighting

    def fit(self, probas: Sequence[np.ndarray], y: np.ndarray) -> Self:
        if self.weighting not in self.WEIGHTINGS:
            raise ValueError(f"weighted_mean: weighting must be one of {self.WEIGHTINGS}, got {self.weighting!r}")
        probas = check_probas(probas, self.n_classes, "weighted_mean fit")
        y = check_labels(y, probas[0].shape[0], self.n_classes, "weighted_mean fit")
        if self.weighting == "uniform":
            weights = np.full(len(probas), 1.0 / len(probas))
        else:
            losses = np.array([float(row_log_losses(proba, y).mean()) for proba in probas])
            weights = softmax(-losses[None, :])[0]
        self.weights_ = weights.tolist()
        self.n_models_ = len(probas)
        return self

    def predict_proba(self, probas: Sequence[np.ndarray]) -> np.ndarray:
        self._check_fitted()
        probas = check_probas(probas, self.n_classes, "weighted_mean predict")
        check_model_count(probas, self.n_models_, "weighted_mean predict")
        return weighted_average(probas, np.asarray(self.weights_, dtype=np.float64))
