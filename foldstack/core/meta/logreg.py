"""`logreg`: multinomial logistic regression on the base models' stacked (log-odds of the) probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import numpy as np

from foldstack.config import MetaConfig
from foldstack.core.meta.arrays import PROBA_CLIP, check_model_count, check_probas, softmax
from foldstack.core.meta.base import MetaLearner, register_meta
from foldstack.models.base import check_labels


@register_meta("logreg")
class LogisticStacker(MetaLearner):
    """Multinomial logistic regression on the base models' stacked probabilities.

    Features per base model:
    - binary task: only P(class 1) (P(class 0) is 1 minus it, a perfectly collinear column), as log-odds
      `log(p / (1 - p))` when `logit`, else as the probability itself;
    - multiclass: all C columns, as centred log-ratios `log p_c - mean_c log p_c` when `logit` (the log-odds
      analogue that does not depend on a reference class), else the probabilities.
    `passthrough` (only meaningful with `logit`) appends the raw probabilities beside the log-odds.

    sklearn fits the coefficients; prediction is re-implemented from `coef_` / `intercept_` so that a saved
    model needs only these numbers, and so a loaded model predicts bit-for-bit what the fitted one did.
    """

    _param_names = ("n_classes", "C", "logit", "passthrough", "max_iter", "seed")
    _learned_names = ("classes_", "coef_", "intercept_", "n_models_", "n_features_in_")

    def __init__(
        self,
        n_classes: int,
        C: float = 1.0,
        logit: bool = True,
        passthrough: bool = False,
        max_iter: int = 1000,
        seed: int = 0,
    ) -> None:
        self.n_classes = n_classes
        self.C = C
        self.logit = logit
        self.passthrough = passthrough
        self.max_iter = max_iter
        self.seed = seed

    @classmethod
    def from_config(cls, cfg: MetaConfig, n_classes: int, seed: int) -> Self:
        return cls(n_classes, seed=seed, **cfg.learner_params())

    def _features(self, probas: list[np.ndarray]) -> np.ndarray:
        blocks = []
        for proba in probas:
            # Binary: one column carries all the information; two would be exactly collinear.
            raw = proba[:, 1:2] if self.n_classes == 2 else proba
            if not self.logit:
                blocks.append(raw)
                continue
            clipped = np.clip(raw, PROBA_CLIP, 1.0 - PROBA_CLIP)
            if self.n_classes == 2:
                transformed = np.log(clipped) - np.log1p(-clipped)
            else:
                log_p = np.log(clipped)
                transformed = log_p - log_p.mean(axis=1, keepdims=True)
            blocks.append(transformed)
            if self.passthrough:
                blocks.append(raw)
        return np.hstack(blocks)

    def fit(self, probas: Sequence[np.ndarray], y: np.ndarray) -> Self:
        from sklearn.linear_model import LogisticRegression

        probas = check_probas(probas, self.n_classes, "logreg meta-learner fit")
        y = check_labels(y, probas[0].shape[0], self.n_classes, "logreg meta-learner fit")
        if np.unique(y).size < 2:
            raise ValueError("logreg meta-learner fit: y holds a single class; stacking needs at least two")
        features = self._features(probas)
        model = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed)
        model.fit(features, y)
        self.classes_ = [int(c) for c in model.classes_]
        self.coef_ = model.coef_.tolist()
        self.intercept_ = model.intercept_.tolist()
        self.n_models_ = len(probas)
        self.n_features_in_ = int(features.shape[1])
        return self

    def predict_proba(self, probas: Sequence[np.ndarray]) -> np.ndarray:
        self._check_fitted()
        probas = check_probas(probas, self.n_classes, "logreg meta-learner predict")
        check_model_count(probas, self.n_models_, "logreg meta-learner predict")
        features = self._features(probas)
        coef = np.asarray(self.coef_, dtype=np.float64)
        intercept = np.asarray(self.intercept_, dtype=np.float64)
        scores = features @ coef.T + intercept
        if len(self.classes_) == 2:
            # sklearn's binary model: one score row, P(second class) = sigmoid(score).
            p_second = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            seen_proba = np.column_stack([1.0 - p_second, p_second])
        else:
            seen_proba = softmax(scores)
        # A class absent from the fit's y (possible only in a CV split of a tiny data set) gets probability 0.
        proba = np.zeros((features.shape[0], self.n_classes))
        proba[:, self.classes_] = seen_proba
        return proba
