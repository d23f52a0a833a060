"""`foldstack feedback merge`: the labelled logged predictions become rows of the training data, as a new
version of the data file, so the next retrain learns from production's errors.

1. Every feedback label (the latest per request id) is joined to its logged prediction's text; this needs the
   texts, so the predictions must have been logged with `monitoring.store_texts: true` (else a DataError says so).
2. Rows whose text the data file already holds are left out (the file's label stands; a differing feedback label
   is counted as a conflict), as are repeats within the feedback (its latest label wins).
3. The merged table (the original rows unchanged, in order, then the new ones) is written beside the data file,
   in its format, as a temporary, and the Great Expectations gate (`run_gate`, the validate stage's) runs on it;
   a failing gate removes the temporary and leaves the data file untouched. A passing one replaces the data file
   in one `os.replace`.
4. In a DVC project the new version is recorded with `dvc add` (foldstack.ops.versioning.add_data_version), and
   the data file's change makes the `validate` stage stale: the watch-data deployment emits
   `foldstack.data.changed` and `retrain` runs; its registry gate decides as ever whether the new model ships.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from foldstack.config import Config
from foldstack.core.data import detect_format, read_table
from foldstack.errors import DataError
from foldstack.ops.monitoring.feedback import read_feedback
from foldstack.ops.monitoring.logfiles import read_prediction_log
from foldstack.ops.versioning import add_data_version, file_md5, is_dvc_project
from foldstack.pipeline.validation import run_gate


@dataclass
class MergeResult:
    data_path: str
    labelled: int  # feedback labels found
    added: int  # rows appended to the data file
    already_present: int  # texts the data file held already (with the same label)
    conflicts: int  # ... with another label (the file's stands)
    without_text: int  # labelled predictions logged without their text
    md5: str  # of the data file after the merge (unchanged when nothing was added)
    dvc: str | None  # what DVC recorded, None outside a DVC project

    def describe(self) -> list[str]:
        lines = [f"{self.labelled} feedback label(s); {self.added} new row(s) appended to {self.data_path}",
                 f"left out: {self.already_present} already in the data, {self.conflicts} already in it with "
                 f"another label (the data's label kept), {self.without_text} logged without their text"]
        lines.append(f"data md5 {self.md5}" + (f"; {self.dvc}" if self.dvc else "; not a DVC project"))
        return lines


def labelled_rows(cfg: Config) -> tuple[pd.DataFrame, int, int]:
    """(text, label) of every labelled logged prediction that has its text; plus how many labels there are and
    how many lack their text. A DataError when there is nothing to merge."""
    log_dir = cfg.resolve_path(cfg.monitoring.log_dir)
    feedback = read_feedback(log_dir)
    if feedback.empty:
        raise DataError(f"no feedback recorded under {log_dir / 'feedback'}: nothing to merge (POST /feedback, "
                        f"or `foldstack feedback FILE`)")
    predictions = read_prediction_log(log_dir)[["request_id", "text"]].drop_duplicates("request_id", keep="last")
    joined = feedback.merge(predictions, on="request_id", how="inner")
    with_text = joined[joined["text"].notna()]
    if with_text.empty:
        raise DataError(f"the {len(joined)} labelled prediction(s) in {log_dir} were logged without their texts "
                        f"(monitoring.store_texts was false), so they cannot become training rows; set "
                        f"monitoring.store_texts: true to log texts from now on")
    ordered = with_text.sort_values("time", kind="stable")
    return ordered[["text", "label"]].reset_index(drop=True), len(feedback), len(joined) - len(with_text)


def _new_rows(original: pd.DataFrame, rows: pd.DataFrame, cfg: Config) -> tuple[pd.DataFrame, int, int]:
    """The rows to append (the text and label columns; any other column of the file is left empty); plus how
    many were already present / conflicting."""
    text_col, label_col = cfg.data.text_column, cfg.data.label_column
    for column in (text_col, label_col):
        if column not in original.columns:
            raise DataError(f"{cfg.data.path}: no column {column!r} (data.text_column / data.label_column); "
                            f"it has {list(map(str, original.columns))}")
    rows = rows.drop_duplicates("text", keep="last")
    known = dict(zip(original[text_col].astype(str), original[label_col].astype(str), strict=True))
    present = rows["text"].map(known)
    same = int((present == rows["label"]).sum())
    conflicts = int((present.notna() & (present != rows["label"])).sum())
    fresh = rows[present.isna()]
    labels = fresh["label"]
    if pd.api.types.is_integer_dtype(original[label_col]):
        labels = labels.astype(original[label_col].dtype)  # a Parquet file's integer labels stay integers
    new = pd.DataFrame({text_col: fresh["text"].to_numpy(), label_col: labels.to_numpy()})
    return new, same, conflicts


def write_table(frame: pd.DataFrame, path: Path, fmt: str) -> None:
    """`frame` as `path` in format `fmt`, written as read_table reads it back."""
    if fmt == "parquet":
        frame.to_parquet(path, index=False)
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    elif fmt == "tsv":  # read with QUOTE_NONE: no tabs or line breaks inside a field
        clean = frame.apply(lambda c: c.str.replace(r"[\t\r\n]+", " ", regex=True) if c.dtype == object else c)
        clean.to_csv(path, sep="\t", index=False, quoting=csv.QUOTE_NONE, escapechar=None)
    else:
        frame.to_csv(path, index=False)


def merge_feedback(cfg: Config) -> MergeResult:
    """Append the labelled logged predictions to cfg.data.path as a new version (see the module docstring)."""
    data_path = cfg.resolve_path(cfg.data.path)
    rows, labelled, without_text = labelled_rows(cfg)
    fmt = detect_format(data_path, cfg.data.format)
    original = read_table(data_path, cfg.data.format)
    new, same, conflicts = _new_rows(original, rows, cfg)
    result = MergeResult(str(data_path), labelled, len(new), same, conflicts, without_text, file_md5(data_path), None)
    if new.empty:
        return result
    merged = pd.concat([original, new], ignore_index=True)
    tmp = data_path.with_name(f".{data_path.stem}.merge-{os.getpid()}{data_path.suffix}")
    try:
        write_table(merged, tmp, fmt)
        gate_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": str(tmp)})})
        try:
            run_gate(gate_cfg)
        except DataError as exc:
            raise DataError(f"the merged data ({len(new)} new row(s)) failed the data gate, so {data_path} is "
                            f"unchanged: {' '.join(str(exc).split())}") from None
        os.replace(tmp, data_path)
    finally:
        tmp.unlink(missing_ok=True)
    result.md5 = file_md5(data_path)
    root = cfg.resolve_path(".")
    if is_dvc_project(root):
        result.dvc = add_data_version(root, data_path)
    return result
