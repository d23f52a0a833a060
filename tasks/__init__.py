"""Prefect tasks of foldstack: each a thin wrapper over one stage function of `foldstack.pipeline.stages`.

`pipeline` holds the stage tasks (validate, folds, collect, stack, evaluate, bundle, register, version),
`fold` the per-(model, fold) training task and where it runs, `executors` where the fold tasks run (this
machine, a work pool, Ray), `fanout` the flow's fan-out over them, `remote` and `storage` the work pool's
side (the `train-fold` deployment, artifacts exchanged through shared storage), `report` the dashboard
artifacts.

Importing this package settles PREFECT_HOME before anything imports Prefect (`foldstack.runtime.prefect_env`).
"""

from foldstack.runtime.prefect_env import prefect_environment_defaults

prefect_environment_defaults()
