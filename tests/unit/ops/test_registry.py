"""The git-native registry (GTO tags in a temporary git repo), the promotion gate, resolving `production`,
tamper refusal, batch prediction from the registry, and the `foldstack registry` commands."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from foldstack.bundle import manifest_digest

from foldstack.config import Config, load_config
from foldstack.errors import BundleError
from foldstack.ops.predict import predict_file
from foldstack.ops.registry import (GitModelRegistry, RegistryError, gate, gate_decision, register_bundle,
                                    resolve_model, rollback_production, score_bundle_on_holdout)
from foldstack.pipeline.stages import Layout, run_pipeline
from tests.conftest import write_params
from tests.paths import REPO_ROOT

MODEL = "foldstack-ensemble"


@dataclass(frozen=True)
class TrainedBundles:
    """Two bundles trained on the same snapshot (so the gate can compare them), better and worse on log loss."""

    data_csv: Path
    artifacts: Path
    better: Path
    worse: Path
    better_score: float
    worse_score: float


def train_bundles(directory: Path, data_csv: Path) -> TrainedBundles:
    """Train the cheap ensemble twice (logreg and vote meta-learners share the fold models) and keep both."""
    params = write_params(directory, data_csv)
    bundles = {}
    for meta in ("logreg", "vote"):
        cfg = load_config(params, [f"meta.kind={meta}"])
        run_pipeline(cfg)
        bundles[meta] = directory / "bundles" / meta
        shutil.copytree(Layout.of(cfg).bundle, bundles[meta])
    scores = {m: score_bundle_on_holdout(p, cfg, "log_loss")[0] for m, p in bundles.items()}
    better, worse = sorted(bundles, key=scores.get)
    assert scores[better] < scores[worse], "the two meta-learners score differently on the holdout"
    return TrainedBundles(data_csv, Layout.of(cfg).root, bundles[better], bundles[worse], scores[better],
                          scores[worse])


def registry_project(directory: Path, trained: TrainedBundles, **sections) -> Config:
    """A fresh git repository whose params use the shared trained artifacts: an empty registry per test."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(directory)], check=True)
    runtime = {"artifacts_dir": str(trained.artifacts), **sections.pop("runtime", {})}
    tracking = {"dir": str(directory / ".wandb"), **sections.pop("tracking", {})}
    return load_config(write_params(directory, trained.data_csv, runtime=runtime, tracking=tracking, **sections))


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_csv) -> TrainedBundles:
    return train_bundles(tmp_path_factory.mktemp("registry-train"), demo_csv)


@pytest.fixture
def project(tmp_path, trained) -> Config:
    return registry_project(tmp_path / "repo", trained)


# ------------------------------------------------------------------------------------------------ gate
@pytest.mark.parametrize(("metric", "candidate", "production", "tolerance", "outcome"), [
    ("log_loss", 0.40, None, 0.0, "no_production"),
    ("log_loss", 0.40, 0.45, 0.0, "better"),      # lower log loss wins
    ("log_loss", 0.45, 0.40, 0.0, "worse"),
    ("log_loss", 0.40, 0.40, 0.0, "tie"),         # a tie keeps production
    ("log_loss", 0.40, 0.41, 0.02, "tie"),        # must win by more than the tolerance
    ("log_loss", 0.40, 0.43, 0.02, "better"),
    ("accuracy", 0.91, 0.90, 0.0, "better"),      # higher accuracy wins
    ("accuracy", 0.89, 0.90, 0.0, "worse"),
    ("roc_auc", math.nan, 0.90, 0.0, "incomparable"),
])
def test_gate_decision_in_each_case(metric, candidate, production, tolerance, outcome):
    decision = gate_decision(metric, candidate, production, tolerance, candidate_version="v0.2.0",
                             production_version=None if production is None else "v0.1.0")
    assert decision.outcome == outcome
    assert decision.passed == (outcome in ("no_production", "better"))
    assert decision.reason and decision.markdown().startswith("# Promotion gate")
    record = decision.to_dict()
    assert record["candidate_score"] == candidate or math.isnan(candidate)
    assert json.loads(json.dumps(record, default=str))["outcome"] == outcome


# -------------------------------------------------------------------------------------- GTO registry
def test_register_promote_rollback_as_gto_tags(project, trained):
    registry = GitModelRegistry.from_config(project)
    repo = registry.repo
    first, created = registry.register(trained.worse)
    assert (first.version, created) == ("v0.1.0", True)
    assert registry.register(trained.worse) == (first, False), "an identical bundle is registered once"
    second, _ = registry.register(trained.better)
    assert second.version == "v0.2.0" and registry.production() is None

    registry.promote("v0.1.0", reason="first")
    registry.promote("v0.2.0", reason="better")
    assert registry.production().version == "v0.2.0"
    tags = git(repo, "tag").split()
    assert {f"{MODEL}@v0.1.0", f"{MODEL}@v0.2.0"} <= set(tags)
    assert any(t.startswith(f"{MODEL}#production#") for t in tags)
    # Each version has its own commit (GTO allows one version per commit); no branch or file was touched.
    assert first.commit != second.commit
    assert subprocess.run(["git", "-C", str(repo), "rev-parse", "-q", "--verify", "HEAD"],
                          capture_output=True).returncode != 0, "the repository still has no commit of its own"
    # The stored copy names its version (predictions carry it) and still verifies.
    manifest = json.loads((registry.bundle_path(second) / "manifest.json").read_text())
    assert manifest["registry_version"] == "v0.2.0"

    result = rollback_production(project)
    assert (result["from"], result["to"]) == ("v0.2.0", "v0.1.0")
    assert registry.production().version == "v0.1.0"
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback()
    registry.promote("v0.2.0", reason="again")
    assert registry.rollback()[1].version == "v0.1.0"


def test_registering_on_a_commit_keeps_the_code_commit(project, trained):
    registry = GitModelRegistry.from_config(project)
    (registry.repo / "README").write_text("x\n")
    git(registry.repo, "add", "README")
    subprocess.run(["git", "-C", str(registry.repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm",
                    "code"], check=True)
    head = git(registry.repo, "rev-parse", "HEAD").strip()
    version, _ = registry.register(trained.better)
    assert version.record["source_commit"] == head
    assert git(registry.repo, "rev-parse", f"{version.commit}^").strip() == head
    assert git(registry.repo, "rev-parse", "HEAD").strip() == head, "HEAD did not move"


# -------------------------------------------------------------------------------------------- pushes
def test_push_gates_each_candidate_against_production(project, trained):
    first = register_bundle(project, trained.worse)
    assert first["gate"]["outcome"] == "no_production" and first["promoted"]
    assert first["production_version"] == "v0.1.0"

    second = register_bundle(project, trained.better)
    assert second["gate"]["outcome"] == "better" and second["promoted"]
    assert second["gate"]["candidate_score"] == pytest.approx(trained.better_score)
    assert second["gate"]["production_score"] == pytest.approx(trained.worse_score)
    assert second["production_version"] == "v0.2.0"

    # The worse bundle again: it stays registered as v0.1.0 and loses against production v0.2.0.
    third = register_bundle(project, trained.worse)
    assert (third["version"], third["created"], third["gate"]["outcome"]) == ("v0.1.0", False, "worse")
    assert not third["promoted"] and third["production_version"] == "v0.2.0"
    decision = json.loads(Path(third["decision_file"]).read_text())
    assert decision["gate"]["outcome"] == "worse"
    assert "loses" in (Path(third["decision_file"]).with_suffix(".md")).read_text()

    assert register_bundle(project, trained.better)["gate"]["outcome"] == "is_production"


def test_a_tie_within_the_tolerance_keeps_production(tmp_path, trained):
    cfg = registry_project(tmp_path / "repo", trained, registry={"gate_tolerance": 10.0})
    register_bundle(cfg, trained.worse)
    result = register_bundle(cfg, trained.better)
    assert result["gate"]["outcome"] == "tie" and not result["promoted"]
    assert result["production_version"] == "v0.1.0"


def test_without_auto_promote_a_passing_candidate_waits(tmp_path, trained):
    cfg = registry_project(tmp_path / "repo", trained, registry={"auto_promote": False})
    result = register_bundle(cfg, trained.better)
    assert result["gate"]["passed"] and not result["promoted"] and result["production_version"] is None


def test_a_failed_registration_never_touches_production(project, trained, tmp_path):
    register_bundle(project, trained.worse)
    registry = GitModelRegistry.from_config(project)
    tags_before = git(registry.repo, "tag")
    # A bundle whose model files were modified is refused before anything is written.
    tampered = tmp_path / "tampered"
    shutil.copytree(trained.better, tampered)
    victim = next(p for p in sorted(tampered.rglob("*.npy")))
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    with pytest.raises(BundleError, match="sha256 does not match"):
        register_bundle(project, tampered)
    assert git(registry.repo, "tag") == tags_before
    # A candidate trained on other data cannot be gated on this holdout: an error, production unchanged.
    foreign = tmp_path / "foreign"
    shutil.copytree(trained.better, foreign)
    manifest = json.loads((foreign / "manifest.json").read_text())
    manifest["data_hash"] = "0" * 16
    manifest["bundle_id"] = manifest_digest(manifest)  # a consistent bundle, just of other data
    (foreign / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RegistryError, match="trained on data"):
        register_bundle(project, foreign)
    assert registry.production().version == "v0.1.0"


def test_a_modified_registered_bundle_is_refused(project, trained):
    register_bundle(project, trained.better)
    path = resolve_model("production", project)
    manifest = path / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"negative"', '"NEGATIVE"'))
    with pytest.raises(BundleError, match="does not match the manifest registered"):
        resolve_model("production", project)


# --------------------------------------------------------------------------------- batch prediction
def test_predict_with_production_names_the_version(project, trained, tmp_path):
    with pytest.raises(RegistryError, match="no version is in stage 'production'"):
        resolve_model("production", project)
    register_bundle(project, trained.better)
    bundle = resolve_model("production", project)
    assert resolve_model("v0.1.0", project) == bundle == resolve_model("0.1.0", project)
    assert resolve_model(trained.better) == trained.better, "a bundle directory is used as it is"
    texts = tmp_path / "texts.csv"
    pd.DataFrame({"text": ["great value, works well", "stopped working after a week"]}).to_csv(texts, index=False)
    assert predict_file(bundle, texts, tmp_path / "out.csv") == 2
    out = pd.read_csv(tmp_path / "out.csv")
    assert set(out["model_version"]) == {"v0.1.0"}
    proba = out.filter(like="proba_")
    assert proba.shape[1] == 3 and (proba.sum(axis=1) - 1).abs().max() < 1e-6


@pytest.mark.slow
def test_batch_predict_flow_resolves_production(project, trained, tmp_path):
    """The Prefect flow runs for real (its own ephemeral API in a subprocess, state under tmp_path)."""
    register_bundle(project, trained.worse)
    register_bundle(project, trained.better)
    texts = tmp_path / "texts.csv"
    pd.DataFrame({"text": ["great value", "broke at once", "it is a phone case"]}).to_csv(texts, index=False)
    params = project.resolve_path("params.yaml")
    script = (f"from flows.batch_predict import batch_predict; import json; print('RESULT', json.dumps("
              f"batch_predict(input_path={str(texts)!r}, output_path={str(tmp_path / 'out.parquet')!r}, "
              f"params={str(params)!r})))")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_LOGGING_LEVEL": "WARNING",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT", 1)[1])
    assert result["version"] == "v0.2.0" and result["rows"] == 3 and result["verified_files"] > 0
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert set(out["model_version"]) == {"v0.2.0"} and out.filter(like="proba_").shape[1] == 3


# ------------------------------------------------------------------------------------------------ CLI
def test_registry_commands_print_tables(project, trained):
    from foldstack.cli.main import app

    runner = CliRunner()
    params = str(project.resolve_path("params.yaml"))
    pushed = runner.invoke(app, ["registry", "push", "--bundle", str(trained.worse), "--params", params])
    assert pushed.exit_code == 0, pushed.output
    assert "registered foldstack-ensemble v0.1.0" in pushed.output and "no_production" in pushed.output
    register_bundle(project, trained.better)
    listed = runner.invoke(app, ["registry", "list", "--params", params])
    assert listed.exit_code == 0 and "v0.2.0" in listed.output and "production" in listed.output
    shown = runner.invoke(app, ["registry", "show", "v0.1.0", "--params", params])
    assert shown.exit_code == 0 and "files sha256" in shown.output and "production stage history" in shown.output
    rolled = runner.invoke(app, ["registry", "rollback", "--params", params])
    assert rolled.exit_code == 0 and "v0.2.0 -> v0.1.0" in rolled.output
    promoted = runner.invoke(app, ["registry", "promote", "v0.2.0", "--params", params])
    assert promoted.exit_code == 0 and "production: v0.2.0" in promoted.output
    unknown = runner.invoke(app, ["registry", "promote", "v9.9.9", "--params", params])
    assert unknown.exit_code != 0 and isinstance(unknown.exception, RegistryError)


def test_gate_reads_the_recorded_score_of_a_bundle_of_this_snapshot(project, trained, monkeypatch):
    """A bundle trained on this snapshot was scored on this holdout by its evaluate stage: no model runs again."""
    monkeypatch.setattr(gate, "load_bundle", lambda *a, **k: pytest.fail("models were loaded"))
    score, rows, manifest = score_bundle_on_holdout(trained.better, project, "log_loss")
    assert score == manifest["metrics"]["ensemble.log_loss"] == pytest.approx(trained.better_score)


def test_cli_predict_with_the_production_model(project, trained, tmp_path):
    from foldstack.cli.main import app

    register_bundle(project, trained.better)
    texts = tmp_path / "texts.csv"
    pd.DataFrame({"text": ["Great kettle, would buy again.", "Broken on arrival."]}).to_csv(texts, index=False)
    out = tmp_path / "pred.csv"
    params = str(project.resolve_path("params.yaml"))
    result = CliRunner().invoke(app, ["predict", "--model", "production", str(texts), "-o", str(out), "-p", params])
    assert result.exit_code == 0, result.output
    pred = pd.read_csv(out)
    assert len(pred) == 2 and set(pred["model_version"]) == {"v0.1.0"}
    both = CliRunner().invoke(app, ["predict", "--model", "production", str(texts), str(texts), "-o", str(out)])
    assert both.exit_code != 0 and "only INPUT" in str(both.exception)
