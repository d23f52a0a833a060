"""The evaluate stage's one-page report, `eval/report.html`: everything a person checks after a run, in one file.

Self-contained on purpose (it is mailed, attached to tickets, opened offline): CSS inline, every plot embedded
as a base64 `data:` URI, no script, no link to any server. Every value goes through `html.escape`.

Sections: the title (data set, data hash, date, foldstack version), the holdout leaderboard, the student beside
the ensemble (when distillation is on), the meta-learner's choice, the leakage diagnostics, the data gate's
summary (`validation.report_dir`/validation.json), the overlap groups, and every PNG of `eval/plots`.
"""

from __future__ import annotations

import base64
import math
import numbers
from collections.abc import Iterable
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

from foldstack.common.files import read_json
from foldstack.common.version import __version__ as foldstack_version
from foldstack.config import Config
from foldstack.errors import FoldstackError
from foldstack.pipeline.embedding_stats import COLUMNS as EMBEDDING_COLUMNS, recorded_totals
from foldstack.pipeline.layout import Layout
from foldstack.pipeline.validation import REPORT_JSON as VALIDATION_JSON

REPORT_HTML = "report.html"

# Captions of the plots we know; any other PNG in eval/plots is shown under its file name.
PLOT_CAPTIONS = {
    "metrics": "Holdout accuracy and log loss of every model, with 95% bootstrap intervals",
    "confusion": "The ensemble's confusion matrix on the holdout (rows: actual class, columns: predicted)",
    "roc": "ROC curves on the holdout",
    "pr": "The ensemble's precision-recall curve per class on the holdout",
    "calibration": "Calibration on the holdout: top-class confidence against accuracy, per model",
    "diversity": "Diversity: correlation of the base models' out-of-fold errors (low is good for stacking)",
    "meta_weights": "The meta-learner's weights on the base models",
}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; display: block; max-width: 100%; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; } th { background: #f2f2f2; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.ensemble { background: #eef6ee; font-weight: 600; } tr.student { background: #eef1f8; }
tr.baseline { color: #555; } .meta { color: #555; } .warn { color: #a33; font-weight: 600; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #444; font-size: 0.92em; margin-top: 0.3em; } code { background: #f5f5f5; padding: 0 0.2em; }
"""


def write_report(cfg: Config, eval_dir: Path, leaderboard: list[dict[str, Any]],
                 diagnosis: dict[str, Any]) -> Path:
    """Write `eval_dir/report.html` (evaluate calls this inside its box, after the plots); return its path."""
    path = Path(eval_dir) / REPORT_HTML
    path.write_text(render_report(cfg, eval_dir, leaderboard, diagnosis), encoding="utf-8")
    return path


def render_report(cfg: Config, eval_dir: Path, leaderboard: list[dict[str, Any]],
                  diagnosis: dict[str, Any]) -> str:
    """The report's HTML, from the run's files (snapshot, stack, validation report, plots) and evaluate's values."""
    layout = Layout.of(cfg)
    snapshot = _read_optional(layout.snapshot / "snapshot.json") or {}
    stacked = _read_optional(layout.stack / "meta_cv.json") or {}
    validation_path = cfg.resolve_path(cfg.validation.report_dir) / VALIDATION_JSON
    body = [
        _header(cfg.data.path, snapshot),
        _section("Holdout leaderboard", _leaderboard_table(leaderboard)),
        *_student_section(leaderboard),
        _section("Meta-learner", _meta_section(stacked)),
        _section("Leakage diagnostics (out-of-fold vs holdout)", _leakage_section(diagnosis)),
        _section("Data gate", _validation_section(_read_optional(validation_path), validation_path)),
        _section("Overlap groups", _grouping_section(snapshot.get("grouping") or {})),
        *_embedding_section(cfg),
        _section("Plots", _plots_section(Path(eval_dir) / "plots")),
    ]
    title = f"foldstack report: {cfg.data.path}"
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def _read_optional(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def _section(title: str, content: str) -> str:
    return f"<section>\n<h2>{escape(title)}</h2>\n{content}\n</section>"


def _p(text: str, css: str = "") -> str:
    return f"<p class=\"{css}\">{escape(text)}</p>" if css else f"<p>{escape(text)}</p>"


def _cell(value: Any) -> str:
    """One table cell: numbers right-aligned (floats to 4 decimals, NaN as n/a), everything escaped."""
    if isinstance(value, bool) or value is None:
        return f"<td>{escape(str(value))}</td>"
    if isinstance(value, numbers.Integral):
        return f"<td class=\"num\">{int(value)}</td>"
    if isinstance(value, numbers.Real):
        value = float(value)
        return f"<td class=\"num\">{'n/a' if not math.isfinite(value) else f'{value:.4f}'}</td>"
    return f"<td>{escape(str(value))}</td>"


def _table(columns: list[str], rows: Iterable[list[Any]], row_classes: Iterable[str] | None = None) -> str:
    head = "<tr>" + "".join(f"<th>{escape(str(c))}</th>" for c in columns) + "</tr>"
    classes = list(row_classes) if row_classes is not None else None
    lines = []
    for i, row in enumerate(rows):
        css = f" class=\"{escape(classes[i])}\"" if classes and classes[i] else ""
        lines.append(f"<tr{css}>" + "".join(_cell(v) for v in row) + "</tr>")
    return f"<table>\n<thead>{head}</thead>\n<tbody>\n" + "\n".join(lines) + "\n</tbody>\n</table>"


def _header(data_path: str, snapshot: dict[str, Any]) -> str:
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    facts = [("data set", data_path), ("data hash", snapshot.get("data_hash", "n/a")),
             ("training rows", snapshot.get("n_train", "n/a")), ("holdout rows", snapshot.get("n_holdout", "n/a")),
             ("report written", when), ("foldstack", foldstack_version)]
    items = "".join(f"<li><b>{escape(k)}:</b> <code>{escape(str(v))}</code></li>" for k, v in facts)
    return f"<h1>foldstack run report: {escape(data_path)}</h1>\n<ul class=\"meta\">{items}</ul>"


def _leaderboard_table(records: list[dict[str, Any]]) -> str:
    """One row per model, in evaluate's order (best holdout log loss first)."""
    if not records:
        return _p("No leaderboard: evaluate scored no model.")
    columns = list(records[0])
    return (_table(columns, ([r.get(c) for c in columns] for r in records), (str(r.get("role", "")) for r in records))
            + _p("Every model is scored on the same holdout rows, which no model or meta-learner saw in training.",
                 "meta"))


def _student_section(records: list[dict[str, Any]]) -> list[str]:
    """The distilled student against the ensemble it learned from; nothing when distillation is off."""
    student = next((r for r in records if r.get("role") == "student"), None)
    if student is None:
        return []
    ensemble = next((r for r in records if r.get("role") == "ensemble"), {})
    metrics = [m for m in ("accuracy", "macro_f1", "log_loss", "ece") if m in student]
    rows = [[m, student.get(m), ensemble.get(m, math.nan), _difference(student.get(m), ensemble.get(m))]
            for m in metrics]
    text = _p(f"The student {student.get('model')!s} is one model trained on the ensemble's out-of-fold "
              f"probabilities; it is scored on the same holdout.")
    return [_section("Distilled student", text + _table(["metric", "student", "ensemble", "student - ensemble"],
                                                         rows))]


def _difference(a: Any, b: Any) -> float:
    return float(a) - float(b) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else math.nan


def _meta_section(stacked: dict[str, Any]) -> str:
    """Which meta-learner was fitted, why, and (meta.kind auto) every candidate's CV score on the OOF."""
    if not stacked:
        return _p("No stack/meta_cv.json: the stack stage has not run.", "warn")
    parts = [_p(f"Fitted: {stacked.get('kind')} (requested: {stacked.get('requested')})."),
             _p(f"Reason: {stacked.get('reason') or 'as requested'}")]
    candidates = stacked.get("candidates") or {}
    if candidates:
        columns = ["candidate", "log_loss", "log_loss_minus_best", "paired_se", "accuracy", "macro_f1"]
        rows = [[kind, *(c.get(k, math.nan) for k in columns[1:])] for kind, c in candidates.items()]
        classes = ["ensemble" if kind == stacked.get("kind") else "" for kind in candidates]
        parts.append(_table(columns, rows, classes))
        parts.append(_p("Scores are cross-validated on the base models' out-of-fold predictions (training rows "
                        "only); the chosen kind is highlighted.", "meta"))
    return "\n".join(parts)


def _leakage_section(diagnosis: dict[str, Any]) -> str:
    """Each model's OOF (or meta CV) estimate beside its holdout score; a warning where the OOF looks optimistic."""
    rows = diagnosis.get("rows") or []
    warnings = diagnosis.get("warnings") or []
    parts = [_p(f"WARNING: {w}", "warn") for w in warnings] or [
        _p("No warning: no model's out-of-fold estimate is better than its holdout score by more than "
           f"{diagnosis.get('z', 'n/a')} standard errors.")]
    if rows:
        columns = ["model", "estimate", "oof_accuracy", "holdout_accuracy", "accuracy_gap", "accuracy_gap_se",
                   "oof_log_loss", "holdout_log_loss", "log_loss_gap", "log_loss_gap_se", "optimistic"]
        parts.append(_table(columns, ([r.get(c) for c in columns] for r in rows),
                            ("warn" if r.get("optimistic") else "" for r in rows)))
    return "\n".join(parts)


def _validation_section(report: dict[str, Any] | None, path: Path) -> str:
    """The data gate's status and each rule it broke; says so when the validate stage left no report."""
    if report is None:
        return _p(f"No data-gate report at {path}: the validate stage did not write one "
                  "(validation.report_dir).", "warn")
    rules = report.get("rules") or []
    broken = [r for r in rules if not r.get("passed")]
    parts = [_p(f"Status: {report.get('status')}; {sum(bool(r.get('passed')) for r in rules)} of {len(rules)} "
                f"expectations met; validated {report.get('validated_at')}; report {path}.")]
    if report.get("error"):
        parts.append(_p(f"ERROR: {report['error']}", "warn"))
    if broken:
        columns = ["rule", "batch", "severity", "column", "unexpected_count", "detail"]
        parts.append(_table(columns, ([r.get(c) for c in columns] for r in broken),
                            ("warn" if r.get("severity") == "error" else "" for r in broken)))
    return "\n".join(parts)


def _grouping_section(grouping: dict[str, Any]) -> str:
    """The overlap groups the folds and the holdout split kept whole."""
    if not grouping:
        return _p("No grouping statistics in snapshot.json.")
    rows = [[key, value] for key, value in grouping.items() if key not in ("links", "warning")]
    rows += [[f"linked by {kind}", n] for kind, n in (grouping.get("links") or {}).items()]
    parts = [_table(["statistic", "value"], rows)]
    if grouping.get("warning"):
        parts.append(_p(f"WARNING: {grouping['warning']}", "warn"))
    return "\n".join(parts)


def _embedding_section(cfg: Config) -> list[str]:
    """Encode throughput per base model that embeds texts, from its fold tasks' records; nothing when none does."""
    try:
        totals = recorded_totals(cfg)
    except (OSError, ValueError, FoldstackError):  # no snapshot or folds on disk: nothing to total
        return []
    if not totals:
        return []
    text = _p("Texts through each frozen encoder, summed over the fold tasks of this stack (recorded by the run "
              "that trained each fold); texts from the cache were embedded before, at no cost.")
    return [_section("Embedding", text + _table(list(EMBEDDING_COLUMNS), (t.cells() for t in totals.values())))]


def _plots_section(plots_dir: Path) -> str:
    """Every PNG of eval/plots, embedded, known ones first in a sensible order."""
    pngs = sorted(plots_dir.glob("*.png"), key=_plot_order) if plots_dir.is_dir() else []
    if not pngs:
        return _p("No plots (evaluate.plots is off, or no plot was written).")
    return "\n".join(_figure(png) for png in pngs)


def _plot_order(path: Path) -> tuple[int, str]:
    order = list(PLOT_CAPTIONS)
    return (order.index(path.stem) if path.stem in order else len(order), path.name)


def plot_caption(path: Path) -> str:
    return PLOT_CAPTIONS.get(path.stem, path.stem.replace("_", " "))


def _figure(png: Path) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    caption = plot_caption(png)
    return (f"<figure>\n<img src=\"data:image/png;base64,{data}\" alt=\"{escape(caption)}\">\n"
            f"<figcaption>{escape(caption)} <code>{escape(png.name)}</code></figcaption>\n</figure>")
