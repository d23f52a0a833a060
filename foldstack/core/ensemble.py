"""`StackedPredictor`: the fitted ensemble at prediction time, for the bundle and the scikit-learn estimator.

Each base model's fold members are averaged (exactly as the holdout was scored), then the meta-learner
combines the base models. The fits themselves are `foldstack.core.crossfit`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from foldstack.models.base import BaseModel, check_proba


class StackedPredictor:
    """Predicts with the members of each base model (their mean) and the meta-learner on top."""

    def __init__(self, members: dict[str, list[BaseModel]], meta: Any, n_classes: int):
        if not members or any(len(m) == 0 for m in members.values()):
            raise ValueError("every base model needs at least one fitted member")
        self.members = members
        self.meta = meta
        self.n_classes = n_classes

    def base_probas(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        texts = list(texts)
        result = {}
        for name, models in self.members.items():
            probas = [check_proba(m.predict_proba(texts), len(texts), self.n_classes, name) for m in models]
            result[name] = np.mean(probas, axis=0)
        return result

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.n_classes))
        proba = self.meta.predict_proba(list(self.base_probas(texts).values()))
        return check_proba(proba, len(texts), self.n_classes, "meta-learner")
