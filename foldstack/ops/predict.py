"""Batch prediction of a file of texts with a bundle (the CLI's `predict` and the batch flow).

The output has one row per text: row, prediction, proba_<label>..., model_version and request_id (a new id per
text). With `monitoring` (the params' section, log_predictions on) the predictions are appended to the
prediction log too (source "predict", latency_ms: the text's share of its batch's time), so feedback for them
can be given with `foldstack feedback FILE` (the output's request_id column).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from foldstack.bundle import Bundle, load_bundle
from foldstack.core.data import read_table
from foldstack.errors import DataError
from foldstack.ops.monitoring.predlog import PredictionLog

if TYPE_CHECKING:
    from foldstack.config.monitoring import MonitoringConfig


def read_texts(path: Path, text_column: str) -> list[str]:
    frame = read_table(Path(path))
    if text_column not in frame.columns:
        raise DataError(f"{path}: no column {text_column!r}; the file has columns {list(map(str, frame.columns))} "
                        f"(use --text-column)")
    texts = frame[text_column]
    null = texts.isna().to_numpy()
    if null.any():
        rows = (np.flatnonzero(null)[:5] + 1).tolist()
        raise DataError(f"{path}: column {text_column!r} is empty at row(s) {rows}")
    # Raw texts: the bundle normalises them as its training data was (Bundle.prepare).
    return [str(t) for t in texts]


def predictions_frame(bundle: Bundle, texts: list[str], batch_size: int = 1024, progress: bool = False,
                      predlog: PredictionLog | None = None) -> pd.DataFrame:
    probas = []
    ids = [uuid.uuid4().hex for _ in texts]
    batches = range(0, len(texts), batch_size)
    if progress:
        from rich.progress import track  # deferred: rich

        batches = track(batches, description="predicting", transient=True)
    names = bundle.label_map.names
    for start in batches:
        started = time.perf_counter()
        chunk = texts[start:start + batch_size]
        proba = bundle.predict_proba(chunk)  # the bundle normalises them
        probas.append(proba)
        if predlog is not None:
            predlog.record(ids[start:start + batch_size], chunk, bundle.label_map.decode(proba.argmax(1)), proba,
                           labels=names, model_version=bundle.version, bundle_id=bundle.manifest.get("bundle_id"),
                           latency_ms=(time.perf_counter() - started) * 1000.0 / max(len(chunk), 1))
    proba = np.concatenate(probas) if probas else np.zeros((0, len(bundle.labels)))
    frame = pd.DataFrame({"row": np.arange(1, len(texts) + 1), "prediction": bundle.label_map.decode(proba.argmax(1))})
    for i, name in enumerate(names):
        frame[f"proba_{name}"] = proba[:, i]
    frame["model_version"] = bundle.version
    frame["request_id"] = ids
    return frame


def write_frame(frame: pd.DataFrame, output: Path) -> None:
    """Write csv/tsv/parquet/jsonl by extension, via a temporary file: never half a file."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{uuid.uuid4().hex[:8]}.tmp")
    suffix = output.suffix.lower()
    if suffix == ".parquet":
        frame.to_parquet(tmp, index=False)
    elif suffix in (".jsonl", ".ndjson"):
        frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
    elif suffix in (".tsv", ".tab"):
        frame.to_csv(tmp, sep="\t", index=False)
    elif suffix == ".csv":
        frame.to_csv(tmp, index=False)
    else:
        raise DataError(f"{output}: unknown output format {suffix!r}; use .csv, .tsv, .parquet or .jsonl")
    os.replace(tmp, output)


def predict_file(bundle: Path | Bundle, input_path: Path, output: Path, *, text_column: str = "text",
                 batch_size: int = 1024, device: str = "cpu", monitoring: MonitoringConfig | None = None,
                 monitoring_root: Path | None = None) -> int:
    """Predict every text of `input_path` and write labels + probabilities + model version + request ids to
    `output`; with `monitoring`, log them (paths relative to `monitoring_root`, default the working directory)."""
    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, device=device)
    texts = read_texts(input_path, text_column)
    predlog = (PredictionLog.from_config(monitoring, Path(monitoring_root or Path.cwd()), source="predict")
               if monitoring is not None else None)
    try:
        frame = predictions_frame(loaded, texts, batch_size=batch_size, progress=True, predlog=predlog)
        write_frame(frame, output)
    finally:
        if predlog is not None:
            predlog.close()  # what is still buffered goes to the log before predict returns
    return len(frame)
