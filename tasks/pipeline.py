"""One Prefect task per pipeline stage: each calls the stage function of `foldstack.pipeline.stages` and nothing more.

Caching: none of Prefect's. docs/ARCHITECTURE.md (identity, caching and resume) allows two caches, DVC's view of
stale stages and the fold identities; a Prefect result cache beside them could disagree with both, so every task
has `cache_policy=NONE`. DVC's view comes first (`plan_reruns`): a stage task whose DVC stage is up to date, itself
and everything upstream, computes nothing and returns the summary its stage wrote last time, read back from the
files on disk, in a `Skipped` state (`reuse_if_fresh`).

Retries only where a retry can help: registering (git, W&B, network) and versioning (DVC remote). Bad data,
a missing stage input or invalid params fail at once: they are `FoldstackError`s, and `transient_failure`
refuses to retry those even in the tasks that do retry.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Collection
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.client.schemas.objects import TaskRun
from prefect.states import Completed, State
from prefect.tasks import Task, exponential_backoff

from foldstack.common.files import read_json
from foldstack.config import Config
from foldstack.errors import FoldstackError
from foldstack.ops.versioning import default_remote, pipeline_stages, record_run
from foldstack.ops.versioning import plan_reruns as dvc_plan_reruns
from foldstack.pipeline import stages
from tasks.fold import SKIPPED  # a stage task that reused its last result ends in the same state as a fold task

REGISTRY_MODULE = "foldstack.ops.registry"
DVC_UP_TO_DATE = "dvc: up to date"


def transient_failure(task_: Task[..., Any], task_run: TaskRun, state: State) -> bool:
    """Retry condition: retry I/O and service errors, never a user error (bad data, params, missing input)."""
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, FoldstackError)


def _module_missing(name: str) -> bool:
    return importlib.util.find_spec(name) is None


def _dvc_project(cfg: Config, params_file: str, overrides: list[str] | None) -> tuple[Path, str | None]:
    """The DVC project of this run (the directory of params.yaml and dvc.yaml), and why DVC has no say in
    this run, or None when it has."""
    root = cfg.resolve_path(".")
    if not (root / "dvc.yaml").is_file():
        return root, f"no DVC pipeline in {root} (no dvc.yaml)"
    # dvc.lock records the params of root/params.yaml: outputs made with other values must not be pinned to
    # them, nor judged by them.
    if overrides or Path(params_file).resolve() != root / "params.yaml":
        return root, f"the run's params differ from {root / 'params.yaml'} (overrides or another file)"
    return root, None


# ----------------------------------------------------------------------------------- incremental reruns
@task(name="plan-reruns", cache_policy=NONE)
def plan_reruns(cfg: Config, params_file: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Ask DVC which stages are stale (`foldstack.ops.versioning.plan_reruns`); the others are not recomputed.

    Returns {status, skipped (stages up to date, upstream included), to_run, reasons, lines (one per stage:
    run or skip, and why)}; with no DVC view of this run (see `_dvc_project`, or no dvc.lock yet) nothing is
    skipped and `status` says why.
    """
    logger = get_run_logger()
    root, no_view = _dvc_project(cfg, params_file, overrides)
    if no_view is None and not (root / "dvc.lock").is_file():
        no_view = f"no {root / 'dvc.lock'} yet (no run recorded by DVC)"
    plan = None
    if no_view is None:
        try:
            plan = dvc_plan_reruns(root)
        # The plan only saves work: whatever stops DVC from answering, running every stage is still right.
        except Exception as exc:  # noqa: BLE001
            no_view = f"DVC status failed ({type(exc).__name__}: {exc})"
    if plan is None:
        logger.info("plan-reruns: no DVC view, every stage runs: %s", no_view)
        return {"status": f"no DVC view: {no_view}", "skipped": [], "to_run": [], "reasons": {}, "lines": []}
    for line in plan.describe():
        logger.info("dvc: %s", line)
    return {"status": f"DVC: {len(plan.skipped)} of {len(plan.stages)} stage(s) up to date", **plan.to_json(),
            "lines": plan.describe()}


def last_summary(cfg: Config, stage: str) -> dict[str, Any]:
    """What DVC stage `stage` returned when it last ran, read back from the files it wrote (the same shape)."""
    layout = stages.Layout.of(cfg)
    kind, _, model = stage.partition("@")
    match kind:
        case "validate":
            # The gate is not rerun: the locked snapshot passed it when it was made (a failure writes none).
            return {**read_json(layout.snapshot / "snapshot.json"),
                    "validation": {"status": "not rerun (the locked snapshot passed it)"}}
        case "folds":
            return read_json(layout.folds / "folds.json")
        case "train":
            return read_json(layout.base(model) / "summary.json")
        case "stack":
            return read_json(layout.stack / "meta_cv.json")
        case "distill":
            return read_json(layout.student / "summary.json")
        case "evaluate":
            import pandas as pd

            return {"metrics": read_json(layout.eval / "metrics.json"),
                    "leaderboard": pd.read_csv(layout.eval / "leaderboard.csv").to_dict(orient="records")}
        case "register":  # the same bundle was written and registered (and gated) already: its decision stands
            student = layout.root / "registry" / "student-decision.json"
            return {"status": "done", "bundle": str(layout.bundle),
                    **read_json(layout.root / "registry" / "decision.json"),
                    "student": read_json(student) if cfg.distill.enabled and student.is_file() else None}
    raise ValueError(f"no stage {stage!r} in the pipeline; stages: validate, folds, train@<model>, stack, "
                     f"distill, evaluate, register")


def reuse_if_fresh(cfg: Config, stage: str, dvc_fresh: Collection[str]) -> State | None:
    """A `Skipped` state holding `stage`'s last summary when DVC reported it up to date; None: run it."""
    if stage not in dvc_fresh:
        return None
    logger = get_run_logger()
    try:
        summary = last_summary(cfg, stage)
    except (OSError, ValueError) as exc:  # DVC saw the outs a moment ago; if one went since, recompute
        logger.warning("%s: DVC reports it up to date but its last summary cannot be read (%s); running it",
                       stage, exc)
        return None
    logger.info("%s: skipped, %s (its deps, params and outs match dvc.lock)", stage, DVC_UP_TO_DATE)
    return Completed(name=SKIPPED, message=f"{stage}: {DVC_UP_TO_DATE}",
                     data={**summary, "skipped": DVC_UP_TO_DATE})


# ------------------------------------------------------------------------------------------ the stages
@task(name="validate-data", cache_policy=NONE)
def validate_data(cfg: Config, dvc_fresh: Collection[str] = ()) -> dict[str, Any] | State:
    """The data gate, then the snapshot (train/holdout split, label map, data hash)."""
    reused = reuse_if_fresh(cfg, "validate", dvc_fresh)
    if reused is not None:
        return reused
    get_run_logger().info(f"validating {cfg.data.path} (the data gate, then the snapshot)")
    return stages.validate(cfg)


@task(name="make-folds", cache_policy=NONE)
def make_folds(cfg: Config, dvc_fresh: Collection[str] = ()) -> dict[str, Any] | State:
    """The one fold assignment every base model uses."""
    reused = reuse_if_fresh(cfg, "folds", dvc_fresh)
    return reused if reused is not None else stages.make_folds(cfg)


@task(name="collect-oof", task_run_name="collect-oof {model}", cache_policy=NONE)
def collect_oof(cfg: Config, model: str, dvc_fresh: Collection[str] = ()) -> dict[str, Any] | State:
    """OOF[model] from its fold tasks (coverage asserted) and its holdout prediction."""
    reused = reuse_if_fresh(cfg, f"train@{model}", dvc_fresh)
    return reused if reused is not None else stages.collect_oof(cfg, model)


@task(name="fit-meta", cache_policy=NONE)
def fit_meta(cfg: Config, dvc_fresh: Collection[str] = ()) -> dict[str, Any] | State:
    """The meta-learner on the OOF matrices, with its CV estimate on the OOF."""
    reused = reuse_if_fresh(cfg, "stack", dvc_fresh)
    return reused if reused is not None else stages.stack(cfg)


@task(name="distill", cache_policy=NONE)
def distill(cfg: Config, dvc_fresh: Collection[str] = ()) -> dict[str, Any] | State:
    """The distilled student on the ensemble's honest soft targets (distill.enabled; else a marker only)."""
    reused = reuse_if_fresh(cfg, "distill", dvc_fresh)
    if reused is not None or not cfg.distill.enabled:
        return reused if reused is not None else stages.distill(cfg)
    get_run_logger().info(f"distilling the ensemble into a {cfg.distill.student.kind} student")
    return stages.distill(cfg)


@task(name="evaluate", cache_policy=NONE)
def evaluate(cfg: Config, dvc_fresh: Collection[str] = ()) -> dict[str, Any] | State:
    """Holdout metrics of every base model, baseline and the ensemble; leaderboard and plots."""
    reused = reuse_if_fresh(cfg, "evaluate", dvc_fresh)
    if reused is not None:
        return reused
    get_run_logger().info(f"evaluating every model on the holdout (metrics, plots, report)")
    return stages.evaluate(cfg)


@task(name="bundle", cache_policy=NONE)
def make_bundle(cfg: Config, dvc_fresh: Collection[str] = ()) -> dict[str, Any] | State:
    """The self-describing, hashed bundle (in dvc.yaml, the first half of the register stage)."""
    reused = reuse_if_fresh(cfg, "register", dvc_fresh)
    return reused if reused is not None else stages.make_bundle(cfg)


@task(name="register", cache_policy=NONE, retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=5),
      retry_jitter_factor=0.5, retry_condition_fn=transient_failure)
def register(cfg: Config, bundle: dict[str, Any], dvc_fresh: Collection[str] = ()) -> dict[str, Any] | State:
    """Register the bundle (the bundle task's summary) and run the promotion gate (foldstack.ops.registry);
    then, with `distill.enabled`, the distilled student's bundle as `<model_name>-student`, gated the same way
    against that model's production (its outcome under `student`)."""
    if _module_missing(REGISTRY_MODULE):
        get_run_logger().warning("register: skipped, %s is not available", REGISTRY_MODULE)
        return {"status": "skipped: module not available"}
    reused = reuse_if_fresh(cfg, "register", dvc_fresh)
    if reused is not None:
        return reused
    from foldstack.ops.registry import register_models  # deferred: gto

    ensemble, *student = register_models(cfg, bundle["bundle"])
    return {"status": "done", **ensemble, "student": student[0] if student else None}


@task(name="version", cache_policy=NONE, retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=5),
      retry_jitter_factor=0.5, retry_condition_fn=transient_failure)
def version(cfg: Config, params_file: str, overrides: list[str] | None = None,
            ran: list[str] | None = None) -> dict[str, Any]:
    """Version the run with DVC (foldstack.ops.versioning): `dvc commit` the stages the flow ran, `dvc push`.

    `ran`: the stages the flow computed (None: every stage of dvc.yaml); stages DVC found up to date are
    in dvc.lock already.
    """
    logger = get_run_logger()
    root, no_view = _dvc_project(cfg, params_file, overrides)
    if no_view is not None:
        logger.warning("version: skipped, %s", no_view)
        return {"status": f"skipped: {no_view}"}
    remote = default_remote(root)
    # The flow ran these stages itself; DVC records the results (one serialized step).
    record = record_run(root, pipeline_stages(root) if ran is None else ran, push_to_remote=remote is not None)
    if not record.committed:
        pushed = "nothing new to record"
        if record.pushed_files:  # an earlier run's push had failed: retried now
            pushed += f", pushed {record.pushed_files} file(s) an earlier run left unpushed to {record.remote}"
    elif remote is None:
        pushed = "not pushed (no DVC remote configured)"
    elif record.pushed_files is None:
        pushed = "nothing to push"
    else:
        pushed = f"pushed {record.pushed_files} file(s) to {record.remote}"
    status = f"committed {len(record.committed)} stage(s), {pushed}"
    return {"status": status, "committed": record.committed, "pushed_files": record.pushed_files,
            "remote": record.remote}
