"""Meta-learners: combine the base models' class probabilities into the ensemble's prediction.

Every meta-learner takes `probas`, a list with one (n_rows, n_classes) probability matrix per base model
(always in the same model order), and integer labels `y`. During `fit` the matrices are the base models'
out-of-fold (OOF) predictions, so the meta-learner never learns from a base model's fit on the same row;
at predict time they are the base models' predictions on new data (the holdout, or a request).

Kinds (`meta.kind`, one module each, registered with `@register_meta`; `auto`, the default, picks one of its
candidates by CV on the OOF: `select_meta`, in `select`):
- `logreg` — multinomial logistic regression on the stacked (log-odds of the) probabilities: learns how much
  to trust each model, and for which class.
- `ensemble_selection` — Caruana et al. (2004) greedy forward selection with replacement: a weighted mean of
  the base models whose weights are selection counts.
- `weighted_mean` — the plain mean of the base models' probabilities (uniform weights by default): the
  "mean" baseline of the seeds.
- `vote` — majority vote of the base models' top classes: the "vote" baseline of the seeds.

`make_meta(cfg.meta, n_classes, seed)` builds the kind a config names with that kind's params; all of them
save to a directory as a single JSON file (no pickle), and `load_meta(directory)` rebuilds any kind.
They import no prefect, wandb or dvc.
"""

from __future__ import annotations

from foldstack.core.meta.arrays import PROBA_CLIP
from foldstack.core.meta.base import (
    META_FILE, META_FORMAT_VERSION, MetaLearner, load_meta, make_meta, meta_class, register_meta, registered_kinds,
)
from foldstack.core.meta.ensemble_selection import EnsembleSelection
from foldstack.core.meta.logreg import LogisticStacker
from foldstack.core.meta.select import (
    AutoMeta, MetaSelection, cross_validate_meta, cross_validated_proba, select_meta,
)
from foldstack.core.meta.vote import MajorityVote
from foldstack.core.meta.weighted_mean import WeightedMean

__all__ = [
    "META_FILE", "META_FORMAT_VERSION", "PROBA_CLIP", "AutoMeta", "EnsembleSelection", "LogisticStacker",
    "MajorityVote", "MetaLearner", "MetaSelection", "WeightedMean", "cross_validate_meta", "cross_validated_proba",
    "load_meta", "make_meta", "meta_class", "register_meta", "registered_kinds", "select_meta",
]
