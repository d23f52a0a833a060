"""`ensemble_selection`: Caruana et al. (2004) greedy forward selection with replacement, a weighted mean
of the base models whose weights are selection counts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import numpy as np

from foldstack.core.meta.arrays import check_model_count, check_probas, weighted_average
from foldstack.core.meta.base import MetaLearner, register_meta
from foldstack.models.base import check_labels


@register_meta("ensemble_selection")
class EnsembleSelection(MetaLearner):
    """Caruana et al. (2004), "Ensemble selection from libraries of models": greedy forward selection.

    Start with the single model of lowest OOF log loss; then, `rounds - 1` times, add (with replacement) the
    model whose inclusion gives the mean-probability ensemble the lowest OOF log loss. A model's weight is
    the number of times it was picked divided by `rounds`, so the weights sum to 1. Ties go to the model
    listed first, so the result is deterministic.
    """

    _param_names = ("n_classes", "rounds")
    _learned_names = ("weights_", "selection_counts_", "selection_order_", "n_models_")

    def __init__(self, n_classes: int, rounds: int = 50) -> None:
        self.n_classes = n_classes
        self.rounds = rounds

    def fit(self, probas: Sequence[np.ndarray], y: np.ndarray) -> Self:
        if self.rounds < 1:
            raise ValueError(f"ensemble_selection: rounds must be at least 1, got {self.rounds}")
        probas = check_probas(probas, self.n_classes, "ensemble_selection fit")
        y = check_labels(y, probas[0].shape[0], self.n_classes, "ensemble_selection fit")
        rows = np.arange(len(y))
        # Log loss needs only each row's true-class probability, and the ensemble's true-class probability
        # is the mean of the members', so one (n_rows, n_models) matrix is all the search touches.
        p_true = np.column_stack([proba[rows, y] for proba in probas])
        single_losses = -np.log(np.clip(p_true, 1e-15, 1.0)).mean(axis=0)
        first = int(np.argmin(single_losses))
        counts = np.zeros(len(probas), dtype=np.int64)
        counts[first] = 1
        order = [first]
        running_sum = p_true[:, first].copy()
        for size in range(2, self.rounds + 1):
            candidate_mean = (running_sum[:, None] + p_true) / size
            losses = -np.log(np.clip(candidate_mean, 1e-15, 1.0)).mean(axis=0)
            best = int(np.argmin(losses))
            counts[best] += 1
            order.append(best)
            running_sum += p_true[:, best]
        self.selection_counts_ = counts.tolist()
        self.selection_order_ = order
        self.weights_ = (counts / self.rounds).tolist()
        self.n_models_ = len(probas)
        return self

    def predict_proba(self, probas: Sequence[np.ndarray]) -> np.ndarray:
        self._check_fitted()
        probas = check_probas(probas, self.n_classes, "ensemble_selection predict")
        check_model_count(probas, self.n_models_, "ensemble_selection predict")
        return weighted_average(probas, np.asarray(self.weights_, dtype=np.float64))
