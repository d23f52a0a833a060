"""Where Prefect keeps its state, settled before Prefect itself is imported (it reads its settings once, at
import). No Prefect import here: the `flows` and `tasks` packages call this from their `__init__`.

With no Prefect configuration of the user's own, the embedded (ephemeral) server's database lives in
`./.prefect` of the directory you run from (git-ignored) and analytics are off: the server's
(PREFECT_SERVER_ANALYTICS_ENABLED) and the client's. Prefect 3.8's client reads only DO_NOT_TRACK
(prefect/_internal/analytics/enabled.py); without it, a first run in a terminal prints "Prefect collects
anonymous usage data" and emits onboarding events even though the server's analytics are off.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_PREFECT_HOME = ".prefect"


def prefect_environment_defaults(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Set (only where unset) PREFECT_HOME inside the project and analytics off (server and client); returns
    what it set.

    A user who configured Prefect already (PREFECT_HOME, PREFECT_API_URL, a PREFECT_PROFILES_PATH, or a
    profiles file in ~/.prefect) keeps that configuration: moving PREFECT_HOME would hide their profiles.
    """
    env = os.environ if environ is None else environ
    changed: dict[str, str] = {}
    if "PREFECT_SERVER_ANALYTICS_ENABLED" not in env:
        changed["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    server_analytics = changed.get("PREFECT_SERVER_ANALYTICS_ENABLED", env.get("PREFECT_SERVER_ANALYTICS_ENABLED"))
    if "DO_NOT_TRACK" not in env and server_analytics.strip().lower() in ("false", "0", "no", "off"):
        changed["DO_NOT_TRACK"] = "1"  # the client's switch, off with the server's (see the module docstring)
    user_configured = any(k in env for k in ("PREFECT_HOME", "PREFECT_API_URL", "PREFECT_PROFILES_PATH")) or (
        Path.home() / ".prefect" / "profiles.toml").is_file()
    if not user_configured:
        changed["PREFECT_HOME"] = str(Path.cwd() / PROJECT_PREFECT_HOME)
    env.update(changed)
    return changed
