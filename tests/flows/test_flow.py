"""The `train-ensemble` flow end to end on Prefect's embedded server: same results as the in-process pipeline,
a rerun that trains nothing, the dashboard artifacts, and GPU kinds pinned one per (fake) GPU beside CPU kinds.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import ClassVar  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from prefect.artifacts import Artifact  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

import tasks.executors  # noqa: E402
from flows.train_ensemble import train_ensemble  # noqa: E402
from foldstack.config import load_config  # noqa: E402
from foldstack.errors import StageError  # noqa: E402
from foldstack.common.files import load_array, read_json  # noqa: E402
from foldstack.models import register_model  # noqa: E402
from foldstack.models.base import ModelContext, ModelParams  # noqa: E402
from foldstack.pipeline.stages import Layout, fold_task_done, plan_fold_tasks, run_pipeline  # noqa: E402
from tasks.report import LEADERBOARD_KEY, PROGRESS_KEY, REPORT_KEY  # noqa: E402
from tests.conftest import write_params  # noqa: E402

NO_REGISTRY = {"git_registry": False}


@pytest.fixture(scope="module")
def prefect_api():
    """A throw-away embedded Prefect server and database for this module."""
    with prefect_test_harness(server_startup_timeout=120):
        yield


def _fold_files(cfg) -> dict[str, float]:
    """Each fold task's task.json and its modification time (a retrained fold gets a new file)."""
    layout = Layout.of(cfg)
    return {t.label: (layout.fold_dir(t.model, t.repeat, t.fold) / "task.json").stat().st_mtime_ns
            for t in plan_fold_tasks(cfg)}


def test_flow_trains_like_the_in_process_pipeline_and_a_rerun_trains_nothing(prefect_api, tmp_path, demo_csv):
    (tmp_path / "flow").mkdir()
    (tmp_path / "local").mkdir()
    flow_params = write_params(tmp_path / "flow", demo_csv, registry=NO_REGISTRY, runtime={"max_workers": 2})
    result = train_ensemble(params=str(flow_params))
    cfg = load_config(flow_params)
    n_tasks = len(cfg.base_models) * cfg.folds.k
    assert (result["trained"], result["reused"]) == (n_tasks, 0)
    assert Path(result["bundle"], "manifest.json").is_file()
    assert 0.0 < result["metrics"]["ensemble.accuracy"] <= 1.0
    assert result["registration"] == "done"

    # The same stage functions in-process give the same OOF and the same ensemble, bit for bit.
    local_cfg = load_config(write_params(tmp_path / "local", demo_csv, registry=NO_REGISTRY))
    run_pipeline(local_cfg)
    for spec in cfg.base_models:
        np.testing.assert_array_equal(load_array(Layout.of(cfg).base(spec.name) / "oof.npy"),
                                      load_array(Layout.of(local_cfg).base(spec.name) / "oof.npy"))
    np.testing.assert_array_equal(load_array(Layout.of(cfg).stack / "holdout_proba.npy"),
                                  load_array(Layout.of(local_cfg).stack / "holdout_proba.npy"))

    report = Artifact.get(REPORT_KEY)
    assert f"{n_tasks} fold tasks trained, 0 reused" in report.data
    assert "Holdout leaderboard" in report.data and result["bundle"] in report.data
    table = Artifact.get(LEADERBOARD_KEY)
    assert "ensemble" in str(table.data)
    assert float(Artifact.get(PROGRESS_KEY).data) == 100.0

    before = _fold_files(cfg)
    again = train_ensemble(params=str(flow_params))
    assert (again["trained"], again["reused"]) == (0, n_tasks)
    assert sorted(again["reused_tasks"]) == sorted(before)
    assert _fold_files(cfg) == before  # no fold directory was rewritten
    assert f"0 fold tasks trained, {n_tasks} reused" in Artifact.get(REPORT_KEY).data


# ------------------------------------------------------------------------------------------ fake GPUs
class _GpuLedger:
    """Which fake device each fit ran on, and the most fits seen at once per device and in total."""

    def __init__(self):
        self.lock = threading.Lock()
        self.busy: dict[str, int] = {}
        self.max_per_device = 0
        self.max_total = 0

    def enter(self, device: str) -> None:
        with self.lock:
            self.busy[device] = self.busy.get(device, 0) + 1
            self.max_per_device = max(self.max_per_device, self.busy[device])
            self.max_total = max(self.max_total, sum(self.busy.values()))

    def leave(self, device: str) -> None:
        with self.lock:
            self.busy[device] -= 1


GPU_LEDGER = _GpuLedger()


@register_model
class FakeGpuModel:
    """A GPU kind that touches no GPU: it records the device it was given, holds it a moment, predicts priors."""

    kind: ClassVar[str] = "test_fake_gpu"
    uses_gpu: ClassVar[bool] = True

    class Params(ModelParams):
        seconds: float = 0.3
        fail: bool = False

    def __init__(self, params: Params, context: ModelContext):
        self.params = params
        self.context = context

    def fit(self, texts, y):
        if self.params.fail:
            raise RuntimeError("this fake model fails on purpose")
        GPU_LEDGER.enter(self.context.device)
        try:
            time.sleep(self.params.seconds)
        finally:
            GPU_LEDGER.leave(self.context.device)
        self.prior_ = np.bincount(y, minlength=self.context.n_classes) / len(y)
        return self

    def predict_proba(self, texts):
        return np.tile(self.prior_, (len(texts), 1))

    def save(self, directory: Path) -> None:
        (Path(directory) / "prior.json").write_text(str(self.prior_.tolist()))

    @classmethod
    def load(cls, directory: Path, *, device: str = "cpu", cache_dir=None):
        raise NotImplementedError("test kind: never loaded")


def test_gpu_kinds_run_one_per_gpu_pinned_beside_cpu_kinds(prefect_api, tmp_path, demo_csv, monkeypatch):
    monkeypatch.setattr(tasks.executors, "visible_gpus", lambda: [0, 1])  # the fake device list
    monkeypatch.setattr(tasks.executors, "default_lock_dir", lambda: tmp_path / "leases")
    params = write_params(tmp_path, demo_csv, registry=NO_REGISTRY, evaluate={"plots": False, "baselines": []},
                          base_models=[{"name": "tfidf_lr", "kind": "tfidf_lr"},
                                       {"name": "gpu_a", "kind": "test_fake_gpu"},
                                       {"name": "gpu_b", "kind": "test_fake_gpu"}],
                          runtime={"device": "auto", "max_workers": 1})
    train_ensemble(params=str(params))
    cfg = load_config(params)
    devices = {t.label: read_json(Layout.of(cfg).fold_dir(t.model, t.repeat, t.fold) / "task.json")["device"]
               for t in plan_fold_tasks(cfg)}
    assert {d for label, d in devices.items() if label.startswith("gpu_")} == {"cuda:0", "cuda:1"}
    assert {d for label, d in devices.items() if label.startswith("tfidf_lr")} == {"cpu"}
    assert GPU_LEDGER.max_per_device == 1  # never two fits on one GPU
    assert GPU_LEDGER.max_total == 2  # and both GPUs busy at once


def test_failed_folds_fail_the_run_after_the_others_finished(prefect_api, tmp_path, demo_csv, monkeypatch):
    monkeypatch.setattr(tasks.executors, "visible_gpus", lambda: [0])
    monkeypatch.setattr(tasks.executors, "default_lock_dir", lambda: tmp_path / "leases")
    params = write_params(tmp_path, demo_csv, registry=NO_REGISTRY,
                          base_models=[{"name": "tfidf_lr", "kind": "tfidf_lr"},
                                       {"name": "broken", "kind": "test_fake_gpu", "params": {"fail": True}}],
                          runtime={"device": "auto"})
    # The error names the failures and the first one's cause, not only a count.
    with pytest.raises(StageError, match=r"3 of 6 fold tasks failed \(broken/r0-k0, broken/r0-k1, broken/r0-k2\); "
                                         r"the first, broken/r0-k0: RuntimeError: this fake model fails on purpose"):
        train_ensemble(params=str(params))
    cfg = load_config(params)
    assert all(fold_task_done(cfg, t) for t in plan_fold_tasks(cfg, ["tfidf_lr"]))  # kept for the rerun
    assert not any(fold_task_done(cfg, t) for t in plan_fold_tasks(cfg, ["broken"]))


@pytest.mark.slow
def test_ray_executor_gives_the_same_oof_as_a_local_run(prefect_api, tmp_path, demo_csv):
    pytest.importorskip("prefect_ray", reason="the optional `ray` extra is not installed")
    (tmp_path / "ray").mkdir()
    (tmp_path / "local").mkdir()
    params = write_params(tmp_path / "ray", demo_csv, registry=NO_REGISTRY, runtime={"executor": "ray"})
    result = train_ensemble(params=str(params))
    cfg = load_config(params)
    assert result["trained"] == len(cfg.base_models) * cfg.folds.k
    local_cfg = load_config(write_params(tmp_path / "local", demo_csv, registry=NO_REGISTRY))
    run_pipeline(local_cfg)
    for spec in cfg.base_models:
        np.testing.assert_array_equal(load_array(Layout.of(cfg).base(spec.name) / "oof.npy"),
                                      load_array(Layout.of(local_cfg).base(spec.name) / "oof.npy"))
