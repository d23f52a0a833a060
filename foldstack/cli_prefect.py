"""The Prefect commands of the `foldstack` CLI: `server` (a local Prefect server with its UI) and `serve` (the
`retrain` and `watch-data` deployments, served from this process).

Loaded by `foldstack.cli` through `register(app)`. Prefect is imported inside the commands only, so that the
rest of the CLI starts without it, and after `flows` has settled PREFECT_HOME (Prefect reads it at import).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from foldstack.config import DEFAULT_PARAMS_FILE
from foldstack.errors import FoldstackError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200


def _local_api_url(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    return f"http://{host}:{port}/api"


def _check_server(api_url: str) -> None:
    import httpx

    try:
        healthy = httpx.get(f"{api_url.rstrip('/')}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        healthy = False
    if not healthy:
        raise FoldstackError(f"no Prefect server answers at {api_url}: start one with `foldstack server` "
                             f"(or point PREFECT_API_URL / --api-url at yours)")


def server(
    host: Annotated[str, typer.Option(help="address to listen on (keep 127.0.0.1 unless you mean to expose it)")]
    = DEFAULT_HOST,
    port: Annotated[int, typer.Option(min=1, max=65535)] = DEFAULT_PORT,
) -> None:
    """Start a local Prefect server with its UI (state in ./.prefect); Ctrl-C stops it."""
    import flows  # noqa: F401  (PREFECT_HOME inside the project, analytics off)

    url = f"http://{host}:{port}"
    typer.echo(f"Prefect UI: {url}    state: {os.environ.get('PREFECT_HOME', '~/.prefect')}\n"
               f"Point runs at it:  export PREFECT_API_URL={url}/api\n"
               f"then `python -m flows.train` (a run) or `foldstack serve` (the deployments).", err=True)
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
    try:
        code = subprocess.call(command)
    except KeyboardInterrupt:  # the server got the same SIGINT and shuts down on its own
        code = 0
    raise typer.Exit(code)


def serve(
    params: Annotated[Path, typer.Option("--params", "-p", help="the params file")] = Path(DEFAULT_PARAMS_FILE),
    api_url: Annotated[str | None, typer.Option(help="the Prefect API [default: PREFECT_API_URL, else the local "
                                                     "`foldstack server`]")] = None,
) -> None:
    """Serve the `retrain` (cron + data-change trigger) and `watch-data` deployments until interrupted."""
    url = api_url or os.environ.get("PREFECT_API_URL") or _local_api_url()
    _check_server(url)
    os.environ["PREFECT_API_URL"] = url  # the flow runs this process starts inherit it
    import flows  # noqa: F401
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deploy import serve_all
    from foldstack.config import load_config

    cfg = load_config(params)  # a bad params file fails here, before anything is registered
    typer.echo(f"serving retrain (cron {cfg.runtime.retrain_cron!r}, on foldstack.data.changed) and watch-data "
               f"(every {cfg.runtime.watch_interval_seconds}s) against {url}", err=True)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        serve_all(params)


def register(app: typer.Typer) -> None:
    """Add `server` and `serve` to the foldstack CLI."""
    app.command("server")(server)
    app.command("serve")(serve)
