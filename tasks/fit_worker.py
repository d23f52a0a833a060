"""Inside a CPU fit process: its start-up, and what it imports ahead of time. No Prefect here.

The flow's CPU fits run in worker processes (see `tasks.fold.FitProcesses`). Where the platform has it, they
are forked from a fork server that imported this module once: the stage code, numpy/pandas/scikit-learn and
every registered model kind are then already in memory, and a new fit process starts in milliseconds instead
of importing all of it again (seconds per process on a loaded 2-core machine, which on a small run costs
more than the fits themselves).
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import threading

from foldstack.pipeline import stages  # noqa: F401  (imported here so that the fork server holds it)
from foldstack.models import available_kinds

available_kinds()  # every kind's module; their heavy libraries they import when they fit, hence:

# What the CPU kinds import inside fit/save (they keep it out of module level so that validating params stays
# fast). Loaded once here, in the fork server. torch is left out: GPU kinds fit in the flow's threads, and a
# CPU fine-tune imports it once per worker.
WARM_MODULES = ("scipy.sparse", "sklearn.feature_extraction.text", "sklearn.linear_model", "sklearn.svm",
                "sklearn.calibration", "sklearn.model_selection", "skops.io")
for _name in WARM_MODULES:
    with contextlib.suppress(ImportError):  # a missing optional library only makes the first fit slower
        importlib.import_module(_name)


def exit_with_parent() -> None:
    """End this process when the flow process is gone (e.g. killed with SIGKILL).

    A pool worker otherwise outlives its parent, keeps fitting a fold nobody will collect, and then blocks
    forever on its call queue.
    """
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    if parent is None:
        return
    wait([parent.sentinel])
    os._exit(1)


def init_fit_process(threads: int) -> None:
    """Pool initializer: a share of the cores for this worker, and a watch on the flow process."""
    from threadpoolctl import threadpool_limits

    # Every worker using all cores for torch/BLAS would thrash the others. torch reads the env when it is
    # first imported (in the fit, after this); BLAS was loaded in the fork server already, so it is limited
    # through threadpoolctl.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    threadpool_limits(limits=threads)
    threading.Thread(target=exit_with_parent, name="exit-with-parent", daemon=True).start()
