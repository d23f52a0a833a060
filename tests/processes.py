"""Process helpers the tests that start real servers share: is a pid still running, stop a server, a free
loopback port, waiting for a condition, and `foldstack serve-model` as a real child process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def alive(pid: int) -> bool:
    """Running (a zombie that nobody reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def stop(process: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `grace_s`."""
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


class ServeModel:
    """`foldstack serve-model ARGS` as a child process on a free loopback port, up (its /health answers) on enter,
    stopped on exit; `client` talks to it."""

    def __init__(self, *args: str, startup_s: float = 120):
        from tests.paths import REPO_ROOT

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_s = startup_s
        self.process = subprocess.Popen(
            [sys.executable, "-m", "foldstack.cli", "serve-model", *args, "--port", str(self.port),
             "--reload-seconds", "0"], env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def __enter__(self) -> ServeModel:
        def up() -> bool:
            assert self.process.poll() is None, self.process.stdout.read()
            try:
                return self.client.get("/health").status_code == 200
            except httpx.TransportError:
                return False

        try:
            wait_for(up, seconds=self.startup_s)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()
        if self.process.poll() is None:
            stop(self.process)
