"""What a person sees from `foldstack train`: the real command, in a project of its own, in a subprocess.

Two runs: the first trains, the second changes nothing and must say so briefly (under 30 lines), and both end
with the same summary: the leaderboard as a table, the bundle, what to run next. No log line carries a
source-file link (`main.py:80`), and `foldstack --version` answers with the package's version.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from foldstack.common.version import __version__
from tests.conftest import write_params
from tests.paths import REPO_ROOT

RUN_TIMEOUT_S = 300


def _foldstack(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANDB_MODE": "disabled", "COLUMNS": "100"}
    return subprocess.run([sys.executable, "-m", "foldstack.cli", *args], cwd=project, capture_output=True,
                          text=True, env=env, timeout=RUN_TIMEOUT_S)


def _summary_tail(lines: list[str]) -> list[str]:
    """The summary block: from the leaderboard's title to the end."""
    starts = [i for i, line in enumerate(lines) if line.strip() == "holdout leaderboard"]
    assert starts, "no leaderboard table:\n" + "\n".join(lines)
    return lines[starts[-1]:]


def _check_summary(text: str, project: Path, *, trained: int, reused: int) -> None:
    lines = text.rstrip("\n").splitlines()
    tail = _summary_tail(lines)
    header = tail[1].split()
    assert header[:3] == ["model", "role", "accuracy"], tail[:3]
    rows = {line.split()[0]: line.split() for line in tail[3:] if line.split() and line.split()[0] in
            ("ensemble", "tfidf_lr", "nb_svm", "baseline:vote", "baseline:weighted_mean")}
    assert {"ensemble", "tfidf_lr", "nb_svm"} <= set(rows), tail
    assert rows["ensemble"][1] == "ensemble" and 0.0 < float(rows["ensemble"][2]) <= 1.0  # a real accuracy
    bundle = project / "artifacts" / "bundle"
    assert f"bundle     {bundle}  ({trained} fold models trained, {reused} reused)" in tail
    assert (bundle / "manifest.json").is_file(), "the bundle the summary names exists"
    steps = tail[tail.index("next steps") + 1:]
    assert f"  foldstack predict {bundle} INPUT.csv -o predictions.csv   # label a file of texts" in steps
    assert any(step.startswith("  foldstack registry push") for step in steps)
    assert steps[-1].startswith("  less ") and Path(steps[-1].split()[1]).is_file(), "the run's log file exists"
    assert not any(line.strip() == "{" for line in lines), "no JSON dump"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, demo_csv) -> tuple[Path, subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    project = tmp_path_factory.mktemp("cli_output") / "project"
    project.mkdir()
    shutil.copy(REPO_ROOT / ".gitignore", project / ".gitignore")
    write_params(project, demo_csv, tracking={"mode": "disabled"},
                 runtime={"artifacts_dir": "artifacts", "cache_dir": ".cache/foldstack", "max_workers": 1,
                          "device": "cpu"})
    first = _foldstack(project, "train")
    assert first.returncode == 0, first.stderr[-3000:]
    again = _foldstack(project, "train")
    assert again.returncode == 0, again.stderr[-3000:]
    return project, first, again


def test_first_run_ends_with_the_summary(two_runs):
    project, first, _ = two_runs
    _check_summary(first.stdout, project, trained=6, reused=0)
    stages = [line.split()[1] for line in first.stderr.splitlines() if line.startswith("✓ ")]
    assert stages == ["validate", "folds", "tfidf_lr", "nb_svm", "stack", "evaluate", "bundle"], first.stderr
    assert "3 folds trained" in first.stderr


def test_a_rerun_with_nothing_changed_is_short_and_ends_with_the_same_summary(two_runs):
    project, _, again = two_runs
    lines = (again.stderr + again.stdout).splitlines()
    assert len(lines) < 30, "\n".join(lines)
    _check_summary(again.stdout, project, trained=0, reused=6)
    assert "every fold reused" in again.stderr
    # Per-fold details are in the log file, not on the screen.
    assert "tfidf_lr/r0-k0" not in again.stderr
    log_file = Path(again.stdout.splitlines()[-1].split()[1])
    assert "resume: skipped tfidf_lr/r0-k0" in log_file.read_text()


def test_no_line_links_to_a_source_file(two_runs):
    _, first, again = two_runs
    for proc in (first, again):
        output = proc.stdout + proc.stderr
        assert "cli.py:" not in output and "main.py:" not in output and "progress.py:" not in output, output


def test_version_prints_the_package_version(tmp_path):
    proc = _foldstack(tmp_path, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"foldstack {__version__}"


def test_shell_completion_is_offered(tmp_path):
    proc = _foldstack(tmp_path, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--install-completion" in proc.stdout and "--version" in proc.stdout
