"""The monitor's reports: monitoring.json, monitoring.md (one table a person reads) and its plots.

Every file is written to a temporary name and renamed, so a reader (the service's /metrics collector, the
Prefect flow) sees the previous report or the new one, never half of one. The plots follow the evaluate
stage's canvas (foldstack.core.plots.figure): 1200 px wide PNGs drawn on an Agg canvas.
"""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from foldstack.common.files import write_json
from foldstack.core import drift
from foldstack.core.plots.figure import ENSEMBLE_COLOR, OTHER_COLOR, new_figure, note_figure, save
from foldstack.ops.monitoring.reference import Reference

__all__ = ["REPORT_JSON", "REPORT_MD", "markdown", "write_reports"]

REPORT_JSON = "monitoring.json"
REPORT_MD = "monitoring.md"
PLOTS_DIR = "monitoring"
_VERDICT_MARK = {"ok": "ok", "drift": "**DRIFT**", "insufficient_data": "insufficient data"}


def write_reports(result: dict[str, Any], frame: pd.DataFrame, reference: Reference,
                  reports_dir: Path) -> dict[str, Any]:
    """Draw the plots, then write monitoring.md and monitoring.json (last: it announces a finished report)."""
    reports_dir = Path(reports_dir)
    (reports_dir / PLOTS_DIR).mkdir(parents=True, exist_ok=True)
    result = json_safe({**result, "plots": [p.relative_to(reports_dir).as_posix()
                                            for p in _plots(frame, reference, reports_dir / PLOTS_DIR)]})
    _write_text(reports_dir / REPORT_MD, markdown(result))
    write_json(reports_dir / REPORT_JSON, result)
    return result


def json_safe(obj: Any) -> Any:
    """NaN and infinities as null (JSON has neither), numpy scalars as Python numbers, recursively."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _fmt(value: Any, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(result: dict[str, Any]) -> str:
    """The report as Markdown: the verdict, the window, one row per check, live quality, the plots."""
    window = result.get("window") or {}
    ref = result.get("reference") or {}
    lines = ["# Monitoring report", "",
             f"**Drift detected: {'yes' if result['drift_detected'] else 'no'}** · {result['n_requests']} requests "
             f"({window.get('first') or '–'} to {window.get('last') or '–'}) · model version "
             f"`{result.get('model_version') or '–'}` · {result['n_feedback']} with feedback labels", "",
             f"Reference: the training snapshot ({ref.get('n_train', '–')} texts) and the {ref.get('model', '–')}'s "
             f"holdout predictions (bundle `{ref.get('bundle_id') or '–'}`). Generated {result['generated_at']}.", "",
             "| check | kind | statistic | threshold | verdict | detail |", "|---|---|---:|---:|---|---|"]
    lines += [f"| {c['name']} | {c['kind']} | {_fmt(c['statistic'])} | {c['threshold']:g} | "
              f"{_VERDICT_MARK[c['verdict']]} | {_cell(c['detail'])} |" for c in result["checks"]]
    live = result.get("quality") or {}
    if live.get("accuracy") is not None:
        holdout = live.get("holdout") or {}
        lines += ["", f"## Live quality ({live['n']} labelled requests)", "",
                  "| metric | live | holdout |", "|---|---:|---:|"]
        lines += [f"| {m} | {_fmt(live.get(m))} | {_fmt(holdout.get(m))} |" for m in ("accuracy", "log_loss", "ece")]
    if result.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in result["plots"]]
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _save_atomic(figure: Any, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp.png")  # the suffix tells matplotlib the format
    save(figure, tmp)
    os.replace(tmp, path)
    return path


def _plots(frame: pd.DataFrame, reference: Reference, out_dir: Path) -> list[Path]:
    if not len(frame):
        tmp = out_dir / f".empty.{uuid.uuid4().hex}.tmp.png"
        note_figure(tmp, "monitoring", "the prediction log's window is empty")
        os.replace(tmp, out_dir / "text_length.png")
        return [out_dir / "text_length.png"]
    return [_length_plot(frame, reference, out_dir / "text_length.png"),
            _class_plot(frame, reference, out_dir / "class_shares.png"),
            _confidence_plot(frame, reference, out_dir / "confidence.png")]


def _length_plot(frame: pd.DataFrame, ref: Reference, path: Path) -> Path:
    words = frame["text_words"].to_numpy(dtype=np.float64)
    top = float(np.quantile(np.r_[ref.train_words, words], 0.99)) + 1
    step = max(1, int(np.ceil(top / 50)))  # whole words per bin: word counts are integers
    bins = np.arange(0, top + step, step) - 0.5
    return _histograms(ref.train_words, f"training texts (n={ref.train_words.size})", words, bins, path,
                       xlabel="words per text (the top 1% left out)",
                       title="Text length: window against the training texts")


def _histograms(reference: np.ndarray, reference_label: str, window: np.ndarray, bins: np.ndarray, path: Path,
                *, xlabel: str, title: str) -> Path:
    """The reference as a filled histogram and the window as an outline over it, both as densities."""
    figure = new_figure(450)
    ax = figure.add_subplot()
    ax.hist(reference, bins=bins, density=True, alpha=0.5, color=OTHER_COLOR, label=reference_label)
    ax.hist(window, bins=bins, density=True, histtype="step", linewidth=2, color=ENSEMBLE_COLOR,
            label=f"window (n={window.size})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=13)
    ax.legend()
    return _save_atomic(figure, path)


def _class_plot(frame: pd.DataFrame, ref: Reference, path: Path) -> Path:
    index = {label: i for i, label in enumerate(ref.labels)}
    codes = np.array([index[str(v)] for v in frame["predicted"] if str(v) in index], dtype=np.int64)
    shares = [drift.category_shares(ref.holdout_predicted, len(ref.labels)),
              drift.category_shares(codes, len(ref.labels))]
    x = np.arange(len(ref.labels))
    figure = new_figure(min(400 + 10 * len(ref.labels), 900))
    ax = figure.add_subplot()
    for offset, values, color, name in ((-0.2, shares[0], OTHER_COLOR, f"holdout predictions ({ref.role})"),
                                        (0.2, shares[1], ENSEMBLE_COLOR, f"window (n={codes.size})")):
        ax.bar(x + offset, values, width=0.4, color=color, label=name)
    ax.set_xticks(x, ref.labels, rotation=45 if len(ref.labels) > 6 else 0, ha="right" if len(ref.labels) > 6 else "center")
    ax.set_ylabel("share of predictions")
    ax.set_title("Predicted classes: window against the holdout predictions", fontsize=13)
    ax.legend()
    return _save_atomic(figure, path)


def _confidence_plot(frame: pd.DataFrame, ref: Reference, path: Path) -> Path:
    confidence = frame["confidence"].to_numpy(dtype=np.float64)
    bins = np.linspace(1.0 / max(len(ref.labels), 1), 1.0, 31)
    return _histograms(ref.holdout_confidence, f"holdout predictions (n={ref.holdout_confidence.size})",
                       confidence, bins, path, xlabel="top-class probability",
                       title="Confidence: window against the holdout predictions")
