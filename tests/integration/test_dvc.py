"""dvc.yaml and foldstack.ops.versioning in a throwaway git repo: small data, two cheap models, k=2.

One module-scoped history is built once (a full `dvc repro`, a no-change repro, a meta-only change, each run
committed to git); the tests read it, then the later ones change it further (checkout, push/pull, a
flow-style commit, a data change), in file order.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from foldstack.config import load_config
from foldstack.core.demo import write_demo_data
from foldstack.ops.versioning import (VersioningError, data_change, pipeline_stages, plan_reruns, push, record_run,
                                      unpushed_outputs)
from tests.paths import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")

PROJECT = REPO_ROOT
BIN = Path(sys.executable).parent  # the venv's foldstack and dvc commands
ALL_STAGES = ["validate", "folds", "train@tfidf_lr", "train@nb_svm", "stack", "distill", "evaluate", "register"]
DOWNSTREAM_OF_META = ["stack", "distill", "evaluate", "register"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1",
                "WANDB_MODE": "disabled", "GX_ANALYTICS_ENABLED": "false", "GIT_AUTHOR_NAME": "foldstack test",
                "GIT_AUTHOR_EMAIL": "test@example.invalid", "GIT_COMMITTER_NAME": "foldstack test",
                "GIT_COMMITTER_EMAIL": "test@example.invalid"})
    return env


def _run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _repro(cwd: Path, check: bool = True) -> tuple[list[str], subprocess.CompletedProcess]:
    """`dvc repro`; the stages it executed, read from DVC's own output."""
    proc = _run([str(BIN / "dvc"), "repro"], cwd, check)
    return re.findall(r"Running stage '([^']+)'", proc.stdout + proc.stderr), proc


def _commit(cwd: Path, message: str) -> str:
    _run(["git", "add", "dvc.lock", "params.yaml", "data"], cwd)
    _run(["git", "commit", "-q", "-m", message], cwd)
    return _run(["git", "rev-parse", "HEAD"], cwd).stdout.strip()


def _files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _set_param(root: Path, section: str, key: str, value) -> None:
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A git repo with the project's DVC files and code, cheap params and 240 demo rows; one commit, no runs."""
    root = tmp_path_factory.mktemp("dvc") / "template"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(PROJECT / "foldstack", root / "foldstack", ignore=ignore)
    shutil.copytree(PROJECT / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp", "config.local"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(PROJECT / name, root / name)
    write_demo_data(root / "data" / "reviews.csv", rows=240, n_classes=3, noise=0.05, seed=0)
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["data"]["path"] = "data/reviews.csv"
    params["folds"]["k"] = 2
    params["base_models"] = {"tfidf_lr": {"kind": "tfidf_lr", "params": {}},
                             "nb_svm": {"kind": "nb_svm", "params": {}}}
    params["meta"]["cv_folds"] = 2
    params["evaluate"]["plots"] = True  # dvc.yaml versions the plot files
    params["runtime"].update({"artifacts_dir": "artifacts", "max_workers": 1, "device": "cpu"})
    params["tracking"]["mode"] = "disabled"
    params.setdefault("validation", {})["data_docs"] = False
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q", "-b", "main"], root)
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "-q", "-m", "project"], root)
    return root


@pytest.fixture(scope="module")
def history(template, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("dvc") / "project"
    shutil.copytree(template, root, symlinks=True)
    record: dict = {"root": root}
    record["ran_first"], _ = _repro(root)
    record["bundle_first"] = _files(root / "artifacts" / "bundle")
    record["commit_first"] = _commit(root, "run 1")
    record["ran_again"], record["again"] = _repro(root)
    _set_param(root, "meta", "logreg", {"C": 0.05})  # auto's logreg candidate
    record["plan_meta"] = plan_reruns(root)
    record["ran_meta"], _ = _repro(root)
    record["bundle_second"] = _files(root / "artifacts" / "bundle")
    record["commit_second"] = _commit(root, "run 2: meta.logreg.C=0.05")
    return record


def test_full_repro_runs_every_stage_in_order(history):
    assert history["ran_first"] == ALL_STAGES
    assert pipeline_stages(history["root"]) == ALL_STAGES


def test_second_repro_executes_no_stage(history):
    assert history["ran_again"] == []
    assert "Data and pipelines are up to date" in history["again"].stdout


def test_meta_change_reruns_only_stack_and_what_follows(history):
    assert history["ran_meta"] == DOWNSTREAM_OF_META
    plan = history["plan_meta"]
    assert plan.to_run == DOWNSTREAM_OF_META
    assert plan.skipped == ["validate", "folds", "train@tfidf_lr", "train@nb_svm"]
    reasons = plan.to_json()["reasons"]
    assert "param meta modified" in reasons["stack"]
    assert any(reason.startswith("downstream of stack") for reason in reasons["evaluate"]), reasons["evaluate"]
    assert history["bundle_second"] != history["bundle_first"]


def test_dvc_plots_render(history, tmp_path):
    _run([str(BIN / "dvc"), "plots", "show", "-o", str(tmp_path / "plots")], history["root"])
    html = (tmp_path / "plots" / "index.html").read_text()
    assert "roc.csv" in html and "calibration.csv" in html and "confusion.csv" in html


def test_the_cli_reports_what_dvc_would_rerun_and_whether_the_data_changed(history):
    import json

    root = history["root"]
    status = json.loads(_run([str(BIN / "foldstack"), "dvc-status", "--json"], root).stdout)
    assert status["to_run"] == [] and status["skipped"] == ALL_STAGES
    unchanged = _run([str(BIN / "foldstack"), "data-changed", "--exit-code"], root, check=False)
    assert unchanged.returncode == 1, "--exit-code: 1 when the data is unchanged (nothing to retrain)"
    assert json.loads(unchanged.stdout)["changed"] is False
    assert "unchanged since the last locked run" in unchanged.stderr


def test_checkout_of_the_first_commit_restores_the_first_bundle(history):
    root = history["root"]
    try:
        _run(["git", "checkout", "-q", history["commit_first"]], root)
        _run([str(BIN / "dvc"), "checkout", "--force"], root)
        assert _files(root / "artifacts" / "bundle") == history["bundle_first"]
    finally:
        _run(["git", "checkout", "-q", "main"], root)
        _run([str(BIN / "dvc"), "checkout", "--force"], root)
    assert _files(root / "artifacts" / "bundle") == history["bundle_second"]


def test_push_then_pull_into_a_fresh_clone_restores_the_bundle(history, tmp_path):
    root = history["root"]
    assert push(root) > 0  # to the default remote of .dvc/config: dvc-remote/ inside the project
    assert (root / "dvc-remote" / "files" / "md5").is_dir()
    assert "dvc-remote" not in _run(["git", "status", "--porcelain", "--ignored=no"], root).stdout

    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(root), str(clone)], tmp_path)
    # The default remote's URL is relative to each checkout: point the clone at the original's.
    _run([str(BIN / "dvc"), "remote", "modify", "--local", "local", "url", str(root / "dvc-remote")], clone)
    _run([str(BIN / "dvc"), "pull"], clone)
    assert _files(clone / "artifacts" / "bundle") == history["bundle_second"]


def test_flow_style_compute_then_commit_and_push(history):
    """The Prefect flow's path: stages computed outside DVC, then one `dvc commit` + `dvc push`."""
    from foldstack.pipeline import stages

    root = history["root"]
    _set_param(root, "meta", "logreg", {"C": 0.2})
    plan = plan_reruns(root)
    assert plan.to_run == DOWNSTREAM_OF_META
    cfg = load_config(root / "params.yaml")
    stages.stack(cfg)
    stages.distill(cfg)
    stages.evaluate(cfg)
    record = record_run(root, ["stack", "distill", "evaluate"])
    assert record.committed == ["stack", "distill", "evaluate"]
    assert record.pushed_files and record.pushed_files > 0 and record.remote == "local"
    after = plan_reruns(root)
    assert after.to_run == ["register"], "committed stages are fresh; only the one the flow did not run is left"
    reasons = after.to_json()["reasons"]["register"]
    assert "dep artifacts/stack modified" in reasons and "param meta modified" in reasons, reasons


def test_a_failed_push_is_retried_by_the_next_run_with_nothing_to_commit(history, tmp_path):
    """Run 1 commits but its push fails (the remote is down); run 2 has nothing new to commit and pushes."""
    from foldstack.pipeline import stages

    root = history["root"]
    remote_dir = tmp_path / "remote"
    local_config = root / ".dvc" / "config.local"
    saved_config = local_config.read_bytes() if local_config.exists() else None
    # A file where the remote's directory should be: every upload fails, as with an unreachable remote.
    remote_dir.write_text("the remote is down\n")
    _run([str(BIN / "dvc"), "remote", "modify", "--local", "local", "url", str(remote_dir)], root)
    try:
        _set_param(root, "evaluate", "ece_bins", 10)
        stages.evaluate(load_config(root / "params.yaml"))
        with pytest.raises(VersioningError, match="push"):
            record_run(root, ["evaluate"])
        locked = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["evaluate"]
        assert locked["params"]["params.yaml"]["evaluate"]["ece_bins"] == 10, "run 1's commit must stand"
        # metrics.json is `cache: false` in dvc.yaml: git keeps it, DVC never pushes it.
        committed_md5s = [out["md5"] for out in locked["outs"] if not out["path"].endswith("metrics.json")]

        remote_dir.unlink()  # the remote is back (empty)
        record = record_run(root, [])
        assert record.committed == [] and record.remote == "local"
        assert record.pushed_files and record.pushed_files > 0
        assert unpushed_outputs(root) == []
        for md5 in committed_md5s:
            assert (remote_dir / "files" / "md5" / md5[:2] / md5[2:]).is_file(), f"{md5} not on the remote"

        again = record_run(root, [])
        assert again.pushed_files == 0, "the remote holds everything: nothing to push"
    finally:
        if saved_config is None:
            local_config.unlink(missing_ok=True)
        else:
            local_config.write_bytes(saved_config)


def test_data_change_is_detected_and_reruns_every_stage(history):
    root = history["root"]
    cfg = load_config(root / "params.yaml")
    assert not data_change(cfg).changed
    write_demo_data(root / "data" / "reviews.csv", rows=240, n_classes=3, noise=0.05, seed=1)
    change = data_change(cfg)
    assert change.changed and change.locked_md5 and change.locked_md5 != change.current_md5
    assert plan_reruns(root).to_run == ALL_STAGES
    ran, _ = _repro(root)
    assert ran == ALL_STAGES
    assert not data_change(cfg).changed


def test_bad_data_trains_nothing_and_registers_nothing(template, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(template, root, symlinks=True)
    data = root / "data" / "reviews.csv"
    lines = data.read_text().splitlines()
    lines[5] = '"   ",positive'  # a blank text on row 5
    data.write_text("\n".join(lines) + "\n")
    ran, proc = _repro(root, check=False)
    assert proc.returncode != 0
    assert ran == ["validate"]
    assert "ERROR text_not_blank" in proc.stderr + proc.stdout and "row=5" in proc.stderr + proc.stdout
    assert not (root / "artifacts").exists() or sorted(p.name for p in (root / "artifacts").iterdir()) == []
    assert _run(["git", "tag"], root).stdout.strip() == "", "no version may be registered"
    assert yaml.safe_load((root / "reports" / "validation.json").read_text())["status"] == "failed"
