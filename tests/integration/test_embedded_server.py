"""The embedded Prefect server that `python -m flows.train` starts before importing the flow (flows/embedded_server.py).

The flow tests that run `python -m flows.train` (test_flow_dvc, test_flow_resume) use it end to end; here:
when it is started at all, a real start that loses its port and moves to another, and a server that stops
when the process that started it is SIGKILLed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import embedded_server
from flows.embedded_server import EmbeddedServer, EmbeddedServerError, _configured_elsewhere
from tests.processes import alive
from tests.paths import REPO_ROOT


def test_a_configured_api_url_or_disabled_ephemeral_mode_is_left_to_prefect(tmp_path):
    home = tmp_path / "prefect-home"
    assert not _configured_elsewhere({"PREFECT_HOME": str(home)})  # nothing configured: start it
    assert _configured_elsewhere({"PREFECT_HOME": str(home), "PREFECT_API_URL": "http://127.0.0.1:4200/api"})
    assert _configured_elsewhere({"PREFECT_HOME": str(home), "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "false"})


def test_an_api_url_in_the_active_profile_counts_as_configured(tmp_path):
    home = tmp_path / "prefect-home"
    home.mkdir()
    (home / "profiles.toml").write_text('active = "local"\n\n[profiles.local]\n'
                                        'PREFECT_API_URL = "http://127.0.0.1:4200/api"\n\n[profiles.other]\n')
    assert _configured_elsewhere({"PREFECT_HOME": str(home)})
    assert not _configured_elsewhere({"PREFECT_HOME": str(home), "PREFECT_PROFILE": "other"})


def test_starts_on_another_port_when_its_port_is_taken_and_stops_at_the_end(tmp_path, monkeypatch):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = iter([taken.getsockname()[1]])
    real_free_port = embedded_server._free_port
    monkeypatch.setattr(embedded_server, "_free_port", lambda: next(ports, None) or real_free_port())
    environ = {"PATH": "/usr/bin:/bin", "PREFECT_HOME": str(tmp_path / "prefect-home"),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server = EmbeddedServer(environ)
    try:
        server.start()
        server.wait_until_ready()
        assert server.port != taken.getsockname()[1]
        assert environ["PREFECT_API_URL"] == f"http://127.0.0.1:{server.port}/api"  # this process points at it
        process = server.process
    finally:
        server.stop()
        taken.close()
    assert process.poll() is not None


def test_a_server_that_cannot_start_is_a_clear_error_with_its_output(tmp_path, monkeypatch):
    monkeypatch.setattr(EmbeddedServer, "_command", lambda self: ["python3", "-c", "import sys; "
                                                                  "print('no database here'); sys.exit(1)"])
    server = EmbeddedServer({"PATH": "/usr/bin:/bin", "PREFECT_HOME": str(tmp_path)})
    server.start()
    with pytest.raises(EmbeddedServerError, match="(?s)exited with code 1.*no database here"):
        server.wait_until_ready(timeout_s=30)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_the_server_stops_when_its_owner_is_killed(tmp_path):
    owner_script = ("import os, sys, time\n"
                    "from flows.embedded_server import EmbeddedServer\n"
                    "server = EmbeddedServer(dict(os.environ))\n"
                    "server.start()\n"
                    "server.wait_until_ready()\n"
                    "print(server.process.pid, flush=True)\n"
                    "time.sleep(120)\n")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PYTHONPATH": str(REPO_ROOT)}
    env.pop("PREFECT_API_URL", None)
    owner = subprocess.Popen([sys.executable, "-c", owner_script], env=env, stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(owner.stdout.readline())
        assert alive(server_pid)
        owner.send_signal(signal.SIGKILL)  # no atexit runs: only the kernel's parent-death signal can stop it
        owner.wait(timeout=10)
        deadline = time.monotonic() + 15
        while alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(server_pid), "the embedded server outlived the process that started it"
    finally:
        owner.kill()
        owner.wait()
