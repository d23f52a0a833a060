"""The one pool of worker processes for CPU fits: `foldstack train`'s fold tasks and the flow's CPU fold tasks.

The tf-idf kinds tokenise in Python and would serialise on the GIL in threads, so CPU fits run in worker
processes. The pool starts on first use (a no-change rerun starts no process), gives each worker a share of
the cores, ends a worker when its parent is gone, and turns a dead worker into a clear error. No Prefect and
no config here: callers pass the sizes and the start method (`process_context`).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import wait
from typing import Any

from foldstack.errors import StageError

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def process_context(preload: Sequence[str] = ()) -> multiprocessing.context.BaseContext:
    """Fork server where there is one, with the modules `preload` imported once in the server (new workers
    then start in milliseconds); spawn elsewhere. Never plain fork: the caller may run threads (Prefect's),
    and forking those is unsafe. The preload list has no effect once the fork server runs."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    return context


def exit_with_parent() -> None:
    """End this process when its parent is gone (e.g. killed with SIGKILL).

    A pool worker otherwise outlives its parent, keeps fitting a fold nobody will collect, and then blocks
    forever on its call queue.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    wait([parent.sentinel])
    os._exit(1)


def init_worker(threads: int) -> None:
    """Pool initializer: `threads` cores for this worker, and a watch on the parent process."""
    from threadpoolctl import threadpool_limits

    # Every worker using all cores for torch/BLAS would thrash the others. torch reads the env when it is
    # first imported (in the fit, after this); BLAS may be loaded already (a fork server's preload), so it is
    # limited through threadpoolctl. Importing torch here only to limit it would cost seconds per worker for
    # scikit-learn-only tasks; one already imported is limited directly.
    for var in THREAD_VARIABLES:
        os.environ[var] = str(threads)
    threadpool_limits(limits=threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    threading.Thread(target=exit_with_parent, name="exit-with-parent", daemon=True).start()


class ProcessPool:
    """`max_workers` worker processes of `threads` cores each, started on first use."""

    def __init__(self, max_workers: int, threads: int,
                 context: Callable[[], multiprocessing.context.BaseContext] = process_context):
        self.max_workers = max_workers
        self.threads = threads
        self._context = context
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._pool_of: weakref.WeakKeyDictionary[Future, ProcessPoolExecutor] = weakref.WeakKeyDictionary()

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(max_workers=self.max_workers, mp_context=self._context(),
                                                 initializer=init_worker, initargs=(self.threads,))
            return self._pool

    def warm_up(self) -> None:
        """Start the fork server now, so that its imports overlap other work (validation) instead of
        delaying the first fit. Nothing to do where workers are spawned."""
        if self._context().get_start_method() == "forkserver":
            from multiprocessing import forkserver

            forkserver.ensure_running()  # returns at once; the server imports in the background

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        pool = self._executor()
        future = pool.submit(fn, *args)
        self._pool_of[future] = pool
        return future

    def result(self, future: Future) -> Any:
        """The result of a future of this pool; a dead worker is a StageError, and the next task gets a
        fresh pool (that one is unusable)."""
        try:
            return future.result()
        except BrokenProcessPool as exc:
            pool = self._pool_of.get(future)
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            raise StageError(f"the worker process fitting this fold died ({exc}); "
                             f"out of memory? lower runtime.max_workers") from exc

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in a worker process; waits for it."""
        return self.result(self.submit(fn, *args))

    def shutdown(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
