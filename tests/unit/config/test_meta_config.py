"""The `meta` section: one params class per kind, each taking only its own keys; retired keys say so."""

from __future__ import annotations

import pytest

from foldstack.config import (
    META_CONFIGS, AutoMetaConfig, EnsembleSelectionMetaConfig, LogregMetaConfig, MetaConfig, VoteMetaConfig,
    WeightedMeanMetaConfig, config_from_dict, load_config,
)
from foldstack.errors import ConfigError

MODELS = [{"name": "a", "kind": "tfidf_lr", "params": {}}]


def _meta(meta):
    return config_from_dict({"base_models": MODELS, "meta": meta}).meta


def test_each_kind_gets_its_own_params_class_with_todays_defaults():
    assert type(_meta({})) is AutoMetaConfig and _meta({}).kind == "auto"
    auto = _meta({"kind": "auto"})
    assert auto.candidates == ["weighted_mean", "ensemble_selection", "logreg"] and auto.tie_se == 1.0
    assert auto.cv_folds == 5
    logreg = _meta({"kind": "logreg", "C": 0.5})
    assert type(logreg) is LogregMetaConfig
    assert (logreg.C, logreg.logit, logreg.passthrough, logreg.max_iter) == (0.5, True, False, 1000)
    assert _meta({"kind": "ensemble_selection"}).rounds == 50
    assert _meta({"kind": "weighted_mean"}).weighting == "uniform"
    vote = _meta({"kind": "vote"})
    assert (vote.tie_break_weight, vote.smoothing) == (0.5, 0.01)
    assert {kind: type(_meta({"kind": kind})) for kind in META_CONFIGS} == META_CONFIGS


@pytest.mark.parametrize("meta, message", [
    ({"kind": "vote", "C": 2}, "meta.C: unknown key for meta kind 'vote' (its keys: kind, cv_folds, "
                               "tie_break_weight, smoothing)"),
    ({"kind": "auto", "logit": True}, "meta.logit: unknown key for meta kind 'auto'"),
    ({"kind": "logreg", "C": 0}, "meta.C: Input should be greater than 0"),
    ({"kind": "auto", "logreg": {"C": 1, "rounds": 3}}, "meta.logreg.rounds: unknown key"),
    ({"kind": "xgboost"}, "meta.kind: must be one of 'auto', 'logreg'"),
    ({"kind": "auto", "candidates": ["auto"]}, "meta.candidates.0: must be one of"),
    ({"kind": "auto", "auto_candidates": ["vote"]}, "meta: auto_candidates was renamed to candidates"),
    ({"kind": "auto", "auto_tie_se": 2}, "meta: auto_tie_se was renamed to tie_se"),
    ({"kind": "ensemble_selection", "selection_rounds": 3}, "meta: selection_rounds was renamed to rounds"),
])
def test_a_key_of_another_kind_or_a_bad_value_is_a_one_line_dotted_error(meta, message):
    with pytest.raises(ConfigError) as err:
        _meta(meta)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_evaluate_primary_metric_is_refused_as_removed():
    with pytest.raises(ConfigError, match=r"evaluate: primary_metric was removed: nothing read it"):
        config_from_dict({"base_models": MODELS, "evaluate": {"primary_metric": "log_loss"}})


def test_the_project_params_switch_kinds_by_override_and_reach_auto_candidates():
    assert type(load_config("params.yaml", ["meta.kind=vote"]).meta) is VoteMetaConfig
    auto = load_config("params.yaml", ["meta.logreg.C=0.5", "meta.tie_se=2"]).meta
    assert auto.candidate("logreg") == LogregMetaConfig(C=0.5, cv_folds=auto.cv_folds) and auto.tie_se == 2.0
    assert load_config("params.yaml", ["meta.kind=ensemble_selection", "meta.rounds=9"]).meta == \
        EnsembleSelectionMetaConfig(rounds=9)


def test_a_bare_meta_config_stands_for_its_kind_at_the_defaults():
    assert MetaConfig(kind="weighted_mean").resolved() == WeightedMeanMetaConfig()
    assert MetaConfig().resolved() == AutoMetaConfig()
    assert VoteMetaConfig(smoothing=0.2).resolved() == VoteMetaConfig(smoothing=0.2)
