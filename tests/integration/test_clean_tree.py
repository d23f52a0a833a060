"""A run leaves the git tree clean: nothing it writes is tracked, whatever params it runs with.

Before, the Great Expectations suites under gx/ were tracked, so a run with other params (or a changed rule
text) rewrote them and left the tree dirty; a fresh clone with only part of the context broke GX.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import write_params
from tests.paths import REPO_ROOT



def _git(directory: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, check=True).stdout


def test_training_twice_with_different_params_leaves_no_tracked_file_changed(tmp_path, demo_csv):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO_ROOT / ".gitignore", project / ".gitignore")
    _git(project, "init", "-q")
    _git(project, "-c", "user.name=t", "-c", "user.email=t@t.invalid", "add", "-A")
    _git(project, "-c", "user.name=t", "-c", "user.email=t@t.invalid", "commit", "-q", "-m", "the project")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    for min_rows in (20, 30):  # the second run writes a different suite
        params = write_params(project, demo_csv, tracking={"mode": "disabled"},
                              runtime={"artifacts_dir": "artifacts", "cache_dir": ".cache/foldstack",
                                       "max_workers": 1, "device": "cpu"},
                              validation={"context_dir": "gx", "report_dir": "reports", "min_rows": min_rows})
        proc = subprocess.run([sys.executable, "-m", "foldstack.cli", "train", "--params", str(params)],
                              cwd=project, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert (project / "gx" / "expectations").is_dir(), "the run validated with GX"
    changed = [line for line in _git(project, "status", "--porcelain", "--untracked-files=all").splitlines()
               if not line.endswith(("params.yaml", "artifacts/eval/metrics.json"))]  # what the user commits
    assert changed == [], changed
