"""How processes end: without a last garbage collection of the whole heap, and a child with its parent.

When the interpreter shuts down it runs its cycle collector over every object still alive. With torch,
pandas, scikit-learn, Great Expectations and Prefect loaded that takes 0.3-1.5 s on the demo (measured:
`python -m flows.train` spent 1.65 s after its last exit handler, 0.26 s with this), to free memory the
operating system takes back anyway. It is paid by every `foldstack` command and every DVC stage.

`gc.freeze()` as an exit handler moves every live object into the permanent generation, which no collection
visits. Exit handlers still run (atexit, weakref.finalize, logging's flush, Prefect's services); only `__del__`
of objects caught in unreachable cycles is skipped, which Python never guarantees at exit.

`die_with_parent` is a `preexec_fn` for a server process this process starts (the embedded Prefect server,
`foldstack server`): on Linux the child gets SIGTERM when its parent dies, even by SIGKILL.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import signal


def skip_final_garbage_collection() -> None:
    """Call once at the start of a command's main(); exit handlers registered before it run after it."""
    atexit.register(gc.freeze)


def die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the parent dies, even by SIGKILL."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
