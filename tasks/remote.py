"""Fold trainings on a Prefect work pool (`runtime.executor: {kind: workpool}`): the parent's side, the
worker's side, and the `train-fold` deployment that joins them.

The parent flow publishes the snapshot and folds to `runtime.executor.shared_storage`, then runs the
`train-fold` deployment once per pending (model, fold) with `run_deployment`; a worker (`prefect worker start
--pool <runtime.executor.work_pool>`) runs `flows/train_fold.py`, which calls `train_fold_from_storage` below:
download the inputs into a scratch directory, train on the device this worker leases, upload the fold
directory. The parent then downloads that directory into its own artifacts. Nothing passes through a
worker's local disk. The parent registers the deployment from this checkout when it is missing
(`ensure_train_fold_deployment`); `python -m flows.deploy train-fold --source <git URL>` registers it for
workers elsewhere.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from prefect import Flow, get_client, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.states import State

from foldstack.common.files import read_json
from foldstack.config import Config, apply_overrides, config_from_dict
from foldstack.errors import ConfigError, StageError
from foldstack.pipeline import stages
from foldstack.pipeline.embedding_stats import EMBEDDING
from tasks.fold import fold_label, skipped_state
from tasks.pipeline import transient_failure
from tasks.storage import download_directory, fold_key, is_published, publish_inputs, upload_directory

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TRAIN_FOLD_ENTRYPOINT = "flows/train_fold.py:train_fold_on_worker"
TRAIN_FOLD_DEPLOYMENT = "train-fold/train-fold"  # <flow name>/<deployment name>
REMOTE_POLL_SECONDS = 2.0


def require_shared_storage(cfg: Config) -> str:
    url = getattr(cfg.runtime.executor, "shared_storage", None)
    if not url:
        raise ConfigError(f"runtime.executor={cfg.runtime.executor.kind} needs runtime.executor.shared_storage: an "
                          f"fsspec URL every worker can reach (s3://bucket/foldstack, file:///mnt/shared/foldstack); "
                          f"workers never read the parent's disk")
    return url


# ---------------------------------------------------------------------------------- the train-fold deployment
def _ensure_process_pool(work_pool: str) -> None:
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
    URL for workers elsewhere. The flow is named by its entrypoint (flows/train_fold.py), not imported:
    tasks sit below the flows. Returns the deployment id.
    """
    _ensure_process_pool(work_pool)
    remote_flow = Flow.from_source(source=str(source), entrypoint=TRAIN_FOLD_ENTRYPOINT)
    deployment_id = remote_flow.deploy(name="train-fold", work_pool_name=work_pool, print_next_steps=False,
                                       ignore_warnings=True, tags=["foldstack"],
                                       description="Train one (model, fold) of the stacked ensemble.")
    return str(deployment_id)


def ensure_train_fold_deployment(work_pool: str) -> None:
    """Register `train-fold` from this checkout unless it exists already (e.g. deployed from git)."""
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(TRAIN_FOLD_DEPLOYMENT)
        except ObjectNotFound:
            deployment = None
    if deployment is None or deployment.work_pool_name != work_pool:
        deploy_train_fold(work_pool)


# ------------------------------------------------------------------------------------------ parent side


@task(name="publish-inputs", cache_policy=NONE, retries=3, retry_delay_seconds=[2, 10, 30],
      retry_condition_fn=transient_failure)
def publish_inputs_task(cfg: Config) -> str:
    """Upload the snapshot and folds to shared storage (once per content); returns their key there."""
    layout = stages.Layout.of(cfg)
    return publish_inputs(layout.snapshot, layout.folds, require_shared_storage(cfg))


# Retried once: a crashed worker or lost machine is worth another try, a fold that failed on its own is not.
@task(name="train-fold", task_run_name="train {model} r{repeat}-k{fold} (work pool)", cache_policy=NONE,
      retries=1, retry_delay_seconds=10, retry_condition_fn=transient_failure)
def train_fold_remote(cfg: Config, model: str, repeat: int, fold: int, identity: str, inputs: str,
                      deployment: str = TRAIN_FOLD_DEPLOYMENT) -> dict[str, Any] | State:
    """Train one (model, fold) on a work-pool worker and bring its directory back into the local artifacts."""
    logger = get_run_logger()
    label = fold_label(model, repeat, fold)
    task_ = stages.FoldTask(model, repeat, fold, identity)
    if stages.fold_task_done(cfg, task_):
        logger.info("%s: skipped, finished before with the same identity %s", label, identity)
        return skipped_state(label, identity)
    url = require_shared_storage(cfg)
    key = fold_key(model, identity)
    remote_run = None
    if is_published(url, key):
        logger.info("%s: found in shared storage (same identity %s); downloading it", label, identity)
    else:
        run = run_deployment(name=deployment, parameters={
            "config": cfg.model_dump(mode="json"), "model": model, "repeat": repeat, "fold": fold,
            "shared_storage": url, "inputs": inputs}, timeout=None, poll_interval=REMOTE_POLL_SECONDS)
        if run.state is None or not run.state.is_completed():
            state = run.state.name if run.state else "unknown"
            message = run.state.message if run.state else ""
            # Crashed = the infrastructure failed: OSError lets `transient_failure` retry it once.
            error = OSError if run.state is not None and run.state.is_crashed() else StageError
            raise error(f"{label}: remote flow run {run.name} ended {state}: {message}")
        remote_run = run.name
    directory = stages.Layout.of(cfg).fold_dir(model, repeat, fold)
    download_directory(url, key, directory)
    if not stages.fold_task_done(cfg, task_):
        raise StageError(f"{label}: the directory from shared storage does not carry identity {identity}; "
                         f"do the workers run the same foldstack code and params?")
    if remote_run is None:
        return skipped_state(label, identity)
    record = read_json(directory / "task.json")  # written by the worker's train_fold
    logger.info("%s: trained by %s on %s in %.1fs", label, remote_run, record["device"], record["seconds"])
    return {"task": label, "identity": identity, "skipped": False, "seconds": record["seconds"],
            "device": record["device"], "remote_run": remote_run,
            **({EMBEDDING: record[EMBEDDING]} if record.get(EMBEDDING) else {})}


# ------------------------------------------------------------------------------------------ worker side
def train_fold_from_storage(config: dict[str, Any], model: str, repeat: int, fold: int, shared_storage: str,
                            inputs: str, device: str) -> dict[str, Any]:
    """On a worker: fetch the inputs, train one fold on `device`, publish the fold; no Prefect involved.

    The config is the parent's resolved params; relative paths (the model cache) resolve against this
    worker's working directory, and the artifacts go to a scratch directory that is removed afterwards.
    """
    scratch = Path(tempfile.mkdtemp(prefix="foldstack-fold-"))
    try:
        cfg = config_from_dict(apply_overrides(config, {"runtime.artifacts_dir": str(scratch / "artifacts")}),
                               root=Path.cwd(), source="train-fold parameters")
        layout = stages.Layout.of(cfg)
        download_directory(shared_storage, f"{inputs}/snapshot", layout.snapshot)
        download_directory(shared_storage, f"{inputs}/folds", layout.folds)
        identity = stages.fold_identity(cfg, model, repeat, fold, read_json(layout.snapshot / "snapshot.json")
                                        ["data_hash"], read_json(layout.folds / "folds.json")["hash"])
        key = fold_key(model, identity)
        if is_published(shared_storage, key):
            return {"task": fold_label(model, repeat, fold), "identity": identity, "skipped": True, "seconds": 0.0}
        result = stages.train_fold(cfg, model, repeat, fold, device)
        upload_directory(layout.fold_dir(model, repeat, fold), shared_storage, key)
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
