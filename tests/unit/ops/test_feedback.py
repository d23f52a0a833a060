"""Feedback labels: the checks (malformed, unknown ids: 404; labels outside the set: 422), the files, the
/feedback body, `foldstack feedback FILE` and `foldstack feedback merge` (a new version of the data file,
through the data gate, `dvc add`ed in a DVC project)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from foldstack.cli.main import app
from foldstack.config import load_config
from foldstack.errors import DataError
from foldstack.ops.monitoring import Feedback, FeedbackError, PredictionLog, check_feedback, read_feedback, record_feedback
from foldstack.ops.monitoring.feedback import read_feedback_file
from foldstack.ops.monitoring.merge import merge_feedback
from foldstack.ops.serving import InputError, parse_feedback_body
from tests.conftest import write_params

LABELS = ["negative", "neutral", "positive"]
runner = CliRunner()


def rid() -> str:
    return uuid.uuid4().hex


# ------------------------------------------------------------------------------------------ checks
def test_good_feedback_passes_the_checks():
    known = [rid(), rid()]
    items = [Feedback(known[0], "positive"), Feedback(known[1], "negative")]
    check_feedback(items, known=lambda ids: set(ids) & set(known), labels=LABELS)


@pytest.mark.parametrize(("items", "status", "message"), [
    ([Feedback("KNOWN", "positive"), Feedback("f" * 32, "positive")], 404,
     "items[1]: no logged prediction has the request_id 'ffffffffffffffffffffffffffffffff'"),
    ([Feedback("KNOWN", "great")], 422, "items[0]: the label 'great' is not one of the model's labels "
                                        "['negative', 'neutral', 'positive']"),
    ([Feedback("not-an-id", "positive"), Feedback("KNOWN", "positive")], 422, "items[0]: not a request id"),
    ([Feedback("ABC" + "0" * 29, "positive")], 422, "not a request id"),  # upper case is not what /predict gives
])
def test_bad_feedback_is_refused_naming_the_items(items, status, message):
    known = rid()
    items = [Feedback(known if i.request_id == "KNOWN" else i.request_id, i.label) for i in items]
    with pytest.raises(FeedbackError) as caught:
        check_feedback(items, known=lambda ids: set(ids) & {known}, labels=LABELS, what="items[]")
    assert caught.value.status == status and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_rows_are_named_from_one_and_every_problem_is_in_one_line():
    known = rid()
    items = [Feedback(known, "positive"), Feedback(rid(), "positive"), Feedback(known, "meh"), Feedback("x", "a")]
    with pytest.raises(FeedbackError) as caught:
        check_feedback(items, known=lambda ids: set(ids) & {known}, labels=LABELS, what="row", first=1,
                       where="fb.csv: ")
    message = str(caught.value)
    assert message.startswith("fb.csv: row 4: not a request id") and "row 2: no logged prediction" in message
    assert "row 3: the label 'meh'" in message and "\n" not in message


# --------------------------------------------------------------------------------------- the files
def test_a_later_label_for_the_same_request_wins(tmp_path):
    first, second = rid(), rid()
    record_feedback(tmp_path, [Feedback(first, "negative"), Feedback(second, "neutral")], source="api")
    record_feedback(tmp_path, [Feedback(first, "positive")], source="file")
    frame = read_feedback(tmp_path).set_index("request_id")
    assert frame.loc[first, "label"] == "positive" and frame.loc[first, "source"] == "file"
    assert frame.loc[second, "label"] == "neutral" and len(frame) == 2
    assert read_feedback(tmp_path / "none").empty


def test_an_unreadable_feedback_file_is_skipped_with_a_warning(tmp_path, caplog):
    record_feedback(tmp_path, [Feedback(rid(), "negative")], source="api")
    (tmp_path / "feedback" / "feedback-20990101T000000-1-000001.parquet").write_text("garbage")
    assert len(read_feedback(tmp_path)) == 1 and "skipping unreadable feedback file" in caplog.text


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_feedback_files_are_read_in_every_format(tmp_path, suffix):
    frame = pd.DataFrame({"request_id": [rid(), rid()], "label": ["negative", "positive"], "note": ["x", "y"]})
    path = tmp_path / f"fb{suffix}"
    {".csv": lambda: frame.to_csv(path, index=False), ".tsv": lambda: frame.to_csv(path, sep="\t", index=False),
     ".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
     ".parquet": lambda: frame.to_parquet(path)}[suffix]()
    assert read_feedback_file(path) == [Feedback(r, lbl) for r, lbl in zip(frame.request_id, frame.label)]


def test_a_feedback_file_without_the_columns_or_with_empty_cells_is_refused(tmp_path):
    (tmp_path / "a.csv").write_text("id,label\nx,positive\n")
    with pytest.raises(DataError, match=r"no column\(s\) \['request_id'\]"):
        read_feedback_file(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text(f"request_id,label\n{rid()},positive\n{rid()},\n,negative\n")
    with pytest.raises(DataError, match="rows 2, 3: an empty request_id or label"):
        read_feedback_file(tmp_path / "b.csv")


# ------------------------------------------------------------------------------------------ /feedback
def test_the_feedback_body_takes_one_item_or_a_list():
    one = rid()
    assert parse_feedback_body(json.dumps({"request_id": one, "label": "positive"}).encode()) == \
        ([Feedback(one, "positive")], "the body")
    items, where = parse_feedback_body(json.dumps({"items": [{"request_id": one, "label": "a"}] * 2}).encode())
    assert len(items) == 2 and where == "items"


@pytest.mark.parametrize(("body", "status", "message"), [
    (b"\xff", 400, "not valid UTF-8 JSON"),
    (b"[1]", 422, 'must be an object with exactly "request_id" and "label"'),
    (b'{"request_id": "a"}', 422, 'exactly "request_id" and "label"'),
    (b'{"request_id": "a", "label": 3}', 422, "the body.label is a number, not a string"),
    (b'{"request_id": "a", "label": ""}', 422, "label must have 1 to 200 characters"),
    (b'{"items": []}', 422, '"items" must be a non-empty list'),
    (b'{"items": [{"request_id": "a", "label": "b"}, 7]}', 422, "items[1] must be an object"),
    (b'{"items": [], "label": "b"}', 422, 'a body with "items" holds nothing else'),
])
def test_bad_feedback_bodies_are_a_4xx(body, status, message):
    with pytest.raises(InputError) as caught:
        parse_feedback_body(body)
    assert caught.value.status == status and message in str(caught.value)


# ---------------------------------------------------------------------------------------- the CLI
@pytest.fixture
def project(tmp_path, demo_csv):
    """A params file whose data file is a copy (merge rewrites it) and a prediction log with texts."""
    (tmp_path / "data").mkdir()
    data = tmp_path / "data" / "reviews.csv"
    shutil.copy(demo_csv, data)
    params = write_params(tmp_path, data, monitoring={"log_dir": "mon", "store_texts": True})
    return params


def log_predictions(params, texts: list[str], store_texts: bool = True) -> list[str]:
    cfg = load_config(params)
    ids = [rid() for _ in texts]
    with PredictionLog(cfg.resolve_path("mon"), store_texts=store_texts) as log:
        log.record(ids, texts, ["neutral"] * len(texts), np.full((len(texts), 3), 1 / 3), labels=LABELS,
                   model_version="v1", bundle_id="b", latency_ms=1.0)
    return ids


def test_feedback_file_records_every_row_or_none(project, tmp_path):
    ids = log_predictions(project, ["the kettle died after a week", "a lamp, fine"])
    good = tmp_path / "good.csv"
    pd.DataFrame({"request_id": ids, "label": ["negative", "neutral"]}).to_csv(good, index=False)
    result = runner.invoke(app, ["feedback", str(good), "--params", str(project)])
    assert result.exit_code == 0, result.output
    assert "recorded 2 feedback label(s)" in result.output
    assert read_feedback(tmp_path / "mon").set_index("request_id")["label"].to_dict() == \
        dict(zip(ids, ["negative", "neutral"]))

    bad = tmp_path / "bad.csv"
    pd.DataFrame({"request_id": [ids[0], rid(), ids[1]], "label": ["positive", "neutral", "superb"]}).to_csv(
        bad, index=False)
    proc = subprocess.run([sys.executable, "-m", "foldstack.cli", "feedback", str(bad), "--params", str(project)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    error = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(error) == 1 and "row 2: no logged prediction" in error[0] and "row 3: the label 'superb'" in error[0]
    assert len(list((tmp_path / "mon" / "feedback").iterdir())) == 1  # nothing written for the bad file


def test_feedback_merge_appends_new_labelled_texts_once(project, tmp_path):
    data = tmp_path / "data" / "reviews.csv"
    before = pd.read_csv(data)
    existing = before.iloc[0]
    texts = ["The blender is loud and broke within days.", "The blender is loud and broke within days.",
             existing["text"], "A fine, unremarkable desk lamp that does its job."]
    ids = log_predictions(project, texts)
    record_feedback(tmp_path / "mon", [Feedback(ids[0], "positive"), Feedback(ids[1], "negative"),
                                       Feedback(ids[2], existing["label"]), Feedback(ids[3], "neutral")],
                    source="api")
    result = runner.invoke(app, ["feedback", "merge", "--params", str(project)])
    assert result.exit_code == 0, result.output
    assert "4 feedback label(s); 2 new row(s) appended" in result.output and "1 already in the data" in result.output
    after = pd.read_csv(data)
    assert len(after) == len(before) + 2 and after.iloc[: len(before)].equals(before)
    assert after.iloc[-2:].values.tolist() == [[texts[0], "negative"], [texts[3], "neutral"]]  # latest label won
    result = runner.invoke(app, ["feedback", "merge", "--params", str(project)])
    assert result.exit_code == 0 and "0 new row(s)" in result.output and len(pd.read_csv(data)) == len(after)


def test_merge_needs_the_logged_texts(project, tmp_path):
    ids = log_predictions(project, ["some text"], store_texts=False)
    record_feedback(tmp_path / "mon", [Feedback(ids[0], "neutral")], source="api")
    with pytest.raises(DataError, match="logged without their texts .monitoring.store_texts was false"):
        merge_feedback(load_config(project))


def test_a_merge_the_gate_refuses_leaves_the_data_untouched(project, tmp_path):
    data = tmp_path / "data" / "reviews.csv"
    original = data.read_bytes()
    longest = int(pd.read_csv(data)["text"].str.len().max())
    ids = log_predictions(project, ["far too long " * (longest // 10 + 5)])
    record_feedback(tmp_path / "mon", [Feedback(ids[0], "neutral")], source="api")
    cfg = load_config(project, [f"data.max_text_chars={longest}"])
    with pytest.raises(DataError, match="failed the data gate, so .* is unchanged"):
        merge_feedback(cfg)
    assert data.read_bytes() == original
    assert sorted(p.name for p in data.parent.iterdir()) == ["reviews.csv"]  # no temporary left behind


def test_merge_in_a_dvc_project_adds_the_new_version(project, tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    ids = log_predictions(project, ["The toaster burns every slice, avoid."])
    record_feedback(tmp_path / "mon", [Feedback(ids[0], "negative")], source="api")
    result = merge_feedback(load_config(project))
    pointer = tmp_path / "data" / "reviews.csv.dvc"
    assert result.added == 1 and pointer.is_file() and result.md5 in pointer.read_text()
    assert "dvc add" in result.dvc
