"""Meta-learners on synthetic OOF probabilities: validity, quality, persistence and honest CV."""

from __future__ import annotations

import json

import numpy as np
import pytest

from foldstack.config import (
    META_CONFIGS, AutoMetaConfig, EnsembleSelectionMetaConfig, LogregMetaConfig, MetaConfig, VoteMetaConfig,
    WeightedMeanMetaConfig,
)
from foldstack.core.meta import select as select_module
from foldstack.core.meta import (
    EnsembleSelection,
    LogisticStacker,
    MajorityVote,
    MetaLearner,
    WeightedMean,
    cross_validate_meta,
    load_meta,
    make_meta,
    meta_class,
    registered_kinds,
    select_meta,
)

KINDS = ["logreg", "ensemble_selection", "weighted_mean", "vote"]
ROUNDS_10 = {"ensemble_selection": {"rounds": 10}}
# Base models from weak to strong are listed in this order on purpose: the best is last, so a learner that
# just takes the first model (or breaks ties by position) cannot pass the "prefers the best" checks.
STRENGTHS = (0.4, 1.2, 2.5)


def synthetic_oof(n_rows: int, n_classes: int, strengths=STRENGTHS, seed: int = 0):
    """Labels and one probability matrix per base model; a larger strength means a more accurate model.

    Each model is a softmax of Gaussian noise plus `strength` on the true class, so models err independently
    and are over- or under-confident by different amounts — as real base models are.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n_rows)
    probas = []
    for strength in strengths:
        scores = rng.normal(0.0, 1.0, (n_rows, n_classes))
        scores[np.arange(n_rows), y] += strength
        proba = np.exp(scores)
        probas.append(proba / proba.sum(axis=1, keepdims=True))
    return probas, y


def log_loss_of(proba: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-15, 1.0))))


def assert_valid_proba(proba: np.ndarray, n_rows: int, n_classes: int) -> None:
    assert proba.shape == (n_rows, n_classes)
    assert np.all(np.isfinite(proba))
    assert np.all(proba >= 0) and np.all(proba <= 1)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_fits_and_predicts_valid_probabilities(kind, n_classes):
    oof, y = synthetic_oof(300, n_classes, seed=1)
    holdout, y_holdout = synthetic_oof(120, n_classes, seed=2)
    learner = make_meta(META_CONFIGS[kind](), n_classes, seed=0)
    assert learner.kind == kind
    assert learner.fit(oof, y) is learner
    proba = learner.predict_proba(holdout)
    assert_valid_proba(proba, 120, n_classes)
    # Every kind combines models that are each far better than chance into something far better than chance.
    assert np.mean(learner.predict(holdout) == y_holdout) > 0.7


@pytest.mark.parametrize("n_classes", [2, 3])
def test_logreg_beats_the_worst_model_and_matches_the_best_on_log_loss(n_classes):
    oof, y = synthetic_oof(600, n_classes, seed=3)
    holdout, y_holdout = synthetic_oof(600, n_classes, seed=4)
    learner = make_meta(LogregMetaConfig(), n_classes, seed=0).fit(oof, y)
    stacked = log_loss_of(learner.predict_proba(holdout), y_holdout)
    base_losses = [log_loss_of(p, y_holdout) for p in holdout]
    assert stacked < max(base_losses)
    assert stacked < min(base_losses) * 1.05


@pytest.mark.parametrize(
    ("n_classes", "logit", "passthrough", "expected_features"),
    [
        (2, True, False, 3),  # binary: one column (P(class 1)) per model
        (2, True, True, 6),  # ... plus the raw probability beside each log-odds
        (2, False, False, 3),
        (2, False, True, 3),  # passthrough of raw probabilities that are already the features adds nothing
        (3, True, False, 9),  # multiclass: every class column of every model
        (3, True, True, 18),
    ],
)
def test_logreg_feature_layout(n_classes, logit, passthrough, expected_features):
    oof, y = synthetic_oof(200, n_classes, seed=5)
    cfg = LogregMetaConfig(logit=logit, passthrough=passthrough)
    learner = make_meta(cfg, n_classes, seed=0).fit(oof, y)
    assert learner.n_features_in_ == expected_features
    assert np.asarray(learner.coef_).shape[1] == expected_features


def test_logreg_log_odds_survive_hard_zeros_and_ones():
    oof, y = synthetic_oof(200, 2, seed=6)
    oof[2] = np.eye(2)[y]  # a base model that is certain (and right) on every row
    learner = make_meta(LogregMetaConfig(), 2, seed=0).fit(oof, y)
    proba = learner.predict_proba(oof)
    assert_valid_proba(proba, 200, 2)
    assert np.mean(proba.argmax(axis=1) == y) == 1.0


@pytest.mark.parametrize("n_classes", [2, 3])
def test_ensemble_selection_weights_sum_to_one_and_prefer_the_best_model(n_classes):
    oof, y = synthetic_oof(400, n_classes, seed=7)
    cfg = EnsembleSelectionMetaConfig(rounds=20)
    learner = make_meta(cfg, n_classes, seed=0).fit(oof, y)
    assert sum(learner.weights_) == pytest.approx(1.0)
    assert sum(learner.selection_counts_) == 20
    assert len(learner.selection_order_) == 20
    np.testing.assert_allclose(learner.weights_, np.asarray(learner.selection_counts_) / 20)
    best = int(np.argmin([log_loss_of(p, y) for p in oof]))
    assert best == len(STRENGTHS) - 1
    assert learner.selection_order_[0] == best  # initialised with the single best model
    assert int(np.argmax(learner.weights_)) == best


def test_ensemble_selection_mixes_equally_good_models_with_independent_errors():
    # Two equally strong models whose errors are independent: averaging them beats either alone, so the
    # greedy search must pick both, and a hopeless third model never.
    oof, y = synthetic_oof(1000, 3, strengths=(2.0, 2.0, 0.0), seed=8)
    learner = EnsembleSelection(3, rounds=30).fit(oof, y)
    assert learner.weights_[0] > 0.25 and learner.weights_[1] > 0.25
    assert learner.weights_[2] == 0.0
    mixed = log_loss_of(learner.predict_proba(oof), y)
    assert mixed < min(log_loss_of(p, y) for p in oof[:2])


def test_weighted_mean_is_the_plain_mean_by_default():
    oof, y = synthetic_oof(100, 3, seed=9)
    learner = make_meta(MetaConfig(kind="weighted_mean"), 3, seed=0).fit(oof, y)
    assert learner.weights_ == pytest.approx([1 / 3] * 3)
    np.testing.assert_allclose(learner.predict_proba(oof), np.mean(oof, axis=0))


def test_weighted_mean_softmax_weighting_favours_the_better_model():
    oof, y = synthetic_oof(300, 3, seed=10)
    learner = WeightedMean(3, weighting="softmax_neg_log_loss").fit(oof, y)
    assert sum(learner.weights_) == pytest.approx(1.0)
    assert learner.weights_[0] < learner.weights_[1] < learner.weights_[2]
    with pytest.raises(ValueError, match="weighting must be one of"):
        WeightedMean(3, weighting="inverse").fit(oof, y)


def test_vote_follows_the_majority_and_breaks_ties_by_mean_probability():
    y = np.array([0, 0])
    # Row 0: two models vote class 0, one (very confidently) class 1 -> the majority wins regardless.
    # Row 1: one vote each for classes 0 and 1 and 2; class 2's voter is the most confident -> class 2.
    model_a = np.array([[0.6, 0.4, 0.0], [0.5, 0.3, 0.2]])
    model_b = np.array([[0.55, 0.45, 0.0], [0.3, 0.45, 0.25]])
    model_c = np.array([[0.0, 1.0, 0.0], [0.0, 0.05, 0.95]])
    learner = make_meta(MetaConfig(kind="vote"), 3, seed=0).fit([model_a, model_b, model_c], y)
    proba = learner.predict_proba([model_a, model_b, model_c])
    assert_valid_proba(proba, 2, 3)
    assert proba[0].argmax() == 0
    assert proba[1].argmax() == 2
    # Class 2 got no vote in row 0 and no probability from any model: smoothing still keeps it above zero.
    assert proba[0, 2] > 0


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_give_identical_predictions_from_json_only(kind, tmp_path):
    oof, y = synthetic_oof(200, 3, seed=11)
    holdout, _ = synthetic_oof(50, 3, seed=12)
    learner = make_meta(META_CONFIGS[kind](**ROUNDS_10.get(kind, {})), 3, seed=0).fit(oof, y)
    learner.save(tmp_path / "meta")

    saved = list((tmp_path / "meta").iterdir())
    assert saved and all(path.suffix == ".json" for path in saved)
    for path in saved:
        json.loads(path.read_text())  # plain JSON, nothing else

    for loaded in (load_meta(tmp_path / "meta"), type(learner).load(tmp_path / "meta")):
        assert type(loaded) is type(learner)
        assert loaded.get_params() == learner.get_params()
        np.testing.assert_array_equal(loaded.predict_proba(holdout), learner.predict_proba(holdout))


def test_loading_through_the_wrong_class_or_an_empty_dir_is_an_error(tmp_path):
    oof, y = synthetic_oof(100, 2, seed=13)
    make_meta(VoteMetaConfig(), 2, seed=0).fit(oof, y).save(tmp_path / "vote")
    with pytest.raises(ValueError, match="holds a 'vote' meta-learner"):
        LogisticStacker.load(tmp_path / "vote")
    with pytest.raises(FileNotFoundError, match="no saved meta-learner"):
        MetaLearner.load(tmp_path / "nothing")


def test_bad_inputs_fail_with_messages_that_name_the_problem():
    oof, y = synthetic_oof(50, 3, seed=14)
    learner = LogisticStacker(3)
    with pytest.raises(RuntimeError, match="not fitted"):
        learner.predict_proba(oof)
    with pytest.raises(ValueError, match=r"probas\[1\] has shape"):
        learner.fit([oof[0], oof[1][:, :2], oof[2]], y)
    with pytest.raises(ValueError, match="NaN"):
        learner.fit([oof[0], np.full_like(oof[1], np.nan), oof[2]], y)
    with pytest.raises(ValueError, match="outside 0..2"):
        learner.fit(oof, y + 1)
    learner.fit(oof, y)
    with pytest.raises(ValueError, match="fitted on 3 base models but given 2"):
        learner.predict_proba(oof[:2])
    with pytest.raises(ValueError, match="at least 2 classes"):
        make_meta(AutoMetaConfig(), 1, seed=0)
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        EnsembleSelection(3, rounds=0).fit(oof, y)
    with pytest.raises(ValueError, match="tie_break_weight"):
        MajorityVote(3, tie_break_weight=1.0).fit(oof, y)


@pytest.mark.parametrize("kind", KINDS)
def test_cross_validate_meta_reports_held_out_quality(kind):
    oof, y = synthetic_oof(300, 3, seed=15)
    result = cross_validate_meta(META_CONFIGS[kind](cv_folds=4), oof, y, 3, seed=0)
    assert {"kind", "cv_folds", "cv_folds_used", "n_rows", "accuracy", "macro_f1", "log_loss"} <= set(result)
    assert result["kind"] == kind and result["cv_folds_used"] == 4 and result["n_rows"] == 300
    assert 0.7 < result["accuracy"] <= 1.0
    assert 0.7 < result["macro_f1"] <= 1.0
    assert 0.0 < result["log_loss"] < np.log(3)


def test_cross_validate_meta_gives_chance_accuracy_on_random_labels():
    # Many noise models and weak regularisation let logreg memorise its training rows; scored on the rows it
    # was fitted on it looks far better than chance. The CV estimate must not.
    rng = np.random.default_rng(16)
    n_rows, n_models = 120, 60
    y = rng.integers(0, 2, n_rows)
    p_one = rng.uniform(0.05, 0.95, (n_models, n_rows))
    oof = [np.column_stack([1 - p, p]) for p in p_one]
    cfg = LogregMetaConfig(C=100.0, cv_folds=5)

    in_sample = make_meta(cfg, 2, seed=0).fit(oof, y).predict(oof)
    in_sample_accuracy = np.mean(in_sample == y)
    result = cross_validate_meta(cfg, oof, y, 2, seed=0)
    assert in_sample_accuracy > 0.85  # the leak this test would catch is large
    assert abs(result["accuracy"] - 0.5) < 0.12


def test_cross_validate_meta_never_predicts_a_row_it_was_fitted_on(monkeypatch):
    n_rows = 97
    row_id = np.arange(n_rows)
    # The row's id rides in model 0's probabilities, so the spy learner can see which rows it is given.
    p_first = (row_id + 1) / (n_rows + 2)
    oof = [np.column_stack([p_first, 1 - p_first]), np.full((n_rows, 2), 0.5)]
    y = np.arange(n_rows) % 2
    fitted_rows: list[set[int]] = []
    predicted_rows: list[np.ndarray] = []

    def rows_of(probas):
        return np.rint(probas[0][:, 0] * (n_rows + 2) - 1).astype(int)

    class SpyLearner:
        def fit(self, probas, y):
            fitted_rows.append(set(rows_of(probas).tolist()))
            return self

        def predict_proba(self, probas):
            rows = rows_of(probas)
            assert not fitted_rows[-1] & set(rows.tolist()), "predicting rows the learner was fitted on"
            predicted_rows.append(rows)
            return np.full((len(rows), 2), 0.5)

    monkeypatch.setattr(select_module, "make_meta", lambda cfg, n_classes, seed: SpyLearner())
    cross_validate_meta(LogregMetaConfig(cv_folds=5), oof, y, 2, seed=0)
    assert len(fitted_rows) == 5
    every_prediction = np.concatenate(predicted_rows)
    assert sorted(every_prediction.tolist()) == row_id.tolist()  # every row held out exactly once


def test_cross_validate_meta_lowers_folds_for_tiny_data():
    oof, y = synthetic_oof(6, 2, seed=17)
    y = np.array([0, 0, 0, 1, 1, 1])
    result = cross_validate_meta(WeightedMeanMetaConfig(cv_folds=5), oof, y, 2, seed=0)
    assert result["cv_folds_used"] == 3
    assert np.isfinite(result["log_loss"])


def test_logreg_gives_zero_probability_to_a_class_missing_from_its_training_labels():
    # Only a CV split of a tiny data set can lack a class; the learner must still answer with all columns.
    oof, y = synthetic_oof(200, 3, seed=18)
    keep = y != 2
    learner = LogisticStacker(3).fit([p[keep] for p in oof], y[keep])
    assert learner.classes_ == [0, 1]
    proba = learner.predict_proba(oof)
    assert_valid_proba(proba, 200, 3)
    assert np.all(proba[:, 2] == 0.0)


def test_every_config_kind_has_a_registered_implementation_and_vice_versa():
    assert set(registered_kinds()) == set(META_CONFIGS)
    for kind in KINDS:
        assert issubclass(meta_class(kind), MetaLearner) and meta_class(kind).kind == kind
    with pytest.raises(ValueError, match="names no single learner"):
        make_meta(AutoMetaConfig(), 2, seed=0)


def test_make_meta_builds_each_kind_with_its_params_from_the_config():
    assert make_meta(LogregMetaConfig(C=0.5, max_iter=50), 2, seed=3).get_params() == {
        "n_classes": 2, "C": 0.5, "logit": True, "passthrough": False, "max_iter": 50, "seed": 3}
    assert make_meta(EnsembleSelectionMetaConfig(rounds=7), 2, seed=0).get_params() == {"n_classes": 2, "rounds": 7}
    assert make_meta(WeightedMeanMetaConfig(weighting="softmax_neg_log_loss"), 2, seed=0).weighting == \
        "softmax_neg_log_loss"
    vote = make_meta(VoteMetaConfig(tie_break_weight=0.25, smoothing=0.1), 2, seed=0)
    assert (vote.tie_break_weight, vote.smoothing) == (0.25, 0.1)


@pytest.mark.parametrize("kind", KINDS)
def test_the_config_defaults_are_the_learners_own_defaults(kind):
    """A kind's params left out of the config build exactly the learner its constructor's defaults build."""
    seed = {"seed": 0} if kind == "logreg" else {}
    assert make_meta(MetaConfig(kind=kind), 3, seed=0).get_params() == meta_class(kind)(3, **seed).get_params()


def test_auto_builds_each_candidate_with_the_params_it_gives_and_its_cv_folds():
    cfg = AutoMetaConfig(cv_folds=4, candidates=["weighted_mean", "logreg"], logreg={"C": 0.25})
    assert cfg.candidate("logreg") == LogregMetaConfig(C=0.25, cv_folds=4)
    assert cfg.candidate("ensemble_selection") == EnsembleSelectionMetaConfig(cv_folds=4)
    oof, y = synthetic_oof(200, 2, seed=19)
    selection = select_meta(cfg, oof, y, 2, seed=0)
    assert set(selection.candidates) == {"weighted_mean", "logreg"}
    assert selection.candidates["logreg"]["cv_folds"] == 4
    if selection.config.kind == "logreg":
        assert selection.config.C == 0.25
