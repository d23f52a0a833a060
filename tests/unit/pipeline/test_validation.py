"""The Great Expectations data gate: each rule breaks on a small bad frame and the report names it and its rows."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from foldstack.config import config_from_dict, load_config
from foldstack.core.demo import make_demo_frame
from foldstack.errors import ConfigError, DataError
from foldstack.pipeline.stages import Layout, run_pipeline, validate
from foldstack.pipeline.validation import run_gate
from tests.conftest import write_params


@pytest.fixture(scope="module")
def good_frame() -> pd.DataFrame:
    """120 demo reviews, three classes, no duplicates: passes every rule at the defaults."""
    return make_demo_frame(rows=120, n_classes=3, noise=0.0, seed=3)


def _config(tmp_path, frame: pd.DataFrame, *, data=None, validation=None, test_frame=None):
    frame.to_csv(tmp_path / "data.csv", index=False)
    data = {"path": "data.csv", **(data or {})}
    if test_frame is not None:
        test_frame.to_csv(tmp_path / "test.csv", index=False)
        data["test_path"] = "test.csv"
    return config_from_dict({
        "data": data, "folds": {"k": 2},
        "base_models": [{"name": "tfidf_lr", "kind": "tfidf_lr"}],
        # Data Docs cost a second per run: one test builds them, the others do not.
        "validation": {"data_docs": False, **(validation or {})},
        "runtime": {"artifacts_dir": str(tmp_path / "artifacts")},
    }, root=tmp_path)


def _failure(tmp_path, frame, rule, **kwargs):
    """Run the gate expecting it to stop; return (the error's summary, the JSON report's entry for `rule`)."""
    with pytest.raises(DataError) as caught:
        run_gate(_config(tmp_path, frame, **kwargs))
    report = json.loads((tmp_path / "reports" / "validation.json").read_text())
    assert report["status"] == "failed"
    broken = [r for r in report["rules"] if r["rule"] == rule and not r["passed"]]
    assert broken, f"{rule} did not break: {[r['rule'] for r in report['rules'] if not r['passed']]}"
    summary = str(caught.value)
    assert f"ERROR {rule}" in summary
    assert (tmp_path / "reports" / "validation.md").read_text().strip() == summary
    return summary, broken[0]


def _rows(entry) -> list[int]:
    return [example["row"] for example in entry["examples"]]


def test_good_data_passes_and_keeps_suite_history_and_data_docs(tmp_path, good_frame):
    cfg = _config(tmp_path, good_frame, validation={"data_docs": True})
    snapshot, report = run_gate(cfg)
    assert report.status == "passed" and not report.failures and not report.warnings
    assert len(snapshot.train) + len(snapshot.holdout) == len(good_frame)
    assert json.loads((tmp_path / "reports" / "validation.json").read_text())["status"] == "passed"
    gx_dir = tmp_path / "gx"
    suites = sorted(p.name for p in (gx_dir / "expectations").glob("*.json"))
    assert suites == ["foldstack_holdout.json", "foldstack_training_data.json"]
    assert report.data_docs and (gx_dir / "uncommitted" / "data_docs" / "local_site" / "index.html").is_file()
    history = list((gx_dir / "uncommitted" / "validations").rglob("*.json"))
    committed = {p: p.read_bytes() for p in gx_dir.rglob("*.json") if "uncommitted" not in p.parts}

    run_gate(cfg)
    assert len(list((gx_dir / "uncommitted" / "validations").rglob("*.json"))) == len(history) + 2
    # The suites are rebuilt from params every run but saved only when they change: git sees no diff.
    assert {p: p.read_bytes() for p in committed} == committed


def test_missing_required_column_is_named_with_the_file_columns(tmp_path, good_frame):
    frame = good_frame.rename(columns={"label": "sentiment"})
    summary, entry = _failure(tmp_path, frame, "required_columns")
    assert "column 'label' is missing" in summary and "'sentiment'" in summary
    assert "could not be evaluated" in summary  # the label rules need the column: reported, not crashed


def test_extra_required_column_from_params(tmp_path, good_frame):
    summary, _ = _failure(tmp_path, good_frame, "required_columns", validation={"required_columns": ["source"]})
    assert "column 'source' is missing" in summary


def test_null_text_names_its_row(tmp_path, good_frame):
    frame = good_frame.copy()
    frame.loc[4, "text"] = None  # the 5th data row of the file
    summary, entry = _failure(tmp_path, frame, "text_not_null")
    assert _rows(entry) == [5] and entry["unexpected_count"] == 1
    assert "row=5" in summary


def test_blank_text_names_its_rows(tmp_path, good_frame):
    frame = good_frame.copy()
    frame.loc[[2, 7], "text"] = ["   ", "\t"]
    summary, entry = _failure(tmp_path, frame, "text_not_blank")
    assert _rows(entry) == [3, 8] and entry["unexpected_count"] == 2


def test_text_length_uses_the_data_bounds(tmp_path, good_frame):
    frame = good_frame.copy()
    frame.loc[9, "text"] = "word " * 200
    summary, entry = _failure(tmp_path, frame, "text_length", data={"max_text_chars": 600})
    assert _rows(entry) == [10]
    assert entry["examples"][0]["chars"] == len(("word " * 200).strip())
    assert "1 to 600 characters" in summary


def test_null_label_names_its_row(tmp_path, good_frame):
    frame = good_frame.copy()
    frame.loc[0, "label"] = None
    _, entry = _failure(tmp_path, frame, "label_not_null")
    assert _rows(entry) == [1]


def test_label_outside_the_allowed_set(tmp_path, good_frame):
    frame = good_frame.copy()
    frame.loc[11, "label"] = "furious"
    summary, entry = _failure(tmp_path, frame, "label_in_set",
                              data={"labels": ["negative", "neutral", "positive"]})
    assert _rows(entry) == [12] and "['furious']" in summary


def test_rare_class_warns_without_stopping(tmp_path, good_frame):
    rare = pd.DataFrame({"text": [f"A rare remark number {i} about the lid." for i in range(4)], "label": "meh"})
    frame = pd.concat([good_frame, rare], ignore_index=True)  # enough rows for k=2 folds, under a 5% share
    snapshot, report = run_gate(_config(tmp_path, frame))
    assert report.status == "passed with warnings"
    [warning] = report.warnings
    assert warning.rule == "min_class_share" and "class 'meh' has 3.2% of the rows (4 of 124)" in warning.detail
    assert warning.examples[0]["row"] == 121
    assert json.loads((tmp_path / "reports" / "validation.json").read_text())["status"] == "passed with warnings"
    assert "meh" in snapshot.label_map.names


def test_rare_class_stops_when_its_severity_is_error(tmp_path, good_frame):
    summary, entry = _failure(tmp_path, good_frame, "min_class_share",
                              validation={"min_class_share": 0.4, "severity": {"min_class_share": "error"}})
    assert "minimum 40.0%" in entry["detail"]


def test_too_many_duplicate_texts_names_the_repeats(tmp_path, good_frame):
    frame = pd.concat([good_frame, good_frame.iloc[:20]], ignore_index=True)  # 20 of 140 rows repeat
    summary, entry = _failure(tmp_path, frame, "max_duplicate_share")
    assert entry["unexpected_count"] == 20
    first = entry["examples"][0]
    assert (first["row"], first["repeats_row"]) == (121, 1)
    assert "14.3% of the rows repeat an earlier row's text" in summary


def test_same_text_with_two_labels(tmp_path, good_frame):
    frame = good_frame.copy()
    frame.loc[30, "text"] = frame.loc[40, "text"]
    frame.loc[30, "label"], frame.loc[40, "label"] = "negative", "positive"
    summary, entry = _failure(tmp_path, frame, "consistent_labels")
    assert _rows(entry) == [31, 41]
    assert entry["examples"][0]["labels_of_this_text"] == ["negative", "positive"]
    assert "set validation.severity.consistent_labels: warn" in summary  # how to relax it


def test_row_count_bounds(tmp_path, good_frame):
    summary, _ = _failure(tmp_path, good_frame, "row_count", validation={"min_rows": 500})
    assert "the file has 120 rows; expected at least 500" in summary
    summary, _ = _failure(tmp_path, good_frame, "row_count", validation={"min_rows": 10, "max_rows": 100})
    assert "expected 10 to 100" in summary


def test_holdout_text_present_in_training(tmp_path, good_frame):
    train, test = good_frame.iloc[:90], good_frame.iloc[90:].copy()
    test.iloc[5] = train.iloc[17]
    summary, entry = _failure(tmp_path, train, "holdout_not_in_training", test_frame=test)
    assert _rows(entry) == [6]  # the 6th row of the holdout file
    assert entry["batch"] == "holdout"
    assert "--set validation.severity.holdout_not_in_training=warn" in summary  # how to relax it


def test_every_broken_rule_is_reported_at_once(tmp_path, good_frame):
    frame = good_frame.copy()
    frame.loc[0, "text"] = None
    frame.loc[1, "text"] = " "
    frame.loc[2, "label"] = None
    summary, _ = _failure(tmp_path, frame, "text_not_null")
    for rule in ("text_not_blank", "label_not_null"):
        assert f"ERROR {rule}" in summary


def test_rule_set_to_off_is_not_checked(tmp_path, good_frame):
    frame = pd.concat([good_frame, good_frame.iloc[:20]], ignore_index=True)
    _, report = run_gate(_config(tmp_path, frame, validation={"severity": {"max_duplicate_share": "off"}}))
    assert "max_duplicate_share" not in {o.rule for o in report.outcomes}


def test_validation_params_are_checked():
    with pytest.raises(ConfigError, match="min_rows"):
        config_from_dict({"base_models": [{"name": "a", "kind": "tfidf_lr"}],
                          "validation": {"min_rows": 50, "max_rows": 10}})
    with pytest.raises(ConfigError, match="validation.severity"):
        config_from_dict({"base_models": [{"name": "a", "kind": "tfidf_lr"}],
                          "validation": {"severity": {"no_such_rule": "warn"}}})


def test_validate_stage_writes_no_snapshot_and_the_pipeline_trains_nothing_on_bad_data(tmp_path, good_frame):
    frame = good_frame.copy()
    frame.loc[3, "text"] = ""
    frame.to_csv(tmp_path / "bad.csv", index=False)
    cfg = load_config(write_params(tmp_path, tmp_path / "bad.csv", validation={"data_docs": False}))
    with pytest.raises(DataError, match="text_not_null"):  # an empty CSV cell reads as null
        validate(cfg)
    layout = Layout.of(cfg)
    assert not layout.snapshot.exists()
    with pytest.raises(DataError):
        run_pipeline(cfg)
    assert not layout.root.exists() or not any(layout.root.iterdir()), "nothing may be written under artifacts/"


def test_cli_validate_data_exits_non_zero_with_the_summary(tmp_path, good_frame):
    import subprocess
    import sys

    frame = good_frame.copy()
    frame.loc[6, "label"] = None
    frame.to_csv(tmp_path / "bad.csv", index=False)
    params = write_params(tmp_path, tmp_path / "bad.csv", validation={"data_docs": False})
    proc = subprocess.run([sys.executable, "-m", "foldstack.cli", "validate-data", "--params", str(params)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "ERROR label_not_null" in proc.stderr and "row=7" in proc.stderr


def test_history_keeps_the_newest_results_of_each_suite_with_their_pages(tmp_path, good_frame):
    cfg = _config(tmp_path, good_frame, validation={"keep_history": 2, "data_docs": True})
    uncommitted = tmp_path / "gx" / "uncommitted"
    results_dir = uncommitted / "validations"
    pages_dir = uncommitted / "data_docs" / "local_site" / "validations"
    new_per_run = []
    for _ in range(3):
        before = set(results_dir.rglob("*.json"))
        run_gate(cfg)
        new_per_run.append(set(results_dir.rglob("*.json")) - before)
    assert [len(new) for new in new_per_run] == [2, 2, 2], "one result per suite (training data, holdout) per run"

    kept = set(results_dir.rglob("*.json"))
    assert kept == new_per_run[1] | new_per_run[2]
    pages = {p.relative_to(pages_dir).with_suffix("") for p in pages_dir.rglob("*.html")}
    assert pages == {p.relative_to(results_dir).with_suffix("") for p in kept}
    index = (uncommitted / "data_docs" / "local_site" / "index.html").read_text()
    assert all(p.parent.name not in index for p in new_per_run[0]), "the index links to a deleted page"
    assert all(p.parent.name in index for p in kept)
    leftovers = [d for base in (results_dir, pages_dir) for d in base.rglob("*") if d.is_dir() and not any(d.iterdir())]
    assert leftovers == [], "a deleted run left its directories behind"


def test_keep_history_must_keep_at_least_one_result():
    with pytest.raises(ConfigError, match="validation.keep_history"):
        config_from_dict({"base_models": [{"name": "a", "kind": "tfidf_lr"}], "validation": {"keep_history": 0}})
