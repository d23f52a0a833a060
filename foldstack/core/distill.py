"""What a distilled student learns from the ensemble: honest soft targets and teacher-labelled augmentation.

The teacher's probability for a training row is the meta-learner's cross-validated prediction on the OOF matrix
(`stack/meta_cv_proba.npy`): the base models' part of it comes from fold models that never saw the row (nor its
overlap group), and the meta-learner's part from a meta-learner fitted without the row. So no target a student
fits was computed by a model that saw that row; the full ensemble's own predictions on its training rows would
be memorised answers, exactly what the OOF machinery exists to avoid.

`soft_targets` mixes that probability with the hard label (`alpha`) and sharpens or softens it
(`temperature`). `augment_texts` makes perturbed copies of the training texts (word dropout, span deletion,
local shuffles) for the teacher to label, so the student sees more of the teacher's function than the training
rows alone show; each copy remembers its source row, so it is labelled by the fold models that never saw that row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

AugmentMethod = Literal["word_dropout", "span_deletion", "shuffle"]
AUGMENT_METHODS: tuple[str, ...] = ("word_dropout", "span_deletion", "shuffle")
# A perturbation must leave enough of the text to still be about the same thing.
_MIN_WORDS_TO_AUGMENT = 3


def sharpen(proba: np.ndarray, temperature: float) -> np.ndarray:
    """`proba ** (1 / temperature)`, renormalised: T < 1 sharpens, T > 1 softens, T = 1 is the identity.

    The same as a softmax of log-probabilities divided by T, computed in log space so that tiny
    probabilities neither underflow to 0 nor turn into NaN.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    proba = np.asarray(proba, dtype=np.float64)
    if temperature == 1.0:
        return proba / proba.sum(axis=1, keepdims=True)
    logits = np.log(np.clip(proba, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def soft_targets(teacher_proba: np.ndarray, y: np.ndarray | None, n_classes: int, *, alpha: float,
                 temperature: float) -> np.ndarray:
    """Rows x classes targets: `alpha` x one-hot(y) + (1 - alpha) x sharpen(teacher, temperature).

    `y` may be None for rows without a label (teacher-labelled augmented copies): their target is the
    teacher's alone.
    """
    teacher = np.asarray(teacher_proba, dtype=np.float64)
    if teacher.ndim != 2 or teacher.shape[1] != n_classes:
        raise ValueError(f"teacher probabilities have shape {teacher.shape}; expected (rows, {n_classes})")
    if not np.all(np.isfinite(teacher)):
        raise ValueError("teacher probabilities hold NaN or inf: a row without an out-of-fold prediction?")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    targets = sharpen(teacher, temperature)
    if y is None or alpha == 0.0:
        return targets
    y = np.asarray(y)
    if y.shape != (len(teacher),):
        raise ValueError(f"y has shape {y.shape}; expected ({len(teacher)},)")
    hard = np.zeros_like(targets)
    hard[np.arange(len(y)), y] = 1.0
    return alpha * hard + (1.0 - alpha) * targets


def _word_dropout(words: list[str], rng: np.random.Generator, rate: float = 0.15) -> list[str]:
    keep = rng.random(len(words)) >= rate
    if keep.sum() < 1:
        keep[rng.integers(len(words))] = True
    return [w for w, k in zip(words, keep, strict=True) if k]


def _span_deletion(words: list[str], rng: np.random.Generator) -> list[str]:
    span = max(1, int(round(len(words) * rng.uniform(0.1, 0.3))))
    start = int(rng.integers(0, len(words) - span + 1))
    return words[:start] + words[start + span:]


def _shuffle(words: list[str], rng: np.random.Generator, window: int = 3) -> list[str]:
    """Local shuffles: each word moves at most `window` places, so phrases stay mostly readable."""
    keys = np.arange(len(words)) + rng.uniform(0, window, size=len(words))
    return [words[i] for i in np.argsort(keys, kind="stable")]


_PERTURB = {"word_dropout": _word_dropout, "span_deletion": _span_deletion, "shuffle": _shuffle}


def augment_texts(texts: Sequence[str], *, methods: Sequence[str], copies: int, seed: int,
                  min_words: int = _MIN_WORDS_TO_AUGMENT) -> tuple[list[str], np.ndarray]:
    """`copies` perturbed copies of each text (methods taken in turn), each of at least `min_words` words.

    Returns the new texts and, for each, the index of the text it came from. Copies equal to their source or
    to an earlier copy are dropped: they would teach nothing new; so are copies shorter than `min_words`: a
    fragment of a word or two occurs inside many texts, and the overlap grouping (whose `min_contained_tokens`
    the distill stage passes here) does not look at fragments that short. Deterministic for a seed.
    """
    unknown = sorted(set(methods) - set(_PERTURB))
    if unknown:
        raise ValueError(f"unknown augmentation method(s) {unknown}; choose from {', '.join(AUGMENT_METHODS)}")
    if copies < 0:
        raise ValueError(f"copies must be >= 0, got {copies}")
    rng = np.random.default_rng(seed)
    out: list[str] = []
    sources: list[int] = []
    for index, text in enumerate(texts):
        words = text.split()
        if len(words) < max(min_words, _MIN_WORDS_TO_AUGMENT) or not methods:
            continue
        seen = {text}
        for copy in range(copies):
            method = methods[copy % len(methods)]
            perturbed = _PERTURB[method](words, rng)
            candidate = " ".join(perturbed)
            if len(perturbed) >= min_words and candidate not in seen:
                seen.add(candidate)
                out.append(candidate)
                sources.append(index)
    return out, np.asarray(sources, dtype=np.int64)


def copies_within_their_source_group(joint_groups: np.ndarray, train_groups: np.ndarray,
                                     sources: np.ndarray) -> np.ndarray:
    """Which augmented copies overlap no training text outside their source row's overlap group.

    `joint_groups` are the groups of the training texts followed by the copies, grouped together (the folds'
    own grouping rules); `train_groups` the training rows' groups from the fold assignment. A copy whose joint
    group also holds a training row of another group (a word-dropout copy that became contained in some other
    text, say) would be labelled by a fold member that may have seen that other row: it is dropped. Groups are
    connected components, so one bridging copy drops the copies joined to it too: conservative, never leaky.
    """
    n_train = len(train_groups)
    joint_train, joint_copies = joint_groups[:n_train], joint_groups[n_train:]
    # For each joint group holding training rows: the one training group it holds, or -1 when it holds several.
    only_group: dict[int, int] = {}
    for joint, group in zip(joint_train.tolist(), np.asarray(train_groups).tolist(), strict=True):
        only_group[joint] = group if only_group.get(joint, group) == group else -1
    source_groups = np.asarray(train_groups)[sources]
    return np.array([only_group.get(joint, source) == source
                     for joint, source in zip(joint_copies.tolist(), source_groups.tolist(), strict=True)], dtype=bool)
