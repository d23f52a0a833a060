"""Incremental reruns of the train flow: DVC's view of stale stages decides which stage tasks recompute.

In a throwaway git + DVC project (tests/integration/test_dvc.py's template): a first flow run computes everything and
commits dvc.lock; a second run with nothing changed recomputes no stage; after a change of `meta.kind` only
stack, evaluate and register run. Asserted from the flow's printed result and its log.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from foldstack.config import load_config
from foldstack.ops.versioning import plan_reruns
from tasks.report import run_report
from tests.integration.test_dvc import ALL_STAGES, DOWNSTREAM_OF_META, _commit, _env, _set_param
from tests.integration.test_dvc import template  # noqa: F401  (the module-scoped project template fixture)

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")

FLOW_TIMEOUT_S = 300
UPSTREAM_OF_META = [stage for stage in ALL_STAGES if stage not in DOWNSTREAM_OF_META]


def _run_flow(root: Path, prefect_home: Path) -> tuple[dict, str]:
    """`python -m flows.train` in the project on its own embedded Prefect server: (its result, its log)."""
    env = {k: v for k, v in _env().items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(prefect_home), PREFECT_LOGGING_LEVEL="INFO", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    proc = subprocess.run([sys.executable, "-m", "flows.train"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=FLOW_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout), proc.stderr


def _stage_outputs(root: Path) -> dict[str, int]:
    """Every file the pipeline's stages wrote, with its modification time (a recomputed stage rewrites its own)."""
    artifacts = root / "artifacts"
    return {p.relative_to(artifacts).as_posix(): p.stat().st_mtime_ns for p in sorted(artifacts.rglob("*"))
            if p.is_file() and p.relative_to(artifacts).parts[0] != "flow"}  # flow/: the flow's own record


@pytest.fixture(scope="module")
def runs(template, tmp_path_factory) -> dict:  # noqa: F811
    """Three flow runs in one project: the first, one with nothing changed, one after `meta.kind` changed."""
    root = tmp_path_factory.mktemp("flow_dvc") / "project"
    shutil.copytree(template, root, symlinks=True)
    prefect_home = root.parent / ".prefect"
    record: dict = {"root": root}
    record["first"], _ = _run_flow(root, prefect_home)
    _commit(root, "run 1")
    outputs_before = _stage_outputs(root)
    record["again"], record["again_log"] = _run_flow(root, prefect_home)
    record["rewritten_by_again"] = sorted(k for k, v in _stage_outputs(root).items() if outputs_before.get(k) != v)
    _set_param(root, "meta", "kind", "vote")  # not an `auto` candidate: the metrics must change
    record["meta"], record["meta_log"] = _run_flow(root, prefect_home)
    record["plan_after"] = plan_reruns(root)
    return record


def test_first_run_has_no_dvc_view_yet_and_records_every_stage(runs):
    first = runs["first"]
    assert first["dvc"].startswith("no DVC view: no ") and "dvc.lock yet" in first["dvc"]
    assert first["skipped_by_dvc"] == []
    assert (first["trained"], first["reused"]) == (4, 0)  # 2 base models x k=2
    assert first["versioning"].startswith(f"committed {len(ALL_STAGES)} stage(s)")


def test_a_rerun_with_nothing_changed_recomputes_no_stage(runs):
    again, log = runs["again"], runs["again_log"]
    assert again["dvc"] == f"DVC: {len(ALL_STAGES)} of {len(ALL_STAGES)} stage(s) up to date"
    assert again["skipped_by_dvc"] == ALL_STAGES
    assert (again["trained"], again["reused"]) == (0, 4)
    assert runs["rewritten_by_again"] == [], "a skipped stage must not rewrite its outputs"
    # The last summaries come back in the shapes a computed run returns.
    assert again["bundle"] == runs["first"]["bundle"] and again["metrics"] == runs["first"]["metrics"]
    assert again["registration"] == "done"
    assert again["versioning"].startswith("committed 0 stage(s)")
    assert "dvc: skip validate: up to date" in log and "dvc: skip register: up to date" in log
    assert "skipped by DVC (up to date): " + ", ".join(ALL_STAGES) in log


def test_a_meta_change_reruns_only_stack_and_what_follows(runs):
    meta, log = runs["meta"], runs["meta_log"]
    assert meta["skipped_by_dvc"] == UPSTREAM_OF_META
    assert (meta["trained"], meta["reused"]) == (0, 4)
    assert meta["metrics"] != runs["again"]["metrics"]
    assert "dvc: run  stack: param meta modified" in log and "dvc: run  evaluate: downstream of stack" in log
    assert meta["versioning"].startswith(f"committed {len(DOWNSTREAM_OF_META)} stage(s)")
    assert runs["plan_after"].to_run == [], "the stages the flow ran are recorded in dvc.lock"


def test_run_report_says_which_stages_dvc_skipped_and_why(runs):
    root = runs["root"]
    cfg = load_config(root / "params.yaml")
    plan = plan_reruns(root)
    reruns = {"status": "DVC: ...", **plan.to_json(), "lines": plan.describe(), "skipped_by_dvc": plan.skipped}
    report = run_report(cfg, data={}, folds={}, trained=[], reused=[], failed=[], fit_seconds={}, stacked={},
                        evaluation={}, bundle=runs["meta"]["bundle"], registration={"status": "done", "skipped": "x"},
                        versioning={}, reruns=reruns)
    assert "## Incremental rerun (DVC)" in report
    assert f"**{len(ALL_STAGES)} stage(s) skipped by DVC**: `validate`" in report
    assert "skip stack: up to date (its deps, params and outs match dvc.lock)" in report
    assert "registered by an earlier run, not again" in report
    no_view = run_report(cfg, data={}, folds={}, trained=[], reused=[], failed=[], fit_seconds={}, stacked={},
                         evaluation={}, bundle="b", registration={}, versioning={},
                         reruns={"status": "no DVC view: no dvc.lock yet", "lines": []})
    assert "Every stage ran: no DVC view: no dvc.lock yet." in no_view


def test_overridden_params_get_no_dvc_view(runs, tmp_path):
    """dvc.lock judges the project's params.yaml only: a run with overrides is never told to skip."""
    from prefect.logging import disable_run_logger

    from tasks.pipeline import plan_reruns as plan_task

    root = runs["root"]
    cfg = load_config(root / "params.yaml", ["meta.cv_folds=4"])
    with disable_run_logger():
        answer = plan_task.fn(cfg, str(root / "params.yaml"), ["meta.cv_folds=4"])
    assert answer["skipped"] == [] and answer["status"].startswith("no DVC view: the run's params differ")
