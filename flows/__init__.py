"""Prefect flows of foldstack: `train_ensemble` (the pipeline; `python -m flows.train` runs it), `train_fold`
(one fold on a work-pool worker), `watch_data` (emits `foldstack.data.changed`), `monitor` (checks the
prediction log for drift, emits `foldstack.model.drifted`), `deploy` (the deployments) and `batch_predict`.

Importing this package settles where Prefect keeps its state before Prefect itself is imported
(`foldstack.runtime.prefect_env`): with no Prefect configuration of the user's own, the embedded (ephemeral)
server's database lives in `./.prefect` of the directory you run from (git-ignored) and analytics are off.
"""

from foldstack.runtime.prefect_env import PROJECT_PREFECT_HOME, prefect_environment_defaults

__all__ = ["PROJECT_PREFECT_HOME", "prefect_environment_defaults"]

prefect_environment_defaults()
