"""Failpoints: named places where a fault test kills this process with SIGKILL, as a crash or `kill -9`
would, at a moment a test cannot hit reliably from outside (between storing a version's bytes and tagging it).

`FOLDSTACK_FAILPOINT=<name>` arms one; unset (always, outside tests/unit/common/test_faults.py) each is one dict lookup.
"""

from __future__ import annotations

import os
import signal

FAILPOINT_ENV = "FOLDSTACK_FAILPOINT"
# Every failpoint, so that a test naming one that does not exist fails instead of silently never firing.
FAILPOINTS = frozenset({"folds-written", "registry-bytes-stored"})


def failpoint(name: str) -> None:
    if name not in FAILPOINTS:
        raise ValueError(f"unknown failpoint {name!r}; known: {sorted(FAILPOINTS)}")
    if os.environ.get(FAILPOINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
