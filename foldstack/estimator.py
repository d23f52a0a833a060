"""`FoldStackClassifier`: the stacking machinery as a scikit-learn estimator.

It fits on in-memory texts and labels with no holdout (scikit-learn's own model selection tools do that):
the same fold assignment (stratified, overlapping texts grouped), the same base models, the same OOF
collection and meta-learners as the pipeline.

    clf = FoldStackClassifier(base_models=[{"name": "lr", "kind": "tfidf_lr"}], k=5).fit(texts, labels)
    clf.predict_proba(new_texts)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin

from foldstack.config import BaseModelSpec, GroupingConfig, MetaConfig
from foldstack.data import LabelMap, normalise_text
from foldstack.ensemble import StackedPredictor, fill_oof, fit_fold_model
from foldstack.folds import assign_folds
from foldstack.fsutil import derive_seed, sha256_json
from foldstack.grouping import group_texts
from foldstack.models.base import ModelContext


class FoldStackClassifier(ClassifierMixin, BaseEstimator):
    """K-fold stacked ensemble of text classifiers.

    Parameters
    ----------
    base_models : list of dicts ``{"name", "kind", "params"}`` (as in params.yaml's ``base_models``).
    meta : dict of ``MetaConfig`` fields, e.g. ``{"kind": "logreg", "C": 1.0}``.
    k, repeats : folds and repeats of the OOF cross-fitting.
    grouping : dict of ``GroupingConfig`` fields: which overlapping texts share a fold (default: all kinds).
    seed : seeds the folds and every model (through each fold's identity).
    device : given to the base models ("cpu", "cuda", "cuda:N").
    cache_dir : embedding/token caches of the transformer kinds.
    """

    def __init__(self, base_models: Sequence[dict[str, Any]] = ({"name": "tfidf_lr", "kind": "tfidf_lr"},),
                 meta: dict[str, Any] | None = None, k: int = 5, repeats: int = 1,
                 grouping: dict[str, Any] | None = None, seed: int = 0, device: str = "cpu",
                 cache_dir: str | None = None):
        self.base_models = base_models
        self.meta = meta
        self.k = k
        self.repeats = repeats
        self.grouping = grouping
        self.seed = seed
        self.device = device
        self.cache_dir = cache_dir

    def fit(self, X: Sequence[str], y: Sequence[Any]) -> FoldStackClassifier:
        from pathlib import Path

        from foldstack.meta import make_meta, select_meta

        texts = [normalise_text(str(t)) for t in X]
        labels = pd.Series(list(y))
        if len(texts) != len(labels):
            raise ValueError(f"X has {len(texts)} texts but y has {len(labels)} labels")
        specs = [BaseModelSpec.model_validate(dict(m)) for m in self.base_models]
        meta_cfg = MetaConfig.model_validate(self.meta or {})
        self.label_map_ = LabelMap.from_values(labels)
        self.classes_ = np.array(self.label_map_.labels, dtype=object)
        codes = self.label_map_.encode(labels, "y")
        n_classes = len(self.classes_)
        groups = group_texts(texts, GroupingConfig.model_validate(self.grouping or {})).groups
        folds = assign_folds(codes, groups, self.k, self.repeats, self.seed, n_classes)
        cache = Path(self.cache_dir) if self.cache_dir else None
        members: dict[str, list] = {}
        oofs = []
        for spec in specs:
            members[spec.name] = []
            pieces = []
            for repeat, fold in folds.tasks():
                train_idx, val_idx = folds.split(repeat, fold)
                identity = sha256_json([spec.model_dump(mode="json"), repeat, fold])
                context = ModelContext(n_classes=n_classes, device=self.device,
                                       seed=derive_seed(self.seed, identity), cache_dir=cache)
                model = fit_fold_model(spec.kind, spec.params, context, texts, codes, train_idx)
                pieces.append((repeat, val_idx, model.predict_proba([texts[i] for i in val_idx])))
                members[spec.name].append(model)
            oofs.append(fill_oof(folds.repeats, len(texts), n_classes, pieces, spec.name).mean(axis=0))
        self.oof_ = dict(zip([s.name for s in specs], oofs, strict=True))
        meta_seed = derive_seed(self.seed, "meta")
        self.meta_selection_ = select_meta(meta_cfg, oofs, codes, n_classes, meta_seed, folds.group)
        meta = make_meta(self.meta_selection_.config, n_classes, meta_seed).fit(oofs, codes)
        self.predictor_ = StackedPredictor(members, meta, n_classes)
        self.n_features_in_ = 1
        return self

    def predict_proba(self, X: Sequence[str]) -> np.ndarray:
        if not hasattr(self, "predictor_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("FoldStackClassifier is not fitted yet; call fit(texts, labels) first")
        return self.predictor_.predict_proba([normalise_text(str(t)) for t in X])

    def predict(self, X: Sequence[str]) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]
