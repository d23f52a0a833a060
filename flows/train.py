"""`python -m flows.train [--params params.yaml] [--set key.path=value ...]`: one run of the `train-ensemble`
flow (flows/train_ensemble.py), ending with the run's summary.

The summary (`RunSummary`, also what `foldstack train` ends with): the holdout leaderboard as a table, the
bundle, the registry's decision, the HTML report, the flow run in the Prefect UI (when a server with a UI is
configured) and the commands to try next. The flow's return value is printed as JSON on stdout instead with
`--json`, and by default when stdout is not a terminal (a script or a test reading the result); the summary
then goes to stderr.

With no Prefect server configured, `main` starts Prefect's embedded server first and only then imports the
flow (Prefect, the stages, the models), so that the server's start-up overlaps those imports instead of
following them (flows/embedded_server.py); it waits for the server before the run. This module itself stays
light for that reason: what it imports at its top does not import Prefect.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
import time
from datetime import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from flows.embedded_server import EmbeddedServer
from foldstack.config import DEFAULT_PARAMS_FILE, Config, load_config
from foldstack.errors import FoldstackError
from foldstack.runtime.process_exit import skip_final_garbage_collection

DESCRIPTION = ("Train the stacked ensemble of params.yaml (overrides: `key.path=value`) as a Prefect flow run; "
               "ends with the leaderboard, the bundle and what to do next.")
LEADERBOARD_COLUMNS = ("model", "role", "accuracy", "macro_f1", "log_loss", "roc_auc", "ece")
REPORT_HTML = Path("eval") / "report.html"  # under runtime.artifacts_dir, when the evaluate stage wrote it
RUN_LOG_DIR = Path(".foldstack") / "logs"  # in the working directory (git-ignored): run logs and tracebacks
FOLD_TASK = "train-fold"  # the fold tasks' name (tasks/fold.py): their INFO lines stay off the terminal


# ------------------------------------------------------------------------------------------ the log
class _FoldDetails(logging.Filter):
    """Keeps each fold task's INFO lines (fitting, trained, its final state) off the terminal: the flow logs
    one line per base model instead; the task's own lines stay in the Prefect UI and the run's log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or getattr(record, "task_name", None) != FOLD_TASK


def route_flow_log(verbose: bool) -> Path | None:
    """After Prefect set up its logging: fold-task details off its console unless `verbose`, and every INFO
    line into .foldstack/logs/flow-<time>.log; returns that file (None if it cannot be written)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if type(handler).__name__ == "PrefectConsoleHandler" and not verbose:
            handler.addFilter(_FoldDetails())
    path = Path.cwd() / RUN_LOG_DIR / f"flow-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        return None
    file_handler.setFormatter(_RunFormatter("%(asctime)s %(levelname)s %(run)s: %(message)s"))
    root.addHandler(file_handler)
    return path


class _RunFormatter(logging.Formatter):
    """Names the task or flow run a line comes from (Prefect's records carry it), else the logger."""

    def format(self, record: logging.LogRecord) -> str:
        record.run = getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", None) or record.name
        return super().format(record)


# ------------------------------------------------------------------------------------------ the summary
def leaderboard_table(rows: list[dict[str, Any]], title: str = "holdout leaderboard") -> Table:
    """The leaderboard as a rich table, narrow enough for an 80-column terminal; the ensemble's row in green."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  padding=(0, 1, 0, 0))
    columns = [c for c in LEADERBOARD_COLUMNS if rows and c in rows[0]]
    for col in columns:
        table.add_column(col, justify="left" if col in ("model", "role") else "right", no_wrap=True)
    for row in rows:
        table.add_row(*[f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in columns],
                      style="bold green" if row.get("role") == "ensemble" else None)
    return table


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def read_leaderboard(cfg: Config) -> list[dict[str, Any]]:
    """The evaluate stage's eval/leaderboard.csv as rows (numbers as floats); [] before a first evaluate."""
    path = cfg.resolve_path(cfg.runtime.artifacts_dir) / "eval" / "leaderboard.csv"
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def registry_line(cfg: Config, since: float | None) -> str:
    """The registry's decision on this run's bundle, from artifacts/registry/decision.json (the register task
    writes it); `since`: when the run started (an older file is an earlier run's, e.g. when DVC skipped)."""
    path = cfg.resolve_path(cfg.runtime.artifacts_dir) / "registry" / "decision.json"
    if not path.is_file():
        return "not registered"
    decision = json.loads(path.read_text(encoding="utf-8"))
    gate = decision.get("gate") or {}
    line = (f"{decision.get('model')} {decision.get('version') or '-'}: "
            + ("promoted to production" if decision.get("promoted")
               else f"not promoted (production stays {decision.get('production_version') or '-'})")
            + (f"; {gate['reason']}" if gate.get("reason") else ""))
    if since is not None and path.stat().st_mtime < since:
        line += " (an earlier run's decision: this run registered nothing new)"
    return line


@dataclass
class RunSummary:
    """What a person needs at the end of a training run, printed by `print` as a short block."""

    leaderboard: list[dict[str, Any]]
    bundle: str
    trained: int
    reused: int
    registry: str
    report_html: Path | None = None
    run_url: str | None = None
    tracking: str | None = None
    next_steps: list[str] = field(default_factory=list)

    def print(self, console: Console) -> None:
        if self.leaderboard:
            console.print(leaderboard_table(self.leaderboard))
        console.print(f"[bold]bundle[/bold]     {self.bundle}  ({self.trained} fold models trained, "
                      f"{self.reused} reused)", soft_wrap=True, highlight=False)
        console.print(f"[bold]registry[/bold]   {self.registry}", soft_wrap=True, highlight=False)
        for label, value in (("report", self.report_html), ("prefect", self.run_url), ("w&b", self.tracking)):
            if value:
                console.print(f"[bold]{label:<10}[/bold] {value}", soft_wrap=True, highlight=False)
        if self.next_steps:
            console.print("[bold]next steps[/bold]", highlight=False)
            for step in self.next_steps:
                console.print(f"  {step}", soft_wrap=True, highlight=False, markup=False)


def run_summary(cfg: Config, *, bundle: str | Path, trained: int, reused: int, registry: str,
                leaderboard: list[dict[str, Any]] | None = None, run_url: str | None = None,
                tracking: str | None = None, flow: bool = False) -> RunSummary:
    """The summary of a finished run of `cfg` (`flow`: a `python -m flows.train` run, else `foldstack train`)."""
    report = cfg.resolve_path(cfg.runtime.artifacts_dir) / REPORT_HTML
    bundle = str(bundle)
    steps = [f"foldstack predict {bundle} INPUT.csv -o predictions.csv   # label a file of texts"]
    if flow:
        steps += ["foldstack registry list                 # the registered versions and production",
                  "foldstack serve-model --model production  # an HTTP endpoint for the production model"]
        if run_url is None:
            steps.append("foldstack server   # then export PREFECT_API_URL=http://127.0.0.1:4200/api: runs show "
                         "in its UI")
    else:
        steps += ["foldstack registry push   # register this bundle; the gate decides on production",
                  "python -m flows.train     # the same run as a Prefect flow (registers it too)"]
    if report.is_file():
        steps.append(f"open {report}   # the HTML report")
    return RunSummary(leaderboard=read_leaderboard(cfg) if leaderboard is None else leaderboard, bundle=bundle,
                      trained=trained, reused=reused, registry=registry,
                      report_html=report if report.is_file() else None, run_url=run_url, tracking=tracking,
                      next_steps=steps)


def flow_run_url(flow_run_id: Any) -> str | None:
    """The flow run's page in the Prefect UI, when the configured server has one (the embedded one has none)."""
    from prefect.settings import get_current_settings  # deferred: prefect

    ui_url = (get_current_settings().ui_url or "").rstrip("/")
    return f"{ui_url}/runs/flow-run/{flow_run_id}" if ui_url and flow_run_id else None


# ------------------------------------------------------------------------------------------ the command
cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@cli.command(help=DESCRIPTION)
def train(
    params: Annotated[Path, typer.Option("--params", "-p", help="the params file")] = Path(DEFAULT_PARAMS_FILE),
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY.PATH=VALUE",
                                                   help="override a key: meta.kind=vote (repeatable)")] = None,
    as_json: Annotated[bool | None, typer.Option("--json/--no-json", help="print the flow's result as JSON on "
                                                 "stdout (the summary on stderr) \\[default: when stdout is not "
                                                 "a terminal]")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="also show each fold task's lines (always in "
                                          "the Prefect UI and .foldstack/logs/)")] = False,
) -> None:
    # --help exits before this body: before any server starts.
    as_json = not sys.stdout.isatty() if as_json is None else as_json
    # Before Prefect is imported: it reads PREFECT_API_URL, which points at this server, once, at import.
    server = EmbeddedServer.start_if_unconfigured()
    from flows.train_ensemble import train_ensemble  # deferred: prefect (imported while the server starts)

    skip_final_garbage_collection()
    log_file = route_flow_log(verbose)
    started = time.time()
    try:
        cfg = load_config(params, set_ or [])
        if server is not None:
            server.wait_until_ready()
        state = train_ensemble(params=str(params), overrides=set_ or [], return_state=True)
        result = state.result()
    except FoldstackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    summary = run_summary(cfg, bundle=result["bundle"], trained=result["trained"], reused=result["reused"],
                          registry=registry_line(cfg, started), flow=True,
                          run_url=flow_run_url(state.state_details.flow_run_id))
    if log_file is not None:
        summary.next_steps.append(f"less {log_file}   # this run's full log")
    summary.print(Console(stderr=as_json))
    if as_json:
        print(json.dumps(result, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    try:
        cli(args=argv, prog_name="python -m flows.train", standalone_mode=True)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
