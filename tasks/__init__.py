"""Prefect tasks of foldstack: each a thin wrapper over one stage function of `foldstack.pipeline.stages`.

`pipeline` holds the stage tasks (validate, folds, collect, stack, evaluate, bundle, register, version),
`fold` the per-(model, fold) training task and where it runs, `storage` the exchange of artifacts with
work-pool workers through shared storage, `report` the dashboard artifacts.
"""

import flows  # noqa: F401  (settles PREFECT_HOME before anything imports Prefect)
