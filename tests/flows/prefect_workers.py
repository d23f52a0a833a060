"""Stopping Prefect's in-process log and event workers between test modules that each start their own server.

The workers are process-wide singletons that keep the API URL they started with. A module that runs flows
in-process against its own server and then stops that server leaves them posting to a dead address: a later
module's events (say, the monitor flow's `foldstack.model.drifted`) then go nowhere, each one after a slow
connection timeout, and that module's `prefect_test_harness` hangs draining them. `prefect_test_harness` drains
them when it exits; a hand-started server must do the same before it stops.
"""

from __future__ import annotations

from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker

DRAIN_TIMEOUT_S = 30.0


def drain_prefect_workers(timeout: float = DRAIN_TIMEOUT_S) -> None:
    """Send what the workers still hold to the current server and stop them (the next use starts fresh ones)."""
    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=timeout)
