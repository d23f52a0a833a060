"""`foldstack monitor`: check the newest window of the prediction log against the training snapshot (loaded by
foldstack.cli.main through `register(app)`).

Exit codes: 0 no drift (including "insufficient data"), 3 drift detected (so a cron job or CI step can act on
it), 2 a user's mistake (no prediction log, no trained artifacts, a bad option), 1 a bug.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from foldstack.config import DEFAULT_PARAMS_FILE, load_config

DRIFT_EXIT_CODE = 3

console = Console(stderr=True)
out = Console()

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="the params file")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override a key: monitoring.min_requests=50 "
                                                                      "(repeatable)")]
WindowOpt = Annotated[int | None, typer.Option("--window", "-w", min=1, help="check the newest N logged predictions "
                                                                             "(default monitoring.window_requests)")]
LogDirOpt = Annotated[Path | None, typer.Option("--log-dir", help="the prediction log (default monitoring.log_dir)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print monitoring.json instead of the table")]
_STYLE = {"drift": "bold red", "ok": "green", "insufficient_data": "yellow"}


def verdict_table(result: dict[str, Any]) -> Table:
    window = result.get("window") or {}
    title = (f"monitor: {result['n_requests']} requests ({window.get('first') or '–'} to "
             f"{window.get('last') or '–'}), {result['n_feedback']} labelled, model version "
             f"{result.get('model_version') or '–'}")
    table = Table(title=title, title_justify="left")
    for column in ("check", "statistic", "threshold", "verdict"):
        table.add_column(column, justify="right" if column in ("statistic", "threshold") else "left", no_wrap=True)
    for check in result["checks"]:
        statistic = "–" if check["statistic"] is None else f"{check['statistic']:.4f}"
        table.add_row(check["name"], statistic, f"{check['threshold']:g}", check["verdict"].replace("_", " "),
                      style=_STYLE.get(check["verdict"]))
    return table


def monitor(params: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None, window: WindowOpt = None,
            log_dir: LogDirOpt = None, as_json: JsonOpt = False) -> None:
    """Check the newest window of the prediction log against the training snapshot: text length, out-of-vocabulary
    rate and embedding drift (input), predicted-class and confidence shifts (prediction), live accuracy where
    feedback labels exist (quality).

    Writes <reports_dir>/monitoring.json, monitoring.md and plots under <reports_dir>/monitoring/.
    Exit code 0: no drift; 3: drift detected; 2: no prediction log or no trained artifacts.
    """
    from foldstack.ops.monitoring.monitor import run_monitor  # deferred: pandas

    cfg = load_config(params, set_ or [])
    result = run_monitor(cfg, window=window, log_dir=log_dir)
    if as_json:
        out.print_json(json.dumps(result))
    else:
        out.print(verdict_table(result))
        for check in result["checks"]:
            if check["verdict"] != "ok":
                out.print(f"  {check['name']}: {escape(check['detail'])}", highlight=False, soft_wrap=True)
        reports = cfg.resolve_path(cfg.monitoring.reports_dir)
        verdict = "[bold red]drift detected[/bold red]" if result["drift_detected"] else "no drift"
        out.print(f"{verdict}; report: [bold]{escape(str(reports / 'monitoring.md'))}[/bold]", soft_wrap=True)
    if result["drift_detected"]:
        raise typer.Exit(DRIFT_EXIT_CODE)


def register(app: typer.Typer) -> None:
    app.command("monitor")(monitor)
