"""The `runtime` section: where artifacts go, the device, how fold trainings are run, schedules."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from foldstack.config.base import Section


class RuntimeConfig(Section):
    artifacts_dir: str = "artifacts"
    cache_dir: str = ".cache/foldstack"
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    max_workers: int = Field(2, ge=1, le=256, description="fold trainings run at once on CPU; GPU kinds run "
                                                          "one per visible GPU besides these")
    fits_per_gpu: int = Field(1, ge=1, le=16, description="fold fits sharing one GPU at once (small fine-tunes "
                                                          "fill a big GPU better several at a time)")
    executor: Literal["local", "workpool", "ray"] = Field(
        "local", description="where fold trainings run: this machine, a Prefect work pool, or a Ray cluster")
    work_pool: str = Field("gpu", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                           description="(workpool) the Prefect work pool whose workers run the train-fold flow")
    shared_storage: str | None = Field(None, description="(workpool) fsspec URL where workers exchange artifacts, "
                                                         "e.g. s3://bucket/foldstack or file:///mnt/shared")
    ray_address: str | None = Field(None, description="(ray) address of the Ray cluster; none: RAY_ADDRESS or "
                                                      "a local Ray")
    retrain_cron: str = Field("0 3 * * 1", description="schedule of the `retrain` deployment (cron, or @daily...)")
    watch_interval_seconds: int = Field(300, ge=10, description="how often `watch-data` hashes the data")
    refit_full: bool = Field(False, description="also fit each base model on all training rows for prediction")

    @field_validator("retrain_cron")
    @classmethod
    def _cron_shape(cls, value: str) -> str:
        aliases = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
        if value.strip() not in aliases and len(value.split()) != 5:
            raise ValueError(f"{value!r} is not a cron schedule: five fields (minute hour day month weekday), "
                             f"e.g. '0 3 * * 1', or one of {', '.join(sorted(aliases))}")
        return value.strip()

