"""One Prefect task per pipeline stage: each calls the stage function of `foldstack.stages` and nothing more.

Caching: none. DESIGN.md allows two caches, DVC's view of stale stages and the fold identities; a Prefect
result cache beside them could disagree with both, so every task has `cache_policy=NONE`.

Retries only where a retry can help: registering (git, W&B, network) and versioning (DVC remote). Bad data,
a missing stage input or invalid params fail at once: they are `FoldstackError`s, and `transient_failure`
refuses to retry those even in the tasks that do retry.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import Task, exponential_backoff

from foldstack import stages
from foldstack.config import Config
from foldstack.errors import FoldstackError

REGISTRY_MODULE = "foldstack.registry"
VERSIONING_MODULE = "foldstack.versioning"


def transient_failure(task_: Task[..., Any], task_run: TaskRun, state: State) -> bool:
    """Retry condition: retry I/O and service errors, never a user error (bad data, params, missing input)."""
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, FoldstackError)


def _module_missing(name: str) -> bool:
    return importlib.util.find_spec(name) is None


@task(name="validate-data", cache_policy=NONE)
def validate_data(cfg: Config) -> dict[str, Any]:
    """The data gate, then the snapshot (train/holdout split, label map, data hash)."""
    return stages.validate(cfg)


@task(name="make-folds", cache_policy=NONE)
def make_folds(cfg: Config) -> dict[str, Any]:
    """The one fold assignment every base model uses."""
    return stages.make_folds(cfg)


@task(name="collect-oof", task_run_name="collect-oof {model}", cache_policy=NONE)
def collect_oof(cfg: Config, model: str) -> dict[str, Any]:
    """OOF[model] from its fold tasks (coverage asserted) and its holdout prediction."""
    return stages.collect_oof(cfg, model)


@task(name="fit-meta", cache_policy=NONE)
def fit_meta(cfg: Config) -> dict[str, Any]:
    """The meta-learner on the OOF matrices, with its CV estimate on the OOF."""
    return stages.stack(cfg)


@task(name="evaluate", cache_policy=NONE)
def evaluate(cfg: Config) -> dict[str, Any]:
    """Holdout metrics of every base model, baseline and the ensemble; leaderboard and plots."""
    return stages.evaluate(cfg)


@task(name="bundle", cache_policy=NONE)
def make_bundle(cfg: Config) -> dict[str, Any]:
    """The self-describing, hashed bundle."""
    return stages.make_bundle(cfg)


@task(name="register", cache_policy=NONE, retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=5),
      retry_jitter_factor=0.5, retry_condition_fn=transient_failure)
def register(cfg: Config, bundle: dict[str, Any]) -> dict[str, Any]:
    """Register the bundle (the bundle stage's summary) and run the promotion gate (foldstack.registry)."""
    if _module_missing(REGISTRY_MODULE):
        get_run_logger().warning("register: skipped, %s is not available", REGISTRY_MODULE)
        return {"status": "skipped: module not available"}
    from foldstack.registry import register_bundle

    return {"status": "done", **register_bundle(cfg, bundle["bundle"])}


@task(name="version", cache_policy=NONE, retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=5),
      retry_jitter_factor=0.5, retry_condition_fn=transient_failure)
def version(cfg: Config, params_file: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Version the run with DVC (foldstack.versioning): `dvc commit` the stages the flow ran, `dvc push`."""
    logger = get_run_logger()
    if _module_missing(VERSIONING_MODULE):
        logger.warning("version: skipped, %s is not available", VERSIONING_MODULE)
        return {"status": "skipped: module not available"}
    from foldstack.versioning import default_remote, pipeline_stages, record_run

    root = cfg.resolve_path(".")  # the DVC project is the directory of params.yaml and dvc.yaml
    if not (root / "dvc.yaml").is_file():
        logger.warning("version: skipped, %s has no dvc.yaml", root)
        return {"status": f"skipped: no DVC pipeline in {root}"}
    # dvc.lock records the params of root/params.yaml: outputs made with other values must not be pinned to them.
    if overrides or Path(params_file).resolve() != root / "params.yaml":
        logger.warning("version: skipped, the run's params differ from %s (overrides or another file)",
                       root / "params.yaml")
        return {"status": "skipped: params differ from params.yaml (overrides or another file)"}
    remote = default_remote(root)
    # The flow ran every stage of the pipeline itself; DVC records the results (one serialized step).
    record = record_run(root, pipeline_stages(root), push_to_remote=remote is not None)
    if remote is None:
        pushed = "not pushed (no DVC remote configured)"
    elif record.pushed_files is None:
        pushed = "nothing to push"
    else:
        pushed = f"pushed {record.pushed_files} file(s) to {record.remote}"
    status = f"committed {len(record.committed)} stage(s), {pushed}"
    return {"status": status, "committed": record.committed, "pushed_files": record.pushed_files,
            "remote": record.remote}
