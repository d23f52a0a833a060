"""CLI commands of the data gate and DVC versioning (loaded by foldstack.cli.main through `register(app)`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from foldstack.config import DEFAULT_PARAMS_FILE, load_config
from foldstack.ops.versioning import data_change, pipeline_stages, plan_reruns, record_run

console = Console(stderr=True)
out = Console()

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="the params file")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override a key: validation.min_rows=50")]


def validate_data(params: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None) -> None:
    """Run the Great Expectations data gate alone: reports/validation.{json,md} and Data Docs, no artifacts.

    Exits non-zero when an error-level rule breaks; warnings are printed and do not fail.
    """
    from foldstack.pipeline.validation import run_gate  # deferred: great_expectations, pandas

    _, report = run_gate(load_config(params, set_ or []))  # a broken rule raises DataError -> exit 2
    out.print(report.summary(), highlight=False)


def dvc_status(params: ParamsOpt = Path(DEFAULT_PARAMS_FILE),
               as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Which DVC stages are stale (DVC's own reasons) and so would rerun, and which are skipped."""
    plan = plan_reruns(load_config(params).resolve_path("."))
    if as_json:
        out.print_json(json.dumps(plan.to_json()))
    else:
        for line in plan.describe():
            out.print(line, highlight=False, soft_wrap=True)


def data_changed(params: ParamsOpt = Path(DEFAULT_PARAMS_FILE),
                 exit_code: Annotated[bool, typer.Option("--exit-code",
                                                         help="exit 1 when the data is unchanged")] = False) -> None:
    """Has the data file changed since the run recorded in dvc.lock (its md5 against the validate stage's)?"""
    change = data_change(load_config(params))
    out.print_json(json.dumps({"path": change.path, "changed": change.changed, "locked_md5": change.locked_md5,
                               "current_md5": change.current_md5}))
    console.print(change.describe(), highlight=False, soft_wrap=True)
    if exit_code and not change.changed:
        raise typer.Exit(1)


def dvc_record(params: ParamsOpt = Path(DEFAULT_PARAMS_FILE),
               stage: Annotated[list[str] | None, typer.Option(
                   "--stage", help="a stage to commit (repeatable; default: every stage)")] = None,
               push: Annotated[bool, typer.Option(help="push to the DVC remote after committing")] = True,
               remote: Annotated[str | None, typer.Option(help="the DVC remote (default: the project's)")] = None,
               ) -> None:
    """Version outputs computed outside `dvc repro`: `dvc commit` the stages, then `dvc push`."""
    root = load_config(params).resolve_path(".")
    record = record_run(root, stage or pipeline_stages(root), push_to_remote=push, remote=remote)
    out.print_json(json.dumps({"committed": record.committed, "pushed_files": record.pushed_files,
                               "remote": record.remote}))


def register(app: typer.Typer) -> None:
    app.command("validate-data")(validate_data)
    app.command("dvc-status")(dvc_status)
    app.command("data-changed")(data_changed)
    app.command("dvc-record")(dvc_record)
