"""`foldstack registry ...` and `foldstack serve-model`: the registry and serving commands.

Loaded by `foldstack.cli.main` through `register(app)`; kept apart so that the core CLI imports neither GTO, W&B
nor FastAPI. This module imports nothing from `foldstack.cli.main` (which imports this one while it loads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from foldstack.config import DEFAULT_PARAMS_FILE, load_config

out = Console()
err = Console(stderr=True)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="the params file")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override a key: registry.gate_tolerance=0.01")]

registry_app = typer.Typer(
    help="The model registry: versions and the production stage (GTO git tags), W&B registry links.",
    no_args_is_help=True)


StudentOpt = Annotated[bool, typer.Option("--student", help="the distilled student (<registry.model_name>-student) "
                                                          "instead of the ensemble")]


def _config(params: Path, overrides: list[str] | None, student: bool = False):
    """The params; with `student`, those of the student's registry model (its name and W&B collection)."""
    cfg = load_config(params, overrides or [])
    if not student:
        return cfg
    from foldstack.ops.registry import STUDENT, model_config  # deferred: gto

    return model_config(cfg, STUDENT)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _gate_table(gate: dict[str, Any]) -> Table:
    table = Table(title=f"promotion gate: {'PASS' if gate['passed'] else 'no promotion'} ({gate['outcome']})",
                  title_justify="left")
    table.add_column("model")
    table.add_column("version")
    table.add_column(f"{gate['metric']} ({'lower' if gate['lower_is_better'] else 'higher'} is better)",
                     justify="right")
    table.add_row("candidate", _fmt(gate["candidate_version"]), _fmt(gate["candidate_score"], 6))
    table.add_row("production", _fmt(gate["production_version"]), _fmt(gate["production_score"], 6))
    table.caption = gate["reason"] + "".join(f"\nnote: {n}" for n in gate.get("notes", []))
    return table


# How `registry list` marks a version whose stored bytes cannot be served (at most as wide as "production");
# a version that is not here but was pushed to a DVC remote is NOT PULLED (pulled on first use).
_BYTES_MARK = {"missing": "NO BYTES", "modified": "MODIFIED", "incomplete": "INCOMPLETE", "remote": "NOT PULLED"}


def _bytes_state(version: Any, problem: tuple[str, str] | None) -> tuple[str, str] | None:
    """A version missing here that was pushed to a DVC remote is `remote` (not pulled), not missing."""
    if problem and problem[0] == "missing" and (version.record.get("dvc") or {}).get("remote"):
        return "remote", problem[1]
    return problem


@registry_app.command("list")
def list_versions(params: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None,
                  student: StudentOpt = False) -> None:
    """Every registered version, newest first, with its stage and holdout metrics; a version whose stored bytes
    are missing or modified is marked (`registry check` verifies every file)."""
    from foldstack.ops.registry import PRODUCTION, GitModelRegistry  # deferred: gto

    cfg = _config(params, set_, student)
    registry = GitModelRegistry.from_config(cfg)
    production = registry.production()
    metric = cfg.registry.gate_metric
    versions = registry.versions()
    problems = {v.version: _bytes_state(v, registry.stored_problem(v)) for v in versions}
    table = Table(title=f"{registry.model_name} versions", title_justify="left")
    for column in ("version", "stage", "registered", "bundle", "data"):
        table.add_column(column, no_wrap=True)
    table.add_column(metric, justify="right", no_wrap=True)
    for version in versions:
        is_production = production is not None and production.version == version.version
        problem = problems[version.version]
        # A version that cannot be served says so where its stage is (a line of its own: the table stays narrow).
        stage = "\n".join(([PRODUCTION] if is_production else []) + ([_BYTES_MARK[problem[0]]] if problem else []))
        table.add_row(version.version, stage, version.created_at.strftime("%Y-%m-%d %H:%M"),
                      version.bundle_id or "-", str(version.record.get("data_hash") or "-")[:8],
                      _fmt(version.metric(metric)),
                      style="yellow" if problem and problem[0] == "remote" else "bold red" if problem else
                      "bold green" if is_production else None)
    if not table.rows:
        err.print(f"no version of {registry.model_name} is registered yet: `foldstack registry push` registers "
                  f"the current bundle")
        return
    out.print(table)
    not_pulled = [v for v, p in problems.items() if p and p[0] == "remote"]
    if not_pulled:
        out.print(f"[yellow]not pulled here: {', '.join(not_pulled)}[/yellow]: `foldstack registry pull VERSION` "
                  f"fetches one from the DVC remote (predict, serve-model, promote and rollback do so on demand)",
                  soft_wrap=True)
    for version, problem in problems.items():
        if problem and problem[0] != "remote":
            out.print(f"[red]{version}: bytes {problem[0]}[/red] ({escape(problem[1])}): it cannot be served; "
                      f"`foldstack registry check` lists every problem, `--repair` deregisters it", soft_wrap=True)


RefArg = Annotated[str, typer.Argument(help="a version (v0.2.0), 'production' or 'latest'")]


def _dvc_bytes(record: dict[str, Any]) -> str:
    dvc = record.get("dvc") or {}
    if not dvc.get("md5"):
        return "not versioned with DVC (registered by an older foldstack)"
    where = f"on the DVC remote {dvc['remote']!r}" if dvc.get("remote") else "not pushed (no DVC remote then)"
    return f"{dvc['md5']} ({dvc.get('nfiles')} files), {where}"


@registry_app.command("show")
def show_version(ref: RefArg = "production", params: ParamsOpt = Path(DEFAULT_PARAMS_FILE),
                 set_: SetOpt = None, student: StudentOpt = False) -> None:
    """One version's record (bundle digests, metrics, data hash) and the production stage's history."""
    from foldstack.ops.registry import PRODUCTION, GitModelRegistry  # deferred: gto

    cfg = _config(params, set_, student)
    registry = GitModelRegistry.from_config(cfg)
    version = registry.resolve(ref)
    production = registry.production()
    record = version.record
    table = Table(title=f"{registry.model_name} {version.version}", title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [("tag", version.tag), ("commit", version.commit),
            ("stage", PRODUCTION if production and production.version == version.version else "-"),
            ("registered", version.created_at.isoformat(timespec="seconds")), ("bundle id", record.get("bundle_id")),
            ("files sha256", record.get("content_digest")), ("data hash", record.get("data_hash")),
            ("fold hash", record.get("fold_hash")), ("labels", ", ".join(map(str, record.get("labels") or []))),
            ("base models", ", ".join(record.get("base_models") or [])), ("meta-learner", record.get("meta")),
            ("code commit", record.get("source_commit")), ("registered from", record.get("registered_from")),
            ("DVC bytes", _dvc_bytes(record))]
    rows += [(f"holdout {k.removeprefix('ensemble.').removeprefix('student.')}", _fmt(v, 6))
             for k, v in sorted(record.get("metrics", {}).items())]
    try:
        rows.append(("stored bundle", str(registry.bundle_path(version))))
    except Exception as exc:  # still show the record when the bytes are missing or modified
        rows.append(("stored bundle", f"[red]{exc}[/red]"))
    for field, value in rows:
        table.add_row(field, _fmt(value))
    out.print(table)
    events = registry.stage_events(PRODUCTION)
    if events:
        history = Table(title="production stage history", title_justify="left")
        for column in ("#", "action", "version", "when", "message"):
            history.add_column(column)
        for event in events:
            history.add_row(str(event.counter), event.action, event.version,
                            event.created_at.strftime("%Y-%m-%d %H:%M:%S"), event.message.splitlines()[0])
        out.print(history)


@registry_app.command("promote")
def promote(version: Annotated[str, typer.Argument(help="the version to put in production, e.g. v0.2.0")],
            reason: Annotated[str, typer.Option(help="why (kept in the git tag)")] = "promoted by hand",
            params: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None,
            student: StudentOpt = False) -> None:
    """Put VERSION in production (a person's decision: the gate is not consulted)."""
    from foldstack.ops.registry import ENSEMBLE, STUDENT, promote_version  # deferred: gto

    result = promote_version(_config(params, set_), version, reason=reason, role=STUDENT if student else ENSEMBLE)
    out.print(f"{result['model']} production: [bold]{result['version']}[/bold] "
              f"(was {result['previous_production'] or 'none'}); "
              f"W&B: {result['wandb']['status']}")


@registry_app.command("rollback")
def rollback(reason: Annotated[str, typer.Option(help="why (kept in the git tag)")] = "",
             params: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None,
             student: StudentOpt = False) -> None:
    """Put back the version production held before the current one."""
    from foldstack.ops.registry import ENSEMBLE, STUDENT, rollback_production  # deferred: gto

    result = rollback_production(_config(params, set_), reason=reason, role=STUDENT if student else ENSEMBLE)
    out.print(f"{result['model']} production rolled back: {result['from']} -> [bold]{result['to']}[/bold]; "
              f"W&B: {result['wandb']['status']}")


@registry_app.command("sync")
def sync(params: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None) -> None:
    """Upload offline W&B runs and perform the pending W&B registry links (needs a connection and a key)."""
    from foldstack.ops.registry import sync_pending  # deferred: gto

    processed = sync_pending(_config(params, set_))
    if not processed:
        out.print("no pending W&B registry links")
        return
    table = Table(title="W&B registry links", title_justify="left")
    for column in ("version", "aliases", "target", "status", "error"):
        table.add_column(column)
    for entry in processed:
        table.add_row(_fmt(entry.get("version")), ", ".join(entry["aliases"]), entry["target"], entry["status"],
                      _fmt(entry.get("last_error")), style="green" if entry["status"] == "linked" else "yellow")
    out.print(table)
    if any(e["status"] != "linked" for e in processed):
        raise typer.Exit(1)


@registry_app.command("check")
def check(repair: Annotated[bool, typer.Option("--repair", help="remove orphan and temporary directories; "
                                                                 "deregister versions whose bytes are bad")] = False,
          params: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None,
          student: StudentOpt = False) -> None:
    """Verify the registry: version tags whose bytes are missing or modified, store directories no tag names,
    leftovers of interrupted writes. Exit code 1 while a problem is left."""
    from foldstack.ops.registry import GitModelRegistry  # deferred: gto

    registry = GitModelRegistry.from_config(_config(params, set_, student))
    problems = registry.check(repair=repair)
    if not problems:
        versions = registry.versions()
        remote_only = [v.version for v in versions if registry.stored_problem(v) is not None]
        where = (f"; {len(remote_only)} of them only on the DVC remote ({', '.join(remote_only)}: "
                 f"`foldstack registry pull`)" if remote_only else "")
        out.print(f"no problems: {len(versions)} versions of {registry.model_name}, every one with verified bytes "
                  f"in {registry.store}{where}", soft_wrap=True)
        return
    table = Table(title=f"{registry.model_name} registry check ({registry.store})", title_justify="left")
    table.add_column("problem", no_wrap=True)
    table.add_column("name", no_wrap=True, overflow="fold")
    table.add_column("detail", overflow="fold")
    if repair:
        table.add_column("repair")
    for problem in problems:
        cells = [problem.kind, problem.name, problem.detail] + ([problem.repair] if repair else [])
        table.add_row(*cells, style="green" if problem.repaired else "red")
    out.print(table)
    left = [p for p in problems if not p.repaired]
    if left:
        hint = "they were left alone" if repair else "`foldstack registry check --repair` deals with them"
        err.print(f"{len(left)} problem{'s' if len(left) > 1 else ''} in the registry; {hint}")
        raise typer.Exit(1)
    out.print(f"repaired {len(problems)} problem{'s' if len(problems) > 1 else ''}")


@registry_app.command("pull")
def pull(ref: Annotated[str, typer.Argument(help="a version (v0.2.0), 'production' or 'latest'")] = "production",
         all_versions: Annotated[bool, typer.Option("--all", help="every registered version")] = False,
         remote: Annotated[str | None, typer.Option(help="the DVC remote (default: the project's default)")] = None,
         params: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None,
         student: StudentOpt = False) -> None:
    """Put a version's bundle into the local store from the DVC remote (or, with no remote configured, from the
    W&B model registry when online), verified against its registered manifest. Nothing to do when it is here."""
    from foldstack.bundle import verify_bundle  # deferred: pandas
    from foldstack.ops.registry import GitModelRegistry  # deferred: gto

    registry = GitModelRegistry.from_config(_config(params, set_, student))
    for version in registry.versions() if all_versions else [registry.resolve(ref)]:
        path, source = registry.pull(version, remote=remote)
        files = len(verify_bundle(path)["files"])
        where = f"pulled from {escape(source)}" if source else "already in the local store"
        out.print(f"{registry.model_name} [bold]{version.version}[/bold]: {where}; {files} files verified in "
                  f"{escape(str(path))}", soft_wrap=True)


@registry_app.command("upload")
def upload(ref: Annotated[str | None, typer.Argument(help="a version, 'production' or 'latest' (default: every "
                                                          "version)")] = None,
           remote: Annotated[str | None, typer.Option(help="the DVC remote (default: the project's default)")] = None,
           params: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None,
           student: StudentOpt = False) -> None:
    """Send stored versions' bytes to the DVC remote: those registered while no remote was configured (a push
    does this itself once a remote is). Exit code 1 if one could not be sent."""
    from foldstack.ops.registry import GitModelRegistry  # deferred: gto

    registry = GitModelRegistry.from_config(_config(params, set_, student))
    results = registry.upload(registry.versions() if ref is None else [registry.resolve(ref)], remote=remote)
    table = Table(title=f"{registry.model_name}: bytes to the DVC remote", title_justify="left")
    table.add_column("version", no_wrap=True)
    table.add_column("result", overflow="fold")
    for version, what, ok in results:
        table.add_row(version, what, style=None if ok else "red")
    out.print(table)
    if not all(ok for _, _, ok in results):
        raise typer.Exit(1)


@registry_app.command("push")
def push(bundle: Annotated[Path | None, typer.Option(help="the bundle (default: the pipeline's bundle); a student "
                                                          "bundle registers as <model_name>-student")] = None,
         log_pipeline: Annotated[bool, typer.Option(help="also log the run's metrics, tables and plots")] = True,
         student: Annotated[bool, typer.Option(help="after the pipeline's bundle, also the distilled student's "
                                                    "(with distill.enabled, once the distill stage wrote it)")] = True,
         params: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None) -> None:
    """Register the bundle as a new version, gate it against production (same holdout), promote on a pass; then
    the same for the distilled student, as a model of its own."""
    from foldstack.ops.registry import register_models  # deferred: gto

    for result in register_models(_config(params, set_), bundle, student=student, log_pipeline=log_pipeline):
        _print_registration(result)


def _print_registration(result: dict[str, Any]) -> None:
    if result["version"] and result["created"]:
        out.print(f"registered [bold]{result['model']} {result['version']}[/bold] ({result.get('tag')})")
    elif result["version"]:
        out.print(f"already registered as [bold]{result['model']} {result['version']}[/bold] "
                  f"({result.get('tag')}): the same bundle, so no new version", soft_wrap=True)
    stored = result.get("bytes")
    if stored and stored.get("remote"):
        out.print(f"bytes: DVC {stored['dvc_md5']} on the DVC remote {stored['remote']!r} (another clone: "
                  f"`foldstack registry pull`)", soft_wrap=True)
    elif stored:
        out.print("bytes: in the local store only (no DVC remote is configured)", soft_wrap=True)
    if result["gate"]:
        out.print(_gate_table(result["gate"]))
    out.print(f"{result['model']} production: [bold]{result['production_version'] or 'none'}[/bold]"
              f"{' (promoted)' if result['promoted'] else ''}; W&B tracking {result['tracking']['mode']}, registry "
              f"link {result['wandb_link']['status']}")


def serve_model(
    model: Annotated[str, typer.Option(help="'production', 'latest', a version, a bundle directory, or the distilled "
                                            "student: 'student' (its production version, else the pipeline's), "
                                            "'student@latest', 'student@v0.2.0'")] = "production",
    params: ParamsOpt = Path(DEFAULT_PARAMS_FILE),
    set_: SetOpt = None,
    host: Annotated[str, typer.Option(help="interface to bind; the service has no authentication")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    max_batch: Annotated[int, typer.Option(min=1, max=10_000, help="texts per request")] = 64,
    max_text_chars: Annotated[int, typer.Option(min=1, help="characters per text")] = 10_000,
    reload_seconds: Annotated[float, typer.Option(min=0, help="how often to check whether production moved "
                                                                "(0: never)")] = 10.0,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N")] = "cpu",
) -> None:
    """Serve a model over HTTP: POST /predict, POST /feedback, GET /health, GET /metrics (Prometheus)."""
    from foldstack.ops.serving import ModelSource, ServingLimits, serve  # deferred: fastapi

    is_bundle = (Path(model) / "manifest.json").is_file()
    cfg = None if is_bundle and not params.is_file() else _config(params, set_)
    source = ModelSource(model, cfg)
    err.print(f"serving {model} on http://{host}:{port} (POST /predict, POST /feedback, GET /health, GET /metrics)")
    serve(source, host=host, port=port, limits=ServingLimits(max_batch, max_text_chars),
          reload_seconds=reload_seconds or None, device=device)


def register(app: typer.Typer) -> None:
    app.add_typer(registry_app, name="registry")
    app.command("serve-model")(serve_model)
