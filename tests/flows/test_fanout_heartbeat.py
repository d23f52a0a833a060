"""The fan-out's progress line: at most one per interval while fold tasks run, naming what is still running."""

from __future__ import annotations

from foldstack.pipeline.identities import FoldTask
from tasks.fanout import BaseModelRuns, Heartbeat


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str, *args) -> None:
        self.lines.append(message % args)


def test_a_heartbeat_names_what_is_left_and_stays_quiet_in_between_and_at_the_end() -> None:
    plan = [FoldTask("minilm_lr", 0, k, f"m{k}") for k in range(3)] + [FoldTask("tfidf_lr", 0, 0, "t0")]
    runs, logger = BaseModelRuns(), Lines()
    runs.states[plan[3]] = None
    Heartbeat(every_s=0.0).maybe_log(logger, runs, plan)
    assert logger.lines == ["fold tasks: 1 of 4 finished; still running: minilm_lr (3 left)"]
    Heartbeat(every_s=3600.0).maybe_log(logger, runs, plan)  # within the interval: nothing
    for task_ in plan:
        runs.states[task_] = None
    Heartbeat(every_s=0.0).maybe_log(logger, runs, plan)  # all finished: the summary lines follow instead
    assert len(logger.lines) == 1
