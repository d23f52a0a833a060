"""The flow's fan-out: every (base model x repeat x fold) as its own task on the executor `runtime.executor`
names (`tasks.executors`), and what became of each: trained, reused (finished before with the same
identity) or failed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger
from prefect.futures import PrefectFuture, as_completed
from prefect.states import State

from foldstack.common.files import is_complete
from foldstack.config import Config
from foldstack.errors import FoldstackError, StageError
from foldstack.pipeline.embedding_stats import EMBEDDING, EmbeddingTotals
from foldstack.pipeline.stages import FoldTask, Layout, fold_task_done, plan_fold_tasks
from tasks.executors import executor_class, executor_for
from tasks.fold import SKIPPED
from tasks.report import TrainingProgress


def _folds_on_disk_look_complete(cfg: Config) -> bool:
    """Whether every base model has all its fold directories finished (identities not checked: a guess)."""
    per_model = cfg.folds.k * cfg.folds.repeats + (1 if cfg.runtime.refit_full else 0)
    layout = Layout.of(cfg)
    return all(sum(1 for d in layout.base(spec.name).glob("*") if is_complete(d)) >= per_model
               for spec in cfg.base_models)


def warm_up(cfg: Config) -> None:
    """Before validation: start what the executor will need, when it will likely train something.

    E.g. the local CPU fit processes' fork server imports the model code for a few seconds; started here it
    does so while the data is validated. Skipped when every fold looks finished (a rerun), where it would only
    take CPU from the validation.
    """
    if not _folds_on_disk_look_complete(cfg):
        executor_class(cfg).warm_up(cfg)


def resolve_in_order(*futures: PrefectFuture) -> list[Any]:
    """Results upstream-first, so that a failure surfaces as its own error, not as "downstream never ran"."""
    return [future.result() for future in futures]


@dataclass
class BaseModelRuns:
    """The fold tasks of one flow run: their futures, and what was trained, reused or failed."""

    futures: dict[FoldTask, PrefectFuture] = field(default_factory=dict)
    # Their final states: what downstream tasks wait for. A future may not outlive its executor (a Ray
    # future needs the Ray runtime that the fan-out shuts down); a final state does, and still draws the edge.
    states: dict[FoldTask, State] = field(default_factory=dict)
    trained: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    causes: dict[str, str] = field(default_factory=dict)  # failed task label -> its exception, one line
    fit_seconds: dict[str, float] = field(default_factory=dict)
    # Per base model, over its folds trained in this run: texts encoded, from the cache, encode seconds.
    embedding: dict[str, EmbeddingTotals] = field(default_factory=dict)

    def per_model_lines(self, cfg: Config) -> list[str]:
        """`<model>: N fold tasks trained (fit S s), M reused` (either part left out at 0), in params order."""
        def count(labels: list[str], model: str) -> int:
            return sum(1 for t in self.states if t.model == model and t.label in labels)

        lines = []
        for spec in cfg.base_models:
            trained, reused = count(self.trained, spec.name), count(self.reused, spec.name)
            done = [f"{trained} fold tasks trained (fit {self.fit_seconds.get(spec.name, 0.0):.1f}s)"] if trained else []
            lines.append(f"{spec.name}: " + ", ".join(done + ([f"{reused} reused"] if reused or not trained else [])))
        return lines

    def of_model(self, model: str) -> list[State]:
        return [state for t, state in self.states.items() if t.model == model]

    def record(self, task_: FoldTask, future: PrefectFuture) -> State:
        """Note the final state of one finished fold task."""
        state = self.states[task_] = future.state
        if not state.is_completed():
            self.failed.append(task_.label)
            self.causes[task_.label] = _failure_cause(state)
        elif state.name == SKIPPED:
            self.reused.append(task_.label)
        else:
            self.trained.append(task_.label)
            result = future.result()
            self.fit_seconds[task_.model] = self.fit_seconds.get(task_.model, 0.0) + result["seconds"]
            if result.get(EMBEDDING):
                self.embedding.setdefault(task_.model, EmbeddingTotals(task_.model)).add(result[EMBEDDING])
        return state


class Heartbeat:
    """A progress line at most every `every_s` seconds while fold tasks run: a long step (a fine-tune, the
    embeddings of a large set) is never silent on the console, yet the folds are not listed one by one."""

    def __init__(self, every_s: float = 15.0):
        self.every_s = every_s
        self.last = time.monotonic()

    def maybe_log(self, logger: Any, runs: BaseModelRuns, plan: list[FoldTask]) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s or len(runs.states) == len(plan):
            return
        self.last = now
        left: dict[str, int] = {}
        for task_ in plan:
            if task_ not in runs.states:
                left[task_.model] = left.get(task_.model, 0) + 1
        logger.info("fold tasks: %d of %d finished; still running: %s", len(runs.states), len(plan),
                    ", ".join(f"{model} ({n} left)" for model, n in left.items()))


def _failure_cause(state: State) -> str:
    """The exception behind a failed task's state, as one line (the traceback stays in the task's log)."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as unreadable:  # a crashed worker may leave no result to read
        exc = unreadable
    if isinstance(exc, BaseException):
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return text if isinstance(exc, FoldstackError) else f"{type(exc).__name__}: {text}"
    return state.message or state.name


def train_base_models(cfg: Config, data: PrefectFuture, folds: PrefectFuture) -> BaseModelRuns:
    """Every (base model x repeat x fold) as its own task, in parallel on the configured executor."""
    logger = get_run_logger()
    resolve_in_order(data, folds)  # the plan needs the snapshot and the fold assignment on disk
    plan = plan_fold_tasks(cfg)
    done_before = [t.label for t in plan if fold_task_done(cfg, t)]
    if done_before:
        logger.info("resume: %d of %d fold tasks finished before with the same identity and are skipped: %s",
                    len(done_before), len(plan), ", ".join(done_before))
    runs = BaseModelRuns()
    with executor_for(cfg, len(plan)) as executor:
        logger.info("training %d fold tasks on %s", len(plan) - len(done_before), executor.describe())
        runs.futures = {t: executor.submit(t, wait_for=[folds]) for t in plan}
        progress = TrainingProgress(total=len(plan))
        heartbeat = Heartbeat()
        task_of = {id(f): t for t, f in runs.futures.items()}
        for future in as_completed(list(runs.futures.values())):
            future.wait()
            task_ = task_of[id(future)]
            state = runs.record(task_, future)
            if not state.is_completed():
                logger.error("%s: %s (%s)", task_.label, state.name, runs.causes[task_.label])
            progress.advance(skipped=state.name == SKIPPED)
            heartbeat.maybe_log(logger, runs, plan)
    order = {t.label: i for i, t in enumerate(plan)}  # report in plan order, not in order of completion
    for labels in (runs.trained, runs.reused, runs.failed):
        labels.sort(key=order.__getitem__)
    if runs.failed:
        # The finished folds stay on disk: a rerun trains only these.
        first = runs.failed[0]
        raise StageError(f"{len(runs.failed)} of {len(plan)} fold tasks failed ({', '.join(runs.failed)}); the first, "
                         f"{first}: {runs.causes[first]}. The other folds are kept: fix that, then rerun to train "
                         f"only the failed ones")
    logger.info("base models: %d fold tasks trained, %d reused", len(runs.trained), len(runs.reused))
    for line in runs.per_model_lines(cfg):  # one line per base model; each fold's own lines are in its task log
        logger.info("%s", line)
    for totals in runs.embedding.values():  # encode throughput of the models that embed texts
        logger.info("embedding %s", totals.line())
    return runs
