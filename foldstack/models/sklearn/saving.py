"""The saved form of the scikit-learn kinds' learned pieces, without pickle.

A vectorizer is saved as its vocabulary (JSON, one term per column) and idf weights (`.npy`) and rebuilt
from the params on load: its configuration is exactly what the params say, and skops is far too slow on
vocabularies of a few hundred thousand terms (minutes per dump). A classifier is a skops file checked
against `foldstack.models.persist.TRUSTED_TYPES`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from foldstack.common.files import save_array, write_json
from foldstack.errors import BundleError
from foldstack.models.persist import load_array, load_json, load_sklearn, save_sklearn

__all__ = ["CLASSIFIER_SKOPS", "IDF_NPY", "VOCABULARY_JSON", "load_classifier", "load_vectorizer",
           "save_classifier", "save_vectorizer"]

VOCABULARY_JSON = "vocabulary.json"
IDF_NPY = "idf.npy"
CLASSIFIER_SKOPS = "classifier.skops"


def save_vectorizer(vectorizer: Any, directory: Path) -> None:
    """The fitted vectorizer's vocabulary (terms in column order) and, for TF-IDF, its idf weights."""
    vocabulary = vectorizer.vocabulary_
    terms = [""] * len(vocabulary)
    for term, column in vocabulary.items():
        terms[column] = term
    write_json(directory / VOCABULARY_JSON, terms, indent=None)
    if hasattr(vectorizer, "idf_"):
        save_array(directory / IDF_NPY, vectorizer.idf_)


def load_vectorizer(vectorizer: Any, directory: Path) -> Any:
    """`vectorizer` (fresh, configured from the params) given the vocabulary and idf weights saved in `directory`."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    terms = load_json(directory / VOCABULARY_JSON)
    if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms):
        raise BundleError(f"{directory / VOCABULARY_JSON}: expected a JSON list of terms")
    vectorizer.vocabulary_ = {term: column for column, term in enumerate(terms)}
    if len(vectorizer.vocabulary_) != len(terms):
        raise BundleError(f"{directory / VOCABULARY_JSON}: repeated terms in the vocabulary")
    if isinstance(vectorizer, TfidfVectorizer):
        idf = load_array(directory / IDF_NPY)
        if idf.shape != (len(terms),):
            raise BundleError(f"{directory / IDF_NPY}: shape {idf.shape}, expected ({len(terms)},)")
        vectorizer.idf_ = idf  # the public setter scikit-learn provides for transferring idf weights
    return vectorizer


def save_classifier(classifier: Any, directory: Path) -> None:
    save_sklearn(classifier, directory / CLASSIFIER_SKOPS)


def load_classifier(directory: Path, classes: np.ndarray, n_terms: int) -> Any:
    """The saved classifier, checked to fit the model's classes and its `n_terms`-term vocabulary."""
    classifier = load_sklearn(directory / CLASSIFIER_SKOPS)
    if not np.array_equal(getattr(classifier, "classes_", None), classes):
        raise BundleError(f"{directory / CLASSIFIER_SKOPS}: classifier classes do not match model.json")
    if getattr(classifier, "n_features_in_", None) != n_terms:
        raise BundleError(
            f"{directory / CLASSIFIER_SKOPS}: classifier does not match the {n_terms}-term vocabulary"
        )
    return classifier
