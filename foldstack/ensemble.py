"""The stacking machinery shared by the stages, the bundle and the scikit-learn estimator.

- `fit_fold_model`: one base model fitted on one fold's training part (the unit of parallel work);
- `fill_oof`: OOF matrices start as NaN and each row is filled exactly once per repeat (asserted);
- `StackedPredictor`: base models' fold members averaged per base model, then the meta-learner.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from foldstack.models import make_model
from foldstack.models.base import BaseModel, ModelContext, check_proba


def fit_fold_model(kind: str, params: dict[str, Any], context: ModelContext, texts: Sequence[str],
                   y: np.ndarray, train_idx: np.ndarray) -> BaseModel:
    model = make_model(kind, params, context)
    return model.fit([texts[i] for i in train_idx], np.asarray(y)[train_idx])


def fill_oof(repeats: int, n_rows: int, n_classes: int,
             pieces: Iterable[tuple[int, np.ndarray, np.ndarray]], who: str) -> np.ndarray:
    """OOF of shape (repeats, rows, classes) from (repeat, row indices, probabilities) pieces.

    Starts as NaN; a row predicted twice in one repeat, or never, is an error — that is the no-leakage
    and coverage guarantee the meta-learner relies on.
    """
    oof = np.full((repeats, n_rows, n_classes), np.nan)
    filled = np.zeros((repeats, n_rows), dtype=np.int64)
    for repeat, rows, proba in pieces:
        if np.any(filled[repeat, rows]):
            raise AssertionError(f"OOF of {who}: repeat {repeat} predicts some rows twice")
        oof[repeat, rows] = proba
        filled[repeat, rows] += 1
    if not (filled == 1).all():
        missing = np.argwhere(filled != 1)[:5].tolist()
        raise AssertionError(f"OOF of {who}: rows never predicted out of fold (repeat, row): {missing}")
    assert not np.isnan(oof).any(), f"OOF of {who}: NaN left after every fold was collected"
    return oof


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
