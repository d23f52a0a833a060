"""Metrics on hand-made examples with known answers, the flat and leaderboard forms, and the plot files."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from foldstack.core.metrics import (
    SCALAR_METRICS,
    calibration_bins,
    classification_report,
    expected_calibration_error,
    flat_metrics,
    leaderboard,
    leaderboard_markdown,
)
from foldstack.core.plots import write_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def random_proba(n_rows: int, n_classes: int, y: np.ndarray, strength: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scores = rng.normal(0.0, 1.0, (n_rows, n_classes))
    scores[np.arange(n_rows), y] += strength
    proba = np.exp(scores)
    return proba / proba.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_perfect_predictions(n_classes):
    y = np.arange(30) % n_classes
    labels = [f"class{c}" for c in range(n_classes)]
    report = classification_report(y, np.eye(n_classes)[y], labels)
    assert report["accuracy"] == 1.0
    assert report["macro_f1"] == 1.0
    assert report["roc_auc"] == 1.0
    assert report["log_loss"] == pytest.approx(0.0, abs=1e-9)
    assert report["ece"] == pytest.approx(0.0, abs=1e-12)
    assert report["brier"] == pytest.approx(0.0, abs=1e-12)
    assert report["confusion_matrix"] == np.diag([30 // n_classes] * n_classes).tolist()
    expected_class1 = {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 30 // n_classes}
    assert report["per_class"]["class1"] == expected_class1
    assert report["notes"] == []


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_uniform_predictions_have_log_loss_log_c(n_classes):
    y = np.arange(40) % n_classes
    uniform = np.full((40, n_classes), 1.0 / n_classes)
    report = classification_report(y, uniform, [str(c) for c in range(n_classes)])
    assert report["log_loss"] == pytest.approx(math.log(n_classes))
    assert report["roc_auc"] == pytest.approx(0.5)
    # Brier of the uniform forecast: binary (P(class 1) - y)^2 = 1/4; multiclass sum of squares = 1 - 1/C.
    assert report["brier"] == pytest.approx(0.25 if n_classes == 2 else 1 - 1 / n_classes)


def test_known_roc_auc_and_ece():
    # The textbook ROC example: one of the four positive/negative pairs is ranked wrongly -> AUC 3/4.
    y = np.array([0, 0, 1, 1])
    p_one = np.array([0.1, 0.4, 0.35, 0.8])
    report = classification_report(y, np.column_stack([1 - p_one, p_one]), ["neg", "pos"])
    assert report["roc_auc"] == pytest.approx(0.75)

    # ECE by hand: four rows at confidence 0.9 with 3 right (gap 0.15), two at 0.7 both right (gap 0.3):
    # 4/6 * 0.15 + 2/6 * 0.3 = 0.2.
    proba = np.array([[0.9, 0.1]] * 4 + [[0.3, 0.7]] * 2)
    y = np.array([0, 0, 0, 1, 1, 1])
    assert expected_calibration_error(y, proba, n_bins=10) == pytest.approx(0.2)
    table = calibration_bins(y, proba, n_bins=10)
    assert table["count"].tolist() == [2, 4]
    assert table["accuracy"].tolist() == pytest.approx([1.0, 0.75])
    assert table["confidence"].tolist() == pytest.approx([0.7, 0.9])


def test_confidence_of_exactly_one_lands_in_the_last_bin():
    y = np.array([0, 1])
    table = calibration_bins(y, np.array([[1.0, 0.0], [0.0, 1.0]]), n_bins=15)
    assert table["bin"].tolist() == [14]
    assert table["count"].tolist() == [2]


def test_an_absent_class_in_y_true_does_not_crash_multiclass():
    y = np.array([0, 1, 0, 1, 0, 1])  # class "c" never occurs
    proba = np.array(
        [[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.5, 0.2, 0.3], [0.1, 0.6, 0.3], [0.4, 0.4, 0.2], [0.3, 0.3, 0.4]]
    )
    report = classification_report(y, proba, ["a", "b", "c"])
    assert np.isfinite(report["log_loss"])
    assert np.isfinite(report["roc_auc"])  # averaged over the classes that are there
    assert report["per_class"]["c"]["support"] == 0
    assert len(report["confusion_matrix"]) == 3 and all(len(row) == 3 for row in report["confusion_matrix"])
    assert any("'c'" in note for note in report["notes"])


def test_an_absent_class_in_binary_y_true_gives_nan_roc_auc_with_a_note():
    y = np.zeros(5, dtype=int)
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05]])
    report = classification_report(y, proba, ["ham", "spam"])
    assert math.isnan(report["roc_auc"])
    assert any("roc_auc is NaN" in note and "spam" in note for note in report["notes"])
    assert report["accuracy"] == pytest.approx(0.8)
    flat = flat_metrics({"ensemble": report})
    assert "ensemble.roc_auc" not in flat  # NaN is not valid JSON: left out, the note says why
    assert flat["ensemble.accuracy"] == pytest.approx(0.8)


def test_bad_inputs_are_rejected_with_clear_messages():
    with pytest.raises(ValueError, match=r"expected \(n_rows, 3\)"):
        classification_report(np.array([0, 1]), np.full((2, 2), 0.5), ["a", "b", "c"])
    with pytest.raises(ValueError, match="outside 0..1"):
        classification_report(np.array([0, 2]), np.full((2, 2), 0.5), ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        classification_report(np.array([0, 1]), np.array([[0.5, 0.5], [np.nan, 0.5]]), ["a", "b"])


def _reports():
    y = np.arange(60) % 3
    labels = ["a", "b", "c"]
    return y, labels, {
        "ensemble": classification_report(y, random_proba(60, 3, y, 3.0, seed=1), labels),
        "tfidf_lr": classification_report(y, random_proba(60, 3, y, 1.5, seed=2), labels),
        "weak": classification_report(y, random_proba(60, 3, y, 0.2, seed=3), labels),
        "mean": classification_report(y, random_proba(60, 3, y, 2.0, seed=4), labels),
    }


def test_flat_metrics_holds_only_scalars_under_dotted_keys():
    _, _, reports = _reports()
    flat = flat_metrics(reports)
    assert set(flat) == {f"{model}.{metric}" for model in reports for metric in SCALAR_METRICS}
    assert all(type(value) is float and math.isfinite(value) for value in flat.values())
    assert flat["tfidf_lr.log_loss"] == reports["tfidf_lr"]["log_loss"]


def test_leaderboard_is_sorted_by_log_loss_with_roles():
    _, _, reports = _reports()
    roles = {"ensemble": "ensemble", "tfidf_lr": "base", "weak": "base", "mean": "baseline"}
    table = leaderboard(reports, roles)
    assert list(table.columns) == ["model", "role", "accuracy", "macro_f1", "log_loss", "roc_auc", "ece"]
    assert table["log_loss"].is_monotonic_increasing
    assert table["model"].tolist() == sorted(reports, key=lambda m: reports[m]["log_loss"])
    assert table["model"].iloc[0] == "ensemble" and table["model"].iloc[-1] == "weak"
    assert dict(zip(table["model"], table["role"], strict=True)) == roles

    with pytest.raises(ValueError, match="no role given for model 'weak'"):
        leaderboard(reports, {k: v for k, v in roles.items() if k != "weak"})
    with pytest.raises(ValueError, match="role 'champion'"):
        leaderboard(reports, {**roles, "weak": "champion"})


def test_leaderboard_markdown_renders_every_row():
    table = pd.DataFrame(
        [
            {"model": "ensemble", "role": "ensemble", "accuracy": 0.9, "macro_f1": 0.89, "log_loss": 0.25,
             "roc_auc": float("nan"), "ece": 0.03},
            {"model": "odd|name", "role": "base", "accuracy": 0.8, "macro_f1": 0.79, "log_loss": 0.41,
             "roc_auc": 0.88, "ece": 0.05},
        ]
    )
    lines = leaderboard_markdown(table).strip().splitlines()
    assert lines[0] == "| model | role | accuracy | macro_f1 | log_loss | roc_auc | ece |"
    assert lines[1] == "|---|---|---:|---:|---:|---:|---:|"
    assert lines[2] == "| ensemble | ensemble | 0.9000 | 0.8900 | 0.2500 | n/a | 0.0300 |"
    assert lines[3].startswith("| odd\\|name | base | 0.8000")
    assert len(lines) == 4


@pytest.mark.parametrize("n_classes", [2, 3])
def test_write_plots_writes_png_and_dvc_csv_files(tmp_path, n_classes):
    y = np.arange(80) % n_classes
    labels = ["neg", "pos"] if n_classes == 2 else ["a", "b", "c"]
    probas = {
        "ensemble": random_proba(80, n_classes, y, 2.5, seed=5),
        "tfidf_lr": random_proba(80, n_classes, y, 1.5, seed=6),
        "vote": random_proba(80, n_classes, y, 1.0, seed=7),
    }
    written = write_plots(y, probas, labels, tmp_path / "plots", ece_bins=10)

    names = {path.name for path in written}
    assert names == {"metrics.png", "confusion.png", "roc.png", "pr.png", "calibration.png", "metrics.csv",
                     "confusion.csv", "confusion_matrix.csv", "roc.csv", "pr.csv", "calibration.csv"}
    for path in written:
        assert path.is_file() and path.parent == tmp_path / "plots"
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG_MAGIC

    confusion = pd.read_csv(tmp_path / "plots" / "confusion.csv")
    assert list(confusion.columns) == ["actual", "predicted"] and len(confusion) == 80
    assert set(confusion["actual"]) == set(labels)

    roc = pd.read_csv(tmp_path / "plots" / "roc.csv")
    assert list(roc.columns) == ["model", "fpr", "tpr"]
    expected_curves = set(probas) if n_classes == 2 else {f"ensemble:{label}" for label in labels}
    assert set(roc["model"]) == expected_curves
    assert roc["fpr"].between(0, 1).all() and roc["tpr"].between(0, 1).all()

    calibration = pd.read_csv(tmp_path / "plots" / "calibration.csv")
    assert list(calibration.columns)[:5] == ["model", "bin", "confidence", "accuracy", "count"]
    assert set(calibration["model"]) == set(probas)
    assert (calibration.groupby("model")["count"].sum() == 80).all()


def test_write_plots_survives_an_absent_class_and_needs_the_ensemble(tmp_path):
    y = np.array([0, 1] * 10)  # class "c" absent from the holdout
    proba = random_proba(20, 3, y, 2.0, seed=8)
    written = write_plots(y, {"ensemble": proba}, ["a", "b", "c"], tmp_path, ece_bins=5)
    assert len(written) == 11  # no OOF or meta-learner given: no diversity.png, no meta_weights.png
    assert set(pd.read_csv(tmp_path / "pr.csv")["class"]) == {"a", "b"}
    assert set(pd.read_csv(tmp_path / "roc.csv")["model"]) == {"ensemble:a", "ensemble:b"}
    with pytest.raises(ValueError, match="needs the meta-learner under 'ensemble'"):
        write_plots(y, {"tfidf_lr": proba}, ["a", "b", "c"], tmp_path)
    with pytest.raises(ValueError, match="model 'tfidf_lr'"):
        write_plots(y, {"ensemble": proba, "tfidf_lr": proba[:, :2]}, ["a", "b", "c"], tmp_path)
