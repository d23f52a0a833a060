"""The distill stage: honest soft targets (the memorising model), the student's bundle, its place in evaluate."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

import foldstack
from foldstack.common.files import load_array, read_json
from foldstack.config import load_config
from foldstack.core.distill import augment_texts, soft_targets
from foldstack.errors import ConfigError
from foldstack.models import register_model
from foldstack.models.sklearn.tfidf import TfidfLogisticRegression
from foldstack.pipeline.distill import distill
from foldstack.pipeline.layout import Layout, load_snapshot
from foldstack.pipeline.stages import run_pipeline
from tests import memorizer  # noqa: F401  (registers the `memorizer` kind)
from tests.conftest import write_params


@register_model
class RecordingStudent(TfidfLogisticRegression):
    """tfidf_lr that remembers the texts and soft targets it was fitted on (what the student was taught)."""

    kind: ClassVar[str] = "recording_tfidf_lr"
    seen: ClassVar[list[tuple[list[str], np.ndarray]]] = []

    def fit_soft(self, texts, targets):
        RecordingStudent.seen.append((list(texts), np.asarray(targets)))
        return super().fit_soft(texts, targets)


def test_a_student_never_sees_a_target_from_a_model_that_saw_the_row(tmp_path, demo_csv) -> None:
    """The memorising model recalls every text it was trained on (and texts contained in one): its OOF is chance,
    so honest targets are chance too, for the training rows and for their augmented copies, while the fitted
    ensemble itself, which saw every row, answers those same texts with certainty."""
    RecordingStudent.seen.clear()
    params = write_params(
        tmp_path, demo_csv, base_models=[{"name": "mem", "kind": "memorizer", "params": {"contained": True}}],
        meta={"kind": "weighted_mean"},
        distill={"enabled": True, "alpha": 0.0, "student": {"kind": "recording_tfidf_lr", "params": {"min_df": 1}},
                 "augment": {"methods": ["word_dropout", "span_deletion"], "copies": 2}})
    cfg = load_config(params)
    run_pipeline(cfg)
    (texts, targets), = RecordingStudent.seen
    snapshot = load_snapshot(cfg)
    n_train, n_classes = len(snapshot.train), snapshot.n_classes
    assert len(texts) > n_train, "augmented copies were added"
    chance = np.full(n_classes, 1.0 / n_classes)
    np.testing.assert_allclose(targets, np.broadcast_to(chance, targets.shape), atol=1e-9)

    # The same texts through the fitted ensemble (every fold member, most of which saw the row): memorised answers.
    ensemble = foldstack.load(Layout.of(cfg).bundle)
    confident = ensemble.predict_proba(texts[:n_train]).max(axis=1)
    assert np.mean(confident > 0.7) > 0.5, "the ensemble recalls its training rows: those targets would leak"
    copies = ensemble.predict_proba(texts[n_train:]).max(axis=1)
    assert np.mean(copies > 0.7) > 0.05, "and some of their perturbed copies (prefix/suffix deletions are contained)"


def test_targets_are_the_meta_cv_predictions_mixed_with_the_label(tmp_path, demo_csv) -> None:
    RecordingStudent.seen.clear()
    params = write_params(tmp_path, demo_csv, distill={
        "enabled": True, "alpha": 0.4, "temperature": 0.5, "student": {"kind": "recording_tfidf_lr"}})
    cfg = load_config(params)
    run_pipeline(cfg)
    (texts, targets), = RecordingStudent.seen
    snapshot = load_snapshot(cfg)
    assert texts == snapshot.train["text"].tolist()
    teacher = load_array(Layout.of(cfg).stack / "meta_cv_proba.npy")
    expected = soft_targets(teacher, snapshot.train["label"].to_numpy(), snapshot.n_classes, alpha=0.4,
                            temperature=0.5)
    np.testing.assert_allclose(targets, expected)


def test_the_student_bundle_round_trips_and_is_scored_beside_the_ensemble(tmp_path, demo_csv) -> None:
    params = write_params(tmp_path, demo_csv, distill={"enabled": True,
                                                       "augment": {"methods": ["word_dropout"], "copies": 1}})
    cfg = load_config(params)
    result = run_pipeline(cfg)
    layout = Layout.of(cfg)
    summary = read_json(layout.student / "summary.json")
    assert summary["enabled"] and summary["kind"] == "tfidf_lr" and summary["augmented_rows"] > 0
    student = foldstack.load(layout.student / "bundle")  # verifies every hash first
    assert student.manifest["role"] == "student" and student.manifest["distill"]["alpha"] == cfg.distill.alpha
    holdout = load_snapshot(cfg).holdout["text"].tolist()
    np.testing.assert_allclose(student.predict_proba(holdout), load_array(layout.student / "holdout_proba.npy"))
    assert student.labels == foldstack.load(layout.bundle).labels
    card = (layout.student / "bundle" / "MODEL_CARD.md").read_text()
    assert "MODEL_CARD.md" in student.manifest["files"] and "distilled student" in card
    assert {"student.accuracy", "student.log_loss"} <= set(result.metrics)
    assert result.metrics["student.log_loss"] == pytest.approx(summary["metrics"]["log_loss"])
    assert "student" in {row["model"] for row in result.leaderboard}


def test_disabled_distill_writes_only_a_marker_and_evaluate_has_no_student(tmp_path, demo_csv) -> None:
    cfg = load_config(write_params(tmp_path, demo_csv))
    result = run_pipeline(cfg)
    assert read_json(Layout.of(cfg).student / "summary.json") == {"enabled": False}
    assert not any(key.startswith("student.") for key in result.metrics)
    assert distill(cfg) == {"enabled": False}


@pytest.mark.parametrize("section, message", [
    ({"enabled": True, "student": {"kind": "nb_svm"}}, "cannot fit soft targets"),
    ({"enabled": True, "student": {"kind": "nope"}}, "unknown model kind"),
    ({"alpha": 1.5}, "distill.alpha"),
    ({"augment": {"methods": ["synonyms"]}}, "distill.augment.methods"),
])
def test_bad_distill_params_are_one_line_errors(tmp_path, demo_csv, section, message) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(write_params(tmp_path, demo_csv, distill=section))
    assert "\n" not in str(caught.value)


def test_augmented_copies_come_from_their_source_rows() -> None:
    texts = ["one two three four five", "six seven eight nine ten"]
    copies, sources = augment_texts(texts, methods=["shuffle"], copies=2, seed=1)
    for copy, source in zip(copies, sources, strict=True):
        assert sorted(copy.split()) == sorted(texts[source].split())
