"""The deployments of foldstack, and serving them.

* `retrain`: the `train-ensemble` flow on `runtime.retrain_cron`, plus two triggers: `foldstack.data.changed`
  for this params file's data and `foldstack.model.drifted` for its model; at most one run at a time (a
  trigger during a run queues one, never two at once);
* `watch-data`: the `watch-data` flow every `runtime.watch_interval_seconds`;
* `monitor`: the `monitor` flow every `monitoring.schedule_minutes` (it emits `foldstack.model.drifted`);
* `train-fold`: the per-fold flow on the work pool `runtime.executor.work_pool` (`runtime.executor: {kind:
  workpool}`; tasks/remote.py registers it).

`foldstack serve` (or `python -m flows.deploy serve`) serves `retrain`, `watch-data` and `monitor` from this process
against the Prefect server in PREFECT_API_URL; `python -m flows.deploy train-fold --source <dir or git URL>`
registers `train-fold` for the workers (the train flow also registers it, from this checkout, if it is missing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.events import DeploymentEventTrigger

from flows.monitor import DRIFTED_EVENT, model_resource_id, monitor
from flows.train_ensemble import train_ensemble
from flows.watch_data import DATA_CHANGED_EVENT, data_resource_id, watch_data
from foldstack.config import DEFAULT_PARAMS_FILE, load_config
from foldstack.config.runtime import WorkPoolExecutorConfig
from tasks.remote import PROJECT_ROOT, deploy_train_fold


def retrain_deployment(params: str | Path = DEFAULT_PARAMS_FILE) -> Any:
    """`retrain`: cron from params, triggers on data changes and on model drift, one run at a time (the next
    one queued)."""
    params_path = str(Path(params).resolve())
    cfg = load_config(params_path)
    data_changed = DeploymentEventTrigger(
        name="retrain when the training data changes",
        expect={DATA_CHANGED_EVENT},
        match={"prefect.resource.id": data_resource_id(cfg)},
        parameters={"params": params_path},
    )
    drifted = DeploymentEventTrigger(
        name="retrain when the monitor sees drift",
        expect={DRIFTED_EVENT},
        match={"prefect.resource.id": model_resource_id(cfg)},
        parameters={"params": params_path},
    )
    return train_ensemble.to_deployment(
        name="retrain",
        cron=cfg.runtime.retrain_cron,
        parameters={"params": params_path},
        triggers=[data_changed, drifted],
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        description="Retrain the stacked ensemble: on the schedule, whenever the training data changes and "
                    "whenever the monitor sees drift.",
        tags=["foldstack"],
    )


def watch_data_deployment(params: str | Path = DEFAULT_PARAMS_FILE) -> Any:
    """`watch-data`: hash the data every `runtime.watch_interval_seconds`; emit the event on a change."""
    params_path = str(Path(params).resolve())
    cfg = load_config(params_path)
    return watch_data.to_deployment(
        name="watch-data",
        interval=cfg.runtime.watch_interval_seconds,
        parameters={"params": params_path},
        description=f"Emit {DATA_CHANGED_EVENT} when the training data differs from the last successful run's.",
        tags=["foldstack"],
    )


def monitor_deployment(params: str | Path = DEFAULT_PARAMS_FILE) -> Any:
    """`monitor`: check the prediction log every `monitoring.schedule_minutes`; emit the event on drift."""
    params_path = str(Path(params).resolve())
    cfg = load_config(params_path)
    return monitor.to_deployment(
        name="monitor",
        interval=cfg.monitoring.schedule_minutes * 60,
        parameters={"params": params_path},
        description=f"Check the prediction log for drift; emit {DRIFTED_EVENT} when a check fails.",
        tags=["foldstack"],
    )


def serve_all(params: str | Path = DEFAULT_PARAMS_FILE) -> None:
    """Serve `retrain`, `watch-data` and `monitor` from this process until interrupted."""
    serve(retrain_deployment(params), watch_data_deployment(params), monitor_deployment(params))


def default_work_pool(params: str | Path) -> str:
    """The params' `runtime.executor.work_pool`; with another executor, the work pool's default."""
    return getattr(load_config(params).runtime.executor, "work_pool", WorkPoolExecutorConfig().work_pool)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="serve retrain, watch-data and monitor until interrupted")
    serve_cmd.add_argument("--params", "-p", default=DEFAULT_PARAMS_FILE)
    fold_cmd = commands.add_parser("train-fold", help="register the train-fold deployment on a work pool")
    fold_cmd.add_argument("--params", "-p", default=DEFAULT_PARAMS_FILE, help="its runtime.executor.work_pool is the pool")
    fold_cmd.add_argument("--pool", default=None, help="the work pool (default: runtime.executor.work_pool)")
    fold_cmd.add_argument("--source", default=str(PROJECT_ROOT), help="where workers get the code: dir or git URL")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve_all(args.params)
    else:
        pool = args.pool or default_work_pool(args.params)
        print(f"train-fold deployment {deploy_train_fold(pool, args.source)} on work pool {pool!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
