"""The `train-fold` flow: one (model, repeat, fold) on a work-pool worker (`runtime.executor: {kind: workpool}`).

The parent `train-ensemble` flow runs the `train-fold` deployment once per pending fold task. This flow
leases a device on the worker's own machine (a GPU for the kinds that use one, if the worker has one free),
then `tasks.remote.train_fold_from_storage` fetches the inputs from shared storage, trains and publishes
the fold. Start workers on the GPU machines with

    prefect worker start --pool gpu --type process --limit <number of GPUs>
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from prefect import flow, get_run_logger

from foldstack.config import config_from_dict
from foldstack.runtime.gpu_slots import CPU, DeviceLeases, kind_uses_gpu, plan_slots, visible_gpus
from foldstack.models import model_class
from tasks.remote import train_fold_from_storage


@flow(name="train-fold", flow_run_name="train {model} r{repeat}-k{fold}", log_prints=False)
def train_fold_on_worker(config: dict[str, Any], model: str, repeat: int, fold: int, shared_storage: str,
                         inputs: str) -> dict[str, Any]:
    """Train one fold of one base model from the inputs in shared storage; publish it there."""
    logger = get_run_logger()
    cfg = config_from_dict(config, source="train-fold parameters")  # validated in full here too
    slots = plan_slots(cfg.runtime.device, cfg.runtime.max_workers, visible_gpus(), cfg.runtime.fits_per_gpu)
    wants_gpu = kind_uses_gpu(model_class(cfg.base_model(model).kind))
    lease = DeviceLeases(slots.gpu_devices, per_device=slots.fits_per_gpu).lease() \
        if slots.uses_gpu_slot(wants_gpu) else nullcontext(CPU)
    with lease as device:
        logger.info("train %s r%d-k%d on %s", model, repeat, fold, device)
        result = train_fold_from_storage(config, model, repeat, fold, shared_storage, inputs, device)
    logger.info("%s: %s in %.1fs", result["task"], "already in shared storage" if result["skipped"] else "trained",
                result["seconds"])
    return result
