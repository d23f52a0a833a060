"""The evaluation plots from a real (tiny) pipeline run: every PNG a real image of the stated size, every
CSV with its columns and values that agree with the metrics; and the meta-learner weights of every kind."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from foldstack.config import load_config
from foldstack.core.meta import EnsembleSelection, LogisticStacker, MajorityVote, WeightedMean
from foldstack.core.plots import DPI, PNG_NAMES, WIDTH_PX, write_plots
from foldstack.pipeline.base_models import load_base_predictions
from foldstack.pipeline.layout import load_snapshot
from foldstack.pipeline.stages import Layout, run_pipeline
from tests.conftest import write_params

CSV_COLUMNS = {
    "metrics.csv": ["model", "metric", "value", "lower", "upper", "n_rows", "n_bootstrap"],
    "confusion.csv": ["actual", "predicted"],
    "confusion_matrix.csv": ["actual", "predicted", "count", "share"],
    "roc.csv": ["model", "fpr", "tpr"],
    "pr.csv": ["class", "recall", "precision", "average_precision", "prevalence"],
    "calibration.csv": ["model", "bin", "confidence", "accuracy", "count", "lower", "upper", "share"],
    "diversity.csv": ["model_a", "model_b", "correlation"],
    "meta_weights.csv": ["model", "class", "weight"],
}


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_csv):
    directory = tmp_path_factory.mktemp("plots")
    cfg = load_config(write_params(directory, demo_csv, evaluate={"plots": True}))
    run_pipeline(cfg)
    layout = Layout.of(cfg)
    reports = json.loads((layout.eval / "reports.json").read_text())
    return cfg, layout.eval / "plots", reports


def read_png(path):
    from matplotlib.image import imread

    return imread(path)


def test_every_png_is_a_real_readable_image(run):
    _, plots, _ = run
    assert sorted(p.name for p in plots.glob("*.png")) == sorted(PNG_NAMES)
    assert WIDTH_PX / DPI == 12 and 1000 <= WIDTH_PX <= 1400
    for name in PNG_NAMES:
        image = read_png(plots / name)
        height, width = image.shape[:2]
        assert width == WIDTH_PX, name
        assert 400 <= height <= 2000, (name, height)
        assert image[..., :3].std() > 0.05, f"{name} is blank"


def test_every_csv_has_its_columns(run):
    _, plots, _ = run
    for name, columns in CSV_COLUMNS.items():
        table = pd.read_csv(plots / name)
        assert list(table.columns) == columns, name
        assert len(table) > 0, name


def test_metrics_intervals_contain_the_estimate_that_reports_json_has(run):
    _, plots, reports = run
    table = pd.read_csv(plots / "metrics.csv")
    assert set(table["model"]) == set(reports) and set(table["metric"]) == {"accuracy", "log_loss"}
    assert (table["lower"] <= table["value"]).all() and (table["value"] <= table["upper"]).all()
    assert (table["upper"] - table["lower"] > 0).all(), "a 121-row holdout leaves some uncertainty"
    assert (table["n_bootstrap"] == 300).all() and (table["n_rows"] == reports["ensemble"]["n_rows"]).all()
    for row in table.itertuples():
        assert row.value == pytest.approx(reports[row.model][row.metric], abs=1e-5), (row.model, row.metric)


def test_diversity_is_a_correlation_matrix_of_the_base_models(run):
    cfg, plots, _ = run
    table = pd.read_csv(plots / "diversity.csv")
    names = [spec.name for spec in cfg.base_models]
    matrix = table.pivot(index="model_a", columns="model_b", values="correlation").loc[names, names].to_numpy()
    np.testing.assert_allclose(matrix, matrix.T)
    np.testing.assert_allclose(np.diag(matrix), 1.0)
    assert ((matrix >= -1) & (matrix <= 1)).all()
    _, oofs, _ = load_base_predictions(cfg)
    y = load_snapshot(cfg).train["label"].to_numpy()
    errors = [1 - oof[np.arange(len(y)), y] for oof in oofs]
    assert matrix[0, 1] == pytest.approx(np.corrcoef(errors[0], errors[1])[0, 1], abs=1e-5)


def test_meta_weights_are_the_logreg_coefficients(run):
    cfg, plots, reports = run
    table = pd.read_csv(plots / "meta_weights.csv")
    names = [spec.name for spec in cfg.base_models]
    labels = reports["ensemble"]["labels"]
    assert list(dict.fromkeys(table["model"])) == names and set(table["class"]) == set(labels)
    saved = json.loads((Layout.of(cfg).stack / "meta" / "meta.json").read_text())
    assert saved["kind"] == "logreg"
    coef = np.asarray(saved["learned"]["coef_"])
    first = table[(table["model"] == names[0]) & (table["class"] == labels[0])]["weight"].item()
    assert first == pytest.approx(coef[0, 0], rel=1e-5)


def test_confusion_shares_rows_sum_to_one_and_counts_match(run):
    _, plots, reports = run
    matrix = pd.read_csv(plots / "confusion_matrix.csv")
    np.testing.assert_allclose(matrix.groupby("actual")["share"].sum(), 1.0, atol=1e-5)  # CSV: 6 digits
    counts = matrix.pivot(index="actual", columns="predicted", values="count")
    labels = reports["ensemble"]["labels"]
    assert counts.loc[labels, labels].to_numpy().tolist() == reports["ensemble"]["confusion_matrix"]
    rows = pd.read_csv(plots / "confusion.csv")
    assert len(rows) == reports["ensemble"]["n_rows"]


def test_pr_curves_per_class_and_calibration_counts_cover_the_holdout(run):
    _, plots, reports = run
    n = reports["ensemble"]["n_rows"]
    pr = pd.read_csv(plots / "pr.csv")
    assert set(pr["class"]) == set(reports["ensemble"]["labels"])
    assert pr["precision"].between(0, 1).all() and pr["recall"].between(0, 1).all()
    assert pr.groupby("class")["average_precision"].nunique().eq(1).all()
    calibration = pd.read_csv(plots / "calibration.csv")
    assert set(calibration["model"]) == set(reports)
    assert (calibration.groupby("model")["count"].sum() == n).all()
    np.testing.assert_allclose(calibration.groupby("model")["share"].sum(), 1.0, atol=1e-5)
    inside = (calibration["lower"] < calibration["confidence"]) & (calibration["confidence"] <= calibration["upper"])
    assert inside.all()


def _probas(seed: int, n_rows: int = 90, n_classes: int = 3):
    rng = np.random.default_rng(seed)
    y = np.arange(n_rows) % n_classes
    out = []
    for strength in (1.0, 2.0, 0.5):
        scores = rng.normal(size=(n_rows, n_classes))
        scores[np.arange(n_rows), y] += strength
        out.append(np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True))
    return y, out


@pytest.mark.parametrize("meta, n_classes, expected_classes", [
    (WeightedMean(3), 3, {"all"}),
    (EnsembleSelection(3, rounds=10), 3, {"all"}),
    (LogisticStacker(2, seed=0), 2, {"b"}),
    (LogisticStacker(3, seed=0, passthrough=True), 3, {"a", "b", "c"}),
])
def test_meta_weights_for_every_kind_with_weights(tmp_path, meta, n_classes, expected_classes):
    y, oofs = _probas(1, n_classes=n_classes)
    meta.fit(oofs, y)
    names = ["m0", "m1", "m2"]
    probas = {"ensemble": meta.predict_proba(oofs), **dict(zip(names, oofs))}
    labels = ["a", "b", "c"][:n_classes]
    written = write_plots(y, probas, labels, tmp_path, 10, oof=(y, dict(zip(names, oofs))), meta=meta, seed=3)
    assert {p.name for p in written if p.suffix == ".png"} == set(PNG_NAMES)
    table = pd.read_csv(tmp_path / "meta_weights.csv", keep_default_na=False)
    assert list(dict.fromkeys(table["model"])) == names and set(table["class"]) == expected_classes
    if hasattr(meta, "weights_"):
        np.testing.assert_allclose(table["weight"], meta.weights_, atol=1e-5)
        assert read_png(tmp_path / "meta_weights.png").shape[1] == WIDTH_PX
    else:  # logreg learns to trust m1, the most accurate base model, most
        assert table.groupby("model")["weight"].mean().idxmax() == "m1"


def test_a_kind_without_weights_gets_a_note_not_a_plot(tmp_path):
    y, oofs = _probas(2)
    meta = MajorityVote(3).fit(oofs, y)
    names = ["m0", "m1", "m2"]
    write_plots(y, {"ensemble": meta.predict_proba(oofs)}, ["a", "b", "c"], tmp_path,
                oof=(y, dict(zip(names, oofs))), meta=meta)
    table = pd.read_csv(tmp_path / "meta_weights.csv")
    assert list(table.columns) == ["model", "class", "weight"] and table.empty
    image = read_png(tmp_path / "meta_weights.png")
    assert image.shape[1] == WIDTH_PX and image[..., :3].std() > 0


def test_the_bootstrap_is_seeded(tmp_path):
    y, oofs = _probas(3)
    probas = {"ensemble": oofs[1], "m0": oofs[0]}
    write_plots(y, probas, ["a", "b", "c"], tmp_path / "one", seed=7)
    write_plots(y, probas, ["a", "b", "c"], tmp_path / "two", seed=7)
    write_plots(y, probas, ["a", "b", "c"], tmp_path / "three", seed=8)
    one, two, three = (pd.read_csv(tmp_path / d / "metrics.csv") for d in ("one", "two", "three"))
    pd.testing.assert_frame_equal(one, two)
    assert not one[["lower", "upper"]].equals(three[["lower", "upper"]])
