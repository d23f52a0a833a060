"""What the CPU fit processes' fork server imports ahead of time. No Prefect here.

The flow's CPU fits run in worker processes (`foldstack.runtime.pools.ProcessPool`, see `tasks.fold`). Where
the platform has it, they are forked from a fork server that imported this module once: the stage code,
numpy/pandas/scikit-learn and every registered model kind are then already in memory, and a new fit process
starts in milliseconds instead of importing all of it again (seconds per process on a loaded 2-core machine,
which on a small run costs more than the fits themselves).
"""

from __future__ import annotations

import contextlib
import importlib

from foldstack.models import available_kinds
from foldstack.pipeline import stages  # noqa: F401  (imported here so that the fork server holds it)

available_kinds()  # every kind's module; their heavy libraries they import when they fit, hence:

# What the CPU kinds import inside fit/save (they keep it out of module level so that validating params stays
# fast). Loaded once here, in the fork server. torch is left out: GPU kinds fit in the flow's threads, and a
# CPU fine-tune imports it once per worker.
WARM_MODULES = ("scipy.sparse", "sklearn.feature_extraction.text", "sklearn.linear_model", "sklearn.svm",
                "sklearn.calibration", "sklearn.model_selection", "skops.io")
for _name in WARM_MODULES:
    with contextlib.suppress(ImportError):  # a missing optional library only makes the first fit slower
        importlib.import_module(_name)
