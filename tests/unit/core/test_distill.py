"""Soft targets and augmentation for distillation (foldstack.core.distill)."""

from __future__ import annotations

import numpy as np
import pytest

from foldstack.core.distill import augment_texts, sharpen, soft_targets


def test_sharpen_is_identity_at_temperature_one_and_orders_entropy() -> None:
    proba = np.array([[0.7, 0.2, 0.1], [0.34, 0.33, 0.33]])
    np.testing.assert_allclose(sharpen(proba, 1.0), proba)

    def entropy(p: np.ndarray) -> np.ndarray:
        return -(p * np.log(p)).sum(axis=1)

    assert np.all(entropy(sharpen(proba, 0.5)) < entropy(proba))
    assert np.all(entropy(sharpen(proba, 2.0)) > entropy(proba))
    np.testing.assert_allclose(sharpen(proba, 0.5).sum(axis=1), 1.0)
    # Equivalent to p ** (1/T) renormalised, and finite for a zero probability.
    expected = proba ** 2 / (proba ** 2).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(sharpen(proba, 0.5), expected, rtol=1e-9)
    assert np.all(np.isfinite(sharpen(np.array([[1.0, 0.0]]), 3.0)))


def test_soft_targets_mix_the_hard_label_with_the_teacher() -> None:
    teacher = np.array([[0.6, 0.4], [0.1, 0.9]])
    y = np.array([1, 1])
    targets = soft_targets(teacher, y, 2, alpha=0.25, temperature=1.0)
    np.testing.assert_allclose(targets, [[0.45, 0.55], [0.075, 0.925]])
    np.testing.assert_allclose(soft_targets(teacher, y, 2, alpha=1.0, temperature=1.0), [[0, 1], [0, 1]])
    np.testing.assert_allclose(soft_targets(teacher, None, 2, alpha=0.5, temperature=1.0), teacher)


@pytest.mark.parametrize("bad, message", [
    (dict(teacher=np.array([[np.nan, 1.0]])), "NaN"),
    (dict(teacher=np.ones((2, 3)) / 3), "expected"),
    (dict(alpha=1.5), "alpha"),
    (dict(temperature=0.0), "temperature"),
])
def test_soft_targets_refuse_bad_input(bad: dict, message: str) -> None:
    args = dict(teacher=np.array([[0.5, 0.5]]), alpha=0.5, temperature=1.0) | bad
    with pytest.raises(ValueError, match=message):
        soft_targets(args["teacher"], np.array([0]), 2, alpha=args["alpha"], temperature=args["temperature"])


def test_augment_texts_is_deterministic_and_remembers_each_source() -> None:
    texts = ["a fine and moving film about loss", "ok", "the plot is thin but the acting carries it"]
    new, sources = augment_texts(texts, methods=["word_dropout", "span_deletion", "shuffle"], copies=3, seed=7)
    again, sources_again = augment_texts(texts, methods=["word_dropout", "span_deletion", "shuffle"], copies=3,
                                         seed=7)
    assert new == again and np.array_equal(sources, sources_again)
    assert set(sources.tolist()) <= {0, 2}, "a text of fewer than three words is not perturbed"
    for text, source in zip(new, sources, strict=True):
        assert text != texts[source]
        assert set(text.split()) <= set(texts[source].split()), "perturbations only drop or move words"
    assert len(new) == len(set(new)), "no duplicate copies"
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment_texts(texts, methods=["synonyms"], copies=1, seed=0)


def test_copies_that_overlap_another_group_are_dropped() -> None:
    from foldstack.core.distill import copies_within_their_source_group

    # Training rows 0,1 form group 7 and row 2 group 9; copies 0, 1, 3 come from row 0, copy 2 from row 2.
    train_groups = np.array([7, 7, 9])
    sources = np.array([0, 0, 2, 0])
    # A bridge joined every training row into joint group 5 (groups 7 and 9): its copies go; copies that overlap
    # no training text (joint groups 8 and 6 hold none) stay.
    joint = np.array([5, 5, 5, 5, 5, 8, 6])
    assert copies_within_their_source_group(joint, train_groups, sources).tolist() == [False, False, True, True]
    # Copy 0 overlaps only its source's group; copies 1 and 3 only row 2's group: a member that held out row 0
    # may have seen row 2.
    joint = np.array([5, 5, 6, 5, 6, 8, 6])
    assert copies_within_their_source_group(joint, train_groups, sources).tolist() == [True, False, True, False]
