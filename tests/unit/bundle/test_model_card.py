"""MODEL_CARD.md: written into a real bundle before its manifest (hashed, verified on load), its numbers those of
eval/reports.json; the Wilson interval and the weakest class on their own."""

from __future__ import annotations

import json
import re

import pytest

import foldstack
from foldstack.bundle import MANIFEST
from foldstack.bundle.model_card import MODEL_CARD, render_model_card, weakest_class, wilson_interval
from foldstack.common.files import sha256_file
from foldstack.config import load_config
from foldstack.errors import BundleError
from foldstack.pipeline.stages import Layout, make_bundle, run_pipeline
from tests.conftest import write_params


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_csv):
    directory = tmp_path_factory.mktemp("card")
    cfg = load_config(write_params(directory, demo_csv))
    run_pipeline(cfg)
    layout = Layout.of(cfg)
    return cfg, layout, json.loads((layout.eval / "reports.json").read_text())


def _row(card: str, name: str, width: int | None = None) -> list[str]:
    """The cells of the markdown table row whose first cell is `name` (in a table of `width` columns)."""
    for line in card.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == name and width in (None, len(cells)):
            return cells
    raise AssertionError(f"no row {name!r} in the card")


def test_card_is_in_the_bundle_listed_and_hashed(run):
    _, layout, _ = run
    card = layout.bundle / MODEL_CARD
    manifest = json.loads((layout.bundle / MANIFEST).read_text())
    assert manifest["files"][MODEL_CARD] == sha256_file(card)
    bundle = foldstack.load(layout.bundle)
    assert bundle.predict(["a text"])[0] in bundle.labels


def test_a_changed_card_fails_verification(run, tmp_path):
    import shutil

    _, layout, _ = run
    copy = tmp_path / "bundle"
    shutil.copytree(layout.bundle, copy)
    (copy / MODEL_CARD).write_text((copy / MODEL_CARD).read_text().replace("accuracy", "accuracy (edited)"))
    with pytest.raises(BundleError, match="MODEL_CARD.md: sha256 does not match"):
        foldstack.load(copy)


def test_card_metrics_are_the_holdout_reports(run):
    cfg, layout, reports = run
    card = (layout.bundle / MODEL_CARD).read_text()
    ensemble = reports["ensemble"]
    low, high = wilson_interval(ensemble["accuracy"] * ensemble["n_rows"], ensemble["n_rows"])
    assert _row(card, "accuracy") == ["accuracy", f"{ensemble['accuracy']:.4f}", f"{low:.4f} to {high:.4f} (Wilson)"]
    assert _row(card, "macro F1")[1] == f"{ensemble['macro_f1']:.4f}"
    assert _row(card, "log loss")[1] == f"{ensemble['log_loss']:.4f}"
    assert f"On {ensemble['n_rows']} holdout rows" in card
    for label, m in ensemble["per_class"].items():
        row = _row(card, label, width=6)
        assert row[1:3] == [f"{m['precision']:.4f}", f"{m['recall']:.4f}"] and row[-1] == str(m["support"])
    weakest = min(ensemble["per_class"], key=lambda label: ensemble["per_class"][label]["f1"])
    assert f"**Weakest class: `{weakest}`**" in card
    for name in ("tfidf_lr", "nb_svm"):
        assert _row(card, name)[1] == f"{reports[name]['accuracy']:.4f}"  # the other models' table
    snapshot = json.loads((layout.snapshot / "snapshot.json").read_text())
    assert snapshot["data_hash"] in card and cfg.data.path in card
    for label, count in snapshot["train_class_counts"].items():
        assert re.search(rf"^\| {re.escape(label)} \| {count} \| {snapshot['holdout_class_counts'][label]} \|$",
                         card, re.M)
    assert "**Meta-learner:** `logreg`" in card and "foldstack.load(" in card


def test_rebuilding_the_bundle_keeps_its_id(run):
    cfg, layout, _ = run
    before = json.loads((layout.bundle / MANIFEST).read_text())["bundle_id"]
    make_bundle(cfg)
    assert json.loads((layout.bundle / MANIFEST).read_text())["bundle_id"] == before  # the card holds no date


def test_wilson_interval_known_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson_interval(50, 100) == pytest.approx((0.40383, 0.59617), abs=1e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    low, high = wilson_interval(3, 0)
    assert low != low and high != high  # nan without trials


def test_weakest_class_ignores_classes_absent_from_the_holdout():
    per_class = {"a": {"f1": 0.9, "recall": 0.9, "precision": 0.9, "support": 10},
                 "b": {"f1": 0.4, "recall": 0.5, "precision": 0.3, "support": 4},
                 "c": {"f1": 0.0, "recall": 0.0, "precision": 0.0, "support": 0}}
    assert weakest_class(per_class) == "b"
    assert weakest_class({}) is None


def test_card_without_holdout_reports_says_so():
    card = render_model_card(data={"path": "d.csv", "labels": ["x", "y"], "train_class_counts": {"x": 3, "y": 4}},
                             reports={}, base_models=[{"name": "m", "kind": "tfidf_lr", "members": ["r0f0"]}],
                             meta={"kind": "logreg"})
    assert "No holdout report for `ensemble`" in card and "## Per class" not in card
    assert "| m | tfidf_lr | 1 |" in card
