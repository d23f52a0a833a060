"""A registered version's bytes in DVC, so that a fresh clone can pull and serve it.

Content-addressed, beside the user's work: nothing here touches the working tree, `dvc.yaml` or `dvc.lock`.
Registering a version hashes its store directory into the DVC project's cache as one DVC directory object
(`<md5>.dir` and one object per file, exactly what `dvc add` of that directory would make) and pushes those
objects to the project's default DVC remote. The `.dir` hash goes into the version's record (the GTO tag's
message) and into a small DVC pointer file, `registry/<model>/<version>.dvc`, added to the tree of the
version's own record commit - so DVC itself knows these objects as well (`dvc gc --all-tags` keeps them, `dvc
get <repo> registry/<model>/<version> --rev <model>@<version>` fetches one).

Pulling goes the other way: the `.dir` object, then its files, are fetched from the remote into the cache with
DVC's own transfer, with `verify` on (an object whose md5 is not its name is dropped), every file's md5 is
checked once more, and the directory is checked out as plain copies into a temporary directory that the
registry then verifies against the version's registered manifest (sha256 of every file) before renaming it
into the store.

Without a DVC project or without a default remote, registration still works: the bytes stay in the local
store only, and the record says so (`remote: null`); `foldstack registry upload` sends them once a remote is
configured. Without a remote, a version can also come from the W&B model registry when W&B is online; which
way a version's bytes go is decided by foldstack.ops.registry.version_bytes.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foldstack.common.files import file_digest
from foldstack.errors import FoldstackError

POINTER_DIR = "registry"  # in a record commit's tree: registry/<model>/<version>.dvc
HASH_NAME = "md5"  # DVC 3's hash: the plain md5 of a file's bytes


class RemoteBytesError(FoldstackError):
    """A version's bytes cannot be pushed to, or pulled from, where they should travel (DVC remote, W&B)."""


@dataclass(frozen=True)
class DirHash:
    """A directory as DVC names it: the md5 of its listing (`<md5>.dir`), its size and number of files."""

    md5: str
    size: int
    nfiles: int

    def record(self, remote: str | None) -> dict[str, Any]:
        """What a version's record keeps of its DVC object (and where it was pushed; None: nowhere)."""
        return {"md5": self.md5, "size": self.size, "nfiles": self.nfiles, "remote": remote}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> DirHash | None:
        entry = record.get("dvc")
        if not isinstance(entry, Mapping) or not str(entry.get("md5", "")).endswith(".dir"):
            return None
        return cls(str(entry["md5"]), int(entry.get("size") or 0), int(entry.get("nfiles") or 0))


def pointer_path(model_name: str, version: str) -> str:
    return f"{POINTER_DIR}/{model_name}/{version}.dvc"


def pointer_text(model_name: str, version: str, dir_hash: DirHash) -> str:
    """A `.dvc` file for the version's directory, as `dvc add` writes one (DVC 3 format)."""
    return (f"# foldstack registry: {model_name} {version}; `foldstack registry pull {version}` restores it into "
            f"the registry's store\n"
            f"outs:\n- md5: {dir_hash.md5}\n  size: {dir_hash.size}\n  nfiles: {dir_hash.nfiles}\n  hash: md5\n"
            f"  path: {version}\n")


def find_dvc_root(start: Path, stop: Path | None = None) -> Path | None:
    """The DVC project (a directory with `.dvc/`) holding `start`, looking no higher than `stop`."""
    start = Path(start).resolve()
    stop = Path(stop).resolve() if stop is not None else None
    for directory in (start, *start.parents):
        if (directory / ".dvc").is_dir():
            return directory
        if stop is not None and directory == stop:
            break
    return None


def _local_fs() -> Any:
    from dvc_objects.fs.local import LocalFileSystem

    return LocalFileSystem()


def _tree_objects(tree: Any) -> set[Any]:
    return {tree.hash_info} | {oid for _, _, oid in tree}


class DvcBytes:
    """The DVC side of one registry: hash a version's directory into the cache, push, pull, check out."""

    def __init__(self, root: Path | None):
        self.root = Path(root) if root is not None else None

    # ----------------------------------------------------------------------------------------- the project
    def _open(self) -> Any:
        os.environ.setdefault("DVC_NO_ANALYTICS", "1")
        from dvc.repo import Repo

        return Repo(str(self.root))

    def default_remote(self) -> str | None:
        """The project's default remote (`core.remote`), or None without a DVC project or a default remote."""
        if self.root is None:
            return None
        repo = self._open()
        try:
            return repo.config["core"].get("remote") or None
        finally:
            repo.close()

    def no_remote_hint(self) -> str:
        if self.root is None:
            return ("there is no DVC project here (`dvc init`, then `dvc remote add -d storage <url>`: a directory "
                    "every machine can reach, or s3://bucket/path with the `s3` extra)")
        return (f"the DVC project {self.root} has no default remote (`dvc remote add -d storage <url>`: a directory "
                f"every machine can reach, or s3://bucket/path with the `s3` extra)")

    # ------------------------------------------------------------------------------------- register: save
    def hash_directory(self, directory: Path) -> DirHash:
        """The DVC hash of `directory`; into the project's cache when there is a DVC project, else only computed."""
        from dvc_data.hashfile.build import build
        from dvc_data.hashfile.transfer import transfer

        if self.root is None:
            from dvc_data.hashfile.db import get_odb
            from dvc_objects.fs.memory import MemoryFileSystem

            _, meta, tree = build(get_odb(MemoryFileSystem(), "/foldstack-registry", hash_name=HASH_NAME),
                                  str(directory), _local_fs(), HASH_NAME, dry_run=True)
            return DirHash(tree.hash_info.value, int(meta.size or 0), int(meta.nfiles or 0))
        repo = self._open()
        try:
            cache = repo.cache.local
            staging, meta, tree = build(cache, str(directory), _local_fs(), HASH_NAME)
            transfer(staging, cache, {tree.hash_info}, shallow=False, hardlink=False)  # as `dvc commit` does
            return DirHash(tree.hash_info.value, int(meta.size or 0), int(meta.nfiles or 0))
        finally:
            repo.close()

    def push(self, dir_hash: DirHash, remote: str) -> int:
        """Send the directory's objects from the cache to `remote`; the number of objects it lacked and got.

        Raises RemoteBytesError unless every object is on the remote afterwards.
        """
        from dvc_data.hashfile.hash_info import HashInfo
        from dvc_data.hashfile.tree import Tree

        repo = self._open()
        try:
            where = self._describe(repo, remote)
            tree = Tree.load(repo.cache.local, HashInfo(HASH_NAME, dir_hash.md5))
            try:
                odb = repo.cloud.get_remote_odb(remote, "push")
                # Without DVC's remote index, which would take a listed `.dir` for all of its files: every
                # object's presence on the remote is asked.
                result = repo.cloud.transfer(repo.cache.local, odb, _tree_objects(tree), cache_odb=repo.cache.local)
            except Exception as exc:  # DVC's and the filesystems' errors have many types
                raise RemoteBytesError(f"cannot push to the DVC remote {where}: {one_line(exc)}") from None
            if result.failed:
                raise RemoteBytesError(f"the DVC remote {where} did not take {len(result.failed)} of "
                                       f"{dir_hash.nfiles + 1} objects (see DVC's errors above); is it reachable "
                                       f"and writable?")
            return len(result.transferred)
        finally:
            repo.close()

    def on_remote(self, dir_hash: DirHash, remote: str, *, reading: bool = True) -> bool:
        """Whether `remote` holds the `.dir` object and every file it lists (asked, not assumed). Before a push
        (`reading=False`) a directory remote that does not exist yet is merely empty."""
        from dvc_data.hashfile.hash_info import HashInfo
        from dvc_data.hashfile.tree import Tree

        repo = self._open()
        try:
            where = self._describe(repo, remote)
            try:
                odb = repo.cloud.get_remote_odb(remote, "status")
                try:
                    _reachable(odb)
                except _Unreachable:
                    if reading:
                        raise
                    return False
                if not odb.exists(dir_hash.md5):
                    return False
                try:
                    tree = Tree.load(repo.cache.local, HashInfo(HASH_NAME, dir_hash.md5))
                except FileNotFoundError:
                    tree = Tree.load(odb, HashInfo(HASH_NAME, dir_hash.md5))
                oids = [oid.value for _, _, oid in tree]
                return len(set(odb.oids_exist(oids))) == len(set(oids))
            except RemoteBytesError as exc:
                raise RemoteBytesError(f"cannot reach the DVC remote {where}: {exc}") from None
            except Exception as exc:
                raise RemoteBytesError(f"cannot reach the DVC remote {where}: {one_line(exc)}") from None
        finally:
            repo.close()

    # ----------------------------------------------------------------------------------------------- pull
    def fetch(self, dir_hash: DirHash, target: Path, remote: str) -> str:
        """Fetch the directory from `remote` into the cache (verified by md5) and check it out as plain copies
        into `target`, which must not exist. Returns a description of the remote, for messages."""
        from dvc_data.hashfile.checkout import checkout
        from dvc_data.hashfile.hash_info import HashInfo

        repo = self._open()
        try:
            where = self._describe(repo, remote)
            cache = repo.cache.local
            dir_info = HashInfo(HASH_NAME, dir_hash.md5)
            tree = self._cached_tree(cache, dir_info)
            if tree is not None:  # this project's cache already holds every object (the registering machine)
                where += ", already in this project's DVC cache"
            else:
                tree = self._fetch_tree(repo, remote, where, dir_hash, dir_info)
            plain = copy.copy(cache)
            plain.cache_types = ["copy"]  # never links: the store's files must not share the cache's
            target.mkdir(parents=True)
            checkout(str(target), _local_fs(), tree, plain, force=True)
            return where
        finally:
            repo.close()

    def _cached_tree(self, cache: Any, dir_info: Any) -> Any:
        """The directory's tree when the cache holds its listing and every file intact, else None."""
        from dvc_data.hashfile.tree import Tree

        if not self._intact(cache, dir_info.value):
            return None
        tree = Tree.load(cache, dir_info)
        return tree if all(self._intact(cache, oid.value) for _, _, oid in tree) else None

    def _fetch_tree(self, repo: Any, remote: str, where: str, dir_hash: DirHash, dir_info: Any) -> Any:
        """Fetch the listing, then every file it lists, from `remote` into the cache; the tree once every object
        is there with its md5 as its name."""
        from dvc_data.hashfile.tree import Tree

        cache = repo.cache.local
        try:
            odb = repo.cloud.get_remote_odb(remote, "pull")
            _reachable(odb)
            # The listing first (its own md5 is its name, checked like any object), then what it lists.
            self._transfer(repo, odb, {dir_info})
            if not self._intact(cache, dir_info.value):
                raise RemoteBytesError(self._absent(where, dir_hash, "the directory listing"))
            tree = Tree.load(cache, dir_info)
            self._transfer(repo, odb, _tree_objects(tree))
        except _Unreachable as exc:
            raise RemoteBytesError(f"cannot reach the DVC remote {where}: {exc}") from None
        except RemoteBytesError:
            raise
        except Exception as exc:
            raise RemoteBytesError(f"cannot reach the DVC remote {where}: {one_line(exc)}") from None
        bad = ["/".join(key) for key, _, oid in tree if not self._intact(cache, oid.value)]
        if bad:
            raise RemoteBytesError(self._absent(where, dir_hash, f"{len(bad)} of the {len(tree)} files "
                                                                 f"({', '.join(bad[:3])})"))
        return tree

    @staticmethod
    def _transfer(repo: Any, odb: Any, objects: set[Any]) -> None:
        cache = repo.cache.local
        repo.cloud.transfer(odb, cache, objects, verify=True, cache_odb=cache)

    @staticmethod
    def _intact(cache: Any, oid: str) -> bool:
        """The cached object exists and its md5 is its name; a corrupt one is removed (the next pull refetches)."""
        path = Path(cache.oid_to_path(oid))
        if not path.is_file():
            return False
        if file_digest(path, "md5") == oid.split(".")[0]:
            return True
        path.chmod(0o644)
        path.unlink(missing_ok=True)
        return False

    @staticmethod
    def _absent(where: str, dir_hash: DirHash, what: str) -> str:
        return (f"the DVC remote {where} does not hold {what} of {dir_hash.md5} with the bytes that were registered "
                f"(missing there - an incomplete push, or another remote - or modified there); refused, nothing "
                f"was written to the store")

    @staticmethod
    def _describe(repo: Any, remote: str) -> str:
        if remote not in repo.config["remote"]:
            known = ", ".join(sorted(repo.config["remote"])) or "none"
            raise RemoteBytesError(f"the DVC project {repo.root_dir} has no remote {remote!r} (remotes: {known})")
        url = repo.config["remote"][remote].get("url")
        return f"{remote!r} ({url})" if url else repr(remote)



class _Unreachable(RemoteBytesError):
    pass


def _reachable(odb: Any) -> None:
    """A directory remote that does not exist is not an empty remote: an unmounted disk, or another machine's
    path. (Pushing creates it; reading refuses.)"""
    if getattr(odb.fs, "protocol", "") == "local" and not Path(odb.path).parent.parent.is_dir():
        raise _Unreachable(f"the directory {Path(odb.path).parent.parent} does not exist (not mounted here, or "
                           f"another machine's path?)")


def remove_tree(path: Path) -> None:
    """Remove a directory this process made, even with files DVC made read-only."""
    def make_writable(func: Any, name: str, _exc: Any) -> None:
        os.chmod(os.path.dirname(name), 0o700)
        func(name)

    if path.exists():
        shutil.rmtree(path, onerror=make_writable)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "..."


__all__ = ["DirHash", "DvcBytes", "RemoteBytesError", "find_dvc_root", "one_line", "pointer_path", "pointer_text",
           "remove_tree"]
