"""Registry writes from several processes at once, and `foldstack registry check`.

The concurrent pushes are real `foldstack registry push` processes (the CLI's own `main`), held behind a file
barrier after their imports so that they reach the registry together; nothing in them is mocked.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from foldstack.bundle import MANIFEST, manifest_digest, verify_bundle
from foldstack.config import Config
from foldstack.common.files import LockTimeout, sha256_file
from foldstack.ops.registry import GitModelRegistry, RegistryError, WandbLinks, resolve_model
from tests.unit.ops.test_registry import TrainedBundles, git, registry_project, train_bundles
from tests.paths import REPO_ROOT


# A `foldstack` process that imports everything first, says it is ready, waits for the barrier file, then runs
# the real CLI entry point with the given arguments.
BARRIER_CLI = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import foldstack.cli.main, foldstack.ops.registry, gto.api
    ready, barrier, args = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    ready.touch()
    deadline = time.monotonic() + 120
    while not barrier.exists():
        if time.monotonic() > deadline:
            sys.exit("the barrier never opened")
        time.sleep(0.005)
    sys.argv = ["foldstack", *args]
    foldstack.cli.main.main()
""")


def _env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


def run_together(commands: list[list[str]], workdir: Path, timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """Start one process per argument list, release them at once, and return each one's outcome."""
    barrier = workdir / "go"
    processes = []
    for i, args in enumerate(commands):
        ready = workdir / f"ready-{i}"
        processes.append((ready, subprocess.Popen(
            [sys.executable, "-c", BARRIER_CLI, str(ready), str(barrier), *args], cwd=workdir, env=_env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    deadline = time.monotonic() + timeout
    while not all(ready.exists() for ready, _ in processes):
        assert all(p.poll() is None for _, p in processes), [p.communicate() for _, p in processes]
        assert time.monotonic() < deadline, "the processes never got ready"
        time.sleep(0.02)
    barrier.touch()
    results = []
    for _, process in processes:
        stdout, stderr = process.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return results


def bundle_variant(source: Path, target: Path, tag: str) -> Path:
    """A consistent copy of `source` that differs in one file's bytes (a file the loader never opens): a
    distinct bundle for the registry, with the same data hash and recorded score, so the gate stays cheap."""
    shutil.copytree(source, target)
    (target / "variant.txt").write_text(f"variant {tag}\n")
    manifest = json.loads((target / MANIFEST).read_text())
    manifest["files"]["variant.txt"] = sha256_file(target / "variant.txt")
    manifest["bundle_id"] = manifest_digest(manifest)
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2))
    verify_bundle(target)
    return target


def push_args(cfg: Config, bundle: Path) -> list[str]:
    return ["registry", "push", "--bundle", str(bundle), "--no-log-pipeline",
            "--params", str(cfg.resolve_path("params.yaml"))]


def assert_no_traceback(results: list[subprocess.CompletedProcess]) -> None:
    for result in results:
        assert "Traceback" not in result.stderr, result.stderr


def assert_every_version_intact(registry: GitModelRegistry) -> None:
    for version in registry.versions():
        manifest = verify_bundle(registry.bundle_path(version))
        assert manifest["registry_version"] == version.version
        assert manifest["bundle_id"] == version.bundle_id


def leftovers(registry: GitModelRegistry) -> list[str]:
    """Entries of the store that are neither a registered version nor the lock file."""
    registered = {v.version for v in registry.versions(include_deregistered=True)}
    return sorted(p.name for p in registry.store.iterdir() if p.name not in registered and p.name != ".lock")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_csv) -> TrainedBundles:
    return train_bundles(tmp_path_factory.mktemp("concurrency-train"), demo_csv)


@pytest.fixture
def project(tmp_path, trained) -> Config:
    return registry_project(tmp_path / "repo", trained)


# ------------------------------------------------------------------------------------ concurrent pushes
def test_four_concurrent_pushes_register_four_intact_versions(project, trained, tmp_path):
    bundles = [bundle_variant(trained.better, tmp_path / f"bundle-{i}", str(i)) for i in range(4)]
    results = run_together([push_args(project, b) for b in bundles], tmp_path)
    assert [r.returncode for r in results] == [0] * 4, [r.stderr[-2000:] for r in results]
    assert_no_traceback(results)

    registry = GitModelRegistry.from_config(project)
    versions = registry.versions()
    assert sorted(v.version for v in versions) == ["v0.1.0", "v0.2.0", "v0.3.0", "v0.4.0"]
    wanted_ids = {json.loads((b / MANIFEST).read_text())["bundle_id"] for b in bundles}
    assert {v.bundle_id for v in versions} == wanted_ids, "every bundle was registered, each once"
    assert_every_version_intact(registry)
    assert leftovers(registry) == [], "no temporary or orphan directory is left"
    # Equal scores: the first version became production, each later one tied and was not promoted.
    assert registry.production().version == "v0.1.0"
    assert verify_bundle(resolve_model("latest", project))["registry_version"] == "v0.4.0"

    check = CliRunner().invoke(_app(), ["registry", "check", "--params", str(project.resolve_path("params.yaml"))])
    assert check.exit_code == 0, check.output
    assert "no problems" in check.output


def test_the_same_bundle_pushed_twice_at_once_is_registered_once(project, trained, tmp_path):
    bundle = bundle_variant(trained.better, tmp_path / "bundle", "same")
    results = run_together([push_args(project, bundle)] * 2, tmp_path)
    assert [r.returncode for r in results] == [0, 0], [r.stderr[-2000:] for r in results]
    assert_no_traceback(results)
    outputs = sorted(" ".join(r.stdout.split()) for r in results)
    assert sum("already registered as foldstack-ensemble v0.1.0" in o for o in outputs) == 1, outputs
    assert sum("registered foldstack-ensemble v0.1.0" in o and "already" not in o for o in outputs) == 1, outputs

    registry = GitModelRegistry.from_config(project)
    assert [v.version for v in registry.versions()] == ["v0.1.0"]
    assert [t for t in git(registry.repo, "tag").split() if "@" in t] == ["foldstack-ensemble@v0.1.0"]
    assert_every_version_intact(registry)
    assert leftovers(registry) == []


@contextlib.contextmanager
def lock_held_elsewhere(lock_file: Path, release: Path):
    """Another process holds `lock_file` until the file `release` appears."""
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, time
            from pathlib import Path
            from filelock import FileLock
            lock = FileLock(sys.argv[1]); lock.acquire(); print("held", flush=True)
            deadline = time.monotonic() + 120
            while not Path(sys.argv[2]).exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        """), str(lock_file), str(release)], stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        release.touch()
        holder.wait(timeout=30)


def test_a_waiting_push_says_once_which_lock_it_waits_for(project, trained, tmp_path):
    registry = GitModelRegistry.from_config(project)
    registry.lock_file.parent.mkdir(parents=True)
    with lock_held_elsewhere(registry.lock_file, tmp_path / "release"):
        push = subprocess.Popen([sys.executable, "-m", "foldstack.cli", *push_args(project, trained.better)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path)
        said = []
        for line in push.stderr:  # until the push says that it waits (or ends without saying so)
            said.append(line)
            if "waiting for" in line:
                break
    stdout, rest = push.communicate(timeout=120)
    stderr = "".join(said) + rest
    assert push.returncode == 0, stderr
    waiting = [line for line in stderr.splitlines() if "waiting for" in line]
    assert len(waiting) == 1, stderr
    assert f"waiting for the lock {registry.lock_file}" in waiting[0]
    assert "registered foldstack-ensemble v0.1.0" in stdout


def test_a_lock_held_too_long_gives_up_with_an_error_naming_it(project, trained, tmp_path):
    registry = GitModelRegistry.from_config(project)
    registry.lock_file.parent.mkdir(parents=True)
    impatient = GitModelRegistry(registry.repo, registry.model_name, registry.store, lock_timeout=0.3)
    with lock_held_elsewhere(registry.lock_file, tmp_path / "release"):
        with pytest.raises(LockTimeout, match=f"waiting for the lock {registry.lock_file}"):
            impatient.register(trained.better)
    assert registry.versions() == []


# ------------------------------------------------------------------------------------------- check
def _app():
    from foldstack.cli.main import app

    return app


def test_check_finds_dangling_tags_orphans_and_stale_temporaries_and_repair_fixes_them(project, trained, tmp_path):
    registry = GitModelRegistry.from_config(project)
    bundles = [bundle_variant(trained.better, tmp_path / f"bundle-{i}", str(i)) for i in range(3)]
    for bundle in bundles:
        registry.register(bundle)
    # v0.2.0 loses its bytes, v0.3.0's bytes are modified; a directory without a tag and a dead writer's
    # temporary directory sit beside them.
    shutil.rmtree(registry.store_path("v0.2.0"))
    (registry.store_path("v0.3.0") / "variant.txt").write_text("changed\n")
    shutil.copytree(bundles[0], registry.store / "v0.9.0")
    dead_pid = _dead_pid()
    shutil.copytree(bundles[0], registry.store / f".v0.4.0.tmp-{dead_pid}-0123abcd")
    params = str(project.resolve_path("params.yaml"))
    runner = CliRunner()

    listed = runner.invoke(_app(), ["registry", "list", "--params", params])
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[1]: line for line in listed.output.splitlines() if line.split()[1:2] and
            line.split()[1].startswith("v0.")}
    assert "NO BYTES" in rows["v0.2.0"] and "NO BYTES" not in rows["v0.1.0"]
    assert "v0.2.0: bytes missing" in listed.output
    # `list` only looks at what is there (no hashing of every version); a modified file is for `check` to find.

    found = runner.invoke(_app(), ["registry", "check", "--params", params])
    assert found.exit_code == 1, found.output
    text = " ".join(found.output.split())
    for expected in ("v0.2.0", "dangling", "v0.3.0", "v0.9.0", "orphan", f".v0.4.0.tmp-{dead_pid}-0123abcd",
                     "temporary"):
        assert expected in text, found.output

    repaired = runner.invoke(_app(), ["registry", "check", "--repair", "--params", params])
    assert repaired.exit_code == 0, repaired.output
    assert not (registry.store / "v0.9.0").exists()
    assert not (registry.store / f".v0.4.0.tmp-{dead_pid}-0123abcd").exists()
    # Dangling versions are deregistered (GTO), not deleted: their record stays and their number is not reused.
    assert [v.version for v in registry.versions()] == ["v0.1.0"]
    assert {v.version for v in registry.versions(include_deregistered=True)} == {"v0.1.0", "v0.2.0", "v0.3.0"}
    assert (registry.store_path("v0.3.0") / "variant.txt").read_text() == "changed\n", "the evidence is kept"
    with pytest.raises(RegistryError, match="no version v0.2.0"):
        resolve_model("v0.2.0", project)
    again = runner.invoke(_app(), ["registry", "check", "--params", params])
    assert again.exit_code == 0 and "no problems" in again.output, again.output
    version, created = registry.register(bundle_variant(trained.better, tmp_path / "bundle-new", "new"))
    assert created and version.version == "v0.4.0"


def test_a_bundle_whose_bytes_are_gone_is_stored_again_when_pushed_again(project, trained, tmp_path):
    registry = GitModelRegistry.from_config(project)
    version, _ = registry.register(trained.better)
    shutil.rmtree(registry.store_path(version.version))
    again, created = registry.register(trained.better)
    assert (again.version, created) == (version.version, False)
    assert verify_bundle(registry.bundle_path(again))["registry_version"] == version.version


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ----------------------------------------------------------------------------------- W&B link ledger
LEDGER_WORKER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from foldstack.config import load_config
    from foldstack.ops.registry import WandbLinks

    params, role, log_file = sys.argv[1], sys.argv[2], Path(sys.argv[3])

    class Artifact:  # stands in for a logged W&B artifact: W&B cannot be reached from here
        def __init__(self, name):
            self.name = name
        def link(self, target, aliases=None):
            time.sleep(0.02)  # a network call takes a while: long enough for another sync to pick it up too
            with open(log_file, "a") as fh:
                fh.write(json.dumps({"artifact": self.name, "aliases": aliases, "pid": os.getpid()}) + "\\n")

    class Api:
        def artifact(self, name, type=None):
            return Artifact(name)

    links = WandbLinks(load_config(params), api_factory=Api, run_syncer=lambda d: None, sleep=lambda s: None)
    if role.startswith("record"):
        for i in range(5):
            links.record(version=f"v0.{i}.0", run_path=None, run_dir=None, artifact_name="m",
                         qualified_name=f"team/p/{role}-{i}", aliases=["candidate"], status="pending")
    else:
        links.sync()
""")


def test_concurrent_ledger_writers_keep_every_link_and_syncs_perform_each_once(project, tmp_path):
    params = str(project.resolve_path("params.yaml"))
    log_file = tmp_path / "links.log"
    recorders = [[sys.executable, "-c", LEDGER_WORKER, params, f"record{i}", str(log_file)] for i in range(4)]
    for process in [subprocess.Popen(c, env=_env()) for c in recorders]:
        assert process.wait(timeout=120) == 0
    links = WandbLinks(project)
    assert len(links.entries("pending")) == 20, "every recorded link is in the ledger"

    syncers = [subprocess.Popen([sys.executable, "-c", LEDGER_WORKER, params, "sync", str(log_file)], env=_env(),
                                stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for process in syncers:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0 and "Traceback" not in stderr, stderr
    performed = [json.loads(line)["artifact"] for line in log_file.read_text().splitlines()]
    assert sorted(performed) == sorted(f"team/p/record{r}-{i}" for r in range(4) for i in range(5)), \
        "each pending link was performed exactly once"
    entries = links.entries()
    assert len(entries) == 20 and {e["status"] for e in entries} == {"linked"}
    assert {e["attempts"] for e in entries} == {1}
