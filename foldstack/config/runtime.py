"""The `runtime` section: where artifacts go, the device, how fold trainings are run, schedules.

`runtime.executor` is where the fold trainings run, one class per kind told apart by `kind`, each with only
its own keys: `{kind: local}` (this machine), `{kind: workpool, work_pool: gpu, shared_storage: s3://...}` (a
Prefect work pool), `{kind: ray, address: ...}` (a Ray cluster). The bare kind is short for its defaults
(`executor: local`).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationError, ValidatorFunctionWrapHandler, field_validator

from foldstack.config.base import Section


class LocalExecutorConfig(Section):
    """Fold trainings on this machine: one slot per GPU for the GPU kinds, `runtime.max_workers` for CPU."""

    kind: Literal["local"] = "local"


class WorkPoolExecutorConfig(Section):
    """Fold trainings as runs of the `train-fold` deployment on a Prefect work pool."""

    kind: Literal["workpool"] = "workpool"
    work_pool: str = Field("gpu", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                           description="the Prefect work pool whose workers run the train-fold flow")
    shared_storage: str | None = Field(None, description="fsspec URL where workers exchange artifacts, "
                                                         "e.g. s3://bucket/foldstack or file:///mnt/shared")


class RayExecutorConfig(Section):
    """Fold trainings on a Ray cluster (through prefect-ray)."""

    kind: Literal["ray"] = "ray"
    address: str | None = Field(None, description="address of the Ray cluster; none: RAY_ADDRESS or a local Ray")


ExecutorConfig = Annotated[LocalExecutorConfig | WorkPoolExecutorConfig | RayExecutorConfig,
                           Field(discriminator="kind")]
EXECUTOR_KINDS: tuple[str, ...] = ("local", "workpool", "ray")

# The flat keys of before the executor had a section of its own.
_RETIRED_KEYS = {
    "work_pool": "work_pool moved to runtime.executor.work_pool (executor: {kind: workpool, work_pool: ...})",
    "shared_storage": "shared_storage moved to runtime.executor.shared_storage "
                      "(executor: {kind: workpool, shared_storage: ...})",
    "ray_address": "ray_address moved to runtime.executor.address (executor: {kind: ray, address: ...})",
}


class RuntimeConfig(Section):
    artifacts_dir: str = "artifacts"
    cache_dir: str = ".cache/foldstack"
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    max_workers: int = Field(2, ge=1, le=256, description="fold trainings run at once on CPU; GPU kinds run "
                                                          "one per visible GPU besides these")
    fits_per_gpu: int = Field(1, ge=1, le=16, description="fold fits sharing one GPU at once (small fine-tunes "
                                                          "fill a big GPU better several at a time)")
    executor: ExecutorConfig = Field(
        default_factory=LocalExecutorConfig,
        description="where fold trainings run: {kind: local} (this machine), {kind: workpool, work_pool, "
                    "shared_storage} (a Prefect work pool) or {kind: ray, address} (a Ray cluster)")
    retrain_cron: str = Field("0 3 * * 1", description="schedule of the `retrain` deployment (cron, or @daily...)")
    watch_interval_seconds: int = Field(300, ge=10, description="how often `watch-data` hashes the data")
    refit_full: bool = Field(False, description="also fit each base model on all training rows for prediction")

    retired_keys: ClassVar[dict[str, str]] = _RETIRED_KEYS

    @field_validator("executor", mode="wrap")
    @classmethod
    def _executor_kind(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """`executor: local` is `{kind: local}`; an error names runtime.executor.<key>, without the kind that
        pydantic puts into the location of a discriminated union's errors."""
        if isinstance(value, str):
            value = {"kind": value}
        if isinstance(value, dict) and "kind" not in value:
            raise ValueError(f"needs a kind, one of {', '.join(EXECUTOR_KINDS)} (e.g. executor: {{kind: workpool, "
                             f"work_pool: gpu}})")
        try:
            return handler(value)
        except ValidationError as exc:
            errors = []
            for error in exc.errors():
                loc = tuple(error["loc"])
                errors.append({**error, "loc": loc[1:] if loc and loc[0] in EXECUTOR_KINDS else loc})
            raise ValidationError.from_exception_data(exc.title, errors) from None

    @field_validator("retrain_cron")
    @classmethod
    def _cron_shape(cls, value: str) -> str:
        aliases = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
        if value.strip() not in aliases and len(value.split()) != 5:
            raise ValueError(f"{value!r} is not a cron schedule: five fields (minute hour day month weekday), "
                             f"e.g. '0 3 * * 1', or one of {', '.join(sorted(aliases))}")
        return value.strip()

