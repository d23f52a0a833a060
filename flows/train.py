"""The `train-ensemble` flow: the pipeline as a Prefect flow whose run graph reads like the design.

    plan reruns (DVC) -> validate data -> make folds -> train every (base model x fold) in parallel
    -> collect OOF per model -> fit the meta-learner -> evaluate -> bundle -> register -> version

Run it with `python -m flows.train [--params params.yaml] [--set key.path=value ...]`. With no Prefect server
configured it runs on Prefect's embedded server (state in ./.prefect); with PREFECT_API_URL set (e.g. after
`foldstack server`) the run, its task graph and its artifacts show in that server's UI.

Two granularities decide what a rerun recomputes (DESIGN.md). First DVC: when the run uses the DVC project's
own params.yaml and a dvc.lock exists, the `plan-reruns` task asks DVC which stages are stale; a stage that is
up to date (itself and everything upstream) is not recomputed, its task returns the summary the stage wrote
last time, in a `Skipped` state (tasks/pipeline.py). Then the fold identities: every fold task whose identity
is finished on disk is `Skipped` too (see tasks/fold.py). The flow's log, its result (`skipped_by_dvc`) and
the run report say which stages and folds were skipped, and why.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import Any

import flows  # noqa: F401  (PREFECT_HOME before Prefect)
from flows.embedded_server import EmbeddedServer

# `python -m flows.train` with no server configured: start Prefect's embedded server before the imports below,
# so that its start-up overlaps them instead of following them (flows/embedded_server.py). main() waits for it.
EMBEDDED_SERVER = (EmbeddedServer.start_if_unconfigured()
                   if __name__ == "__main__" and not {"-h", "--help"} & set(sys.argv[1:]) else None)

from prefect import flow, get_run_logger  # noqa: E402  (after PREFECT_API_URL points at that server)
from prefect.futures import PrefectFuture, as_completed  # noqa: E402
from prefect.states import State  # noqa: E402

from flows.watch_data import record_successful_run  # noqa: E402
from foldstack.pipeline import stages  # noqa: E402
from foldstack.config import DEFAULT_PARAMS_FILE, Config, load_config  # noqa: E402
from foldstack.errors import FoldstackError, StageError  # noqa: E402
from foldstack.runtime.process_exit import skip_final_garbage_collection  # noqa: E402
from foldstack.pipeline.runlock import run_lock  # noqa: E402
from tasks.fanout import fan_out_for, warm_up  # noqa: E402
from tasks.fold import SKIPPED  # noqa: E402
from tasks.pipeline import (  # noqa: E402
    DVC_UP_TO_DATE, collect_oof, evaluate, fit_meta, make_bundle, make_folds, plan_reruns, register, validate_data,
    version)
from tasks.report import TrainingProgress, publish_run_artifacts, run_report  # noqa: E402


@dataclass
class BaseModelRuns:
    """The fold tasks of one flow run: their futures, and what was trained, reused or failed."""

    futures: dict[stages.FoldTask, PrefectFuture] = field(default_factory=dict)
    # Their final states: what downstream tasks wait for. A future may not outlive its executor (a Ray
    # future needs the Ray runtime that the fan-out shuts down); a final state does, and still draws the edge.
    states: dict[stages.FoldTask, State] = field(default_factory=dict)
    trained: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    causes: dict[str, str] = field(default_factory=dict)  # failed task label -> its exception, one line
    fit_seconds: dict[str, float] = field(default_factory=dict)

    def of_model(self, model: str) -> list[State]:
        return [state for t, state in self.states.items() if t.model == model]


def resolve_in_order(*futures: PrefectFuture) -> list[Any]:
    """Results upstream-first, so that a failure surfaces as its own error, not as "downstream never ran"."""
    return [future.result() for future in futures]


def _failure_cause(state: State) -> str:
    """The exception behind a failed task's state, as one line (the traceback stays in the task's log)."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as unreadable:  # a crashed worker may leave no result to read
        exc = unreadable
    if isinstance(exc, BaseException):
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return text if isinstance(exc, FoldstackError) else f"{type(exc).__name__}: {text}"
    return state.message or state.name


def train_base_models(cfg: Config, data: PrefectFuture, folds: PrefectFuture) -> BaseModelRuns:
    """Every (base model x repeat x fold) as its own task, in parallel on the configured executor."""
    logger = get_run_logger()
    resolve_in_order(data, folds)  # the plan needs the snapshot and the fold assignment on disk
    plan = stages.plan_fold_tasks(cfg)
    done_before = [t.label for t in plan if stages.fold_task_done(cfg, t)]
    if done_before:
        logger.info("resume: %d of %d fold tasks finished before with the same identity and are skipped: %s",
                    len(done_before), len(plan), ", ".join(done_before))
    runs = BaseModelRuns()
    with fan_out_for(cfg, len(plan)) as executor:
        logger.info("training %d fold tasks on %s", len(plan) - len(done_before), executor.describe())
        runs.futures = {t: executor.submit(t, wait_for=[folds]) for t in plan}
        progress = TrainingProgress(total=len(plan))
        task_of = {id(f): t for t, f in runs.futures.items()}
        for future in as_completed(list(runs.futures.values())):
            future.wait()
            task_ = task_of[id(future)]
            state = runs.states[task_] = future.state
            if not state.is_completed():
                runs.failed.append(task_.label)
                runs.causes[task_.label] = _failure_cause(state)
                logger.error("%s: %s (%s)", task_.label, state.name, runs.causes[task_.label])
            elif state.name == SKIPPED:
                runs.reused.append(task_.label)
            else:
                runs.trained.append(task_.label)
                runs.fit_seconds[task_.model] = runs.fit_seconds.get(task_.model, 0.0) + future.result()["seconds"]
            progress.advance(skipped=state.name == SKIPPED)
    order = {t.label: i for i, t in enumerate(plan)}  # report in plan order, not in order of completion
    for labels in (runs.trained, runs.reused, runs.failed):
        labels.sort(key=order.__getitem__)
    if runs.failed:
        # The finished folds stay on disk: a rerun trains only these.
        first = runs.failed[0]
        raise StageError(f"{len(runs.failed)} of {len(plan)} fold tasks failed ({', '.join(runs.failed)}); the first, "
                         f"{first}: {runs.causes[first]}. The other folds are kept: fix that, then rerun to train "
                         f"only the failed ones")
    logger.info("base models: %d fold tasks trained, %d reused", len(runs.trained), len(runs.reused))
    return runs


def stage_names(cfg: Config) -> list[str]:
    """The DVC stage (dvc.yaml) each of the flow's stage tasks belongs to, in the order the flow runs them.

    The bundle and register tasks are one DVC stage, `register`: it writes the bundle and registers it.
    """
    return ["validate", "folds", *(f"train@{spec.name}" for spec in cfg.base_models),
            "stack", "evaluate", "register", "register"]


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
    evaluation = evaluate.submit(cfg, fresh, wait_for=[stacked])
    bundle = make_bundle.submit(cfg, fresh, wait_for=[evaluation])
    registration = register.submit(cfg, bundle, fresh)

    summaries = resolve_in_order(data, folds, *oof, stacked, evaluation, bundle, registration)
    data_summary, folds_summary, *_, stack_summary, evaluation_summary, bundle_summary, registered = summaries
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
                        versioning=versioned, reruns={**reruns, "skipped_by_dvc": skipped_by_dvc})
    publish_run_artifacts(report, evaluation_summary["leaderboard"], bundle_summary["bundle"])
    record_successful_run(cfg, data_summary)
    return {"bundle": bundle_summary["bundle"], "metrics": evaluation_summary["metrics"],
            "trained": len(base.trained), "reused": len(base.reused), "reused_tasks": base.reused,
            "dvc": reruns["status"], "skipped_by_dvc": skipped_by_dvc,
            "registration": registered.get("status"), "versioning": versioned.get("status")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.train", description=train_ensemble.description)
    parser.add_argument("--params", "-p", default=DEFAULT_PARAMS_FILE, help="the params file")
    parser.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a key (repeatable)")
    args = parser.parse_args(argv)
    skip_final_garbage_collection()
    try:
        if EMBEDDED_SERVER is not None:
            EMBEDDED_SERVER.wait_until_ready()
        result = train_ensemble(params=args.params, overrides=args.overrides)
    except FoldstackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
