"""The `foldstack` command line: the whole pipeline in-process, each stage alone, prediction, demo data.

Orchestration, registry and serving commands live in their own modules (listed in `_EXTENSIONS`), each
exposing `register(app)`, so that this module imports neither Prefect nor W&B nor DVC.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.logging import RichHandler
from rich.table import Table

from flows.train import leaderboard_table, run_summary

from foldstack.cli.progress import LOG_DIR, ProgressReporter, progress_display, run_log
from foldstack.cli.registry import push
from foldstack.common.version import __version__
from foldstack.config import DEFAULT_PARAMS_FILE, Config, load_config
from foldstack.errors import ConfigError, FoldstackError
from foldstack.models import available_kinds, model_class
from foldstack.ops.doctor import diagnose
from foldstack.pipeline.runlock import run_lock
from foldstack.runtime.process_exit import skip_final_garbage_collection

app = typer.Typer(
    name="foldstack",
    help="Leak-free K-fold stacked ensembles of text classifiers: train, evaluate, bundle, predict.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
stage_app = typer.Typer(help="Run one pipeline stage alone (what dvc.yaml and the Prefect tasks call).",
                        no_args_is_help=True)
app.add_typer(stage_app, name="stage")
console = Console(stderr=True, log_path=False)  # no source-file link on each line
out = Console()

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="the params file")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override a key: meta.kind=vote (repeatable)")]
WaitOpt = Annotated[bool, typer.Option("--wait/--no-wait", help="when another run is writing the same artifacts "
                                                                "directory: wait for it, or fail at once")]


def _show_version(value: bool) -> None:
    if value:
        out.print(f"foldstack {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                                help="print foldstack's version and exit")] = False) -> None:
    """Leak-free K-fold stacked ensembles of text classifiers: train, evaluate, bundle, predict."""


def _config(params: Path, overrides: list[str] | None):
    return load_config(params, overrides or [])


def _print_json(obj: Any) -> None:
    out.print_json(json.dumps(obj, default=str))


@app.command()
def train(params: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None,
          track: Annotated[bool, typer.Option(help="log the run to W&B (tracking.mode; offline without a key)")]
          = True, wait: WaitOpt = True,
          verbose: Annotated[bool, typer.Option("--verbose", "-v", help="also show each fold training and the "
                                                "pipeline's INFO log (always in .foldstack/logs/)")] = False) -> None:
    """Run the whole pipeline in this process: validate, folds, base models, stack, evaluate, bundle."""
    from foldstack.pipeline.stages import run_pipeline  # deferred: pandas

    cfg = _config(params, set_)
    log_file = run_log(verbose)
    tracked = None
    with run_lock(cfg, "foldstack train", wait=wait), progress_display(console) as progress:
        reporter = ProgressReporter(progress)
        result = run_pipeline(cfg, reporter)
        reporter.finish("bundle", f"{result.bundle}")
        if track:
            from foldstack.ops.tracking import track_pipeline_run  # deferred: pandas

            progress.update(reporter.stage_task, description="log to W&B")
            where = track_pipeline_run(cfg)
            if where["mode"] != "disabled":
                tracked = f"{where['mode']}: {where.get('run_dir') or where.get('run_path')}"
                reporter.line("track", f"W&B run {tracked}")
    summary = run_summary(cfg, bundle=result.bundle, trained=result.trained, reused=result.skipped,
                          leaderboard=result.leaderboard, tracking=tracked,
                          registry="not registered by `foldstack train` (see next steps)")
    if log_file is not None:
        summary.next_steps.append(f"less {log_file}   # this run's full log")
    summary.print(out)


@app.command()
def predict(
    paths: Annotated[list[Path], typer.Argument(metavar="[BUNDLE] INPUT",
                                                help="a bundle directory (unless --model) and the input file")],
    output: Annotated[Path, typer.Option("--output", "-o", help="where to write predictions (csv/tsv/parquet/jsonl)")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="a registry reference instead of BUNDLE: "
                                              "production, latest, a version such as v0.2.0, or the distilled "
                                              "student: student, student@latest, student@v0.2.0")] = None,
    params: ParamsOpt = Path(DEFAULT_PARAMS_FILE),
    text_column: Annotated[str, typer.Option(help="the text column of INPUT")] = "text",
    batch_size: Annotated[int, typer.Option(min=1)] = 1024,
) -> None:
    """Predict labels and class probabilities for a file of texts (with a bundle, or the registry's production model)."""
    from foldstack.ops.predict import predict_file  # deferred: pandas

    if model is not None:
        if len(paths) != 1:
            raise ConfigError("with --model give only INPUT: foldstack predict --model production INPUT -o OUTPUT")
        from foldstack.ops.registry import resolve_model  # deferred: pandas

        bundle, input_path = resolve_model(model, params=params), paths[0]
    else:
        if len(paths) != 2:
            raise ConfigError("give BUNDLE and INPUT (foldstack predict BUNDLE INPUT -o OUTPUT), "
                              "or --model production INPUT")
        bundle, input_path = paths
    cfg = load_config(params) if params.is_file() else None  # its monitoring section: log the predictions
    n = predict_file(bundle, input_path, output, text_column=text_column, batch_size=batch_size,
                     monitoring=cfg.monitoring if cfg is not None else None,
                     monitoring_root=cfg.resolve_path(".") if cfg is not None else None)
    console.log(f"wrote {n} predictions to {output} (model {bundle})")


@app.command()
def evaluate(params: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None) -> None:
    """(Re)compute holdout metrics, leaderboard and plots from the stage outputs."""
    from foldstack.pipeline.stages import evaluate as evaluate_stage  # deferred: pandas

    result = evaluate_stage(_config(params, set_))
    out.print(leaderboard_table(result["leaderboard"]))


@app.command("demo-data")
def demo_data(
    out_path: Annotated[Path, typer.Option("--out", help="where to write the CSV")] = Path("data/demo/reviews.csv"),
    rows: Annotated[int, typer.Option(min=50, help="number of rows")] = 3000,
    classes: Annotated[int, typer.Option(min=2, max=3, help="2 (negative/positive) or 3 (+ neutral)")] = 3,
    noise: Annotated[float, typer.Option(min=0.0, max=0.5, help="share of flipped labels")] = 0.05,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write a synthetic product-review dataset (the project's own demo data)."""
    from foldstack.core.demo import write_demo_data  # deferred: pandas

    summary = write_demo_data(out_path, rows=rows, n_classes=classes, noise=noise, seed=seed)
    console.log(f"wrote {summary['rows']} rows to {out_path}: {summary['class_counts']}")


@app.command("validate-params")
def validate_params(params: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None) -> None:
    """Check params.yaml and print the resolved configuration."""
    _print_json(_config(params, set_).model_dump(mode="json"))


@app.command("models")
def list_models() -> None:
    """List the registered base-model kinds and their params."""
    table = Table("kind", "params (defaults)", title="base-model kinds", title_justify="left")
    for kind in available_kinds():
        cls = model_class(kind)
        table.add_row(kind, ", ".join(f"{k}={v}" for k, v in cls.Params().model_dump().items()))
    out.print(table)


@app.command()
def doctor(params: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None,
           as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """What a run here would use: torch build, CUDA, cuDNN, devices, GPU and CPU slots, pretrained packages."""
    report = diagnose(_config(params, set_), params=str(params))
    if as_json:
        _print_json(report.as_dict())
        return
    for line in report.lines():
        out.print(line, highlight=False, markup=False, soft_wrap=True)


# ------------------------------------------------------------------------------------------- stages
# Each stage holds the project's run lock until its process exits (the kernel drops it then), so `dvc repro`
# and a `foldstack train` or flow never write one artifacts directory at once. `stage train-fold` takes none:
# one fold writes only its own directory, atomically, as the flow's workers do under the flow's lock.
_HELD_LOCKS = contextlib.ExitStack()


def _stage_config(params: Path, set_: list[str] | None, stage: str) -> Config:
    cfg = _config(params, set_)
    _HELD_LOCKS.enter_context(run_lock(cfg, f"foldstack stage {stage}"))
    return cfg


@stage_app.command("validate")
def stage_validate(params: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None) -> None:
    """Read and check the data; write the snapshot (train/holdout split, label map, hash)."""
    from foldstack.pipeline.stages import validate  # deferred: pandas

    _print_json(validate(_stage_config(params, set_, "validate")))


@stage_app.command("folds")
def stage_folds(params: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None) -> None:
    """Write the one fold assignment every base model uses."""
    from foldstack.pipeline.stages import make_folds  # deferred: pandas

    _print_json(make_folds(_stage_config(params, set_, "folds")))


@stage_app.command("train-base")
def stage_train_base(name: Annotated[str, typer.Argument(help="a base model's name in params")],
                     params: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None,
                     device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N")] = None) -> None:
    """Train every fold of one base model (finished folds with the same identity are skipped), collect OOF."""
    from foldstack.pipeline.stages import train_base  # deferred: pandas

    cfg = _stage_config(params, set_, f"train-base {name}")
    cfg.base_model(name)
    with progress_display(console) as progress:
        reporter = ProgressReporter(progress, first_stage=f"train {name}")
        reporter("plan", {"pending": cfg.folds.k * cfg.folds.repeats, "skipped": 0, "total": 0})
        summary = train_base(cfg, name, device=device, report=reporter)
    _print_json(summary)


@stage_app.command("train-fold")
def stage_train_fold(name: str, repeat: int, fold: int, params: ParamsOpt = Path(DEFAULT_PARAMS_FILE),
                     set_: SetOpt = None, device: str | None = None) -> None:
    """Train one (model, repeat, fold) task."""
    from foldstack.pipeline.stages import train_fold  # deferred: pandas

    _print_json(train_fold(_config(params, set_), name, repeat, fold, device))


@stage_app.command("stack")
def stage_stack(params: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None) -> None:
    """Fit the meta-learner on the OOF predictions (and estimate it by CV on the OOF)."""
    from foldstack.pipeline.stages import stack  # deferred: pandas

    _print_json(stack(_stage_config(params, set_, "stack")))


@stage_app.command("distill")
def stage_distill(params: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None) -> None:
    """Train the distilled student on the ensemble's honest soft targets (distill.enabled; else a no-op box)."""
    from foldstack.pipeline.stages import distill  # deferred: pandas

    _print_json(distill(_stage_config(params, set_, "distill")))


@stage_app.command("evaluate")
def stage_evaluate(params: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None) -> None:
    """Holdout metrics for every base model, baseline and the ensemble; leaderboard and plots."""
    from foldstack.pipeline.stages import evaluate as evaluate_stage  # deferred: pandas

    out.print(leaderboard_table(evaluate_stage(_stage_config(params, set_, "evaluate"))["leaderboard"]))


@stage_app.command("bundle")
def stage_bundle(params: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None) -> None:
    """Assemble the self-describing, hashed model bundle."""
    from foldstack.pipeline.stages import make_bundle  # deferred: pandas

    _print_json(make_bundle(_stage_config(params, set_, "bundle")))


@stage_app.command("register")
def stage_register(params: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None) -> None:
    """Write the bundle, then register it, gate it against production and promote it on a pass (DVC's
    register stage: `stage bundle` followed by `registry push`, in one process)."""
    from foldstack.pipeline.stages import make_bundle  # deferred: pandas

    bundle = make_bundle(_stage_config(params, set_, "register"))["bundle"]
    out.print(f"bundle: {bundle}")
    push(bundle=Path(bundle), params=params, set_=set_)


# Command groups that live beside their edge (Prefect, registry, validation); each has register(app).
_EXTENSIONS = ("foldstack.cli.prefect", "foldstack.cli.registry", "foldstack.cli.data", "foldstack.cli.evaluation",
               "foldstack.cli.monitor", "foldstack.cli.monitoring")


def _register_extensions() -> None:
    for name in _EXTENSIONS:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(app)


_register_extensions()


TRACEBACK_LOG_DIR = LOG_DIR


def write_traceback_log(exc: BaseException) -> Path | None:
    """Write `exc`'s traceback, with the command line, to a new file under .foldstack/logs/ in the working
    directory (the system's temporary directory if that cannot be written); return its path, or None if
    neither can be written."""
    import tempfile
    import traceback
    from datetime import datetime

    name = f"foldstack-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"
    text = (f"command: {' '.join(sys.argv)}\nfoldstack {__version__}, python {sys.version.split()[0]}\n\n"
            + "".join(traceback.format_exception(exc)))
    for directory in (Path.cwd() / TRACEBACK_LOG_DIR, Path(tempfile.gettempdir()) / "foldstack-logs"):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / name).write_text(text, encoding="utf-8")
            return directory / name
        except OSError:
            continue
    return None


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    summary = type(exc).__name__ + (f": {lines[0]}" if lines else "")
    return summary + (" …" if len(lines) > 1 else "")


def main() -> None:
    skip_final_garbage_collection()
    # Warnings on the terminal, without a source-file link each; `train` adds its log file (and --verbose).
    # Captured output (CI, a pipe, a file) gets plain one-line records: rich would wrap a long path at 80 columns.
    handler: logging.Handler = (RichHandler(console=console, show_path=False, show_time=False, markup=False,
                                            rich_tracebacks=False) if console.is_terminal else logging.StreamHandler())
    if not console.is_terminal:
        handler.setFormatter(logging.Formatter("%(levelname)-8s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", handlers=[handler])
    try:
        app()
    except FoldstackError as exc:
        # The message may quote user data: escape it so a "[word]" in a text is shown, not read as markup.
        console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except Exception as exc:
        # A bug, not the user's mistake (typer has already handled its own usage errors): one line here,
        # the traceback in a file to attach to a report.
        log_path = write_traceback_log(exc)
        where = f"the traceback is in {log_path}" if log_path else "no log could be written; the traceback follows"
        console.print(f"[bold red]internal error:[/bold red] {escape(_one_line(exc))}; {escape(where)}",
                      highlight=False, soft_wrap=True)
        if log_path is None:
            console.print_exception()
        sys.exit(1)


if __name__ == "__main__":
    main()
