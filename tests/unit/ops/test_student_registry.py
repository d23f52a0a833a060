"""The distilled student in the registry: registered after the ensemble as a model of its own
(`<model_name>-student`, same gate), resolved by `--model student`, served and predicted with."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pytest
from typer.testing import CliRunner

from foldstack.common.files import read_json
from foldstack.config import Config, load_config
from foldstack.ops.registry import (NO_STUDENT, STUDENT, GitModelRegistry, RegistryError, model_config,
                                    register_bundle, register_models, resolve_model, resolve_model_version)
from foldstack.pipeline.distill import distill
from foldstack.pipeline.stages import Layout, run_pipeline
from tests.conftest import write_params
from tests.unit.ops.test_registry import MODEL, git, registry_project

STUDENT_MODEL = f"{MODEL}-student"
DISTILL = {"enabled": True}
LABELS = ["negative", "neutral", "positive"]


class Trained(NamedTuple):
    """What `registry_project` needs of a trained run: its data and its artifacts (the student's included)."""

    data_csv: Path
    artifacts: Path
    student: Path  # a copy of the distill stage's student bundle
    other_student: Path  # a second student of the same snapshot (hard labels only), which scores differently


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_csv) -> Trained:
    directory = tmp_path_factory.mktemp("student-train")
    cfg = load_config(write_params(directory, demo_csv, distill=DISTILL))
    run_pipeline(cfg)
    layout = Layout.of(cfg)
    if not (layout.student / "bundle" / "manifest.json").is_file():  # a pipeline that does not distill (yet)
        distill(cfg)
    students = directory / "students"
    shutil.copytree(layout.student / "bundle", students / "soft")
    distill(load_config(write_params(directory, demo_csv, distill={**DISTILL, "alpha": 1.0})))
    shutil.copytree(layout.student / "bundle", students / "hard")
    distill(cfg)  # the pipeline's own student again, as the run left it
    return Trained(demo_csv, layout.root, students / "soft", students / "hard")


@pytest.fixture
def project(tmp_path, trained) -> Config:
    return registry_project(tmp_path / "repo", trained, distill=DISTILL)


def test_the_student_registers_as_a_model_of_its_own_after_the_ensemble(project, trained):
    ensemble, student = register_models(project)
    assert (ensemble["model"], ensemble["role"], ensemble["version"]) == (MODEL, "ensemble", "v0.1.0")
    assert (student["model"], student["role"], student["version"]) == (STUDENT_MODEL, "student", "v0.1.0")
    assert student["gate"]["outcome"] == "no_production" and student["promoted"]
    assert student["production_version"] == "v0.1.0"

    registry = GitModelRegistry.from_config(model_config(project, STUDENT))
    assert registry.model_name == STUDENT_MODEL and registry.production().version == "v0.1.0"
    assert GitModelRegistry.from_config(project).production().version == "v0.1.0"
    tags = set(git(registry.repo, "tag").split())
    assert {f"{MODEL}@v0.1.0", f"{STUDENT_MODEL}@v0.1.0"} <= tags
    record = registry.production().record
    assert record["role"] == "student" and record["base_models"] == ["student"]
    assert registry.production().metric("log_loss") == pytest.approx(
        read_json(trained.artifacts / "student" / "metrics.json")["log_loss"])
    stored = read_json(registry.bundle_path(registry.production()) / "manifest.json")
    assert stored["role"] == "student" and stored["registry_version"] == "v0.1.0"

    # Each model's decision beside the other's; the ensemble's stays where it was.
    decisions = trained.artifacts / "registry"
    assert read_json(decisions / "decision.json")["model"] == MODEL
    assert Path(student["decision_file"]) == decisions / "student-decision.json"
    assert read_json(decisions / "student-decision.json")["gate"]["outcome"] == "no_production"
    assert (decisions / "student-decision.md").read_text().startswith(f"version v0.1.0 of {STUDENT_MODEL}")

    # Pushed again: the same bundles, so the same versions, each already in production.
    again = list(register_models(project))
    assert [(r["model"], r["version"], r["created"], r["gate"]["outcome"]) for r in again] == [
        (MODEL, "v0.1.0", False, "is_production"), (STUDENT_MODEL, "v0.1.0", False, "is_production")]


def test_the_student_is_gated_against_the_students_production(project, trained):
    first = register_bundle(project, trained.student)  # the role comes from the bundle's manifest
    second = register_bundle(project, trained.other_student)
    assert first["model"] == second["model"] == STUDENT_MODEL
    gate = second["gate"]
    assert (gate["candidate_version"], gate["production_version"]) == ("v0.2.0", "v0.1.0")
    assert gate["metric"] == project.registry.gate_metric
    assert gate["outcome"] in ("better", "worse", "tie")
    assert second["promoted"] == (gate["outcome"] == "better")
    assert second["production_version"] == ("v0.2.0" if gate["outcome"] == "better" else "v0.1.0")
    # The scores are the students' own holdout metrics, recorded by the distill stage.
    scores = {read_json(p / "manifest.json")["metrics"]["log_loss"] for p in (trained.student, trained.other_student)}
    assert {gate["candidate_score"], gate["production_score"]} == scores
    # The ensemble was not touched.
    assert GitModelRegistry.from_config(project).versions() == []


def test_without_the_student_registered_it_resolves_to_the_pipelines_student(project, trained):
    local = trained.artifacts / "student" / "bundle"
    assert resolve_model("student", project) == local
    assert resolve_model_version("student", project)[0] == local
    with pytest.raises(RegistryError, match=f"{STUDENT_MODEL}: no version is registered yet"):
        resolve_model("student@latest", project)

    ensemble, student = register_models(project)
    path = resolve_model("student", project)
    assert path != local and read_json(path / "manifest.json")["registry_version"] == "v0.1.0"
    assert resolve_model("student@production", project) == path == resolve_model("student@v0.1.0", project)
    assert resolve_model_version("student", project) == (path, "v0.1.0")
    assert resolve_model("production", project) != path, "the plain references stay the ensemble's"


def test_no_student_is_a_clear_error(tmp_path, trained):
    empty = tmp_path / "artifacts"
    empty.mkdir()
    cfg = registry_project(tmp_path / "repo", trained, runtime={"artifacts_dir": str(empty)})
    with pytest.raises(RegistryError, match=NO_STUDENT):
        resolve_model("student", cfg)

    from foldstack.cli.main import app

    texts = tmp_path / "texts.csv"
    pd.DataFrame({"text": ["fine"]}).to_csv(texts, index=False)
    result = CliRunner().invoke(app, ["predict", "--model", "student", str(texts), "-o", str(tmp_path / "o.csv"),
                                      "-p", str(cfg.resolve_path("params.yaml"))])
    assert result.exit_code != 0 and NO_STUDENT in str(result.exception)
    assert str(result.exception).count("\n") == 0, "one line"


def test_cli_push_and_predict_with_the_student(project, trained, tmp_path):
    from foldstack.cli.main import app

    runner = CliRunner()
    params = str(project.resolve_path("params.yaml"))
    pushed = runner.invoke(app, ["registry", "push", "--params", params, "--no-log-pipeline"])
    assert pushed.exit_code == 0, pushed.output
    assert f"registered {MODEL} v0.1.0" in pushed.output and f"registered {STUDENT_MODEL} v0.1.0" in pushed.output
    listed = runner.invoke(app, ["registry", "list", "--student", "--params", params])
    assert listed.exit_code == 0 and f"{STUDENT_MODEL} versions" in listed.output and "v0.1.0" in listed.output

    texts = tmp_path / "texts.csv"
    pd.DataFrame({"text": ["Great kettle, would buy again.", "Broken on arrival.", "It is a cable."]}).to_csv(
        texts, index=False)
    out = tmp_path / "pred.csv"
    result = runner.invoke(app, ["predict", "--model", "student", str(texts), "-o", str(out), "-p", params])
    assert result.exit_code == 0, result.output
    pred = pd.read_csv(out)
    assert len(pred) == 3 and set(pred["model_version"]) == {"v0.1.0"}
    assert set(pred["prediction"]) <= set(LABELS)
    assert sorted(c.removeprefix("proba_") for c in pred.columns if c.startswith("proba_")) == LABELS


def test_the_service_serves_the_student(project, trained):
    from fastapi.testclient import TestClient

    from foldstack.ops.serving import ModelSource, create_app

    register_models(project).__next__()  # the ensemble only: the student is then the pipeline's bundle
    app = create_app(ModelSource("student", project), reload_seconds=None)
    with TestClient(app) as client:
        health = client.get("/health").json()
        assert health["labels"] == LABELS
        answer = client.post("/predict", json={"texts": ["love it, works great", "broke after a day"]})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model_version"] == read_json(trained.artifacts / "student" / "bundle" / "manifest.json")[
            "bundle_id"]
        assert [p["label"] in LABELS for p in body["predictions"]] == [True, True]

    list(register_models(project))  # now registered: `student` is its production version
    app = create_app(ModelSource("student", project), reload_seconds=None)
    with TestClient(app) as client:
        body = client.post("/predict", json={"texts": ["love it"]}).json()
        assert body["model_version"] == "v0.1.0" and body["labels"] == LABELS
        assert json.dumps(body)  # JSON all through


def test_serve_model_student_answers_over_loopback(project, trained):
    """The README's `foldstack serve-model --model student`: a real server process on 127.0.0.1."""
    import foldstack
    from tests.processes import ServeModel

    list(register_models(project))  # the ensemble and the student, each promoted
    with ServeModel("--model", "student", "--params", str(project.resolve_path("params.yaml")),
                    startup_s=90) as server:
        answer = server.client.post("/predict", json={"texts": ["love it", "broke after a day"]})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model_version"] == "v0.1.0" and body["labels"] == LABELS
        student = foldstack.load(trained.artifacts / "student" / "bundle")  # what was registered as the student
        assert [p["label"] for p in body["predictions"]] == student.predict(["love it", "broke after a day"])
