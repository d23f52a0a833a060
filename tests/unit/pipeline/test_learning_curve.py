"""The learning curve: real pipeline artifacts, the real `learning-curve` command through typer's CliRunner,
the files it writes read back (CSV, JSON, PNG)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from foldstack.cli.evaluation import register
from foldstack.config import load_config
from foldstack.errors import ConfigError, DataError
from foldstack.pipeline.layout import load_snapshot
from foldstack.pipeline.learning_curve import smallest_fraction, subsample
from foldstack.pipeline.stages import run_pipeline

from tests.conftest import CHEAP_MODELS, write_params

MODELS = [m["name"] for m in CHEAP_MODELS]


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:  # a callback keeps `learning-curve` a subcommand, as under `foldstack`
        pass

    register(app)
    return app


@pytest.fixture(scope="module")
def project(tmp_path_factory, demo_csv) -> Path:
    """A trained demo project (2 cheap models, k=3): the pipeline's artifacts the curve's f=1.0 reuses."""
    directory = tmp_path_factory.mktemp("curve")
    params = write_params(directory, demo_csv)
    run_pipeline(load_config(params))
    return params


def _invoke(params: Path, *args: str):
    return CliRunner().invoke(_app(), ["learning-curve", "--params", str(params), *args])


@dataclass
class Curve:
    """What one `learning-curve --fractions 0.4,1.0` printed and wrote (read at once: later tests rewrite it)."""

    output: str
    table: pd.DataFrame
    summary: dict
    png: bytes
    reports: dict
    params: Path


@pytest.fixture(scope="module")
def curve(project) -> Curve:
    result = _invoke(project, "--fractions", "0.4,1.0")
    assert result.exit_code == 0, result.output
    out = project.parent / "artifacts" / "eval" / "learning_curve"
    return Curve(result.output, pd.read_csv(out / "learning_curve.csv", float_precision="round_trip"),
                 json.loads((out / "learning_curve.json").read_text()), (out / "learning_curve.png").read_bytes(),
                 json.loads((out.parent / "reports.json").read_text()), project)


def test_csv_has_every_fraction_and_model_and_rows_grow(curve):
    table = curve.table
    assert list(table.columns) == ["fraction", "rows", "model", "role", "accuracy", "log_loss"]
    assert sorted(zip(table["fraction"], table["model"], strict=True)) == sorted(
        (f, m) for f in (0.4, 1.0) for m in [*MODELS, "ensemble"])
    assert set(table.loc[table["model"] == "ensemble", "role"]) == {"ensemble"}
    assert set(table.loc[table["model"] != "ensemble", "role"]) == {"base"}
    rows = table.groupby("fraction")["rows"].agg(["min", "max"])
    assert (rows["min"] == rows["max"]).all()  # every model of a fraction saw the same rows
    small, full = rows.loc[0.4, "min"], rows.loc[1.0, "min"]
    assert 0 < small < full
    assert full == len(load_snapshot(load_config(curve.params)).train)
    assert abs(small / full - 0.4) < 0.05  # whole groups: close to the fraction, not exactly
    assert table["log_loss"].gt(0).all() and table["accuracy"].between(0, 1).all()


def test_full_fraction_reuses_the_pipeline_and_matches_its_reports(curve):
    table, reports = curve.table, curve.reports
    full = table[table["fraction"] == 1.0].set_index("model")
    for model in [*MODELS, "ensemble"]:
        assert full.loc[model, "log_loss"] == reports[model]["log_loss"], model
        assert full.loc[model, "accuracy"] == reports[model]["accuracy"], model
    summary = curve.summary
    assert [p["source"] for p in summary["points"]] == ["refit on the subsample", "pipeline artifacts"]
    assert summary["best_base"] == min(MODELS, key=lambda m: reports[m]["log_loss"])
    assert summary["holdout_rows"] == reports["ensemble"]["n_rows"]


def test_png_and_progress_lines(curve):
    png = curve.png
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    lines = [line for line in curve.output.splitlines() if "training rows, ensemble log loss" in line]
    assert len(lines) == 2 and "fraction 0.4:" in lines[0] and "fraction 1:" in lines[1]
    assert "reused the pipeline's artifacts" in lines[1]


def test_worker_processes_give_the_same_curve(curve):
    """The fits in a pool of spawned workers (runtime.max_workers=2) give the numbers fitted in-process."""
    out = curve.params.parent / "artifacts" / "eval" / "learning_curve"
    serial = curve.table
    result = _invoke(curve.params, "--fractions", "0.4", "--set", "runtime.max_workers=2")
    assert result.exit_code == 0, result.output
    pooled = pd.read_csv(out / "learning_curve.csv", float_precision="round_trip")
    pd.testing.assert_frame_equal(pooled, serial[serial["fraction"] == 0.4].reset_index(drop=True))


def test_stale_artifacts_are_not_reused(project):
    """Another seed: other fold identities, so f=1.0 is refit rather than read from the pipeline."""
    result = _invoke(project, "--fractions", "1.0", "--set", "seed=1")
    assert result.exit_code == 0, result.output
    summary = json.loads((project.parent / "artifacts/eval/learning_curve/learning_curve.json").read_text())
    assert [p["source"] for p in summary["points"]] == ["refit on the subsample"]
    assert "reused" not in result.output


@pytest.mark.parametrize(("fractions", "says"), [("0", "fraction 0 is out of range"),
                                                   ("1.5", "fraction 1.5 is out of range"),
                                                   ("0.5,0.2", "must be ascending"),
                                                   ("half", "give numbers separated by commas")])
def test_bad_fractions_are_one_line_config_errors(project, fractions, says):
    result = _invoke(project, "--fractions", fractions)
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError)
    message = str(result.exception)
    assert says in message and "\n" not in message


def test_too_small_a_fraction_names_it_and_the_minimum(project):
    snapshot = load_snapshot(load_config(project))
    least = smallest_fraction(snapshot.train["label"].to_numpy(), snapshot.train["group"].to_numpy(), 3, 0)
    result = _invoke(project, "--fractions", "0.005,1.0")
    assert isinstance(result.exception, DataError)
    message = str(result.exception)
    assert "\n" not in message
    assert "fraction 0.005 gives class" in message and f"the smallest fraction is {least:g}" in message
    assert "folds.k=3" in message
    ok = _invoke(project, "--fractions", f"{least:g},1.0")  # the minimum it names does work
    assert ok.exit_code == 0, ok.output


def test_fractions_in_params_are_validated(tmp_path, demo_csv):
    params = write_params(tmp_path, demo_csv, evaluate={"plots": False, "learning_curve_fractions": [0.5, 1.2]})
    with pytest.raises(ConfigError, match=r"evaluate\.learning_curve_fractions: fraction 1\.2 is out of range"):
        load_config(params)
    cfg = load_config(write_params(tmp_path, demo_csv, evaluate={"learning_curve": True}))
    assert cfg.evaluate.learning_curve and cfg.evaluate.learning_curve_fractions == [0.1, 0.25, 0.5, 1.0]


def test_subsample_keeps_groups_whole_nested_and_stratified():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(300), rng.integers(1, 5, size=300))
    group_label = rng.choice(3, size=300, p=[0.6, 0.3, 0.1])
    labels = group_label[groups]
    previous = np.array([], dtype=int)
    for fraction in (0.1, 0.25, 0.5, 0.8, 1.0):
        rows = subsample(labels, groups, fraction, seed=0)
        taken = np.unique(groups[rows])
        assert np.array_equal(np.sort(rows), np.flatnonzero(np.isin(groups, taken)))  # whole groups only
        assert set(previous) <= set(rows)  # nested
        for c in range(3):  # each class's share is kept, up to one group
            want = fraction * (labels == c).sum()
            assert want <= (labels[rows] == c).sum() < want + 5
        previous = rows
    assert len(subsample(labels, groups, 1.0, seed=0)) == len(labels)
    assert np.array_equal(subsample(labels, groups, 0.3, seed=0), subsample(labels, groups, 0.3, seed=0))
    assert not np.array_equal(subsample(labels, groups, 0.3, seed=0), subsample(labels, groups, 0.3, seed=1))
