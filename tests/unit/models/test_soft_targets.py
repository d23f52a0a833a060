"""Soft-target fitting (`fit_soft`): what a distilled student learns with, for every kind that offers it."""

from __future__ import annotations

import numpy as np
import pytest

from foldstack.models import make_model, model_class, soft_target_kinds
from foldstack.models.base import ModelContext, SoftTargetModel

TEXTS = ["good movie great", "bad film awful", "great acting good", "awful plot bad", "good good fine",
         "bad bad dull"] * 6
Y = np.array([0, 1, 0, 1, 0, 1] * 6)
PARAMS = {
    "tfidf_lr": {"min_df": 1},
    "embed_lr": {"model": "tiny:0"},
    "finetune": {"model": "tiny:0", "epochs": 2, "batch_size": 8, "val_fraction": 0.2},
}


def _model(kind: str, n_classes: int = 2):
    return make_model(kind, PARAMS[kind], ModelContext(n_classes=n_classes, seed=3, device="cpu"))


def test_the_students_are_the_kinds_with_soft_targets() -> None:
    builtin = {"tfidf_lr", "tfidf_char_svm", "nb_svm", "embed_lr", "finetune"}  # tests may register more kinds
    assert sorted(set(soft_target_kinds()) & builtin) == sorted(PARAMS)
    for kind in PARAMS:
        assert isinstance(_model(kind), SoftTargetModel)
    for kind in ("tfidf_char_svm", "nb_svm"):
        assert not getattr(model_class(kind), "soft_targets", False)
        with pytest.raises(TypeError, match="cannot fit soft targets"):
            make_model(kind, {"min_df": 1}, ModelContext(n_classes=2)).fit_soft(TEXTS, np.eye(2)[Y])


@pytest.mark.parametrize("kind", sorted(PARAMS))
def test_one_hot_soft_targets_fit_exactly_what_the_codes_fit(kind: str) -> None:
    hard = _model(kind).fit(TEXTS, Y).predict_proba(TEXTS)
    soft = _model(kind).fit_soft(TEXTS, np.eye(2)[Y]).predict_proba(TEXTS)
    np.testing.assert_array_equal(hard, soft)


@pytest.mark.parametrize("kind", ["tfidf_lr", "embed_lr"])
def test_softer_targets_give_softer_predictions(kind: str) -> None:
    soft_targets = np.where(np.eye(2)[Y] > 0, 0.7, 0.3)
    hard = _model(kind).fit(TEXTS, Y).predict_proba(TEXTS)
    soft = _model(kind).fit_soft(TEXTS, soft_targets).predict_proba(TEXTS)
    assert np.all(soft.max(axis=1) < hard.max(axis=1)), "the student follows the teacher's uncertainty"
    assert np.array_equal(soft.argmax(axis=1), Y), "and still ranks the classes like the targets do"


def test_a_class_without_target_weight_gets_probability_zero() -> None:
    targets = np.zeros((len(TEXTS), 3))
    targets[np.arange(len(TEXTS)), Y] = 0.8
    targets[np.arange(len(TEXTS)), 1 - Y] = 0.2
    proba = _model("tfidf_lr", n_classes=3).fit_soft(TEXTS, targets).predict_proba(TEXTS)
    assert proba.shape == (len(TEXTS), 3) and np.all(proba[:, 2] == 0)


@pytest.mark.parametrize("targets, message", [
    (np.full((len(TEXTS), 2), 0.6), "sum to 1"),
    (np.eye(3)[Y], "shape"),
    (np.column_stack([np.full(len(TEXTS), 1.5), np.full(len(TEXTS), -0.5)]), "non-negative"),
    (np.eye(2)[np.zeros(len(TEXTS), dtype=int)], "at least two"),
])
def test_bad_soft_targets_are_refused(targets: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _model("tfidf_lr").fit_soft(TEXTS, targets)
