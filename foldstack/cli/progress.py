"""What `foldstack train` shows while it runs: a transient progress display, one status line per stage, and the
run's log file (per-fold details; on screen too with `--verbose`)."""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from flows.train import RUN_LOG_DIR as LOG_DIR  # in the working directory: run logs, tracebacks
from foldstack.pipeline.embedding_stats import EMBEDDING, EmbeddingTotals


class ProgressReporter:
    """Turns stage events into a transient progress display and one status line per finished stage.

    The display moves from the first moment (a spinner on the running stage, a bar over the fold trainings) and
    disappears when the run is done; what stays on screen is one line per stage (one per base model for the
    fold trainings). Per-fold details go to the log (`log`, INFO): the run's log file, and the screen with
    `--verbose`.
    """

    def __init__(self, progress: Progress, log: logging.Logger | None = None, first_stage: str = "validate"):
        self.progress = progress
        self.log = log or logging.getLogger("foldstack.cli.train")
        self.stage_task = progress.add_task(first_stage, total=None)
        self.folds_task: Any = None
        self.stage_started = time.monotonic()
        self.fold_counts: dict[str, list[float]] = {}
        self.embedding: dict[str, EmbeddingTotals] = {}  # per base model, over the folds trained in this run
        self.reused = 0

    def line(self, stage: str, text: str) -> None:
        """A stage's status line, kept on screen above the transient display."""
        self.progress.console.print(f"[green]✓[/green] {stage:<12} {time.monotonic() - self.stage_started:5.1f}s  "
                                    f"{escape(text)}", highlight=False, soft_wrap=True)
        self.log.info("%s: %s", stage, text)
        self.stage_started = time.monotonic()

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        handler = getattr(self, f"_on_{event}", None)
        if handler is not None:
            handler(info)

    def _on_stage(self, info: dict[str, Any]) -> None:
        if info["stage"] == "bundle":  # evaluate sends no event of its own when it is done
            self.line("evaluate", "holdout metrics, leaderboard and plots written")
        self.progress.update(self.stage_task, description=info["stage"])

    def _on_validated(self, info: dict[str, Any]) -> None:
        self.line("validate", f"data {info['data_hash']}: {info['n_train']} training rows, {info['n_holdout']} "
                              f"holdout, classes {info['train_class_counts']}")

    def _on_folds(self, info: dict[str, Any]) -> None:
        grouping = info["grouping"]
        self.line("folds", f"{info['hash']}: k={info['k']} x {info['repeats']} repeat(s), "
                           f"{grouping.get('n_groups', info['n_rows'])} overlap groups "
                           f"({grouping.get('rows_in_multi_row_groups', 0)} rows share a group)")
        if "warning" in grouping:
            self.progress.console.print(f"[yellow]warning:[/yellow] {escape(grouping['warning'])}", soft_wrap=True)

    def _on_plan(self, info: dict[str, Any]) -> None:
        self.reused = info["skipped"]
        if info["skipped"]:
            self.log.info("resume: skipped %s", ", ".join(info.get("skipped_tasks", [])))
        self.progress.update(self.stage_task, description="train base models")
        if info["pending"]:
            self.folds_task = self.progress.add_task("fold trainings", total=info["pending"])

    def _on_fold_done(self, info: dict[str, Any]) -> None:
        if self.folds_task is not None:
            self.progress.advance(self.folds_task)
        model = str(info.get("model") or info["task"].split("/")[0])
        self.fold_counts.setdefault(model, []).append(float(info.get("seconds", 0.0)))
        if info.get(EMBEDDING):
            self.embedding.setdefault(model, EmbeddingTotals(model)).add(info[EMBEDDING])
        self.log.info("%s %.1fs%s", info["task"], info.get("seconds", 0.0), " (skipped)" if info.get("skipped") else "")

    def _on_collected(self, info: dict[str, Any]) -> None:
        fits = self.fold_counts.get(info["model"], [])
        done = f"{len(fits)} folds trained in {sum(fits):.1f}s" if fits else "every fold reused"
        self.line(info["model"], f"{done}; OOF accuracy {info['oof_accuracy']:.4f}, coverage {info['coverage']:.0%}")
        if info["model"] in self.embedding:  # encode throughput: the run's log (the screen too with --verbose)
            self.log.info("embedding %s", self.embedding[info["model"]].line())

    def _on_stacked(self, info: dict[str, Any]) -> None:
        cv = info["cv"]
        self.line("stack", f"meta-learner {info['kind']}: CV on OOF accuracy {cv.get('accuracy', float('nan')):.4f}, "
                           f"log loss {cv.get('log_loss', float('nan')):.4f}")

    def _on_distilled(self, info: dict[str, Any]) -> None:
        if info.get("enabled", True):
            self.line("distill", "student trained on the ensemble's soft targets")
        else:
            self.stage_started = time.monotonic()

    def finish(self, stage: str, text: str) -> None:
        """The last stage's line (the pipeline sends no event after it)."""
        self.line(stage, text)


def progress_display(console: Console, transient: bool = True) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=transient)


def run_log(verbose: bool) -> Path | None:
    """Send this run's log (INFO, per-fold details included) to a file under .foldstack/logs/; the screen gets
    warnings only, or the same INFO lines with `verbose`. Returns the file (None if it cannot be written)."""
    directory = Path.cwd() / LOG_DIR
    path = directory / f"train-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in root.handlers:
        handler.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        return None
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(file_handler)
    return path
