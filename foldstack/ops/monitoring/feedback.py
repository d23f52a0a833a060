"""Feedback: the true label of a logged prediction, from `POST /feedback` (source "api") or a file
(`foldstack feedback FILE`, source "file").

Under `<log_dir>/feedback/`: `feedback-<UTC stamp>-<pid>-<seq>.parquet` (request_id, label, time, source), one
file per accepted request or file, written whole through a temporary and `os.replace`. A later label for the
same request id wins (`read_feedback`). Nothing is written unless every item passes: a well-formed request id
(32 lowercase hex digits), one the prediction log holds, and a label of the model's label set.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from foldstack.core.data import read_table
from foldstack.errors import DataError
from foldstack.ops.monitoring.logfiles import PROBA_PREFIX, TIME, write_table_atomically

log = logging.getLogger("foldstack.ops.monitoring")

FEEDBACK = "feedback"
FEEDBACK_NAME = re.compile(r"^feedback-\d{8}T\d{6}-\d+-\d+\.parquet$")
REQUEST_ID = re.compile(r"[0-9a-f]{32}")
REQUEST_ID_PATTERN = "^[0-9a-f]{32}$"  # the same, as the OpenAPI document states it (anchored)
SCHEMA = pa.schema([("request_id", pa.string()), ("label", pa.string()), ("time", TIME), ("source", pa.string())])
MAX_NAMED = 5  # rows an error names before "and N more"
_SEQ = itertools.count(1)


class FeedbackError(DataError):
    """Feedback refused: `status` 404 when a request id is not in the log, else 422."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Feedback:
    request_id: str
    label: str


def feedback_dir(log_dir: Path) -> Path:
    return Path(log_dir) / FEEDBACK


def _named(positions: Sequence[int], what: str) -> str:
    """"row 3", "rows 3, 5" (what="row"); "items[0], items[2]" (what="items[]"); "" for a single item (what="")."""
    if not what:
        return ""
    more = f" and {len(positions) - MAX_NAMED} more" if len(positions) > MAX_NAMED else ""
    if what.endswith("[]"):
        return ", ".join(f"{what[:-2]}[{p}]" for p in positions[:MAX_NAMED]) + more + ": "
    shown = ", ".join(str(p) for p in positions[:MAX_NAMED])
    return f"{what}{'s' if len(positions) > 1 else ''} {shown}{more}: "


def _quoted(values: Sequence[str], limit: int = 40) -> str:
    """Values named in a message: ASCII-escaped (a lone surrogate cannot break the answer), shortened."""
    unique = list(dict.fromkeys(values))
    shown = [ascii(v) if len(ascii(v)) <= limit else ascii(v)[:limit] + "...'" for v in unique[:MAX_NAMED]]
    return ", ".join(shown) + (f" and {len(unique) - MAX_NAMED} more" if len(unique) > MAX_NAMED else "")


def check_feedback(items: Sequence[Feedback], *, known: Callable[[list[str]], set[str]],
                   labels: Callable[[str], Sequence[str]] | Sequence[str], what: str = "item", first: int = 0,
                   where: str = "") -> None:
    """Raise a one-line FeedbackError naming every item (`what`: "row", "items[]" or "" for a lone item;
    positions counted from `first`) whose
    request id is malformed or unknown to `known` (404), or whose label is outside the label set (422).

    `labels`: the label set, or a function of the request id giving the labels of the model that predicted it.
    """
    malformed = [i for i, item in enumerate(items) if not REQUEST_ID.fullmatch(item.request_id)]
    skip = set(malformed)
    wellformed = list(dict.fromkeys(item.request_id for i, item in enumerate(items) if i not in skip))
    found = known(wellformed) if wellformed else set()
    unknown = [i for i, item in enumerate(items) if i not in skip and item.request_id not in found]
    skip |= set(unknown)
    label_set = labels if callable(labels) else (lambda _rid: labels)
    bad_labels = [i for i, item in enumerate(items)
                  if i not in skip and item.label not in set(label_set(item.request_id))]
    problems = []
    if malformed:
        problems.append(f"{_named([i + first for i in malformed], what)}not a request id (32 lowercase hex "
                        f"digits, as /predict returns them): {_quoted([items[i].request_id for i in malformed])}")
    if unknown:
        problems.append(f"{_named([i + first for i in unknown], what)}no logged prediction has the request_id "
                        f"{_quoted([items[i].request_id for i in unknown])} (not logged, or not sampled)")
    if bad_labels:
        allowed = sorted({str(x) for i in bad_labels for x in label_set(items[i].request_id)})
        problems.append(f"{_named([i + first for i in bad_labels], what)}the label "
                        f"{_quoted([items[i].label for i in bad_labels])} is not one of the model's labels "
                        f"{allowed}")
    if problems:
        status = 404 if unknown and not malformed else 422
        raise FeedbackError(f"{where}{'; '.join(problems)}", status=status)


def record_feedback(log_dir: Path, items: Sequence[Feedback], *, source: str) -> Path:
    """Write `items` (already checked) as one feedback file; returns its path."""
    directory = feedback_dir(log_dir)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    table = pa.table({"request_id": [item.request_id for item in items], "label": [item.label for item in items],
                      "time": np.full(len(items), pd.Timestamp(now).value, dtype=np.int64),
                      "source": [source] * len(items)}, schema=SCHEMA)
    path = directory / f"feedback-{now:%Y%m%dT%H%M%S}-{os.getpid()}-{next(_SEQ):06d}.parquet"
    write_table_atomically(table, path)
    return path


def read_feedback(log_dir: Path) -> pd.DataFrame:
    """Every label recorded, the latest one per request id (time order); unreadable files are skipped with a
    warning."""
    directory = feedback_dir(log_dir)
    files = sorted(p for p in directory.iterdir() if FEEDBACK_NAME.match(p.name)) if directory.is_dir() else []
    tables = []
    for path in files:
        try:
            tables.append(pq.read_table(path).select(SCHEMA.names).cast(SCHEMA))
        except FileNotFoundError:
            continue
        except Exception as exc:
            log.warning("skipping unreadable feedback file %s: %s", path, " ".join(str(exc).split()))
    if not tables:
        return SCHEMA.empty_table().to_pandas()
    frame = pa.concat_tables(tables).to_pandas()
    frame = frame.sort_values("time", kind="stable").drop_duplicates("request_id", keep="last")
    return frame.reset_index(drop=True)


def read_feedback_file(path: Path) -> list[Feedback]:
    """The (request_id, label) rows of a csv/tsv/parquet/jsonl file; a missing column or an empty cell is a
    DataError naming the rows (data rows counted from 1)."""
    frame = read_table(Path(path))
    missing = [c for c in ("request_id", "label") if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: no column(s) {missing}; a feedback file has the columns request_id and label "
                        f"(it has {list(map(str, frame.columns))})")
    empty = sorted(set(np.flatnonzero(frame["request_id"].isna().to_numpy()))
                   | set(np.flatnonzero(frame["label"].isna().to_numpy())))
    if empty:
        raise DataError(f"{path}: {_named([i + 1 for i in empty], 'row')}an empty request_id or label")
    return [Feedback(_cell(rid), _cell(label)) for rid, label in zip(frame["request_id"], frame["label"], strict=True)]


def _cell(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a label 1 that a JSON or Parquet file holds as 1.0
    return str(value).strip()


def logged_labels(predictions: pd.DataFrame) -> dict[str, tuple[str, ...]]:
    """Request id -> the labels of the bundle that predicted it (its non-null proba_* columns)."""
    probas = [c for c in predictions.columns if c.startswith(PROBA_PREFIX)]
    if not probas:
        return {}
    present = predictions[probas].notna().to_numpy()
    names = [c[len(PROBA_PREFIX):] for c in probas]
    groups: dict[bytes, tuple[str, ...]] = {}
    result = {}
    for rid, row in zip(predictions["request_id"], present, strict=True):
        key = row.tobytes()
        if key not in groups:
            groups[key] = tuple(n for n, keep in zip(names, row, strict=True) if keep)
        result[rid] = groups[key]
    return result


def import_feedback_file(path: Path, log_dir: Path, predictions: pd.DataFrame) -> tuple[int, Path]:
    """Check every row of a feedback file against the log (`predictions`: read_prediction_log's frame), then
    record them all (source "file"); returns (rows, the feedback file written). Nothing is written on error."""
    items = read_feedback_file(path)
    by_id = logged_labels(predictions)
    check_feedback(items, known=lambda ids: {i for i in ids if i in by_id},
                   labels=lambda rid: by_id.get(rid, ()), what="row", first=1, where=f"{path}: ")
    return len(items), record_feedback(log_dir, items, source="file")
