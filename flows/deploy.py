"""The deployments of foldstack, and serving them.

* `retrain`: the `train-ensemble` flow on `runtime.retrain_cron`, plus a trigger on `foldstack.data.changed`
  for this params file's data; at most one run at a time (a trigger during a run queues one, never two at once);
* `watch-data`: the `watch-data` flow every `runtime.watch_interval_seconds`;
* `train-fold`: the per-fold flow on the work pool `runtime.work_pool` (`runtime.executor: workpool`).

`foldstack serve` (or `python -m flows.deploy serve`) serves `retrain` and `watch-data` from this process
against the Prefect server in PREFECT_API_URL; `python -m flows.deploy train-fold --source <dir or git URL>`
registers `train-fold` for the workers (the train flow also registers it, from this checkout, if it is missing).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

import flows  # noqa: F401  (PREFECT_HOME before Prefect)
from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.events import DeploymentEventTrigger

from foldstack.config import DEFAULT_PARAMS_FILE, load_config
from flows.watch_data import DATA_CHANGED_EVENT, data_resource_id

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TRAIN_FOLD_ENTRYPOINT = "flows/train_fold.py:train_fold_on_worker"


def retrain_deployment(params: str | Path = DEFAULT_PARAMS_FILE) -> Any:
    """`retrain`: cron from params, a trigger on data changes, one run at a time (the next one queued)."""
    from flows.train import train_ensemble

    params_path = str(Path(params).resolve())
    cfg = load_config(params_path)
    trigger = DeploymentEventTrigger(
        name="retrain when the training data changes",
        expect={DATA_CHANGED_EVENT},
        match={"prefect.resource.id": data_resource_id(cfg)},
        parameters={"params": params_path},
    )
    return train_ensemble.to_deployment(
        name="retrain",
        cron=cfg.runtime.retrain_cron,
        parameters={"params": params_path},
        triggers=[trigger],
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        description="Retrain the stacked ensemble: on the schedule and whenever the training data changes.",
        tags=["foldstack"],
    )


def watch_data_deployment(params: str | Path = DEFAULT_PARAMS_FILE) -> Any:
    """`watch-data`: hash the data every `runtime.watch_interval_seconds`; emit the event on a change."""
    from flows.watch_data import watch_data

    params_path = str(Path(params).resolve())
    cfg = load_config(params_path)
    return watch_data.to_deployment(
        name="watch-data",
        interval=cfg.runtime.watch_interval_seconds,
        parameters={"params": params_path},
        description=f"Emit {DATA_CHANGED_EVENT} when the training data differs from the last successful run's.",
        tags=["foldstack"],
    )


def serve_all(params: str | Path = DEFAULT_PARAMS_FILE) -> None:
    """Serve `retrain` and `watch-data` from this process until interrupted."""
    serve(retrain_deployment(params), watch_data_deployment(params))


def _ensure_process_pool(work_pool: str) -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(work_pool)
        except ObjectNotFound:
            from prefect.workers.process import ProcessWorker

            with contextlib.suppress(ObjectAlreadyExists):  # created meanwhile by a worker starting up
                client.create_work_pool(WorkPoolCreate(
                    name=work_pool, type="process",
                    base_job_template=ProcessWorker.get_default_base_job_template()))


def deploy_train_fold(work_pool: str, source: str | Path = PROJECT_ROOT) -> str:
    """Register the `train-fold` deployment on `work_pool`; the workers fetch the code from `source`.

    `source` is this checkout by default (workers on this machine or sharing its filesystem); give a git
    URL for workers elsewhere. Returns the deployment id.
    """
    from flows.train_fold import train_fold_on_worker

    _ensure_process_pool(work_pool)
    remote_flow = train_fold_on_worker.from_source(source=str(source), entrypoint=TRAIN_FOLD_ENTRYPOINT)
    deployment_id = remote_flow.deploy(name="train-fold", work_pool_name=work_pool, print_next_steps=False,
                                       ignore_warnings=True, tags=["foldstack"],
                                       description="Train one (model, fold) of the stacked ensemble.")
    return str(deployment_id)


def ensure_train_fold_deployment(work_pool: str) -> None:
    """Register `train-fold` from this checkout unless it exists already (e.g. deployed from git)."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    from tasks.remote import TRAIN_FOLD_DEPLOYMENT

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(TRAIN_FOLD_DEPLOYMENT)
        except ObjectNotFound:
            deployment = None
    if deployment is None or deployment.work_pool_name != work_pool:
        deploy_train_fold(work_pool)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="serve retrain and watch-data until interrupted")
    serve_cmd.add_argument("--params", "-p", default=DEFAULT_PARAMS_FILE)
    fold_cmd = commands.add_parser("train-fold", help="register the train-fold deployment on a work pool")
    fold_cmd.add_argument("--params", "-p", default=DEFAULT_PARAMS_FILE, help="its runtime.work_pool is the pool")
    fold_cmd.add_argument("--pool", default=None, help="the work pool (default: runtime.work_pool)")
    fold_cmd.add_argument("--source", default=str(PROJECT_ROOT), help="where workers get the code: dir or git URL")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve_all(args.params)
    else:
        pool = args.pool or load_config(args.params).runtime.work_pool
        print(f"train-fold deployment {deploy_train_fold(pool, args.source)} on work pool {pool!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
