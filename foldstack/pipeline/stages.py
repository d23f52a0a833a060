"""The pipeline's stage functions: the one implementation behind the CLI, the Prefect tasks and dvc.yaml.

Each stage reads files, computes, and writes its box atomically (see docs/ARCHITECTURE.md). Stages take the
validated `Config` and return a small JSON-able summary; none imports an orchestrator. They live in the
modules beside this one, by concern; this module names them all, for callers that want one import:

    layout        where the boxes live (`Layout`), reading the snapshot and the folds
    identities    the fold tasks and their identities (resume)
    prepare       validate, folds
    base_models   train_fold, collect_oof, train_base
    evaluation    stack, evaluate
    distill       the distilled student (distill.enabled)
    bundle_stage  the bundle
    run           the whole pipeline in-process
"""

from foldstack.core.crossfit import FULL_FIT
from foldstack.pipeline.base_models import collect_oof, load_base_predictions, train_base, train_fold
from foldstack.pipeline.bundle_stage import make_bundle, write_bundle
from foldstack.pipeline.distill import distill
from foldstack.pipeline.evaluation import evaluate, holdout_reports, stack
from foldstack.pipeline.identities import FoldTask, fold_identity, fold_task_done, fold_unit, plan_fold_tasks
from foldstack.pipeline.layout import Layout, Reporter, load_folds, load_snapshot, log_report
from foldstack.pipeline.prepare import make_folds, validate
from foldstack.pipeline.run import PipelineResult, run_fold_tasks, run_pipeline

__all__ = [
    "FULL_FIT", "FoldTask", "Layout", "PipelineResult", "Reporter", "collect_oof", "distill", "evaluate", "fold_identity",
    "fold_task_done", "fold_unit", "holdout_reports", "load_base_predictions", "load_folds", "load_snapshot",
    "log_report", "make_bundle", "make_folds", "plan_fold_tasks", "run_fold_tasks", "run_pipeline", "stack",
    "train_base", "train_fold", "validate", "write_bundle",
]
