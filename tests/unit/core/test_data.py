"""Every bad input gets its own clear error naming the file, column, rows or key."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from foldstack.config import load_config
from foldstack.config import GroupingConfig
from foldstack.core.data import LabelMap, build_snapshot, read_table
from foldstack.core.grouping import group_texts
from foldstack.errors import DataError
from tests.conftest import write_params


def _frame(n_per_class=10, classes=("neg", "pos")):
    rows = [(f"{c} sample number {i} with words", c) for c in classes for i in range(n_per_class)]
    return pd.DataFrame(rows, columns=["text", "label"])


def _cfg(tmp_path, data_path, **sections):
    return load_config(write_params(tmp_path, data_path, **sections))


def _write(tmp_path, frame, name="data.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "jsonl"])
def test_four_formats_read_the_same(tmp_path, fmt):
    frame = _frame()
    path = tmp_path / f"d.{fmt}"
    {"csv": lambda: frame.to_csv(path, index=False), "tsv": lambda: frame.to_csv(path, sep="\t", index=False),
     "parquet": lambda: frame.to_parquet(path), "jsonl": lambda: frame.to_json(path, orient="records", lines=True)}[fmt]()
    snap = build_snapshot(_cfg(tmp_path, path, folds={"k": 2}))
    assert snap.label_map.labels == ("neg", "pos")
    assert len(snap.train) + len(snap.holdout) == len(frame)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.csv: data file not found"):
        build_snapshot(_cfg(tmp_path, tmp_path / "nope.csv"))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match="empty.csv: the file is empty"):
        read_table(path)
    path.write_text("text,label\n")
    with pytest.raises(DataError, match="header but no data rows"):
        read_table(path)


@pytest.mark.parametrize("column", ["text", "label"])
def test_missing_column(tmp_path, column):
    path = _write(tmp_path, _frame().rename(columns={column: "other"}))
    with pytest.raises(DataError, match=f"missing column\\(s\\) '{column}'.*'other'"):
        build_snapshot(_cfg(tmp_path, path))


def test_null_and_blank_texts_name_rows(tmp_path):
    frame = _frame()
    frame.loc[3, "text"] = None
    with pytest.raises(DataError, match=r"'text' is empty \(null\) at row\(s\) 4"):
        build_snapshot(_cfg(tmp_path, _write(tmp_path, frame)))
    frame = _frame()
    frame.loc[[2, 7], "text"] = "   "
    with pytest.raises(DataError, match=r"'text' is blank at row\(s\) 3, 8"):
        build_snapshot(_cfg(tmp_path, _write(tmp_path, frame)))


def test_single_class(tmp_path):
    with pytest.raises(DataError, match="single class"):
        build_snapshot(_cfg(tmp_path, _write(tmp_path, _frame(classes=("only",)))))


def test_class_with_fewer_rows_than_folds(tmp_path):
    frame = pd.concat([_frame(20), pd.DataFrame({"text": [f"rare {i}" for i in range(4)], "label": "rare"})])
    with pytest.raises(DataError, match="too few training rows for folds.k=5: 'rare' has 3"):
        build_snapshot(_cfg(tmp_path, _write(tmp_path, frame), folds={"k": 5}))


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\ncaf\xe9 au lait,pos\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.csv: not valid UTF-8 at byte \d+ \(line 2\)"):
        build_snapshot(_cfg(tmp_path, path))


def test_test_file_label_never_seen_in_training(tmp_path):
    train = _write(tmp_path, _frame(), "train.csv")
    test = _write(tmp_path, _frame(3, classes=("neg", "pos", "meh")), "test.csv")
    with pytest.raises(DataError, match=r"test.csv: label\(s\) \['meh'\] never seen in the training data"):
        build_snapshot(_cfg(tmp_path, train, data={"path": str(train), "test_path": str(test)}, folds={"k": 2}))


def test_label_outside_allowed_set(tmp_path):
    path = _write(tmp_path, _frame())
    with pytest.raises(DataError, match=r"label\(s\) \['pos'\] outside data.labels"):
        build_snapshot(_cfg(tmp_path, path, data={"path": str(path), "labels": ["neg", "neutral"]}))


def test_int_labels_sorted_numerically(tmp_path):
    frame = _frame(classes=("10", "2", "1"))
    snap = build_snapshot(_cfg(tmp_path, _write(tmp_path, frame), folds={"k": 2}))
    assert snap.label_map.labels == (1, 2, 10)


def test_holdout_is_stratified_and_keeps_near_duplicates_together(tmp_path):
    frame = _frame(50)
    dupes = pd.DataFrame({"text": ["NEG sample number 0 with words!!"] * 3, "label": "neg"})
    snap = build_snapshot(_cfg(tmp_path, _write(tmp_path, pd.concat([frame, dupes]))))
    key = "negsamplenumber0withwords"
    in_train = any(t.lower().replace(" ", "").replace("!", "") == key for t in snap.train.text)
    in_holdout = any(t.lower().replace(" ", "").replace("!", "") == key for t in snap.holdout.text)
    assert in_train != in_holdout, "a near-duplicate group lies wholly on one side"
    assert abs(snap.holdout.label.mean() - 0.5) < 0.1


def test_group_ids_and_label_map_roundtrip():
    assert group_texts(["Hello, World", "hello world!", "other"], GroupingConfig()).groups.tolist() == [0, 0, 1]
    lm = LabelMap.from_values(pd.Series(["b", "a", "b"]))
    assert lm.decode(lm.encode(pd.Series(["a", "b"]), "x")) == ["a", "b"]
    assert LabelMap.from_json(lm.to_json()) == lm
    assert np.array_equal(lm.encode(pd.Series(["b"]), "x"), [1])


def test_cli_exits_non_zero_with_the_message(tmp_path):
    params = write_params(tmp_path, tmp_path / "missing.csv")
    proc = subprocess.run([sys.executable, "-m", "foldstack.cli", "train", "--params", str(params)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "missing.csv: data file not found" in proc.stderr
    assert not (tmp_path / "artifacts" / "snapshot").exists(), "nothing half-written"
