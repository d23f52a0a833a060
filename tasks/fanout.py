"""The fan-out of fold trainings over the executor named by `runtime.executor`.

* `local`: two Prefect `ThreadPoolTaskRunner`s bound the concurrency: one with a slot per GPU for the kinds
  that use a GPU (each task leases its own device, see `foldstack.runtime.gpu_slots`), one with `runtime.max_workers`
  slots for everything on CPU. GPU and CPU work run side by side and neither waits for the other's slots.
* `workpool`: one `run_deployment` of `train-fold` per fold task; the pool's workers (and their `--limit`)
  decide how many run at once, and each worker leases its own GPUs.
* `ray`: prefect-ray's `RayTaskRunner`, each task asking Ray for `num_gpus=1` (GPU kinds) or `num_cpus=1`.

Each executor is a context manager (its runners live while their tasks run) with `submit(fold_task, wait_for)`.
"""

from __future__ import annotations

from typing import Any

from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from foldstack.pipeline import stages
from foldstack.config import Config
from foldstack.errors import ConfigError
from foldstack.common.files import is_complete
from foldstack.runtime.gpu_slots import SlotPlan, default_lock_dir, kind_uses_gpu, plan_slots, visible_gpus
from foldstack.models import model_class


def wants_gpu(cfg: Config, model: str) -> bool:
    return kind_uses_gpu(model_class(cfg.base_model(model).kind))


def _parameters(cfg: Config, task_: stages.FoldTask, **extra: Any) -> dict[str, Any]:
    return {"cfg": cfg, "model": task_.model, "repeat": task_.repeat, "fold": task_.fold,
            "identity": task_.identity, **extra}


class LocalFanOut:
    """Fold tasks on this machine: a GPU runner (one slot per device) beside a CPU runner (max_workers)."""

    def __init__(self, cfg: Config, slots: SlotPlan | None = None, lock_dir: str | None = None):
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

    def describe(self) -> str:
        return f"local: {self.slots.describe()}"

    def __enter__(self) -> LocalFanOut:
        self.cpu_runner.__enter__()
        self.gpu_runner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        from tasks.fold import shutdown_fit_processes

        try:
            self.gpu_runner.__exit__(*exc)
            self.cpu_runner.__exit__(*exc)
        finally:
            shutdown_fit_processes()

    def submit(self, task_: stages.FoldTask, wait_for: list[PrefectFuture] | None = None) -> PrefectFuture:
        from tasks.fold import Placement, train_fold

        if self.slots.uses_gpu_slot(wants_gpu(self.cfg, task_.model)):
            runner = self.gpu_runner
            placement = Placement("gpu", gpu_devices=self.slots.gpu_devices, fits_per_gpu=self.slots.fits_per_gpu,
                                  lock_dir=self.lock_dir)
        else:
            runner = self.cpu_runner
            placement = Placement("cpu", worker_processes=self.slots.cpu_slots)
        return runner.submit(train_fold, _parameters(self.cfg, task_, placement=placement), wait_for=wait_for)


class WorkPoolFanOut:
    """Fold tasks as runs of the `train-fold` deployment on the work pool `runtime.work_pool`."""

    def __init__(self, cfg: Config, n_tasks: int):
        from tasks.remote import require_shared_storage

        self.cfg = cfg
        self.shared_storage = require_shared_storage(cfg)
        # One thread per remote run: they only wait; the workers decide how many train at once.
        self.runner = ThreadPoolTaskRunner(max_workers=max(1, n_tasks))
        self.inputs: str | None = None

    def describe(self) -> str:
        return f"work pool {self.cfg.runtime.work_pool!r}, shared storage {self.shared_storage}"

    def __enter__(self) -> WorkPoolFanOut:
        from flows.deploy import ensure_train_fold_deployment
        from tasks.remote import publish_inputs_task

        ensure_train_fold_deployment(self.cfg.runtime.work_pool)
        self.inputs = publish_inputs_task(self.cfg)
        self.runner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.runner.__exit__(*exc)

    def submit(self, task_: stages.FoldTask, wait_for: list[PrefectFuture] | None = None) -> PrefectFuture:
        from tasks.remote import train_fold_remote

        return self.runner.submit(train_fold_remote, _parameters(self.cfg, task_, inputs=self.inputs),
                                  wait_for=wait_for)


class RayFanOut:
    """Fold tasks on a Ray cluster (`runtime.ray_address`, or a local Ray) through prefect-ray.

    Ray workers must see `runtime.artifacts_dir` (one machine, or a filesystem shared by the nodes) and run
    the same foldstack code (install it on the nodes, or pass a `runtime_env`).
    """

    def __init__(self, cfg: Config):
        try:
            from prefect_ray import RayTaskRunner
        except ImportError:
            raise ConfigError("runtime.executor=ray needs the optional extra: pip install 'foldstack[ray]' "
                              "(prefect-ray and ray)") from None
        self.cfg = cfg
        address = cfg.runtime.ray_address
        self.runner = RayTaskRunner(address=address) if address else RayTaskRunner()
        self.cluster_gpus = 0.0

    def describe(self) -> str:
        return f"ray ({self.cfg.runtime.ray_address or 'local'}), {self.cluster_gpus:g} GPU(s) in the cluster"

    def __enter__(self) -> RayFanOut:
        import ray

        self.runner.__enter__()
        self.cluster_gpus = 0.0 if self.cfg.runtime.device == "cpu" else ray.cluster_resources().get("GPU", 0.0)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.runner.__exit__(*exc)

    def submit(self, task_: stages.FoldTask, wait_for: list[PrefectFuture] | None = None) -> PrefectFuture:
        from prefect_ray.context import remote_options

        from tasks.fold import Placement, train_fold

        on_gpu = self.cluster_gpus > 0 and wants_gpu(self.cfg, task_.model)
        placement = Placement("ray-gpu" if on_gpu else "ray-cpu")
        # No wait_for: Ray ships a task's upstream futures to the worker, and the flow's own (thread) futures
        # cannot be pickled; the flow resolved the snapshot and folds before planning these tasks anyway.
        # The cost: the run graph draws no edge from make-folds to the Ray fold tasks.
        with remote_options(**({"num_gpus": 1} if on_gpu else {"num_cpus": 1})):
            return self.runner.submit(train_fold, _parameters(self.cfg, task_, placement=placement))


def _folds_on_disk_look_complete(cfg: Config) -> bool:
    """Whether every base model has all its fold directories finished (identities not checked: a guess)."""
    per_model = cfg.folds.k * cfg.folds.repeats + (1 if cfg.runtime.refit_full else 0)
    layout = stages.Layout.of(cfg)
    return all(sum(1 for d in layout.base(spec.name).glob("*") if is_complete(d)) >= per_model
               for spec in cfg.base_models)


def warm_up(cfg: Config) -> None:
    """Before validation: start what the local fan-out will need, when it will likely train something.

    The CPU fit processes' fork server imports the model code for a few seconds; started here it does so
    while the data is validated. Skipped when every fold looks finished (a rerun), where it would only take
    CPU from the validation.
    """
    if cfg.runtime.executor == "local" and not _folds_on_disk_look_complete(cfg):
        from tasks.fold import warm_up_fit_processes

        warm_up_fit_processes(cfg.runtime.max_workers)


def fan_out_for(cfg: Config, n_tasks: int) -> LocalFanOut | WorkPoolFanOut | RayFanOut:
    """The executor `runtime.executor` names."""
    if cfg.runtime.executor == "workpool":
        return WorkPoolFanOut(cfg, n_tasks)
    if cfg.runtime.executor == "ray":
        return RayFanOut(cfg)
    return LocalFanOut(cfg)
