"""Drift statistics on plain arrays: PSI, the out-of-vocabulary rate, and a domain classifier's AUC.

`foldstack monitor` (foldstack.ops.monitoring.monitor) compares a window of the prediction log with the
training snapshot using these; each is a few lines of numpy / scikit-learn, computed in-house rather than
through a drift library, because:

- Evidently 0.7.23 does install beside the pins, but adds 24 packages to this environment (litestar, plotly,
  statsmodels, nltk, Faker, uvloop, watchdog ...: its UI and service), and for what the monitor needs it
  computes the same statistics: its PSI is this PSI, and its embedding drift "model" method *is* this domain classifier
  (a classifier told to separate current from reference embeddings, drift when its ROC AUC passes a threshold);
- alibi-detect pins TensorFlow or PyTorch versions of its own;
- the exact definitions below (bins, smoothing, folds, seeds) are stated here and tested, so a verdict can be
  reproduced by hand from monitoring.json.

Definitions:

- **PSI** (population stability index) of a numeric variable: the reference's quantile bins (as many as
  `bins`, fewer so that each is expected to hold at least `min_per_bin` values of the smaller sample: 10 bins
  for a window of 250 or more, 4 for a window of 100; tied quantiles merge), the share
  of each sample per bin with `smoothing` (0.5) added to every bin's count (so an empty bin in a small window
  adds a bounded term instead of log(share / 1e-12)), then PSI = sum((q - p) * ln(q / p)) over bins, p the
  reference's shares and q the current's. 0: the same distribution; > 0.2 is the usual "significant shift".
  Under no shift its expectation is about (bins - 1) * (1 / n_current + 1 / n_reference).
- **Categorical PSI**: the same over a fixed set of categories (predicted classes).
- **OOV rate**: the share of token occurrences of a set of texts that are not in a vocabulary; tokens are
  scikit-learn's default word tokens (lowercased, `(?u)\\b\\w\\w+\\b`), what the tfidf models see.
- **Domain classifier AUC**: a logistic regression telling current vectors (label 1) from as many reference
  vectors (label 0), scored by stratified K-fold (shuffled, seeded): the mean ROC AUC of the held-out folds.
  0.5: the two samples cannot be told apart; 1.0: they are separable.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "TOKEN_PATTERN", "as_texts", "binned_shares", "categorical_psi", "category_shares", "count_words",
    "domain_classifier_auc", "oov_rate", "psi", "psi_of_shares", "quantile_edges", "sample_rows", "tokens",
    "vocabulary", "wilson_upper",
]

PSI_BINS = 10
MIN_PER_BIN = 25
SMOOTHING = 0.5
# scikit-learn's CountVectorizer / TfidfVectorizer default token_pattern (the tfidf models use the default).
TOKEN_PATTERN = re.compile(r"(?u)\b\w\w+\b")


def quantile_edges(reference: np.ndarray, bins: int = PSI_BINS, min_per_bin: int = MIN_PER_BIN,
                   n_current: int | None = None) -> np.ndarray:
    """The inner edges of the reference's quantile bins: at most bins - 1, unique, and few enough that each bin
    expects `min_per_bin` values of the smaller of the reference and `n_current` values."""
    reference = _finite(reference)
    if reference.size == 0:
        raise ValueError("PSI needs at least one finite reference value")
    smaller = reference.size if n_current is None else min(reference.size, n_current)
    n_bins = int(max(1, min(bins, smaller // max(min_per_bin, 1))))
    if n_bins < 2:
        return np.zeros(0)
    inner = np.quantile(reference, np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
    return np.unique(inner)


def binned_shares(values: np.ndarray, edges: np.ndarray, smoothing: float = SMOOTHING) -> np.ndarray:
    """The share of `values` in each bin (x < edges[0], edges[0] <= x < edges[1], ..., x >= edges[-1])."""
    index = np.searchsorted(edges, _finite(values), side="right")
    return _shares(np.bincount(index, minlength=edges.size + 1), smoothing)


def psi_of_shares(expected: np.ndarray, actual: np.ndarray) -> float:
    """PSI of two share vectors over the same bins (both strictly positive)."""
    p, q = np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"share vectors differ in shape: {p.shape} and {q.shape}")
    return float(np.sum((q - p) * np.log(q / p)))


def psi(reference: np.ndarray, current: np.ndarray, *, bins: int = PSI_BINS, min_per_bin: int = MIN_PER_BIN,
        smoothing: float = SMOOTHING) -> float:
    """PSI of a numeric variable, binned by the reference's quantiles (see the module docstring)."""
    n_current = _finite(current).size
    if n_current == 0:
        raise ValueError("PSI needs at least one finite current value")
    edges = quantile_edges(reference, bins, min_per_bin, n_current)
    return psi_of_shares(binned_shares(reference, edges, smoothing), binned_shares(current, edges, smoothing))


def categorical_psi(reference: np.ndarray, current: np.ndarray, n_categories: int,
                    smoothing: float = SMOOTHING) -> float:
    """PSI of category codes 0..n_categories-1 (e.g. predicted classes)."""
    reference, current = np.asarray(reference, dtype=np.int64), np.asarray(current, dtype=np.int64)
    for name, codes in (("reference", reference), ("current", current)):
        if codes.size == 0:
            raise ValueError(f"categorical PSI needs at least one {name} value")
        if codes.min() < 0 or codes.max() >= n_categories:
            raise ValueError(f"{name} codes must lie in 0..{n_categories - 1}")
    return psi_of_shares(_shares(np.bincount(reference, minlength=n_categories), smoothing),
                         _shares(np.bincount(current, minlength=n_categories), smoothing))


def category_shares(codes: np.ndarray, n_categories: int) -> np.ndarray:
    """Unsmoothed shares of each category (for reports and plots)."""
    counts = np.bincount(np.asarray(codes, dtype=np.int64), minlength=n_categories).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def _shares(counts: np.ndarray, smoothing: float) -> np.ndarray:
    counts = counts.astype(np.float64) + smoothing
    return counts / counts.sum()


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


def tokens(text: str) -> list[str]:
    """The word tokens of a text as the tfidf models see them: lowercased, two or more word characters."""
    return TOKEN_PATTERN.findall(text.lower())


def count_words(texts: Iterable[str]) -> np.ndarray:
    """Words per text as the prediction log counts them: whitespace-separated pieces (`len(text.split())`)."""
    return np.fromiter((len(text.split()) for text in texts), dtype=np.int64)


def vocabulary(texts: Iterable[str]) -> frozenset[str]:
    """Every token of the texts (no frequency cut)."""
    vocab: set[str] = set()
    for text in texts:
        vocab.update(tokens(text))
    return frozenset(vocab)


def oov_rate(texts: Iterable[str], vocab: frozenset[str] | set[str]) -> float:
    """The share of token occurrences not in `vocab`; NaN when the texts hold no token."""
    total = unknown = 0
    for text in texts:
        found = tokens(text)
        total += len(found)
        unknown += sum(1 for token in found if token not in vocab)
    return unknown / total if total else math.nan


def domain_classifier_auc(reference: np.ndarray, current: np.ndarray, *, folds: int = 5, seed: int = 0,
                          C: float = 1.0) -> float:
    """The mean held-out ROC AUC of a logistic regression telling `current` rows (1) from `reference` rows (0).

    Both are (n, dim) arrays; give them the same number of rows (the monitor samples the reference to the
    window's size), at least 2 each. Folds are stratified, shuffled with `seed`, at most the smaller count.
    """
    from sklearn.linear_model import LogisticRegression  # deferred: scikit-learn
    from sklearn.metrics import roc_auc_score  # deferred: scikit-learn
    from sklearn.model_selection import StratifiedKFold  # deferred: scikit-learn

    reference, current = np.asarray(reference, dtype=np.float64), np.asarray(current, dtype=np.float64)
    if reference.ndim != 2 or current.ndim != 2 or reference.shape[1] != current.shape[1]:
        raise ValueError(f"need two (n, dim) arrays of one dim, got {reference.shape} and {current.shape}")
    n_splits = min(folds, reference.shape[0], current.shape[0])
    if n_splits < 2:
        raise ValueError("the domain classifier needs at least 2 rows on each side")
    features = np.vstack([reference, current])
    target = np.r_[np.zeros(reference.shape[0], dtype=np.int64), np.ones(current.shape[0], dtype=np.int64)]
    aucs = []
    for train, test in StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(features, target):
        model = LogisticRegression(C=C, max_iter=1000).fit(features[train], target[train])
        aucs.append(roc_auc_score(target[test], model.decision_function(features[test])))
    return float(np.mean(aucs))


def wilson_upper(successes: int, n: int, z: float = 1.645) -> float:
    """The upper end of the Wilson score interval of a proportion (one-sided 95% with the default z)."""
    if n <= 0:
        return math.nan
    share = successes / n
    centre = share + z * z / (2 * n)
    spread = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


def sample_rows(n_rows: int, size: int, seed: int) -> np.ndarray:
    """`size` distinct row indices of 0..n_rows-1 (all of them, shuffled, when size >= n_rows), seeded."""
    rng = np.random.default_rng(seed)
    return rng.permutation(n_rows)[: min(size, n_rows)]


def as_texts(values: Sequence[object]) -> list[str]:
    """The non-null strings of a column, in order."""
    return [value for value in values if isinstance(value, str)]
