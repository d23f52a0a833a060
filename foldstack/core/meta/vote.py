"""`vote`: majority vote of the base models' top classes, the seeds' "vote" baseline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import numpy as np

from foldstack.core.meta.arrays import check_model_count, check_probas
from foldstack.core.meta.base import MetaLearner, register_meta
from foldstack.models.base import check_labels


@register_meta("vote")
class MajorityVote(MetaLearner):
    """Majority vote of the base models' top classes — the seeds' "vote" baseline.

    The probability of class c is proportional to
        votes_c + tie_break_weight * mean_proba_c + smoothing
    - votes dominate: with tie_break_weight < 1 the mean-probability term (at most tie_break_weight apart
      between two classes) can never overturn a whole vote, but it decides ties, towards the class the
      models are on average more confident in;
    - `smoothing` keeps every class's probability above zero so that log loss stays finite.
    """

    _param_names = ("n_classes", "tie_break_weight", "smoothing")
    _learned_names = ("n_models_",)

    def __init__(self, n_classes: int, tie_break_weight: float = 0.5, smoothing: float = 0.01) -> None:
        self.n_classes = n_classes
        self.tie_break_weight = tie_break_weight
        self.smoothing = smoothing

    def fit(self, probas: Sequence[np.ndarray], y: np.ndarray) -> Self:
        if not 0.0 < self.tie_break_weight < 1.0:
            raise ValueError(f"vote: tie_break_weight must lie in (0, 1), got {self.tie_break_weight}")
        if self.smoothing <= 0.0:
            raise ValueError(f"vote: smoothing must be positive (it keeps log loss finite), got {self.smoothing}")
        probas = check_probas(probas, self.n_classes, "vote fit")
        check_labels(y, probas[0].shape[0], self.n_classes, "vote fit")
        self.n_models_ = len(probas)
        return self

    def predict_proba(self, probas: Sequence[np.ndarray]) -> np.ndarray:
        self._check_fitted()
        probas = check_probas(probas, self.n_classes, "vote predict")
        check_model_count(probas, self.n_models_, "vote predict")
        votes = np.zeros_like(probas[0])
        rows = np.arange(votes.shape[0])
        for proba in probas:
            votes[rows, proba.argmax(axis=1)] += 1.0
        mean_proba = np.mean(np.stack(probas), axis=0)
        scores = votes + self.tie_break_weight * mean_proba + self.smoothing
        return scores / scores.sum(axis=1, keepdims=True)
