"""The registry's errors and its plumbing to git: running `git`, the repository's root, the author of its tags."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from foldstack.errors import FoldstackError


class RegistryError(FoldstackError):
    """The model registry cannot do what was asked (no repository, unknown version, nothing to roll back)."""


class PullError(RegistryError):
    """A version's bytes are not in the local store and cannot be fetched (no remote, unreachable, modified)."""


def run_git(repo: Path, *args: str, input_text: str | None = None, env: Mapping[str, str] | None = None) -> str:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], input=input_text, capture_output=True, text=True,
                              env={**os.environ, **(env or {})}, timeout=60, check=False)
    except FileNotFoundError:
        raise RegistryError("git is not installed: the git-native registry needs it") from None
    if done.returncode != 0:
        raise RegistryError(f"`git {' '.join(args)}` failed in {repo}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def git_toplevel(directory: Path) -> Path:
    """The root of the git repository holding `directory`, or a RegistryError that says what to do."""
    try:
        return Path(run_git(Path(directory), "rev-parse", "--show-toplevel").strip())
    except RegistryError:
        raise RegistryError(
            f"{directory} is not inside a git repository: the git-native registry keeps versions as git tags; "
            f"run `git init` there or set registry.git_registry: false") from None


def git_identity(repo: Path) -> tuple[str, str]:
    """The user's git identity, or a neutral one so that registering works on a fresh machine too."""
    def config(key: str) -> str:
        try:
            return run_git(repo, "config", key).strip()
        except RegistryError:
            return ""

    return config("user.name") or "foldstack registry", config("user.email") or "foldstack@localhost"


def head_commit(repo: Path) -> str | None:
    """HEAD's commit, or None in a repository without commits yet."""
    try:
        return run_git(repo, "rev-parse", "--verify", "-q", "HEAD").strip() or None
    except RegistryError:
        return None


def tag_exists(repo: Path, tag: str) -> bool:
    try:
        run_git(repo, "rev-parse", "--verify", "-q", f"refs/tags/{tag}")
    except RegistryError:
        return False
    return True
