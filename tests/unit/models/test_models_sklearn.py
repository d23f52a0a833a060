"""The scikit-learn base models (tfidf_lr, tfidf_char_svm, nb_svm) and their pickle-free persistence."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from sklearn.exceptions import NotFittedError

from foldstack.common.files import save_array
from foldstack.errors import BundleError
from foldstack.models import make_model, model_class
from foldstack.models.base import ModelContext, check_proba
from foldstack.models.persist import (
    MODEL_JSON,
    TRUSTED_TYPES,
    load_array,
    load_json,
    load_sklearn,
    save_sklearn,
)
from foldstack.models.sklearn import NBSVM, TfidfCharSVM, TfidfLogisticRegression

MODEL_CLASSES = [TfidfLogisticRegression, TfidfCharSVM, NBSVM]
KINDS = [cls.kind for cls in MODEL_CLASSES]
SKOPS_KINDS = ["tfidf_lr", "tfidf_char_svm"]  # the kinds whose classifier is a skops file

# Each class draws most words from its own set; shared filler words and one word of a random class are noise.
CLASS_WORDS = [
    "apple banana cherry grape lemon mango peach plum".split(),
    "rocket planet orbit comet galaxy nebula asteroid meteor".split(),
    "guitar piano violin drum flute cello harp trumpet".split(),
]
FILLER = "the a of and to in is it that with for on this was very some".split()


def toy_data(n_per_class: int, n_classes: int, seed: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    texts, codes = [], []
    for code in range(n_classes):
        for _ in range(n_per_class):
            words = list(rng.choice(CLASS_WORDS[code], 3)) + list(rng.choice(FILLER, 4))
            words.append(rng.choice(CLASS_WORDS[rng.integers(n_classes)]))
            rng.shuffle(words)
            texts.append(" ".join(words))
            codes.append(code)
    order = rng.permutation(len(texts))
    return [texts[i] for i in order], np.asarray(codes, dtype=np.int64)[order]


def build(kind: str, n_classes: int, seed: int = 0, **params) -> object:
    return make_model(kind, params, ModelContext(n_classes=n_classes, seed=seed))


@pytest.fixture(scope="module")
def three_class_models() -> dict[str, object]:
    texts, y = toy_data(40, 3, seed=1)
    return {kind: build(kind, 3).fit(texts, y) for kind in KINDS}


@pytest.fixture(scope="module")
def held_out() -> tuple[list[str], np.ndarray]:
    return toy_data(20, 3, seed=2)


def test_kinds_are_registered():
    for cls in MODEL_CLASSES:
        assert model_class(cls.kind) is cls


@pytest.mark.parametrize("kind", KINDS)
def test_three_classes_shape_rows_and_accuracy(kind, three_class_models, held_out):
    texts, y = held_out
    proba = three_class_models[kind].predict_proba(texts)
    assert proba.dtype == np.float64 and proba.shape == (len(texts), 3)
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert (proba >= 0).all()
    check_proba(proba, len(texts), 3, kind)
    assert (proba.argmax(axis=1) == y).mean() >= 0.85  # chance is 1/3


@pytest.mark.parametrize("kind", KINDS)
def test_binary_learns_held_out_rows(kind):
    texts, y = toy_data(40, 2, seed=3)
    test_texts, test_y = toy_data(20, 2, seed=4)
    proba = build(kind, 2).fit(texts, y).predict_proba(test_texts)
    check_proba(proba, len(test_texts), 2, kind)
    assert (proba.argmax(axis=1) == test_y).mean() >= 0.85


@pytest.mark.parametrize("kind", KINDS)
def test_class_absent_from_training_rows_gets_a_zero_column(kind):
    texts, y = toy_data(30, 3, seed=5)
    proba = build(kind, 5).fit(texts, y).predict_proba(texts[:10])
    assert proba.shape == (10, 5)
    assert np.array_equal(proba[:, 3:], np.zeros((10, 2)))
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_gives_identical_probabilities(kind, three_class_models, held_out, tmp_path):
    texts, _ = held_out
    model = three_class_models[kind]
    model.save(tmp_path / "model")
    loaded = model_class(kind).load(tmp_path / "model", device="cpu")
    assert np.array_equal(loaded.predict_proba(texts), model.predict_proba(texts))
    assert loaded.context.n_classes == 3 and loaded.params == model.params
    metadata = json.loads((tmp_path / "model" / MODEL_JSON).read_text())
    assert metadata["kind"] == kind and metadata["n_classes"] == 3 and metadata["seed"] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_saved_directory_holds_no_pickle(kind, three_class_models, tmp_path):
    three_class_models[kind].save(tmp_path)
    files = sorted(tmp_path.iterdir())
    assert {f.suffix for f in files} <= {".json", ".npy", ".skops"}
    for path in files:
        if path.suffix == ".npy":
            assert np.load(path, allow_pickle=False).dtype.kind in "fiu"
        elif path.suffix == ".skops":
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                assert all(n == "schema.json" or n.endswith(".npy") for n in names), names
                for name in names:
                    assert not archive.read(name).startswith(b"\x80"), f"{name} looks like a pickle stream"


def _rewrite_schema(path: Path, edit) -> None:
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    schema = json.loads(members["schema.json"])
    edit(schema)
    members["schema.json"] = json.dumps(schema).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


@pytest.mark.parametrize("kind", SKOPS_KINDS)
def test_load_refuses_a_tampered_skops_file(kind, three_class_models, tmp_path):
    three_class_models[kind].save(tmp_path)

    def point_at_popen(schema):
        schema["__module__"], schema["__class__"] = "subprocess", "Popen"

    _rewrite_schema(tmp_path / "classifier.skops", point_at_popen)
    with pytest.raises(BundleError, match="subprocess.Popen"):
        model_class(kind).load(tmp_path)


@pytest.mark.parametrize("kind", SKOPS_KINDS)
def test_load_refuses_types_skops_trusts_but_foldstack_does_not(kind, three_class_models, tmp_path):
    import skops.io
    from sklearn.tree import DecisionTreeClassifier

    three_class_models[kind].save(tmp_path)
    texts, y = toy_data(5, 3, seed=6)
    stranger = DecisionTreeClassifier(random_state=0).fit(np.arange(len(y)).reshape(-1, 1), y)
    skops.io.dump(stranger, tmp_path / "classifier.skops")
    with pytest.raises(BundleError, match="DecisionTreeClassifier"):
        model_class(kind).load(tmp_path)


def test_nb_svm_refuses_an_object_array(three_class_models, tmp_path):
    three_class_models["nb_svm"].save(tmp_path)
    np.save(tmp_path / "coef.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BundleError, match="coef.npy"):
        NBSVM.load(tmp_path)


@pytest.mark.parametrize("kind", KINDS)
def test_load_checks_kind_and_missing_files(kind, three_class_models, tmp_path):
    three_class_models[kind].save(tmp_path)
    other = next(cls for cls in MODEL_CLASSES if cls.kind != kind)
    with pytest.raises(BundleError, match="not '"):
        other.load(tmp_path)
    (tmp_path / "vocabulary.json").unlink()
    with pytest.raises(BundleError, match="vocabulary.json"):
        model_class(kind).load(tmp_path)
    with pytest.raises(BundleError, match="model.json"):
        model_class(kind).load(tmp_path / "nowhere")


@pytest.mark.parametrize("cls", MODEL_CLASSES)
def test_params_reject_unknown_keys_and_bad_values(cls):
    with pytest.raises(ValidationError, match="extra"):
        cls.Params.model_validate({"learning_rate": 0.1})
    with pytest.raises(ValidationError):
        cls.Params.model_validate({"C": -1})
    defaults = cls.Params()
    assert all(field.description for field in cls.Params.model_fields.values())
    assert defaults.max_features is not None and defaults.C > 0


def test_char_ngram_range_must_be_ordered():
    with pytest.raises(ValidationError, match="ngram_min"):
        TfidfCharSVM.Params(ngram_min=5, ngram_max=3)


@pytest.mark.parametrize("kind", KINDS)
def test_labels_must_be_integer_codes(kind):
    texts, y = toy_data(10, 2, seed=7)
    with pytest.raises(TypeError, match="integer class codes"):
        build(kind, 2).fit(texts, np.where(y == 1, "spam", "ham"))
    with pytest.raises(ValueError, match="0..1"):
        build(kind, 2).fit(texts, y + 1)
    with pytest.raises(ValueError, match="shape"):
        build(kind, 2).fit(texts, y[:-1])
    with pytest.raises(ValueError, match="at least two classes"):
        build(kind, 2).fit(texts, np.zeros(len(texts), dtype=np.int64))


@pytest.mark.parametrize("kind", KINDS)
def test_predict_before_fit_and_on_no_rows(kind, three_class_models):
    with pytest.raises(NotFittedError):
        build(kind, 3).predict_proba(["anything"])
    assert three_class_models[kind].predict_proba([]).shape == (0, 3)


def test_char_svm_calibrates_with_tiny_classes():
    texts, y = toy_data(20, 2, seed=8)
    few_texts, few_y = toy_data(2, 3, seed=9)
    two_rows = [t for t, c in zip(few_texts, few_y, strict=True) if c == 2]
    one_row = two_rows[:1]
    # class 2 with two rows: calibration folds drop from 3 to 2
    model = build("tfidf_char_svm", 3).fit(texts + two_rows, np.concatenate([y, [2, 2]]))
    assert model.classifier_.cv.n_splits == 2
    check_proba(model.predict_proba(texts), len(texts), 3, "tfidf_char_svm")
    # class 2 with a single row still fits
    model = build("tfidf_char_svm", 3).fit(texts + one_row, np.concatenate([y, [2]]))
    check_proba(model.predict_proba(two_rows), 2, 3, "tfidf_char_svm")


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_model(kind):
    texts, y = toy_data(20, 3, seed=10)
    first = build(kind, 3, seed=5).fit(texts, y).predict_proba(texts)
    second = build(kind, 3, seed=5).fit(texts, y).predict_proba(texts)
    assert np.array_equal(first, second)


# ------------------------------------------------------------------------------------- persist helpers
def test_persist_helpers_refuse_what_they_cannot_read_safely(tmp_path):
    with pytest.raises(ValueError):
        save_array(tmp_path / "objects.npy", np.array([object()]))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(BundleError, match="broken.json"):
        load_json(tmp_path / "broken.json")
    (tmp_path / "junk.skops").write_bytes(b"not a zip file")
    with pytest.raises(BundleError, match="junk.skops"):
        load_sklearn(tmp_path / "junk.skops")
    with pytest.raises(BundleError, match="absent.npy"):
        load_array(tmp_path / "absent.npy")


def test_save_sklearn_refuses_types_outside_the_allow_list(tmp_path):
    from sklearn.tree import DecisionTreeClassifier

    tree = DecisionTreeClassifier().fit([[0], [1]], [0, 1])
    with pytest.raises(TypeError, match="DecisionTreeClassifier"):
        save_sklearn(tree, tmp_path / "tree.skops")
    assert not (tmp_path / "tree.skops").exists()
    assert "sklearn.tree._classes.DecisionTreeClassifier" not in TRUSTED_TYPES
