"""The Prefect commands of the `foldstack` CLI: `server` (a local Prefect server with its UI) and `serve` (the
`retrain`, `watch-data` and `monitor` deployments, served from this process).

Loaded by `foldstack.cli.main` through `register(app)`. Prefect is imported inside the commands only, so that the
rest of the CLI starts without it, and after `flows` has settled PREFECT_HOME (Prefect reads it at import).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from foldstack.config import DEFAULT_PARAMS_FILE, load_config
from foldstack.errors import FoldstackError
from foldstack.runtime.prefect_env import prefect_environment_defaults
from foldstack.runtime.process_exit import die_with_parent

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
STOP_TIMEOUT_S = 20.0  # how long a stopped server may take to shut down before it is killed
# Stop signals passed on to the server (POSIX); a hang-up (the terminal closed) stops it like SIGTERM.
FORWARDED_SIGNALS = ({signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM, signal.SIGHUP: signal.SIGTERM}
                     if os.name == "posix" else {})


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
    prefect_environment_defaults()  # PREFECT_HOME inside the project, analytics off

    url = f"http://{host}:{port}"
    typer.echo(f"Prefect UI: {url}    state: {os.environ.get('PREFECT_HOME', '~/.prefect')}\n"
               f"Point runs at it:  export PREFECT_API_URL={url}/api\n"
               f"then `python -m flows.train` (a run) or `foldstack serve` (the deployments).", err=True)
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
    raise typer.Exit(run_until_stopped(command))


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):  # gone already (PermissionError: macOS on a zombie leader)
        pass


def run_until_stopped(command: list[str], stop_timeout_s: float = STOP_TIMEOUT_S) -> int:
    """Run `command` (a server) until it exits or this process is told to stop; returns the exit code.

    The server runs in its own process group, so a Ctrl-C in the terminal reaches this process only and is
    passed on once: uvicorn takes a second SIGINT as "force quit" and would skip its shutdown. SIGINT and
    SIGTERM (SIGHUP as SIGTERM) are passed on to the group; a server that has not exited `stop_timeout_s`
    after the first of them is killed. On Linux the server also gets SIGTERM when this process dies without
    passing anything on (SIGKILL). Exit code: 0 when a requested stop ended the server in time, 1 when it had to
    be killed, else the server's own (128 + n for a server that died of signal n).
    """
    if os.name != "posix":  # no process groups: the console's Ctrl-C reaches the server itself
        try:
            return subprocess.call(command)
        except KeyboardInterrupt:
            return 0
    process = subprocess.Popen(command, process_group=0,
                               preexec_fn=die_with_parent if sys.platform == "linux" else None)
    stop_requested_at: list[float] = []

    def pass_on(signum: int, _frame: object) -> None:
        stop_requested_at.append(time.monotonic())
        _signal_group(process, FORWARDED_SIGNALS[signal.Signals(signum)])

    previous = {sig: signal.signal(sig, pass_on) for sig in FORWARDED_SIGNALS}
    try:
        while True:
            try:
                code = process.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            if stop_requested_at and time.monotonic() - stop_requested_at[0] > stop_timeout_s:
                typer.echo(f"the Prefect server did not stop within {stop_timeout_s:.0f} s of the signal; "
                           f"killed it", err=True)
                _signal_group(process, signal.SIGKILL)
                process.wait()
                return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _signal_group(process, signal.SIGKILL)  # whatever the server left behind in its group
    if stop_requested_at:
        return 0
    return 128 - code if code < 0 else code


def serve(
    params: Annotated[Path, typer.Option("--params", "-p", help="the params file")] = Path(DEFAULT_PARAMS_FILE),
    api_url: Annotated[str | None, typer.Option(help="the Prefect API [default: PREFECT_API_URL, else the local "
                                                     "`foldstack server`]")] = None,
) -> None:
    """Serve the `retrain` (cron + data-change and drift triggers), `watch-data` and `monitor` deployments until
    interrupted."""
    url = api_url or os.environ.get("PREFECT_API_URL") or _local_api_url()
    _check_server(url)
    os.environ["PREFECT_API_URL"] = url  # the flow runs this process starts inherit it
    prefect_environment_defaults()  # before Prefect is imported: it reads its settings once, at import
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deploy import serve_all  # deferred: prefect

    cfg = load_config(params)  # a bad params file fails here, before anything is registered
    typer.echo(f"serving retrain (cron {cfg.runtime.retrain_cron!r}, on foldstack.data.changed and "
               f"foldstack.model.drifted), watch-data (every {cfg.runtime.watch_interval_seconds}s) and monitor "
               f"(every {cfg.monitoring.schedule_minutes} min) against {url}", err=True)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        serve_all(params)


def register(app: typer.Typer) -> None:
    """Add `server` and `serve` to the foldstack CLI."""
    app.command("server")(server)
    app.command("serve")(serve)
