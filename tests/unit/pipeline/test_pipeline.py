"""The core pipeline end to end: no leakage, full OOF coverage, determinism, bundle integrity, resume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import foldstack
from foldstack.config import load_config
from foldstack.errors import BundleError
from foldstack.common.files import load_array
from foldstack.pipeline.stages import Layout, plan_fold_tasks, run_pipeline
from tests import memorizer  # noqa: F401  (registers the `memorizer` kind)
from tests.conftest import write_params


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_csv):
    directory = tmp_path_factory.mktemp("run")
    cfg = load_config(write_params(directory, demo_csv, evaluate={"plots": True}))
    result = run_pipeline(cfg)
    return cfg, result


def test_end_to_end_writes_every_box(trained):
    cfg, result = trained
    layout = Layout.of(cfg)
    for path in [layout.snapshot / "snapshot.json", layout.folds / "folds.json", layout.stack / "meta_cv.json",
                 layout.eval / "metrics.json", layout.eval / "leaderboard.md", layout.bundle / "manifest.json",
                 layout.eval / "plots"]:
        assert path.exists(), path
    metrics = json.loads((layout.eval / "metrics.json").read_text())
    assert all(isinstance(v, float) for v in metrics.values())
    roles = {row["model"]: row["role"] for row in result.leaderboard}
    assert roles["ensemble"] == "ensemble" and roles["tfidf_lr"] == "base"
    assert metrics["ensemble.accuracy"] > 0.6, "the demo data is learnable"
    assert result.trained == 6 and result.skipped == 0


def test_oof_is_complete_and_covers_every_row_once(trained):
    cfg, _ = trained
    layout = Layout.of(cfg)
    n_train = json.loads((layout.snapshot / "snapshot.json").read_text())["n_train"]
    for spec in cfg.base_models:
        oof = load_array(layout.base(spec.name) / "oof.npy")
        assert oof.shape == (1, n_train, 3)
        assert not np.isnan(oof).any()
        np.testing.assert_allclose(oof.sum(-1), 1.0, atol=1e-6)
        rows = np.concatenate([load_array(layout.fold_dir(spec.name, 0, k) / "val_rows.npy") for k in range(3)])
        assert sorted(rows.tolist()) == list(range(n_train))


def test_bundle_reproduces_the_evaluated_holdout_predictions(trained):
    cfg, result = trained
    layout = Layout.of(cfg)
    bundle = foldstack.load(result.bundle)
    holdout = pd.read_parquet(layout.snapshot / "holdout.parquet")
    proba = bundle.predict_proba(holdout["text"].tolist())
    np.testing.assert_allclose(proba, load_array(layout.stack / "holdout_proba.npy"), atol=1e-9)
    assert bundle.labels == ["negative", "neutral", "positive"]
    assert set(bundle.predict(["The build quality is excellent. Highly recommend!"])) <= set(bundle.labels)
    manifest = bundle.manifest
    assert manifest["data_hash"] and manifest["fold_hash"] and manifest["metrics"]
    assert manifest["libraries"]["scikit-learn"].startswith("1.9")


def test_tampered_or_extended_bundle_is_refused(trained, tmp_path):
    _, result = trained
    copy = tmp_path / "bundle"
    shutil.copytree(result.bundle, copy)
    victim = next(p for p in sorted(copy.rglob("*")) if p.is_file() and p.name not in ("manifest.json", "COMPLETE"))
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(BundleError, match="sha256 does not match"):
        foldstack.load(copy)
    shutil.rmtree(copy)
    shutil.copytree(result.bundle, copy)
    (copy / "meta" / "extra.json").write_text("{}")
    with pytest.raises(BundleError, match="unexpected"):
        foldstack.load(copy)
    shutil.rmtree(copy)
    shutil.copytree(result.bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["labels"] = list(reversed(manifest["labels"]))
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="manifest was modified"):
        foldstack.load(copy)


def test_same_seed_same_oof_and_metrics(trained, tmp_path, demo_csv):
    cfg, result = trained
    again = load_config(write_params(tmp_path, demo_csv, evaluate={"plots": True}))
    result2 = run_pipeline(again)
    for spec in cfg.base_models:
        np.testing.assert_array_equal(load_array(Layout.of(cfg).base(spec.name) / "oof.npy"),
                                      load_array(Layout.of(again).base(spec.name) / "oof.npy"))
    assert result.metrics == result2.metrics
    # Same models, same bytes: a retrain that changed nothing is no new artifact for DVC or the registry.
    files = json.loads((result.bundle / "manifest.json").read_text())["files"]
    assert files == json.loads((result2.bundle / "manifest.json").read_text())["files"]


def test_rerun_skips_finished_folds_and_meta_change_retrains_nothing(tmp_path, demo_csv):
    cfg = load_config(write_params(tmp_path, demo_csv))
    first = run_pipeline(cfg)
    assert first.trained == 6
    # A killed task leaves only a temporary directory: it is not mistaken for a finished one.
    layout = Layout.of(cfg)
    shutil.rmtree(layout.fold_dir("nb_svm", 0, 1))
    (layout.base("nb_svm") / ".fold-r0-k1.tmp-dead").mkdir()
    second = run_pipeline(cfg)
    assert (second.trained, second.skipped) == (1, 5)
    assert not (layout.base("nb_svm") / ".fold-r0-k1.tmp-dead").exists(), "leftovers of dead writers are removed"
    third = run_pipeline(load_config(write_params(tmp_path, demo_csv), ["meta.kind=ensemble_selection"]))
    assert (third.trained, third.skipped) == (0, 6)
    changed = load_config(write_params(tmp_path, demo_csv), ["base_models.tfidf_lr.params.C=0.5"])
    assert sum(t.model == "tfidf_lr" for t in plan_fold_tasks(changed)) == 3
    assert run_pipeline(changed).trained == 3, "only the changed model's folds are retrained"


def test_memorising_model_has_chance_oof_accuracy_on_random_labels(tmp_path):
    """The leakage test: with random labels, OOF accuracy above chance could only come from leakage."""
    rng = np.random.default_rng(0)
    texts = [f"review {i} " + " ".join(rng.choice(list("abcdefgh"), 5)) for i in range(400)]
    # Near-duplicates (same text up to case/punctuation) must stay within one fold.
    texts += [t.upper() + "!" for t in texts[:200]]
    labels = rng.integers(0, 2, size=len(texts))
    labels[400:] = labels[:200]
    path = tmp_path / "random.csv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    cfg = load_config(write_params(tmp_path, path, base_models=[{"name": "mem", "kind": "memorizer"}],
                                   folds={"k": 5}))
    run_pipeline(cfg)
    layout = Layout.of(cfg)
    oof = load_array(layout.base("mem") / "oof.npy")[0]
    y = pd.read_parquet(layout.snapshot / "train.parquet")["label"].to_numpy()
    confident = oof.max(axis=1) == 1.0
    assert confident.sum() == 0, "the memoriser never saw a validation row (or a near-duplicate of one)"
    snap = pd.read_parquet(layout.snapshot / "train.parquet")
    # The same model scored in-sample is ~100%: that is what a leak would look like.
    from foldstack.models.base import ModelContext
    mem = memorizer.Memorizer(memorizer.Memorizer.Params(), ModelContext(n_classes=2)).fit(snap["text"], y)
    assert (mem.predict_proba(snap["text"].tolist()).argmax(1) == y).mean() == 1.0
    assert abs((oof.argmax(1) == y).mean() - 0.5) < 0.1


def test_cli_train_and_predict(tmp_path, demo_csv):
    params = write_params(tmp_path, demo_csv)
    cli = [sys.executable, "-m", "foldstack.cli"]
    proc = subprocess.run(cli + ["train", "--params", str(params), "--set", "folds.k=2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "ensemble" in proc.stdout
    out = tmp_path / "pred.csv"
    proc = subprocess.run(cli + ["predict", str(tmp_path / "artifacts" / "bundle"), str(demo_csv), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    pred = pd.read_csv(out)
    assert {"prediction", "proba_negative", "proba_neutral", "proba_positive", "model_version"} <= set(pred.columns)
    assert len(pred) == len(pd.read_csv(demo_csv))


def test_estimator_is_sklearn_compatible(demo_csv):
    from sklearn.base import clone

    frame = pd.read_csv(demo_csv)
    clf = foldstack.FoldStackClassifier(base_models=[{"name": "lr", "kind": "tfidf_lr"},
                                                     {"name": "nb", "kind": "nb_svm"}], k=3)
    assert clone(clf).get_params()["k"] == 3
    clf.fit(frame.text[:400], frame.label[:400])
    assert list(clf.classes_) == ["negative", "neutral", "positive"]
    assert clf.oof_["lr"].shape == (400, 3)
    assert clf.score(frame.text[400:], frame.label[400:]) > 0.5


def test_refit_full_predicts_with_models_fit_on_all_training_rows(tmp_path, demo_csv):
    cfg = load_config(write_params(tmp_path, demo_csv, base_models=[{"name": "lr", "kind": "tfidf_lr"}],
                                   runtime={"refit_full": True}))
    result = run_pipeline(cfg)
    assert result.trained == 4, "3 folds + 1 full refit"
    layout = Layout.of(cfg)
    assert json.loads((layout.fold_dir("lr", 0, -1) / "task.json").read_text())["n_val"] == 0
    bundle = foldstack.load(result.bundle)
    assert bundle.manifest["base_models"][0]["members"] == ["full"]
    holdout = pd.read_parquet(layout.snapshot / "holdout.parquet")
    np.testing.assert_allclose(bundle.predict_proba(holdout["text"].tolist()),
                               load_array(layout.stack / "holdout_proba.npy"), atol=1e-9)
