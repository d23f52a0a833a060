"""The whole pipeline in-process (`foldstack train`): every stage in order, the fold tasks in a process pool."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foldstack.config import Config
from foldstack.pipeline.base_models import collect_oof, train_fold
from foldstack.pipeline.bundle_stage import make_bundle
from foldstack.pipeline.distill import distill
from foldstack.pipeline.evaluation import evaluate, stack
from foldstack.pipeline.identities import FoldTask, fold_task_done, plan_fold_tasks
from foldstack.pipeline.layout import Reporter, log_report
from foldstack.pipeline.prepare import make_folds, validate
from foldstack.runtime.pools import ProcessPool


@dataclass
class PipelineResult:
    bundle: Path
    metrics: dict[str, float]
    leaderboard: list[dict[str, Any]]
    trained: int
    skipped: int


def _spawn() -> multiprocessing.context.BaseContext:
    return multiprocessing.get_context("spawn")


def run_fold_tasks(cfg: Config, tasks: list[FoldTask], report: Reporter = log_report,
                   max_workers: int | None = None) -> list[dict[str, Any]]:
    """Run fold tasks in-process or in a process pool (runtime.max_workers); returns their results."""
    workers = min(max_workers or cfg.runtime.max_workers, max(1, len(tasks)))
    results = []
    if workers <= 1:
        for task in tasks:
            results.append(train_fold(cfg, task.model, task.repeat, task.fold))
            report("fold_done", results[-1])
        return results
    # One core per worker process; spawned, as the caller (a CLI, a notebook) may run threads of its own.
    with ProcessPool(workers, threads=1, context=_spawn) as pool:
        futures = [pool.submit(train_fold, cfg, t.model, t.repeat, t.fold) for t in tasks]
        for future in as_completed(futures):
            results.append(pool.result(future))
            report("fold_done", results[-1])
    return results


def run_pipeline(cfg: Config, report: Reporter = log_report) -> PipelineResult:
    """The whole pipeline in-process (the `foldstack train` command)."""
    report("stage", {"stage": "validate"})
    summary = validate(cfg)
    report("validated", summary)
    report("stage", {"stage": "folds"})
    report("folds", make_folds(cfg))
    tasks = plan_fold_tasks(cfg)
    pending = [t for t in tasks if not fold_task_done(cfg, t)]
    report("plan", {"total": len(tasks), "pending": len(pending), "skipped": len(tasks) - len(pending),
                    "skipped_tasks": [t.label for t in tasks if t not in pending]})
    run_fold_tasks(cfg, pending, report)
    for spec in cfg.base_models:
        report("collected", collect_oof(cfg, spec.name))
    report("stage", {"stage": "stack"})
    report("stacked", stack(cfg))
    report("stage", {"stage": "distill"})
    report("distilled", distill(cfg))
    report("stage", {"stage": "evaluate"})
    evaluation = evaluate(cfg)
    report("stage", {"stage": "bundle"})
    bundle = make_bundle(cfg)
    return PipelineResult(bundle=Path(bundle["bundle"]), metrics=evaluation["metrics"],
                          leaderboard=evaluation["leaderboard"], trained=len(pending),
                          skipped=len(tasks) - len(pending))
