"""The `train-ensemble` flow: the pipeline as a Prefect flow whose run graph reads like the design.

    plan reruns (DVC) -> validate data -> make folds -> train every (base model x fold) in parallel
    -> collect OOF per model -> fit the meta-learner -> evaluate -> bundle -> register -> version

Run it with `python -m flows.train [--params params.yaml] [--set key.path=value ...]` (flows/train.py). With no
Prefect server configured it runs on Prefect's embedded server (state in ./.prefect); with PREFECT_API_URL set
(e.g. after `foldstack server`) the run, its task graph and its artifacts show in that server's UI.

Two granularities decide what a rerun recomputes (docs/ARCHITECTURE.md, "Identity, caching and resume"). First DVC:
when the run uses the DVC project's own params.yaml and a dvc.lock exists, the `plan-reruns` task asks DVC which
stages are stale; a stage that is up to date (itself and everything upstream) is not recomputed, its task returns
the summary the stage wrote last time, in a `Skipped` state (tasks/pipeline.py). Then the fold identities: every
fold task whose identity is finished on disk is `Skipped` too (see tasks/fold.py). The flow's log, its result
(`skipped_by_dvc`) and the run report say which stages and folds were skipped, and why.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.watch_data import record_successful_run
from foldstack.config import DEFAULT_PARAMS_FILE, Config, load_config
from foldstack.pipeline.runlock import run_lock
from tasks.fanout import resolve_in_order, train_base_models, warm_up
from tasks.pipeline import (
    DVC_UP_TO_DATE, collect_oof, distill, evaluate, fit_meta, make_bundle, make_folds, plan_reruns, register,
    validate_data, version)
from tasks.report import publish_run_artifacts, run_report


def stage_names(cfg: Config) -> list[str]:
    """The DVC stage (dvc.yaml) each of the flow's stage tasks belongs to, in the order the flow runs them.

    The bundle and register tasks are one DVC stage, `register`: it writes the bundle and registers it.
    """
    return ["validate", "folds", *(f"train@{spec.name}" for spec in cfg.base_models),
            "stack", "distill", "evaluate", "register", "register"]


@flow(name="train-ensemble", log_prints=False)
def train_ensemble(params: str = DEFAULT_PARAMS_FILE, overrides: list[str] | None = None) -> dict[str, Any]:
    """Train the stacked ensemble of params.yaml (overrides: `key.path=value`); returns the bundle and metrics."""
    logger = get_run_logger()
    cfg = load_config(params, overrides or [])
    # One run at a time per artifacts directory, whether it is this flow, `foldstack train` or `dvc repro`.
    with run_lock(cfg, "the train-ensemble flow"):
        return _train_under_lock(cfg, params, overrides, logger)


def _train_under_lock(cfg: Config, params: str, overrides: list[str] | None, logger: Any) -> dict[str, Any]:
    warm_up(cfg)  # e.g. start the CPU fit processes while DVC is asked and the data is validated
    reruns = plan_reruns(cfg, params, overrides)  # before any stage: which ones DVC says are up to date
    fresh = reruns["skipped"]
    data = validate_data.submit(cfg, fresh)
    folds = make_folds.submit(cfg, fresh, wait_for=[data])
    base = train_base_models(cfg, data, folds)
    oof = [collect_oof.submit(cfg, spec.name, fresh, wait_for=base.of_model(spec.name)) for spec in cfg.base_models]
    stacked = fit_meta.submit(cfg, fresh, wait_for=oof)
    distilled = distill.submit(cfg, fresh, wait_for=[stacked])
    evaluation = evaluate.submit(cfg, fresh, wait_for=[stacked, distilled])
    bundle = make_bundle.submit(cfg, fresh, wait_for=[evaluation])
    registration = register.submit(cfg, bundle, fresh)

    summaries = resolve_in_order(data, folds, *oof, stacked, distilled, evaluation, bundle, registration)
    data_summary, folds_summary, *_, stack_summary, _, evaluation_summary, bundle_summary, registered = summaries
    skipped_by_dvc = list(dict.fromkeys(name for name, summary in zip(stage_names(cfg), summaries, strict=True)
                                        if summary.get("skipped") == DVC_UP_TO_DATE))
    if skipped_by_dvc:
        logger.info("skipped by DVC (up to date): %s", ", ".join(skipped_by_dvc))
    # dvc commit only what this run computed; with nothing skipped, every stage of dvc.yaml (as before).
    ran = [name for name in dict.fromkeys(stage_names(cfg)) if name not in skipped_by_dvc] if skipped_by_dvc else None
    versioned = version.submit(cfg, params, overrides, ran).result()
    report = run_report(cfg, data=data_summary, folds=folds_summary, trained=base.trained, reused=base.reused,
                        failed=base.failed, fit_seconds=base.fit_seconds, stacked=stack_summary,
                        evaluation=evaluation_summary, bundle=bundle_summary["bundle"], registration=registered,
                        versioning=versioned, reruns={**reruns, "skipped_by_dvc": skipped_by_dvc},
                        embedding=base.embedding)
    publish_run_artifacts(report, evaluation_summary["leaderboard"], bundle_summary["bundle"])
    record_successful_run(cfg, data_summary)
    return {"bundle": bundle_summary["bundle"], "metrics": evaluation_summary["metrics"],
            "trained": len(base.trained), "reused": len(base.reused), "reused_tasks": base.reused,
            "dvc": reruns["status"], "skipped_by_dvc": skipped_by_dvc,
            "registration": registered.get("status"), "versioning": versioned.get("status")}
