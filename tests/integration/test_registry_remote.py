"""A registry that travels: register on one machine, serve on another.

Every test here is two (or more) real git checkouts on this machine: `here` registers versions with the real
`foldstack` CLI, which versions their bytes with DVC and pushes them to the project's DVC remote (a directory
outside both checkouts, or an S3 bucket of a moto server on loopback); `there` is a plain `git clone` of
`here` that has the tags but no bytes, and pulls them (`foldstack registry pull`, or on demand). Nothing of git
or DVC is replaced; W&B is disabled (it cannot be reached from CI), so only its offline/disabled path is tested.

The commands are the ones the README's "Registry, gate and serving" section shows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.processes import stop
from tests.unit.ops.test_registry import TrainedBundles, registry_project, train_bundles
from tests.integration.test_registry_concurrency import bundle_variant
from tests.unit.ops.test_serving import free_port, wait_for

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")

BIN = Path(sys.executable).parent  # the venv's foldstack and dvc commands
MODEL = "foldstack-ensemble"
STORE = Path(".foldstack") / "registry" / MODEL  # the registry's store inside a checkout


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1",
                "WANDB_MODE": "disabled", "GIT_AUTHOR_NAME": "foldstack test",
                "GIT_AUTHOR_EMAIL": "test@example.invalid", "GIT_COMMITTER_NAME": "foldstack test",
                "GIT_COMMITTER_EMAIL": "test@example.invalid", "COLUMNS": "200", **extra})
    return env


def run(cwd: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """A command in a checkout, the way a person types it (`foldstack ...`, `dvc ...`, `git ...`)."""
    program = str(BIN / args[0]) if (BIN / args[0]).exists() else args[0]
    proc = subprocess.run([program, *args[1:]], cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}) in {cwd}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def output(proc: subprocess.CompletedProcess) -> str:
    return " ".join((proc.stdout + proc.stderr).split())  # rich wraps long lines


def make_project(root: Path, trained: TrainedBundles, remote: str | None, **remote_options: str) -> Path:
    """A git + DVC project whose committed `.dvc/config` names `remote` as the default (None: no remote)."""
    registry_project(root, trained)  # git init + params.yaml reading the shared trained artifacts
    run(root, "dvc", "init", "-q")
    if remote is not None:
        run(root, "dvc", "remote", "add", "-d", "shared", remote)
        for key, value in remote_options.items():
            run(root, "dvc", "remote", "modify", "shared", key, value)
    (root / ".gitignore").write_text(".foldstack/\n.wandb/\nartifacts/\ncache/\n")
    run(root, "git", "add", "params.yaml", ".gitignore", ".dvc/config", ".dvc/.gitignore", ".dvcignore")
    run(root, "git", "commit", "-q", "-m", "project")
    return root


def push(root: Path, bundle: Path, *, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    return run(root, "foldstack", "registry", "push", "--bundle", str(bundle), "--no-log-pipeline", check=check,
               **env)


def clone(source: Path, target: Path) -> Path:
    run(source.parent, "git", "clone", "-q", str(source), str(target))
    return target


def texts_file(directory: Path) -> Path:
    path = directory / "new.csv"
    pd.DataFrame({"text": ["great value, works well", "stopped working after a week"]}).to_csv(path, index=False)
    return path


def predicted_version(checkout: Path, *, check: bool = True) -> str | subprocess.CompletedProcess:
    texts = texts_file(checkout)
    proc = run(checkout, "foldstack", "predict", "--model", "production", str(texts), "-o", "predictions.csv",
               check=check)
    if proc.returncode != 0:
        return proc
    versions = set(pd.read_csv(checkout / "predictions.csv")["model_version"])
    assert len(versions) == 1
    return versions.pop()


def store_entries(checkout: Path) -> list[str]:
    store = checkout / STORE
    return sorted(p.name for p in store.iterdir() if p.name != ".lock") if store.is_dir() else []


def remote_objects(remote: Path) -> dict[str, Path]:
    return {f"{p.parent.name}{p.name}": p for p in (remote / "files" / "md5").rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_csv) -> TrainedBundles:
    return train_bundles(tmp_path_factory.mktemp("remote-train"), demo_csv)


@pytest.fixture(scope="module")
def here(tmp_path_factory, trained) -> Iterator[dict]:
    """The registering machine: v0.1.0 (the worse bundle) then v0.2.0 (better: the gate promotes it)."""
    base = tmp_path_factory.mktemp("two-machines")
    remote = base / "dvc-remote"  # a directory both checkouts reach (a shared disk, in real life S3)
    root = make_project(base / "here", trained, str(remote))
    first = push(root, trained.worse)
    second = push(root, trained.better)
    yield {"root": root, "remote": remote, "base": base, "pushes": (first, second)}


# --------------------------------------------------------------------------------------------- register
def test_registering_versions_the_bytes_with_dvc_before_the_tag(here):
    root, remote = here["root"], here["remote"]
    first, second = (output(p) for p in here["pushes"])
    assert "registered foldstack-ensemble v0.1.0" in first and "on the DVC remote 'shared'" in first
    assert "production: v0.2.0 (promoted)" in second
    record = json.loads(run(root, "git", "tag", "-l", "--format=%(contents)", f"{MODEL}@v0.2.0").stdout
                        .split("foldstack-record: ", 1)[1].splitlines()[0])
    md5 = record["dvc"]["md5"]
    assert md5.endswith(".dir") and record["dvc"]["remote"] == "shared"
    objects = remote_objects(remote)
    assert md5 in objects, "the directory object is on the remote"
    listing = json.loads(objects[md5].read_text())
    assert {entry["md5"] for entry in listing} <= set(objects), "and every file it lists"
    shown = output(run(root, "foldstack", "registry", "show", "v0.2.0"))
    assert f"{md5} ({record['dvc']['nfiles']} files), on the DVC remote 'shared'" in shown, shown
    # The version's own record commit holds a DVC pointer to those bytes; HEAD and the work tree did not move.
    pointer = run(root, "git", "show", f"{MODEL}@v0.2.0:registry/{MODEL}/v0.2.0.dvc").stdout
    assert f"md5: {md5}" in pointer and "path: v0.2.0" in pointer
    assert run(root, "git", "status", "--porcelain").stdout == ""
    assert not (root / "registry").exists()
    # DVC itself can fetch a version through that pointer, from the tag alone.
    out = here["base"] / "dvc-get"
    run(here["base"], "dvc", "get", str(root), f"registry/{MODEL}/v0.2.0", "--rev", f"{MODEL}@v0.2.0", "-o",
        str(out))
    stored = root / STORE / "v0.2.0"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        sorted(p.relative_to(stored).as_posix() for p in stored.rglob("*") if p.is_file())
    assert (out / "manifest.json").read_bytes() == (stored / "manifest.json").read_bytes()


# ------------------------------------------------------------------------------------- the other machine
def test_a_fresh_clone_pulls_production_and_predicts(here, tmp_path):
    there = clone(here["root"], tmp_path / "there")
    assert store_entries(there) == [], "a clone has the tags, not the bytes"
    listed = output(run(there, "foldstack", "registry", "list"))
    assert "NOT PULLED" in listed and "registry pull" in listed
    checked = output(run(there, "foldstack", "registry", "check"))
    assert "no problems" in checked and "only on the DVC remote" in checked, "not pulled is not dangling"

    pulled = output(run(there, "foldstack", "registry", "pull"))
    assert "v0.2.0: pulled from the DVC remote 'shared'" in pulled and "files verified" in pulled
    assert "already in the local store" in output(run(there, "foldstack", "registry", "pull", "v0.2.0"))
    assert predicted_version(there) == "v0.2.0"
    assert store_entries(there) == ["v0.2.0"]

    # Rollback on this clone: the earlier version is pulled on demand, and served.
    rolled = output(run(there, "foldstack", "registry", "rollback"))
    assert "v0.2.0 -> v0.1.0" in rolled
    assert predicted_version(there) == "v0.1.0"
    assert "no problems" in output(run(there, "foldstack", "registry", "check"))


def test_predict_in_a_fresh_clone_pulls_on_demand(here, tmp_path):
    there = clone(here["root"], tmp_path / "there")
    assert predicted_version(there) == "v0.2.0"
    assert store_entries(there) == ["v0.2.0"]


def test_the_gate_in_a_fresh_clone_pulls_production(here, trained, tmp_path):
    """A push on the other machine gates against production, whose bytes it first pulls (a distinct bundle
    with the same holdout score: a tie, so production is kept - after it was scored, not `incomparable`)."""
    there = clone(here["root"], tmp_path / "there")
    variant = bundle_variant(trained.better, tmp_path / "variant", "there")
    pushed = output(push(there, variant))
    assert "registered foldstack-ensemble v0.3.0" in pushed and "tie" in pushed, pushed
    assert "production: v0.2.0" in pushed
    assert set(store_entries(there)) == {"v0.2.0", "v0.3.0"}


def test_a_tampered_remote_copy_is_refused(here, tmp_path):
    tampered = tmp_path / "tampered-remote"
    shutil.copytree(here["remote"], tampered)
    record = json.loads(run(here["root"], "git", "tag", "-l", "--format=%(contents)", f"{MODEL}@v0.2.0").stdout
                        .split("foldstack-record: ", 1)[1].splitlines()[0])
    objects = remote_objects(tampered)
    listing = json.loads(objects[record["dvc"]["md5"]].read_text())
    manifest_object = objects[next(e["md5"] for e in listing if e["relpath"] == "manifest.json")]
    manifest_object.chmod(0o644)
    manifest_object.write_text(manifest_object.read_text().replace('"negative"', '"NEGATIVE"'))

    there = clone(here["root"], tmp_path / "there")
    run(there, "dvc", "remote", "modify", "--local", "shared", "url", str(tampered))
    refused = run(there, "foldstack", "registry", "pull", check=False)
    assert refused.returncode == 2
    assert "refused, nothing was written to the store" in output(refused) and "manifest.json" in output(refused)
    failed = predicted_version(there, check=False)
    assert isinstance(failed, subprocess.CompletedProcess) and "refused" in output(failed)
    assert store_entries(there) == [], "no version directory, no temporary left behind"
    assert not (there / "predictions.csv").exists()

    # The bad object was not kept in this clone's DVC cache: with the real remote the same pull works.
    run(there, "dvc", "remote", "modify", "--local", "shared", "url", str(here["remote"]))
    assert "pulled from the DVC remote" in output(run(there, "foldstack", "registry", "pull"))


def test_an_unreachable_remote_is_named(here, tmp_path):
    there = clone(here["root"], tmp_path / "there")
    run(there, "dvc", "remote", "modify", "--local", "shared", "url", str(tmp_path / "nowhere"))
    refused = run(there, "foldstack", "registry", "pull", check=False)
    assert refused.returncode == 2
    message = output(refused)
    assert "cannot reach the DVC remote 'shared'" in message and f"{tmp_path / 'nowhere'} does not exist" in message
    # `check --repair` cannot verify those versions, so it leaves them alone (no deregistration tag).
    checked = run(there, "foldstack", "registry", "check", "--repair", check=False)
    assert checked.returncode == 1 and "unavailable" in output(checked) and "left alone" in output(checked)
    assert not [t for t in run(there, "git", "tag").stdout.split() if "@" in t and "!" in t], "none deregistered"


def test_serve_model_in_a_fresh_clone_pulls_on_demand_and_follows_production(here, tmp_path):
    """Last in this file: it rolls production back on `here`. The service on the other machine pulls production
    at start, then - after `git fetch --tags` shows the rollback - pulls and serves the earlier version."""
    there = clone(here["root"], tmp_path / "there")
    port = free_port()
    process = subprocess.Popen([str(BIN / "foldstack"), "serve-model", "--port", str(port), "--reload-seconds",
                                "0.5"], cwd=there, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        def health() -> dict | None:
            assert process.poll() is None, process.stdout.read()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
            except httpx.TransportError:
                return None

        wait_for(lambda: health() is not None, seconds=120)
        assert health()["model_version"] == "v0.2.0"
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", json={"texts": ["great value"]}, timeout=30)
        assert answer.status_code == 200 and answer.json()["model_version"] == "v0.2.0"

        assert "v0.2.0 -> v0.1.0" in output(run(here["root"], "foldstack", "registry", "rollback"))
        run(there, "git", "fetch", "-q", "--tags", "origin")
        wait_for(lambda: health()["model_version"] == "v0.1.0", seconds=60)
        assert store_entries(there) == ["v0.1.0", "v0.2.0"]
    finally:
        stop(process)


# ------------------------------------------------------------------------------- remotes that fail or lack
def test_no_version_is_registered_when_the_remote_cannot_take_the_bytes(trained, tmp_path):
    down = tmp_path / "remote-down"
    down.write_text("a file where the remote's directory should be: every upload fails\n")
    root = make_project(tmp_path / "here", trained, str(down))
    failed = push(root, trained.better, check=False)
    assert failed.returncode == 2
    message = output(failed)
    assert "was not registered" in message and "DVC remote 'shared'" in message, message
    assert run(root, "git", "tag").stdout == "", "no tag without bytes on the remote"
    assert store_entries(root) == []

    down.unlink()  # the remote is back: the same push registers it
    assert "registered foldstack-ensemble v0.1.0" in output(push(root, trained.better))

    # The registering machine's own DVC cache holds the objects: a deleted store is restored without the remote.
    shutil.rmtree(root / STORE / "v0.1.0")
    down.rename(tmp_path / "remote-away")
    assert "already in this project's DVC cache" in output(run(root, "foldstack", "registry", "pull"))
    assert store_entries(root) == ["v0.1.0"]


def test_without_a_remote_the_bytes_stay_local_until_uploaded(trained, tmp_path):
    root = make_project(tmp_path / "here", trained, None)
    pushed = output(push(root, trained.better))
    assert "registered foldstack-ensemble v0.1.0" in pushed and "no DVC remote is configured" in pushed
    assert "in the local store only" in pushed

    there = clone(root, tmp_path / "there")
    for mode, note in (("disabled", "W&B is disabled here"), ("offline", "W&B is offline here")):
        refused = run(there, "foldstack", "registry", "pull", check=False, WANDB_MODE=mode)
        assert refused.returncode == 2
        message = output(refused)
        assert "registered without a DVC remote" in message and "foldstack registry upload" in message, message
        assert note in message and "W&B model registry" in message, message
    assert store_entries(there) == []

    remote = tmp_path / "dvc-remote"
    run(root, "dvc", "remote", "add", "-d", "shared", str(remote))
    uploaded = output(run(root, "foldstack", "registry", "upload"))
    assert "v0.1.0" in uploaded and "pushed" in uploaded, uploaded
    assert "already on the DVC remote" in output(run(root, "foldstack", "registry", "upload"))
    run(there, "dvc", "remote", "add", "--local", "-d", "shared", str(remote))
    assert predicted_version(there) == "v0.1.0"


# ------------------------------------------------------------------------------------------------- S3
@pytest.fixture
def s3_server() -> Iterator[str]:
    """An S3-compatible server (moto) on loopback; its endpoint URL."""
    pytest.importorskip("dvc_s3", reason="the s3 extra (dvc-s3) is not installed")
    server_module = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="foldstack-registry")
    try:
        yield endpoint
    finally:
        server.stop()


def test_an_s3_remote_carries_the_registry(trained, tmp_path, s3_server):
    import boto3

    root = make_project(tmp_path / "here", trained, "s3://foldstack-registry/dvc", endpointurl=s3_server)
    assert "on the DVC remote 'shared'" in output(push(root, trained.better))
    s3 = boto3.client("s3", endpoint_url=s3_server)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="foldstack-registry")["Contents"]]
    assert any(k.endswith(".dir") for k in keys)

    there = clone(root, tmp_path / "there")
    assert "pulled from the DVC remote 'shared'" in output(run(there, "foldstack", "registry", "pull"))
    assert predicted_version(there) == "v0.1.0"

    # One object rewritten on the bucket: a fresh clone refuses it.
    victim = next(k for k in keys if not k.endswith(".dir"))
    s3.put_object(Bucket="foldstack-registry", Key=victim, Body=b"not what was registered")
    elsewhere = clone(root, tmp_path / "elsewhere")
    refused = run(elsewhere, "foldstack", "registry", "pull", check=False)
    assert refused.returncode == 2 and "refused" in output(refused)
    assert store_entries(elsewhere) == []

    # The server gone: the message says the remote cannot be reached.
    run(elsewhere, "dvc", "remote", "modify", "--local", "shared", "endpointurl", f"http://127.0.0.1:{free_port()}")
    unreachable = run(elsewhere, "foldstack", "registry", "pull", check=False)
    assert unreachable.returncode == 2 and "cannot reach the DVC remote 'shared'" in output(unreachable), \
        output(unreachable)
