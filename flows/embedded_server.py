"""Prefect's embedded server, started first thing in `python -m flows.train` instead of at its first API call.

With no server configured, Prefect starts a temporary server (uvicorn running `prefect.server.api.server:
create_app`, UI off) when the flow first calls its API: after the flow's imports and after the parent has
imported Prefect's whole server package (~2 s) only to find that class. The server then needs 2-3 s to come up,
7 s on a first run (it creates and migrates its database). Run in that order, the start-up is paid end to end.

`EmbeddedServer.start_if_unconfigured()` starts the same process, with the same command line and environment
Prefect uses, before anything heavy is imported, and points this process (PREFECT_API_URL) at it; the imports
then overlap the server's start-up, and `wait_until_ready()` waits for what is left of it. The server is
stopped when the process exits, and on Linux also when it is killed (SIGKILL included), so that no server is
left orphaned. Measured in bench/results/orchestration.md.

Only when nothing is configured: a PREFECT_API_URL in the environment or in the active profile, or ephemeral
mode switched off, leaves Prefect to do what it is told.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

from foldstack.errors import FoldstackError
from foldstack.runtime.process_exit import die_with_parent

READY_TIMEOUT_S = 90.0  # a first start migrates a fresh database: seconds on a busy 2-core machine
PORT_IN_USE_EXIT_CODE = 3  # uvicorn's exit code when it cannot bind its port


class EmbeddedServerError(FoldstackError):
    """The embedded Prefect server did not come up."""


def _configured_elsewhere(environ: dict[str, str]) -> bool:
    """True when the user set an API URL (environment or active profile) or switched ephemeral mode off."""
    if environ.get("PREFECT_API_URL"):
        return True
    if environ.get("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true").lower() in ("0", "false", "no"):
        return True
    home = Path(environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    profiles_path = Path(environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml"))
    try:
        profiles = tomllib.loads(profiles_path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False  # no profiles file: nothing configured (an unreadable one is Prefect's to report)
    active = environ.get("PREFECT_PROFILE") or profiles.get("active", "ephemeral")
    return bool(profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedServer:
    """A temporary Prefect API server on 127.0.0.1, owned by this process."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        # Beside the server's database: PREFECT_HOME, or Prefect's default home.
        self.log_path = Path(self.environ.get("PREFECT_HOME") or Path.home() / ".prefect") / "embedded-server.log"

    @classmethod
    def start_if_unconfigured(cls) -> EmbeddedServer | None:
        """Start it and point this process at it, unless the user configured a server; None then."""
        if _configured_elsewhere(dict(os.environ)):
            return None
        server = cls()
        server.start()
        return server

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _command(self) -> list[str]:
        spec = importlib.util.find_spec("prefect")  # its location, without importing it
        if spec is None or not spec.submodule_search_locations:
            raise EmbeddedServerError("prefect is not installed in this environment")
        app_dir = Path(list(spec.submodule_search_locations)[0]).parent
        # The command line of prefect.server.api.server.SubprocessASGIServer (Prefect 3.8).
        return [sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir), "--factory",
                "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                "--log-level", "error", "--lifespan", "on"]

    def start(self) -> None:
        self.port = _free_port()
        env = {**self.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:  # a file, not a pipe: a pipe nobody reads would block the server
            self.process = subprocess.Popen(self._command(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                            preexec_fn=die_with_parent if sys.platform == "linux" else None)
        atexit.register(self.stop)
        # This process (and what it spawns) talks to it; no UI link is printed, the server serves no UI.
        self.environ["PREFECT_API_URL"] = self.api_url
        self.environ.setdefault("PREFECT_UI_URL", "")

    def wait_until_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Block until the server answers its health check; a server that lost its port is restarted on another."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            code = self.process.poll()
            if code == PORT_IN_USE_EXIT_CODE:  # the port was taken between choosing it and binding it
                self.stop()
                self.start()
                continue
            if code is not None:
                output = self.log_path.read_text(errors="replace")[-2000:]
                raise EmbeddedServerError(f"the embedded Prefect server exited with code {code} while starting; "
                                          f"its output ({self.log_path}):\n{output}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200 and json.loads(response.read() or b"null") is True:
                        logging.getLogger("prefect").info(  # where Prefect says it of its own temporary server
                            "temporary Prefect server on %s (state in %s)", self.api_url.removesuffix("/api"),
                            self.environ.get("PREFECT_HOME"))
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            time.sleep(0.05)
        self.stop()
        raise EmbeddedServerError(f"the embedded Prefect server did not answer on {self.api_url} within "
                                  f"{timeout_s:.0f} s; set PREFECT_API_URL to use a running server instead")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
