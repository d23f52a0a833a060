"""CLI commands of evaluation beyond the evaluate stage: the learning curve (loaded by foldstack.cli.main
through `register(app)`)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from foldstack.config import DEFAULT_PARAMS_FILE, load_config
from foldstack.errors import ConfigError

console = Console(stderr=True)
out = Console()

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="the params file")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override a key: folds.k=3 (repeatable)")]
FractionsOpt = Annotated[str | None, typer.Option(
    "--fractions", help="training-row fractions, comma-separated, ascending, each in (0, 1]: 0.1,0.25,0.5,1.0 "
                        "(default: evaluate.learning_curve_fractions)")]


def parse_fractions(text: str | None) -> list[float] | None:
    """`0.1,0.25,1` as floats (their range and order are checked with the config's rule)."""
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--fractions {text!r}: give numbers separated by commas, e.g. 0.1,0.25,0.5,1.0") from None


def _log_point(event: str, info: dict[str, Any]) -> None:
    if event == "learning_curve_point":
        source = "reused the pipeline's artifacts" if info["reused"] else f"{info['seconds']:.1f}s"
        # One line however narrow the terminal: the time, the rows, the ensemble's holdout scores.
        console.print(f"{datetime.now():%H:%M:%S} fraction {info['fraction']:g}: {info['rows']} training rows, "
                      f"ensemble log loss {info['ensemble_log_loss']:.4f}, accuracy {info['ensemble_accuracy']:.4f} "
                      f"({source})", highlight=False, soft_wrap=True)


def curve_table(rows: list[dict[str, Any]], best: str) -> Table:
    table = Table(title=f"learning curve on the holdout (ensemble and best base model {best})", title_justify="left")
    for column in ("fraction", "rows", "model", "accuracy", "log_loss"):
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=True)
    for row in rows:
        if row["model"] in ("ensemble", best):
            table.add_row(f"{row['fraction']:g}", str(row["rows"]), row["model"], f"{row['accuracy']:.4f}",
                          f"{row['log_loss']:.4f}", style="bold green" if row["role"] == "ensemble" else None)
    return table


def learning_curve(params: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None,
                   fractions: FractionsOpt = None) -> None:
    """Refit the base models and the ensemble on fractions of the training rows (whole overlap groups, each
    class's share kept) and score each on the same holdout: is more data worth getting?

    Fraction 1.0 reuses the pipeline's artifacts when they are current. Needs the validate stage's snapshot.
    Writes <artifacts>/eval/learning_curve/: learning_curve.csv, .json and .png.
    """
    from foldstack.pipeline.learning_curve import learning_curve_dir, write_learning_curve  # deferred: pandas

    cfg = load_config(params, set_ or [])
    summary = write_learning_curve(cfg, parse_fractions(fractions), report=_log_point)
    out.print(curve_table(summary["rows"], summary["best_base"]))
    out.print(f"learning curve: [bold]{learning_curve_dir(cfg)}[/bold] (learning_curve.csv, .json, .png)",
              soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("learning-curve")(learning_curve)
