"""The run's dashboard in Prefect: a progress artifact while base models train, then a markdown run report
and a leaderboard table. Artifact keys are stable, so the Artifacts page shows each one's history across runs.

The run report embeds the key plots (eval/plots: metrics, confusion, calibration) as base64 data URIs, which the
Prefect UI renders, up to EMBED_BUDGET characters; beyond it, and for every other plot, it gives the file's path.
It names eval/report.html, the self-contained page with everything (foldstack.pipeline.report).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact

from foldstack.pipeline import stages
from foldstack.config import Config
from foldstack.pipeline.embedding_stats import COLUMNS as EMBEDDING_COLUMNS, EmbeddingTotals
from foldstack.pipeline.report import REPORT_HTML, plot_caption

PROGRESS_KEY = "foldstack-training-progress"
REPORT_KEY = "foldstack-run-report"
LEADERBOARD_KEY = "foldstack-leaderboard"
KEY_PLOTS = ("metrics.png", "confusion.png", "calibration.png")
# The base64 characters of images one run report may embed: the artifact lives in Prefect's database and the UI
# loads it whole, so about 1.5 MB of text at most (three plots of the default size fit).
EMBED_BUDGET = 1_500_000


class TrainingProgress:
    """Share of fold tasks finished (trained or reused), as a Prefect progress artifact."""

    def __init__(self, total: int):
        self.total = total
        self.finished = 0
        self.reused = 0
        self.artifact_id = create_progress_artifact(progress=self._percent(), key=PROGRESS_KEY,
                                                    description=self._describe())

    def _percent(self) -> float:
        return 100.0 * self.finished / self.total if self.total else 100.0

    def _describe(self) -> str:
        return f"base-model training: {self.finished}/{self.total} fold tasks finished ({self.reused} reused)"

    def advance(self, skipped: bool) -> None:
        from prefect.artifacts import update_progress_artifact

        self.finished += 1
        self.reused += int(skipped)
        update_progress_artifact(self.artifact_id, progress=self._percent(), description=self._describe())


def _format(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def run_report(cfg: Config, *, data: dict[str, Any], folds: dict[str, Any], trained: list[str],
               reused: list[str], failed: list[str], fit_seconds: dict[str, float], stacked: dict[str, Any],
               evaluation: dict[str, Any], bundle: str, registration: dict[str, Any],
               versioning: dict[str, Any], reruns: dict[str, Any] | None = None,
               embedding: Mapping[str, EmbeddingTotals] | None = None) -> str:
    """The markdown run report: data, validation, what DVC skipped, training (what was reused), encode
    throughput, leaderboard, where it went. `reruns`: the plan-reruns task's answer plus `skipped_by_dvc`, the
    stages not recomputed; `embedding`: per base model, the embedding counters of its folds trained this run."""
    validation = data.get("validation") or {}
    classes = ", ".join(f"{k} {v}" for k, v in data.get("train_class_counts", {}).items())
    lines = [
        "# foldstack run report", "",
        f"**Bundle:** `{bundle}`  ",
        f"**Registry:** {_registry_line(registration)}  ",
        f"**Versioning:** {versioning.get('status', 'n/a')}", "",
        *_reruns_section(reruns),
        "## Data", "",
        "| data file | training rows | holdout rows | classes (training) | data hash | validation |",
        "|---|---:|---:|---|---|---|",
        f"| `{cfg.data.path}` | {data.get('n_train')} | {data.get('n_holdout')} | {classes} | "
        f"`{data.get('data_hash')}` | {validation.get('status', 'n/a')}"
        f"{' (' + str(len(validation['warnings'])) + ' warnings)' if validation.get('warnings') else ''} |",
        "",
        "## Base models", "",
        f"{folds.get('k')} folds x {folds.get('repeats')} repeat(s), fold hash `{folds.get('hash')}`: "
        f"**{len(trained)} fold tasks trained, {len(reused)} reused** (finished before with the same identity)"
        + (f", **{len(failed)} failed**" if failed else "") + ".", "",
        *_grouping_lines(data.get("grouping") or folds.get("grouping") or {}),
        "| model | kind | fit seconds (this run) |", "|---|---|---:|",
    ]
    lines += [f"| {spec.name} | {spec.kind} | {fit_seconds.get(spec.name, 0.0):.1f} |" for spec in cfg.base_models]
    if reused:
        lines += ["", "Reused: " + ", ".join(f"`{label}`" for label in reused)]
    lines += embedding_section(embedding or {})
    lines += ["", "## Holdout leaderboard", ""]
    leaderboard_md = stages.Layout.of(cfg).eval / "leaderboard.md"
    lines.append(leaderboard_md.read_text() if leaderboard_md.is_file() else _table(evaluation["leaderboard"]))
    cv = stacked.get("cv", {})
    lines += ["", f"## Meta-learner: {stacked.get('kind')}", "",
              "Cross-validated on the OOF predictions: " + ", ".join(
                  f"{k} {_format(v)}" for k, v in cv.items() if isinstance(v, (int, float))), ""]
    lines += plots_section(stages.Layout.of(cfg).eval)
    return "\n".join(lines)


def plots_section(eval_dir: Path, budget: int = EMBED_BUDGET) -> list[str]:
    """The full report's path, the key plots embedded (while they fit in `budget`), the other plots' paths."""
    report = eval_dir / REPORT_HTML
    lines = ["## Plots", "",
             (f"**Full report** (one self-contained HTML file, every plot): `{report}`" if report.is_file()
              else "No eval/report.html (the evaluate stage has not written one)."), ""]
    plots = eval_dir / "plots"
    pngs = sorted(plots.glob("*.png")) if plots.is_dir() else []
    key = [plots / name for name in KEY_PLOTS if plots / name in pngs]
    for png in key:
        encoded = base64.b64encode(png.read_bytes()).decode("ascii")
        if len(encoded) <= budget:
            budget -= len(encoded)
            lines += [f"**{plot_caption(png)}**", "", f"![{png.stem}](data:image/png;base64,{encoded})", ""]
        else:
            lines += [f"**{plot_caption(png)}**: `{png}` (too large to embed here)", ""]
    others = [png for png in pngs if png not in key]
    if others:
        lines += ["Other plots: " + ", ".join(f"`{png}`" for png in others), ""]
    return lines


def embedding_section(totals: Mapping[str, EmbeddingTotals]) -> list[str]:
    """Encode throughput per base model that embeds texts, over its folds trained this run; nothing when none."""
    if not totals:
        return []
    lines = ["", "## Embedding", "",
             "Texts through the frozen encoder in the fold tasks trained this run; texts from the cache were "
             "embedded before (an earlier fold, preset or run with the same model), at no cost.", "",
             "| " + " | ".join(EMBEDDING_COLUMNS) + " |", "|---|---:|---:|---:|---:|"]
    return lines + ["| " + " | ".join(total.cells()) + " |" for total in totals.values()]


def _grouping_lines(grouping: dict[str, Any]) -> list[str]:
    """The overlap groups the folds and the holdout kept whole, and the warning when one is too large."""
    if not grouping:
        return []
    links = ", ".join(f"{kind} {n}" for kind, n in grouping.get("links", {}).items())
    lines = [f"Overlap groups: **{grouping.get('n_groups')}** for {grouping.get('n_rows')} training rows; "
             f"{grouping.get('rows_in_multi_row_groups')} rows share a group, the largest holds "
             f"{grouping.get('largest_group')} ({grouping.get('largest_group_share', 0):.1%}); joined by {links}.", ""]
    if "warning" in grouping:
        lines += [f"> **WARNING** {grouping['warning']}", ""]
    return lines


def _reruns_section(reruns: dict[str, Any] | None) -> list[str]:
    """Which stages DVC found up to date (not recomputed) and which ran, each with DVC's reason."""
    if reruns is None:
        return []
    lines = ["## Incremental rerun (DVC)", ""]
    if not reruns.get("lines"):
        return lines + [f"Every stage ran: {reruns.get('status', 'n/a')}.", ""]
    skipped = reruns.get("skipped_by_dvc", [])
    lines.append(f"**{len(skipped)} stage(s) skipped by DVC**"
                 + (": " + ", ".join(f"`{name}`" for name in skipped) if skipped else "") + ".")
    return lines + ["", "```", *reruns["lines"], "```", ""]


def _registry_line(registration: dict[str, Any]) -> str:
    if registration.get("status") != "done":
        return registration.get("status", "n/a")
    gate = registration.get("gate") or {}
    promoted = "promoted to production" if registration.get("promoted") else "not promoted"
    return (f"{registration.get('model')} {registration.get('version')}, {promoted}"
            + (f" ({gate.get('reason')})" if gate.get("reason") else "")
            + (" - registered by an earlier run, not again (dvc: up to date)" if registration.get("skipped") else ""))


def _table(records: list[dict[str, Any]]) -> str:
    if not records:
        return "(no leaderboard)"
    columns = list(records[0])
    rows = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    rows += ["| " + " | ".join(_format(r[c]) for c in columns) + " |" for r in records]
    return "\n".join(rows)


def publish_run_artifacts(report_markdown: str, leaderboard: list[dict[str, Any]], bundle: str | Path) -> None:
    """The markdown run report and the base models vs ensemble table, under their stable keys."""
    create_markdown_artifact(report_markdown, key=REPORT_KEY, description=f"foldstack run report; bundle {bundle}")
    # Four decimals, as in the report: full float precision reads as noise in the UI's table.
    rounded = [{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()} for row in leaderboard]
    create_table_artifact(rounded, key=LEADERBOARD_KEY,
                          description="holdout metrics: base models, baselines and the ensemble")
