"""The meta-learners' shared array checks and math: the base models' matrices checked, log losses, softmax,
the weighted mean of probability matrices."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Probabilities are clipped into [PROBA_CLIP, 1 - PROBA_CLIP] before taking logs: a base model that says
# exactly 0 or 1 would otherwise give infinite features (log-odds) or an infinite loss.
PROBA_CLIP = 1e-6


def check_probas(probas: Sequence[np.ndarray], n_classes: int, who: str) -> list[np.ndarray]:
    """The base models' matrices as float64, each checked for shape, finiteness and equal row counts."""
    if isinstance(probas, np.ndarray):
        raise TypeError(f"{who}: probas must be a list of (n_rows, n_classes) arrays, one per base model")
    if len(probas) == 0:
        raise ValueError(f"{who}: probas is empty; at least one base model's probabilities are needed")
    checked = []
    for i, proba in enumerate(probas):
        proba = np.asarray(proba, dtype=np.float64)
        if proba.ndim != 2 or proba.shape[1] != n_classes:
            raise ValueError(f"{who}: probas[{i}] has shape {proba.shape}; expected (n_rows, {n_classes})")
        if not np.all(np.isfinite(proba)):
            raise ValueError(f"{who}: probas[{i}] holds NaN or infinite values (is the OOF matrix complete?)")
        if checked and proba.shape[0] != checked[0].shape[0]:
            raise ValueError(
                f"{who}: probas[{i}] has {proba.shape[0]} rows but probas[0] has {checked[0].shape[0]}"
            )
        checked.append(proba)
    return checked


def check_model_count(probas: list[np.ndarray], expected: int, who: str) -> None:
    if len(probas) != expected:
        raise ValueError(f"{who}: fitted on {expected} base models but given {len(probas)} probability matrices")


def row_log_losses(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each row's log loss under one (n, C) matrix; the true class's probability is clipped so a hard miss
    stays finite. Their mean is the matrix's log loss."""
    return -np.log(np.clip(proba[np.arange(len(y)), y], 1e-15, 1.0))


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def weighted_average(probas: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    combined = np.tensordot(weights, np.stack(probas), axes=1)
    # Renormalise: base models' rows sum to 1 only up to float error (and float32 storage).
    return combined / combined.sum(axis=1, keepdims=True)
