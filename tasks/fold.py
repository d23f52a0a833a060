"""The (model, fold) training task and where its fit runs.

One task per (base model, repeat, fold). The flow sizes the concurrency with Prefect task runners built from a
`foldstack.runtime.gpu_slots.SlotPlan` (one runner slot per GPU, `runtime.max_workers` slots for CPU work); this module
decides, per task, which device it gets and which process does the fit:

* a GPU task leases one device (`DeviceLeases`, host-wide) and fits in the task's own thread: torch releases
  the GIL, and the devices' CUDA contexts are made once per flow process, not once per task;
* a CPU task fits in one of this process's worker processes (`foldstack.runtime.pools.ProcessPool`, one per
  CPU slot, started on first use, forked from a fork server that has the model code loaded), because the tf-idf kinds tokenise in Python and would
  serialise on the GIL in threads. Prefect's own
  `ProcessPoolTaskRunner` was measured as the alternative: with the embedded server each of its worker
  processes starts a server of its own (~8 s and a database writer each), so only the fit crosses a process
  boundary here, while the task run (state, logs, retries) stays in the flow process.

Resume: `stages.fold_task_done` / `stages.train_fold` are the one source of truth. A task whose identity is
already finished on disk returns at once in a `Skipped` state; no Prefect result caching sits beside it.
"""

from __future__ import annotations

import multiprocessing.context
import os
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.states import Completed, State

from foldstack.config import Config
from foldstack.errors import StageError
from foldstack.pipeline import stages
from foldstack.runtime.gpu_slots import CPU, DeviceLeases
from foldstack.runtime.pools import ProcessPool, process_context

SlotKind = Literal["cpu", "gpu", "ray-cpu", "ray-gpu"]
SKIPPED = "Skipped"  # the state name of a fold task whose identity was already finished


@dataclass(frozen=True)
class Placement:
    """Where one fold training runs: its kind of slot, and the devices a GPU slot chooses from."""

    slot: SlotKind
    gpu_devices: tuple[str, ...] = ()
    fits_per_gpu: int = 1
    lock_dir: str | None = None
    worker_processes: int = 1  # size of the CPU fit processes (the CPU runner's slot count)

    def device(self) -> AbstractContextManager[str]:
        """Hold the task's device for the `with` block."""
        if self.slot == "gpu":
            return DeviceLeases(self.gpu_devices, self.lock_dir, per_device=self.fits_per_gpu).lease()
        if self.slot == "ray-gpu":
            # Ray pins a task to its GPU(s) with CUDA_VISIBLE_DEVICES: the first visible device is ours.
            return nullcontext("cuda:0")
        return nullcontext(CPU)

    def run(self, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        """Call `fn(*args)` where this placement's fits run."""
        if self.slot == "cpu":
            return _fit_processes(self.worker_processes).run(fn, *args)
        return fn(*args)  # GPU fits in this thread; Ray tasks already run in a Ray worker process


# ---------------------------------------------------------------------------------------- fit processes
def fit_process_context() -> multiprocessing.context.BaseContext:
    """The start method of the CPU fit processes: a fork server (see `foldstack.runtime.pools.process_context`)
    that imported tasks/fit_worker.py once, so a new fit process starts in milliseconds."""
    # A child re-runs the parent's __main__ module (as __mp_main__) when that is a module (`python -m
    # flows.train`). With this module (Prefect, the stages) and the main module's package loaded in the server,
    # that re-run only executes the module's own lines. (Not the main module itself: runpy warns when the
    # module it is asked to run is in sys.modules already.)
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    main_package = [main_spec.parent] if main_spec is not None and main_spec.parent else []
    return process_context(["tasks.fit_worker", __name__, *main_package])


_FIT_PROCESSES: ProcessPool | None = None
_FIT_PROCESSES_LOCK = threading.Lock()


def _fit_processes(max_workers: int) -> ProcessPool:
    """This process's CPU fit processes, `max_workers` of them, each with its share of the cores."""
    global _FIT_PROCESSES
    with _FIT_PROCESSES_LOCK:
        if _FIT_PROCESSES is None or _FIT_PROCESSES.max_workers != max_workers:
            if _FIT_PROCESSES is not None:
                _FIT_PROCESSES.shutdown()
            _FIT_PROCESSES = ProcessPool(max_workers, threads=max(1, (os.cpu_count() or 1) // max_workers),
                                         context=fit_process_context)
        return _FIT_PROCESSES


def warm_up_fit_processes(max_workers: int) -> None:
    """Get the CPU fit processes ready ahead of the fan-out (see `ProcessPool.warm_up`)."""
    _fit_processes(max_workers).warm_up()


def shutdown_fit_processes() -> None:
    """Stop the CPU fit processes (the flow calls this when its fan-out is over)."""
    global _FIT_PROCESSES
    with _FIT_PROCESSES_LOCK:
        processes, _FIT_PROCESSES = _FIT_PROCESSES, None
    if processes is not None:
        processes.shutdown()


# ---------------------------------------------------------------------------------------------- the task
def fold_label(model: str, repeat: int, fold: int) -> str:
    return stages.FoldTask(model, repeat, fold, "").label


def skipped_state(label: str, identity: str) -> State:
    """The final state of a fold task whose work was already done (shown as `Skipped` in the UI)."""
    return Completed(name=SKIPPED, message=f"{label}: finished before with the same identity {identity}",
                     data={"task": label, "identity": identity, "skipped": True, "seconds": 0.0})


RESUMED = "(resumed)"  # the task run name's mark of a fold finished before (its state: `Skipped`)


def fold_task_run_name(parameters: dict[str, Any]) -> str:
    """`train <model> r<repeat>-k<fold>`, marked `(resumed)` when that fold is already finished with the same
    identity, so that the Prefect UI's run list tells reused folds from trained ones by name as well as state.
    Prefect names the task run as it starts, from its parameters (a cheap check of the fold's files)."""
    model, repeat, fold = parameters["model"], parameters["repeat"], parameters["fold"]
    name = f"train {model} r{repeat}-k{fold}"
    try:
        done = stages.fold_task_done(parameters["cfg"], stages.FoldTask(model, repeat, fold, parameters["identity"]))
    except Exception:  # a name must never fail the task: the task itself checks again and reports
        done = False
    return f"{name} {RESUMED}" if done else name


# No retries: a fit that failed on the same data, params and code fails again; a crashed worker process
# is reported as such and the rerun resumes from the folds that did finish.
@task(name="train-fold", task_run_name=fold_task_run_name, cache_policy=NONE)
def train_fold(cfg: Config, model: str, repeat: int, fold: int, identity: str,
               placement: Placement) -> dict[str, Any] | State:
    """Fit `model` on the training part of (repeat, fold); predict its validation part and the holdout."""
    logger = get_run_logger()
    label = fold_label(model, repeat, fold)
    if stages.fold_task_done(cfg, stages.FoldTask(model, repeat, fold, identity)):
        logger.info("%s: skipped, finished before with the same identity %s", label, identity)
        return skipped_state(label, identity)
    with placement.device() as device:
        logger.info("%s: fitting on %s", label, device)
        result = placement.run(stages.train_fold, cfg, model, repeat, fold, device)
    if result["identity"] != identity:
        raise StageError(f"{label}: trained identity {result['identity']} differs from the planned {identity}; "
                         f"the inputs changed during the run")
    if result.get("skipped"):  # finished by someone else meanwhile (another flow run on the same artifacts)
        return skipped_state(label, identity)
    logger.info("%s: trained on %s in %.1fs", label, result.get("device", device), result["seconds"])
    return result
