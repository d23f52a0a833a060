"""DVC bookkeeping: which stages are stale, committing what a flow ran, pushing, and data-change detection.

Every DVC call of the project lives here (and in `dvc.yaml`); the stage code imports no DVC. DVC holds a
repo lock while it works, so DVC never runs stages in parallel: the Prefect flow does the parallel compute
through the stage functions and then hands DVC the results, in one serialized step (`record_run`):
`dvc commit` of the stages the flow ran (their deps, params and outs go into `dvc.lock`, the outs into the
cache) and `dvc push` to the configured remote (`.dvc/config`: by default `dvc-remote/` inside the project,
git-ignored; an S3 or GCS remote by `dvc remote add -d ...` with the `s3` extra installed). The default
remote's URL is relative, so each clone has its own; to pull another checkout's, point at it with
`dvc remote modify --local local url /path/to/that/checkout/dvc-remote`.

Stage names are those of `dvc.yaml`: validate, folds, `train@<name>` (one per entry of the `base_models`
mapping), stack, evaluate, register (it writes the bundle, then registers and gates it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from foldstack.config import Config
from foldstack.errors import FoldstackError
from foldstack.common.files import file_digest

VALIDATE_STAGE = "validate"
TRAIN_STAGE = "train"
LOCK_FILE = "dvc.lock"


class VersioningError(FoldstackError):
    """DVC could not do what was asked (no DVC project, unknown stage, unreachable remote)."""


@contextmanager
def open_repo(root: Path | str) -> Iterator[Any]:
    """The DVC project at `root`, closed afterwards (it holds file handles and, while working, a lock)."""
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")  # no network: never try to send usage stats
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        repo = Repo(str(root))
    except NotDvcRepoError:
        raise VersioningError(f"{root} is not a DVC project (no .dvc/ directory); run `dvc init` there") from None
    try:
        yield repo
    finally:
        repo.close()


def train_stage(cfg: Config, model: str) -> str:
    """The DVC stage that trains base model `model`: train@<its name>."""
    names = [spec.name for spec in cfg.base_models]
    if model not in names:
        raise VersioningError(f"no base model named {model!r} in params; names: {', '.join(names)}")
    return f"{TRAIN_STAGE}@{model}"


def pipeline_stages(root: Path | str) -> list[str]:
    """Every stage of dvc.yaml, upstream first."""
    with open_repo(root) as repo:
        return [stage.name for stage in _ordered_stages(repo)]


# ----------------------------------------------------------------------------------------- staleness
@dataclass(frozen=True)
class StageState:
    name: str
    stale: bool
    reasons: tuple[str, ...]  # why it must run, in DVC's own terms; empty when up to date


@dataclass
class RerunPlan:
    """Every stage in pipeline order: the stale ones (and all downstream of them) run, the others are skipped."""

    stages: list[StageState] = field(default_factory=list)

    @property
    def to_run(self) -> list[str]:
        return [s.name for s in self.stages if s.stale]

    @property
    def skipped(self) -> list[str]:
        return [s.name for s in self.stages if not s.stale]

    def is_stale(self, stage: str) -> bool:
        return stage in self.to_run

    def describe(self) -> list[str]:
        """One line per stage: what will happen to it and why."""
        return [f"run  {s.name}: {'; '.join(s.reasons)}" if s.stale else
                f"skip {s.name}: up to date (its deps, params and outs match dvc.lock)" for s in self.stages]

    def to_json(self) -> dict[str, Any]:
        return {"to_run": self.to_run, "skipped": self.skipped,
                "reasons": {s.name: list(s.reasons) for s in self.stages if s.stale}}


def _describe_status(entries: Iterable[Any]) -> list[str]:
    """DVC's status entries ({"changed deps": {path: state}}, "always changed", ...) as short sentences."""
    reasons = []
    for entry in entries:
        if isinstance(entry, str):
            reasons.append(entry)
            continue
        for kind, changes in entry.items():
            if not isinstance(changes, dict):
                reasons.append(str(kind))
                continue
            what = kind.removeprefix("changed ").rstrip("s")
            for path, state in changes.items():
                if isinstance(state, dict):  # params: {params.yaml: {key: modified}}
                    reasons += [f"param {key} {change}" for key, change in state.items()]
                else:
                    reasons.append(f"{what} {path} {state}")
    return reasons


def _ordered_stages(repo: Any) -> list[Any]:
    """Stages upstream-first (a topological order that keeps dvc.yaml's order among equals)."""
    import networkx as nx

    graph = repo.index.graph  # edges point from a stage to the stages it depends on
    position = {stage: i for i, stage in enumerate(repo.index.stages)}
    order = nx.lexicographical_topological_sort(graph.reverse(copy=False), key=lambda s: position.get(s, 0))
    return [stage for stage in order if stage in position]


def plan_reruns(root: Path | str, targets: list[str] | None = None) -> RerunPlan:
    """Ask DVC (`Repo.status()`) which stages are stale; everything downstream of a stale stage runs too.

    DVC's status lists only the stages whose own deps, params or outs differ from dvc.lock; a stage whose
    input is the output of a stale stage looks fresh until that stage has rerun, hence the closure.
    With `targets`, only those stages and their upstream are planned.
    """
    with open_repo(root) as repo:
        full_targets = [_target(root, t) for t in targets] if targets is not None else None
        status = repo.status(targets=full_targets, with_deps=full_targets is not None)
        graph = repo.index.graph
        stages = _ordered_stages(repo)
        if full_targets is not None:
            wanted = {s.name for t in full_targets for s in repo.stage.collect(t, with_deps=True)}
            stages = [s for s in stages if s.name in wanted]
        # DVC keys its status by each stage's address relative to the process's working directory.
        by_address = {stage.addressing: stage for stage in repo.index.stages}
        unknown = sorted(set(status) - set(by_address))
        if unknown:
            raise VersioningError(f"DVC reports stages not in dvc.yaml: {unknown}")
        own = {by_address[a].name: _describe_status(entries) or ["changed"] for a, entries in status.items()}
        locked = _locked_stages(Path(root))
        reasons: dict[str, list[str]] = {}
        for stage in stages:  # upstream first, so a stage's upstream verdicts are known
            why = ["never run (no entry in dvc.lock)"] if stage.name not in locked else list(own.get(stage.name, []))
            upstream = [u.name for u in graph.successors(stage) if u.name in reasons]  # its direct deps
            if upstream:
                why.append(f"downstream of {', '.join(upstream)}")
            if why:
                reasons[stage.name] = why
    return RerunPlan([StageState(s.name, s.name in reasons, tuple(reasons.get(s.name, []))) for s in stages])


def _locked_stages(root: Path) -> set[str]:
    lock_path = root / LOCK_FILE
    if not lock_path.is_file():
        return set()
    return set((yaml.safe_load(lock_path.read_text(encoding="utf-8")) or {}).get("stages") or {})


def _target(root: Path | str, stage: str) -> str:
    """An unambiguous DVC target for a stage of root's dvc.yaml, whatever the working directory."""
    return f"{Path(root).resolve() / 'dvc.yaml'}:{stage}"


# ------------------------------------------------------------------------------------- commit and push
@dataclass
class VersionRecord:
    committed: list[str]
    pushed_files: int | None  # None when push was not asked for
    remote: str | None


def _dvc(root: Path | str, *args: str) -> str:
    """Run the dvc command line in `root`; return its output.

    Commit, push and pull go through the command line rather than `Repo` in this process: DVC resolves
    their paths against the working directory, and changing that is process-wide (flows run threads).
    """
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise VersioningError(f"`dvc {' '.join(args)}` failed in {root}: {' '.join(detail[-3:])}")
    return proc.stdout + proc.stderr


def commit_stages(root: Path | str, stages: Iterable[str]) -> list[str]:
    """`dvc commit` the stages: record their current deps, params and outs in dvc.lock; outs go to the cache.

    Used after the flow computed those stages itself (DVC did not run them). Returns the committed names.
    """
    names = list(dict.fromkeys(stages))
    if names:
        _dvc(root, "commit", "--force", *names)  # force: the flow, not DVC, wrote these outs
    return names


def default_remote(root: Path | str) -> str | None:
    with open_repo(root) as repo:
        return repo.config["core"].get("remote")


def push(root: Path | str, remote: str | None = None) -> int:
    """`dvc push` every output dvc.lock names to `remote` (default: the project's default remote);
    returns the number of files transferred (0 when the remote already had them)."""
    output = _dvc(root, "push", *(["--remote", remote] if remote else []))
    pushed = re.search(r"(\d+) files? pushed", output)
    return int(pushed.group(1)) if pushed else 0


def unpushed_outputs(root: Path | str, remote: str | None = None) -> list[str]:
    """The outputs dvc.lock names that the local cache holds and `remote` (default: the project's default
    remote) lacks: what `dvc status --cloud` lists as new, i.e. what a push would transfer.

    Asked in this process (`Repo.status(cloud=True)`): about 0.05 s on a small project with a local remote,
    against 0.4 s for a `dvc push` subprocess that finds nothing to send.
    """
    from dvc.exceptions import DvcException

    with open_repo(root) as repo:
        try:
            status = repo.status(cloud=True, remote=remote)
        except DvcException as exc:
            raise VersioningError(f"`dvc status --cloud` failed in {root}: {exc}") from exc
    # "deleted": on the remote but not in the local cache (nothing to push); "missing": in neither (a push
    # cannot help); "new": in the local cache only.
    return sorted(path for path, state in status.items() if state == "new")


def pull(root: Path | str, remote: str | None = None) -> None:
    """`dvc pull`: fetch every output dvc.lock names from the remote and check it out in the workspace."""
    _dvc(root, "pull", *(["--remote", remote] if remote else []))


def record_run(root: Path | str, stages: Iterable[str], *, push_to_remote: bool = True,
               remote: str | None = None) -> VersionRecord:
    """The flow's versioning step: commit the stages it ran, then push (one call; DVC's lock serializes it).

    With nothing to commit, it still pushes when the remote lacks outputs that dvc.lock already names: a
    push that failed in an earlier run (remote down) is retried by the next run instead of never.
    `pushed_files` is None when no push was asked for (or nothing was committed and no remote is
    configured), 0 when the remote already held everything.
    """
    committed = commit_stages(root, stages)
    pushed = None
    target = (remote or default_remote(root)) if push_to_remote else None
    if push_to_remote and committed:
        pushed = push(root, remote)  # without a remote this fails, naming the problem
    elif target is not None:
        pushed = push(root, remote) if unpushed_outputs(root, target) else 0
    return VersionRecord(committed=committed, pushed_files=pushed, remote=target if pushed is not None else None)


# ------------------------------------------------------------------------------------ data changes
@dataclass(frozen=True)
class DataChange:
    path: str
    locked_md5: str | None  # the md5 dvc.lock recorded for the validate stage's data dep; None: never run
    current_md5: str | None  # None when the file does not exist

    @property
    def changed(self) -> bool:
        return self.locked_md5 != self.current_md5

    def describe(self) -> str:
        if self.current_md5 is None:
            return f"{self.path} does not exist"
        if self.locked_md5 is None:
            return f"{self.path} has never been validated (no entry in {LOCK_FILE})"
        if self.changed:
            return f"{self.path} changed since the last locked run (md5 {self.locked_md5} -> {self.current_md5})"
        return f"{self.path} is unchanged since the last locked run (md5 {self.locked_md5})"


def file_md5(path: Path) -> str:
    """The md5 DVC 3 records for a file (`hash: md5`: the plain md5 of its bytes)."""
    return file_digest(path, "md5")


def data_change(cfg: Config, root: Path | str | None = None) -> DataChange:
    """Has the data file changed since the last run recorded in dvc.lock? (The watch-data deployment.)

    Reads dvc.lock directly instead of asking `Repo.status()`: no DVC lock is taken, so polling never
    blocks, or is blocked by, a running flow's bookkeeping.
    """
    root = Path(root) if root is not None else cfg.resolve_path(".")
    data_path = cfg.resolve_path(cfg.data.path)
    current = file_md5(data_path) if data_path.is_file() else None
    lock_path = root / LOCK_FILE
    locked = None
    if lock_path.is_file():
        lock = yaml.safe_load(lock_path.read_text(encoding="utf-8")) or {}
        deps = (lock.get("stages") or {}).get(VALIDATE_STAGE, {}).get("deps", [])
        for dep in deps:
            if (root / dep["path"]).resolve() == data_path.resolve():
                if dep.get("hash", "md5") != "md5":
                    # A DVC 2 lock entry (md5 of the file with Windows line ends normalised): not comparable.
                    raise VersioningError(f"{lock_path}: {dep['path']} has a {dep['hash']} hash from an older "
                                          f"DVC; run `dvc commit {VALIDATE_STAGE}` once to record an md5")
                locked = dep.get("md5")
    return DataChange(path=str(data_path), locked_md5=locked, current_md5=current)


# ------------------------------------------------------------------------------------ data versions
def is_dvc_project(root: Path | str) -> bool:
    return (Path(root) / ".dvc").is_dir()


def add_data_version(root: Path | str, data_path: Path) -> str:
    """`dvc add` the data file (after `foldstack feedback merge` wrote a new version): its bytes go into the DVC
    cache and `<file>.dvc` records their md5 for git. Returns a sentence saying what was recorded.

    A file git already tracks cannot be DVC-tracked as well: then nothing is added, and the sentence says to
    commit the file with git (dvc.lock's validate stage still sees the change either way).
    """
    root, data_path = Path(root), Path(data_path)
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "--error-unmatch", str(data_path.resolve())],
                            capture_output=True, text=True)
    if listed.returncode == 0:
        return f"{data_path.name} is tracked by git, not DVC: commit it (`git add {data_path}`)"
    _dvc(root, "add", str(data_path.resolve()))
    pointer = data_path.with_name(data_path.name + ".dvc")
    return f"DVC: `dvc add` recorded it in {pointer} (commit that file; `dvc push` sends the bytes to the remote)"
