"""W&B tracking in disabled and offline modes, and the W&B registry links (pending offline, synced later).

W&B's servers cannot be reached from this machine, so the *online* link calls - `run.link_artifact`, and
`wandb.Api` + `wandb sync` inside `foldstack registry sync` - are replaced by test doubles here, and only
here. Everything else runs the real wandb library in offline mode, writing under the test's tmp_path.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from foldstack.config import TrackingConfig
from foldstack.ops.registry import (RegistryError, WandbLinks, promote_version, register_bundle, registry_target,
                                sync_pending)
from foldstack.ops.tracking import (ARTIFACT_MANIFEST, RUN_MANIFEST, Tracker, credentials_present, resolve_mode,
                                track_pipeline_run)
from tests.unit.ops.test_registry import registry_project, train_bundles

OFFLINE = {"WANDB_MODE": "offline", "NETRC": "/nonexistent/netrc"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_csv):
    return train_bundles(tmp_path_factory.mktemp("tracking-train"), demo_csv)


# ----------------------------------------------------------------------------------------------- modes
@pytest.mark.parametrize(("params_mode", "environ", "expected"), [
    ("auto", {}, "offline"),                                    # no key: offline is the default
    ("auto", {"WANDB_API_KEY": "k" * 40}, "online"),
    ("auto", {"WANDB_API_KEY": "k" * 40, "WANDB_MODE": "offline"}, "offline"),
    ("online", {}, "offline"),                                  # online without a key falls back, warns
    ("online", {"WANDB_API_KEY": "k" * 40}, "online"),
    ("offline", {"WANDB_API_KEY": "k" * 40}, "offline"),
    ("online", {"WANDB_API_KEY": "k" * 40, "WANDB_MODE": "disabled"}, "disabled"),  # the kill switch wins
    ("disabled", {}, "disabled"),
])
def test_mode_comes_from_params_and_environment(params_mode, environ, expected):
    environ = {"NETRC": "/nonexistent/netrc", **environ}
    assert resolve_mode(TrackingConfig(mode=params_mode), environ) == expected


def test_wandb_login_netrc_counts_as_credentials(tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "x" * 40 + "\n")
    netrc.chmod(0o600)
    assert credentials_present({"NETRC": str(netrc)})
    assert not credentials_present({"NETRC": str(netrc), "WANDB_BASE_URL": "https://wandb.example.com"})


# ------------------------------------------------------------------------------------------- disabled
def test_disabled_tracking_writes_nothing(tmp_path, trained):
    cfg = registry_project(tmp_path / "repo", trained)
    with Tracker(cfg, environ={"WANDB_MODE": "disabled"}) as tracker:
        assert not tracker.active
        assert tracker.log_pipeline() == {"folds": 0, "models": 0, "plots": 0, "leaderboard_rows": 0}
        assert tracker.log_bundle(trained.better, aliases=["candidate"]) is None
        assert tracker.write_run_manifest({"x": 1}) is None
    assert track_pipeline_run(cfg, environ={"WANDB_MODE": "disabled"})["mode"] == "disabled"
    assert not cfg.resolve_path(cfg.tracking.dir).exists()
    result = register_bundle(cfg, trained.better, environ={"WANDB_MODE": "disabled"})
    assert result["tracking"]["mode"] == "disabled" and result["wandb_link"]["status"] == "disabled"
    assert not cfg.resolve_path(cfg.tracking.dir).exists()


def test_a_worker_process_never_logs(tmp_path, trained, monkeypatch):
    cfg = registry_project(tmp_path / "repo", trained)
    monkeypatch.setattr(multiprocessing.current_process(), "name", "SpawnProcess-3")
    tracker = Tracker(cfg, environ=OFFLINE).start()
    assert tracker.mode == "disabled" and not tracker.active


# -------------------------------------------------------------------------------------------- offline
def test_offline_run_directory_holds_the_run_and_the_artifact_manifest(tmp_path, trained):
    cfg = registry_project(tmp_path / "repo", trained, evaluate={"plots": False})
    with Tracker(cfg, environ=OFFLINE) as tracker:
        assert tracker.mode == "offline" and tracker.active
        counts = tracker.log_pipeline()
        reference = tracker.log_bundle(trained.better, aliases=["latest", "candidate"], version="v0.1.0")
        tracker.update_summary({"gate/outcome": "no_production"})
        tracker.write_run_manifest({"note": "test"})
        run_dir = tracker.run_dir
    # 2 base models x 3 folds; every base model, both baselines and the ensemble have holdout reports.
    assert counts["folds"] == 6 and counts["models"] == 5 and counts["leaderboard_rows"] == 5
    assert reference["name"] == "foldstack-ensemble" and reference["qualified_name"] is None  # not uploaded
    assert run_dir.is_dir() and run_dir.name.startswith("offline-run-")
    assert run_dir.parent.parent == cfg.resolve_path(cfg.tracking.dir), "the run lives under tracking.dir"
    assert list(run_dir.glob("run-*.wandb")), "W&B's own run log, what `wandb sync` uploads"
    artifact_manifest = json.loads((run_dir / "files" / ARTIFACT_MANIFEST).read_text())
    bundle_files = {p.relative_to(trained.better).as_posix() for p in trained.better.rglob("*") if p.is_file()}
    assert bundle_files <= set(artifact_manifest["contents"])
    run_manifest = json.loads((run_dir / "files" / RUN_MANIFEST).read_text())
    assert run_manifest["mode"] == "offline" and run_manifest["note"] == "test"
    assert list((run_dir / "files" / "media" / "table").glob("leaderboard_*.table.json"))


# ----------------------------------------------------------------------------- W&B registry links
class FakeArtifact:
    """Stands in for a logged W&B artifact (test double: W&B cannot be reached from CI)."""

    def __init__(self, name: str, fail_times: int = 0):
        self.name, self.type, self.qualified_name = name, "model", f"team/foldstack/{name}"
        self.links: list[tuple[str, list[str]]] = []
        self.fail_times = fail_times

    def link(self, target_path: str, aliases=None):
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("W&B unreachable")
        self.links.append((target_path, list(aliases or [])))
        return self


class FakeApi:
    """Stands in for `wandb.Api` (test double)."""

    def __init__(self, artifact: FakeArtifact):
        self.artifact_obj = artifact
        self.runs_asked: list[str] = []

    def run(self, path: str):
        self.runs_asked.append(path)
        artifact = self.artifact_obj

        class _Run:
            def logged_artifacts(self):
                return [artifact]

        return _Run()

    def artifact(self, name: str, type: str | None = None):
        assert name == self.artifact_obj.qualified_name
        return self.artifact_obj


def test_offline_push_records_the_link_and_sync_performs_it(tmp_path, trained):
    cfg = registry_project(tmp_path / "repo", trained, evaluate={"plots": False})
    result = register_bundle(cfg, trained.better, environ=OFFLINE, log_pipeline=False)
    assert result["tracking"]["mode"] == "offline" and result["promoted"]
    assert result["wandb_link"] == {"status": "pending", "target": "wandb-registry-model/foldstack",
                                    "aliases": ["candidate", "production"], "error": result["wandb_link"]["error"]}
    run_dir = Path(result["tracking"]["run_dir"])
    recorded = json.loads((run_dir / "files" / RUN_MANIFEST).read_text())
    assert recorded["registry"]["wandb_link"]["status"] == "pending", "the pending link is in the run's manifest"

    artifact = FakeArtifact("foldstack-ensemble:v0", fail_times=1)
    synced: list[Path] = []
    links = WandbLinks(cfg, api_factory=lambda: FakeApi(artifact), run_syncer=synced.append, sleep=lambda s: None)
    (entry,) = links.entries("pending")
    assert entry["run_dir"] == str(run_dir) and entry["version"] == "v0.1.0"

    processed = links.sync()
    assert synced == [run_dir], "the offline run is uploaded before its artifact is linked"
    assert artifact.links == [(registry_target(cfg), ["candidate", "production"])]
    assert registry_target(cfg) == "wandb-registry-model/foldstack"
    assert [e["status"] for e in processed] == ["linked"] and not links.entries("pending")
    assert links.sync() == [], "nothing is linked twice"

    # Promoting the version that is already production changes nothing, in git or in W&B.
    assert promote_version(cfg, "v0.1.0", environ=OFFLINE)["wandb"] == {"status": "unchanged"}
    assert not links.entries("pending")


def test_manual_promotion_queues_the_production_alias(tmp_path, trained):
    cfg = registry_project(tmp_path / "repo", trained, evaluate={"plots": False})
    register_bundle(cfg, trained.better, environ=OFFLINE, log_pipeline=False)
    register_bundle(cfg, trained.worse, environ=OFFLINE, log_pipeline=False)  # loses the gate
    moved = promote_version(cfg, "v0.2.0", environ=OFFLINE)
    assert moved["previous_production"] == "v0.1.0" and moved["wandb"]["status"] == "pending"
    artifact = FakeArtifact("foldstack-ensemble:v1")
    links = WandbLinks(cfg, api_factory=lambda: FakeApi(artifact), run_syncer=lambda d: None, sleep=lambda s: None)
    links.sync()
    assert artifact.links[-1] == ("wandb-registry-model/foldstack", ["production"])


def test_an_online_link_is_retried_then_left_pending(tmp_path, trained):
    cfg = registry_project(tmp_path / "repo", trained, registry={"link_retries": 2})
    waits: list[float] = []
    links = WandbLinks(cfg, sleep=waits.append)

    class FlakyRun:  # stands in for an online wandb Run (test double)
        def __init__(self, failures: int):
            self.failures, self.calls = failures, []

        def link_artifact(self, artifact, target_path, aliases=None):
            self.calls.append((target_path, aliases))
            if len(self.calls) <= self.failures:
                raise ConnectionError("W&B unreachable")

    recovering = FlakyRun(failures=2)
    assert links.link_in_run(recovering, object(), ["candidate"]) is None
    assert recovering.calls == [("wandb-registry-model/foldstack", ["candidate"])] * 3 and waits == [1.0, 2.0]
    down = FlakyRun(failures=99)
    error = links.link_in_run(down, object(), ["candidate"])
    assert "ConnectionError" in error and len(down.calls) == 3


def test_sync_says_what_is_missing_before_trying(tmp_path, trained):
    cfg = registry_project(tmp_path / "repo", trained)
    with pytest.raises(RegistryError, match="no W&B credentials"):
        sync_pending(cfg, environ={"NETRC": "/nonexistent/netrc"})
    with pytest.raises(RegistryError, match="disabled"):
        sync_pending(cfg, environ={"WANDB_MODE": "disabled", "WANDB_API_KEY": "k" * 40})
