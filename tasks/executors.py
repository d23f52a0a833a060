"""Where the fold trainings run: one `Executor` per kind of `runtime.executor`.

* `local` (`LocalExecutor`): two Prefect `ThreadPoolTaskRunner`s bound the concurrency: one with a slot per GPU
  for the kinds that use a GPU (each task leases its own device, see `foldstack.runtime.gpu_slots`), one with
  `runtime.max_workers` slots for everything on CPU. GPU and CPU work run side by side and neither waits for
  the other's slots.
* `workpool` (`WorkPoolExecutor`): one `run_deployment` of `train-fold` per fold task; the pool's workers (and
  their `--limit`) decide how many run at once, and each worker leases its own GPUs.
* `ray` (`RayExecutor`): prefect-ray's `RayTaskRunner`, each task asking Ray for `num_gpus=1` (GPU kinds) or
  `num_cpus=1`.

An executor is a context manager (its runners live while their tasks run) with `submit(fold_task, wait_for)`;
`executor_for(cfg, n_tasks)` makes the one `runtime.executor.kind` names.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from foldstack.config import Config
from foldstack.errors import ConfigError
from foldstack.models import model_class
from foldstack.pipeline.stages import FoldTask
from foldstack.runtime.gpu_slots import SlotPlan, default_lock_dir, kind_uses_gpu, plan_slots, visible_gpus
from tasks.fold import Placement, shutdown_fit_processes, train_fold, warm_up_fit_processes
from tasks.remote import ensure_train_fold_deployment, publish_inputs_task, require_shared_storage, train_fold_remote


def wants_gpu(cfg: Config, model: str) -> bool:
    return kind_uses_gpu(model_class(cfg.base_model(model).kind))


def _parameters(cfg: Config, task_: FoldTask, **extra: Any) -> dict[str, Any]:
    return {"cfg": cfg, "model": task_.model, "repeat": task_.repeat, "fold": task_.fold,
            "identity": task_.identity, **extra}


class Executor(Protocol):
    """Where fold tasks run. Used as `with executor: executor.submit(task, wait_for)`."""

    kind: ClassVar[str]

    @staticmethod
    def warm_up(cfg: Config) -> None:
        """Before validation: start what this executor will need (the flow calls it when it will likely train)."""

    def describe(self) -> str:
        """Where the tasks run, for the flow's log."""

    def submit(self, task_: FoldTask, wait_for: list[PrefectFuture] | None = None) -> PrefectFuture:
        """Start one fold task; its future ends in the task's final state."""

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: Any) -> None: ...


class LocalExecutor:
    """Fold tasks on this machine: a GPU runner (one slot per device) beside a CPU runner (max_workers)."""

    kind: ClassVar[str] = "local"

    def __init__(self, cfg: Config, n_tasks: int = 0, slots: SlotPlan | None = None, lock_dir: str | None = None):
        self.cfg = cfg
        if slots is None:
            # Probing CUDA imports torch: only worth it when some base model can use a GPU.
            any_gpu_kind = any(wants_gpu(cfg, spec.name) for spec in cfg.base_models)
            slots = plan_slots(cfg.runtime.device, cfg.runtime.max_workers, visible_gpus(),
                               cfg.runtime.fits_per_gpu) if any_gpu_kind \
                else SlotPlan(gpu_devices=(), cpu_slots=cfg.runtime.max_workers)
        self.slots = slots
        self.lock_dir = lock_dir or str(default_lock_dir())
        self.cpu_runner = ThreadPoolTaskRunner(max_workers=self.slots.cpu_slots)
        self.gpu_runner = ThreadPoolTaskRunner(max_workers=max(1, self.slots.gpu_slots))

    @staticmethod
    def warm_up(cfg: Config) -> None:
        """The CPU fit processes' fork server imports the model code for a few seconds; started now it does so
        while the data is validated."""
        warm_up_fit_processes(cfg.runtime.max_workers)

    def describe(self) -> str:
        return f"local: {self.slots.describe()}"

    def __enter__(self) -> LocalExecutor:
        self.cpu_runner.__enter__()
        self.gpu_runner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.gpu_runner.__exit__(*exc)
            self.cpu_runner.__exit__(*exc)
        finally:
            shutdown_fit_processes()

    def submit(self, task_: FoldTask, wait_for: list[PrefectFuture] | None = None) -> PrefectFuture:
        if self.slots.uses_gpu_slot(wants_gpu(self.cfg, task_.model)):
            runner = self.gpu_runner
            placement = Placement("gpu", gpu_devices=self.slots.gpu_devices, fits_per_gpu=self.slots.fits_per_gpu,
                                  lock_dir=self.lock_dir)
        else:
            runner = self.cpu_runner
            placement = Placement("cpu", worker_processes=self.slots.cpu_slots)
        return runner.submit(train_fold, _parameters(self.cfg, task_, placement=placement), wait_for=wait_for)


class WorkPoolExecutor:
    """Fold tasks as runs of the `train-fold` deployment on the work pool `runtime.executor.work_pool`."""

    kind: ClassVar[str] = "workpool"

    def __init__(self, cfg: Config, n_tasks: int):
        self.cfg = cfg
        self.work_pool = cfg.runtime.executor.work_pool
        self.shared_storage = require_shared_storage(cfg)
        # One thread per remote run: they only wait; the workers decide how many train at once.
        self.runner = ThreadPoolTaskRunner(max_workers=max(1, n_tasks))
        self.inputs: str | None = None

    @staticmethod
    def warm_up(cfg: Config) -> None:
        """Nothing: the workers start their own processes."""

    def describe(self) -> str:
        return f"work pool {self.work_pool!r}, shared storage {self.shared_storage}"

    def __enter__(self) -> WorkPoolExecutor:
        ensure_train_fold_deployment(self.work_pool)
        self.inputs = publish_inputs_task(self.cfg)
        self.runner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.runner.__exit__(*exc)

    def submit(self, task_: FoldTask, wait_for: list[PrefectFuture] | None = None) -> PrefectFuture:
        return self.runner.submit(train_fold_remote, _parameters(self.cfg, task_, inputs=self.inputs),
                                  wait_for=wait_for)


class RayExecutor:
    """Fold tasks on a Ray cluster (`runtime.executor.address`, or a local Ray) through prefect-ray.

    Ray workers must see `runtime.artifacts_dir` (one machine, or a filesystem shared by the nodes) and run
    the same foldstack code (install it on the nodes, or pass a `runtime_env`).
    """

    kind: ClassVar[str] = "ray"

    def __init__(self, cfg: Config, n_tasks: int = 0):
        try:
            from prefect_ray import RayTaskRunner
        except ImportError:
            raise ConfigError("runtime.executor=ray needs the optional extra: pip install 'foldstack[ray]' "
                              "(prefect-ray and ray)") from None
        self.cfg = cfg
        self.address = cfg.runtime.executor.address
        self.runner = RayTaskRunner(address=self.address) if self.address else RayTaskRunner()
        self.cluster_gpus = 0.0

    @staticmethod
    def warm_up(cfg: Config) -> None:
        """Nothing: Ray starts its own workers."""

    def describe(self) -> str:
        return f"ray ({self.address or 'local'}), {self.cluster_gpus:g} GPU(s) in the cluster"

    def __enter__(self) -> RayExecutor:
        import ray

        self.runner.__enter__()
        self.cluster_gpus = 0.0 if self.cfg.runtime.device == "cpu" else ray.cluster_resources().get("GPU", 0.0)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.runner.__exit__(*exc)

    def submit(self, task_: FoldTask, wait_for: list[PrefectFuture] | None = None) -> PrefectFuture:
        from prefect_ray.context import remote_options

        on_gpu = self.cluster_gpus > 0 and wants_gpu(self.cfg, task_.model)
        placement = Placement("ray-gpu" if on_gpu else "ray-cpu")
        # No wait_for: Ray ships a task's upstream futures to the worker, and the flow's own (thread) futures
        # cannot be pickled; the flow resolved the snapshot and folds before planning these tasks anyway.
        # The cost: the run graph draws no edge from make-folds to the Ray fold tasks.
        with remote_options(**({"num_gpus": 1} if on_gpu else {"num_cpus": 1})):
            return self.runner.submit(train_fold, _parameters(self.cfg, task_, placement=placement))


EXECUTORS: dict[str, type[LocalExecutor | WorkPoolExecutor | RayExecutor]] = {
    cls.kind: cls for cls in (LocalExecutor, WorkPoolExecutor, RayExecutor)}


def executor_class(cfg: Config) -> type[Executor]:
    """The executor `runtime.executor.kind` names."""
    return EXECUTORS[cfg.runtime.executor.kind]


def executor_for(cfg: Config, n_tasks: int) -> Executor:
    """The executor for `n_tasks` fold tasks (a work pool runs them all at once if its workers allow)."""
    return executor_class(cfg)(cfg, n_tasks)
