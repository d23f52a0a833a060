"""Honest out-of-fold estimates when texts overlap: the mechanism, its fix, the diagnostics, `meta.kind: auto`.

The phrase-level tests build their data with the project's own code (`foldstack.core.phrases`) from the shared
rt_polarity sentences: each training sentence plus sub-spans of it, a holdout of whole unseen sentences.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from foldstack.config import MetaConfig, load_config
from foldstack.common.files import load_array
from foldstack.core.leakage import compare, diagnose
from foldstack.core.meta import select_meta
from foldstack.core.phrases import phrase_dataset, sub_spans, write_phrase_dataset
from foldstack.pipeline.stages import Layout, run_pipeline
from tests import memorizer  # noqa: F401  (registers the `memorizer` kind)
from tests.conftest import write_params
from tests.paths import SHARED_DATA

RT_POLARITY = SHARED_DATA / "rt_polarity" / "all.csv"
needs_rt_polarity = pytest.mark.skipif(not RT_POLARITY.is_file(), reason=f"{RT_POLARITY} (shared data) is absent")
EXACT_ONLY = {"exact": True, "containment": False, "near_duplicates": False}


def _random_sentences(n: int, rng: np.random.Generator) -> list[str]:
    vocabulary = [f"w{i}" for i in range(3000)]  # rare words: no span occurs in another sentence by chance
    return [" ".join(rng.choice(vocabulary, size=int(rng.integers(8, 13)))) for _ in range(n)]


@pytest.mark.parametrize(("grouping", "leaks"), [(EXACT_ONLY, True), ({}, False)])
def test_memorising_model_sees_no_contained_text_out_of_fold(tmp_path, grouping, leaks):
    """Random labels; each sentence comes with sub-spans of itself. A memoriser that also recalls a text
    containing (or contained in) one it saw is right out of fold only through a leak."""
    rng = np.random.default_rng(1)
    rows = []
    for sentence in _random_sentences(150, rng):
        label = int(rng.integers(0, 2))
        rows += [(sentence, label)] + [(span, label) for span in sub_spans(sentence.split(), 2, rng)]
    path = tmp_path / "phrases.csv"
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)
    cfg = load_config(write_params(tmp_path, path, folds={"k": 5, "grouping": grouping},
                                   base_models=[{"name": "mem", "kind": "memorizer", "params": {"contained": True}}]))
    run_pipeline(cfg)
    layout = Layout.of(cfg)
    oof = load_array(layout.base("mem") / "oof.npy")[0]
    y = pd.read_parquet(layout.snapshot / "train.parquet")["label"].to_numpy()
    confident = oof.max(axis=1) == 1.0
    accuracy = float((oof.argmax(1) == y).mean())
    if leaks:
        assert confident.mean() > 0.5 and accuracy > 0.7, "exact-only grouping splits phrases from sentences"
    else:
        assert confident.sum() == 0, "no validation row overlaps a training row"
        assert abs(accuracy - 0.5) < 0.1


def test_phrase_dataset_keeps_the_holdout_sentences_out_of_training():
    sentences = pd.DataFrame({"text": [f"sentence {i} has quite a few distinct words {i}" for i in range(60)],
                              "label": [i % 2 for i in range(60)]})
    train, holdout = phrase_dataset(sentences, n_train=40, n_holdout=20, spans_per_sentence=2, seed=0)
    assert len(holdout) == 20 and len(train) > 40
    assert not set(holdout["text"]) & set(train["text"])
    sources = set(sentences["text"]) - set(holdout["text"])
    assert all(any(f" {t} " in f" {s} " for s in sources) for t in train["text"]), "every row is a training span"


def test_compare_flags_an_optimistic_oof_estimate_and_not_an_honest_one():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)

    def proba_with_accuracy(accuracy: float) -> np.ndarray:
        right = rng.random(len(y)) < accuracy
        predicted = np.where(right, y, 1 - y)
        return np.column_stack([np.where(predicted == 0, 0.8, 0.2), np.where(predicted == 1, 0.8, 0.2)])

    leaky = compare("m", proba_with_accuracy(0.95), y, proba_with_accuracy(0.80), y)
    assert leaky["optimistic"] and leaky["accuracy_gap"] > 0.1
    honest = compare("m", proba_with_accuracy(0.80), y, proba_with_accuracy(0.80), y)
    assert not honest["optimistic"] and abs(honest["accuracy_gap"]) < 3 * honest["accuracy_gap_se"]
    diagnosis = diagnose({"m": proba_with_accuracy(0.95)}, y, {"m": proba_with_accuracy(0.8)}, y)
    assert len(diagnosis["warnings"]) == 1 and "folds.grouping" in diagnosis["warnings"][0]


def _probas(y: np.ndarray, strengths: list[float], rng: np.random.Generator) -> list[np.ndarray]:
    """Calibrated models: score x = s(2y-1) + N(0,1) has posterior log-odds 2sx."""
    out = []
    for strength in strengths:
        score = strength * (2 * y - 1) + rng.normal(0, 1, len(y))
        p = 1 / (1 + np.exp(-2 * strength * score))
        out.append(np.column_stack([1 - p, p]))
    return out


def test_auto_meta_takes_the_simpler_kind_on_a_tie_and_logreg_when_it_clearly_wins():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 3000)
    # Two copies of one calibrated model: nothing to learn beyond their mean.
    calibrated = _probas(y, [1.0], rng)[0]
    tie = select_meta(MetaConfig(), [calibrated, calibrated.copy()], y, 2, seed=0)
    assert tie.config.kind == "weighted_mean"
    assert set(tie.candidates) == {"weighted_mean", "ensemble_selection", "logreg"}
    # One informative model, one badly overconfident noisy one: the mean is hurt, logreg learns to ignore it.
    noisy = np.clip(rng.random(len(y)), 0.001, 0.999)
    probas = [_probas(y, [2.0], rng)[0], np.column_stack([1 - noisy, noisy])]
    clear = select_meta(MetaConfig(), probas, y, 2, seed=0)
    assert clear.config.kind in {"logreg", "ensemble_selection"}
    assert clear.candidates["weighted_mean"]["log_loss_minus_best"] > 0.05
    assert "below" in clear.reason or "the simpler kind wins the tie" in clear.reason


def test_a_named_meta_kind_is_fitted_as_asked():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    chosen = select_meta(MetaConfig(kind="vote"), _probas(y, [1.0, 1.0], rng), y, 2, seed=0)
    assert chosen.config.kind == "vote" and chosen.candidates == {}


def _phrase_params(tmp_path: Path, grouping: dict, base_models: list[dict]) -> Path:
    data = write_phrase_dataset(RT_POLARITY, tmp_path / "data", n_train=1500, n_holdout=1500,
                                spans_per_sentence=2, seed=0)
    return write_params(tmp_path, Path(data["train"]), data={"test_path": data["holdout"]},
                        folds={"k": 5, "grouping": grouping}, base_models=base_models,
                        meta={"kind": "auto"}, validation={"enabled": False}, evaluate={"plots": False})


@pytest.mark.slow
@needs_rt_polarity
def test_exact_only_grouping_makes_the_word_model_look_much_better_out_of_fold(tmp_path):
    cfg = load_config(_phrase_params(tmp_path, EXACT_ONLY, [{"name": "tfidf_lr", "kind": "tfidf_lr"}]))
    run_pipeline(cfg)
    diagnosis = json.loads((Layout.of(cfg).eval / "leakage.json").read_text())
    row = next(r for r in diagnosis["rows"] if r["model"] == "tfidf_lr")
    assert row["accuracy_gap"] > 0.05, row  # the problem is real
    assert row["optimistic"] and any(w.startswith("tfidf_lr") for w in diagnosis["warnings"])
    assert "Leakage diagnostics" in (Layout.of(cfg).eval / "leaderboard.md").read_text()


@pytest.mark.slow
@needs_rt_polarity
def test_overlap_grouping_gives_an_honest_oof_and_a_stack_no_worse_than_its_mean(tmp_path):
    bases = [{"name": "tfidf_lr", "kind": "tfidf_lr"}, {"name": "char_svm", "kind": "tfidf_char_svm"},
             {"name": "nb_svm", "kind": "nb_svm"}]
    cfg = load_config(_phrase_params(tmp_path, {}, bases))
    run_pipeline(cfg)
    layout = Layout.of(cfg)
    diagnosis = json.loads((layout.eval / "leakage.json").read_text())
    row = next(r for r in diagnosis["rows"] if r["model"] == "tfidf_lr")
    assert row["accuracy_gap"] <= 0.02, row  # no longer optimistic beyond two points
    assert not row["optimistic"] and diagnosis["warnings"] == []
    metrics = json.loads((layout.eval / "metrics.json").read_text())
    assert metrics["ensemble.accuracy"] >= metrics["baseline:weighted_mean.accuracy"]
    assert metrics["ensemble.log_loss"] <= metrics["baseline:weighted_mean.log_loss"] + 1e-12
    assert metrics["grouping.rows_in_multi_row_groups"] > 0.5 * metrics["grouping.n_groups"]
