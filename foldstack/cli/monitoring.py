"""`foldstack feedback FILE` and `foldstack feedback merge`: true labels for logged predictions, and those labels
into the training data (loaded by foldstack.cli.main through `register(app)`).

One command with one argument rather than a group: a group's optional FILE argument would swallow the word
`merge`. A feedback file literally named `merge` is given as `./merge`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from foldstack.config import DEFAULT_PARAMS_FILE, load_config
from foldstack.errors import DataError

console = Console(stderr=True)
out = Console()

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="the params file (monitoring.log_dir, data.path)")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override a key: monitoring.log_dir=logs")]
MERGE = "merge"


def feedback(target: Annotated[str, typer.Argument(
                 metavar="FILE|merge",
                 help="a csv/tsv/parquet/jsonl file with request_id and label columns, or `merge`")],
             params: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None) -> None:
    """Record true labels for logged predictions (FILE), or append the labelled ones to the training data (merge).

    FILE: every row must name a request id the prediction log holds and a label of the model that predicted
    it; otherwise nothing is recorded and the error names the rows. `merge`: the labelled predictions (logged
    with monitoring.store_texts: true) become new rows of data.path, deduplicated, once the data gate passes on
    the merged file; in a DVC project the new version is `dvc add`ed.
    """
    cfg = load_config(params, set_ or [])
    if target == MERGE:
        _merge(cfg)
    else:
        _import(cfg, Path(target))


def _import(cfg, path: Path) -> None:
    from foldstack.ops.monitoring import import_feedback_file, read_prediction_log  # deferred: pandas, pyarrow

    log_dir = cfg.resolve_path(cfg.monitoring.log_dir)
    if not path.is_file():
        raise DataError(f"{path}: feedback file not found")
    predictions = read_prediction_log(log_dir)
    if predictions.empty:
        raise DataError(f"no prediction log at {log_dir / 'predictions'}: feedback needs logged predictions "
                        f"(serve-model or predict with monitoring.log_predictions: true)")
    rows, written = import_feedback_file(path, log_dir, predictions)
    out.print(f"recorded {rows} feedback label(s) from {path} in {written}", highlight=False, soft_wrap=True)


def _merge(cfg) -> None:
    from foldstack.ops.monitoring.merge import merge_feedback  # deferred: great_expectations, pandas

    result = merge_feedback(cfg)
    for line in result.describe():
        out.print(line, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("feedback")(feedback)
