"""Distillation benchmark (issue 16): does one fast student, trained on the stacked ensemble's honest soft targets,
keep the ensemble's gain over its best base model while answering much faster?

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/distill.py           # full run, ~40 min on 2 idle cores
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/distill.py --quick   # smoke run, ~3 min per data set
    ... bench/distill.py --with-finetune      # also a `finetune` student (slow on CPU; off by default)

For each data set (`<data-root>/<name>/all.csv`, columns text,label — read in place, never copied):

1. the pipeline once, with the parameters of bench/quality.py (`bench_params`: seed 0, 20 % holdout, k=5, the
   four default CPU base models, 2 workers) but meta kind `auto` (the product's default); the embedding cache is
   warmed first, as quality.py does, and the work dir is wiped per data set;
2. `foldstack.pipeline.distill.distill(cfg)` several times on that pipeline's artifacts (no base model is
   retrained): each time a new cfg (`config_from_dict`) differing only in its `distill` section. Students
   `tfidf_lr` and `embed_lr` (all-MiniLM-L6-v2), each
   (a) on hard labels only (alpha 1.0: the same kind, same path, one-hot targets — the baseline it must beat),
   (b) on soft targets (alpha 0.3, temperature 1),
   (c) on soft targets + teacher-labelled augmented copies (word_dropout + span_deletion, 2 copies);
   with `--with-finetune` also a `finetune` student in the same three variants. Each student's box
   (artifacts/student/) is copied under `<work-dir>/<name>/students/<variant>/` before the next one replaces it;
3. per row: holdout accuracy and log loss (the base models and the ensemble from artifacts/eval/reports.json, the
   students from distill's own metrics; all from `foldstack.core.metrics.classification_report`), p50 latency
   in this process of `foldstack.load(bundle).predict_proba` (the best base model: the mean of its fold models
   taken from the ensemble bundle) for 1 and for 32 holdout texts (one warm-up call,
   then 30 timed calls, each on different texts so no per-batch memo can answer), the bundle's size on disk,
   the size of the embedding model it reads from an installed package (not in the bundle), the RSS increase
   of loading it and predicting once (a fresh subprocess, after the imports of foldstack.bundle, this script and
   the model registry), and the share
   of the ensemble's log-loss gain over the best base model that the student keeps:
   (LL_best_base - LL_student) / (LL_best_base - LL_ensemble);
4. a verdict: does one CPU student configuration (tfidf_lr or embed_lr; soft or soft + aug) beat the same kind
   on hard labels AND the best base model on log loss, while answering >= 10x faster than the ensemble
   (32-text p50), on at least two of the three data sets?
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python bench/distill.py` puts only bench/ on the path
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import machine_markdown, markdown_table  # noqa: E402
from bench.quality import (  # noqa: E402
    BASE_MODELS,
    DATASETS,
    EMBEDDING_MODEL,
    HOLDOUT_FRACTION,
    QUICK_ROWS,
    READING_END,
    READING_START,
    SEED,
    TIE_TOLERANCE,
    WORKERS,
    StageClock,
    _kept_reading,
    _load_average,
    bench_command,
    bench_params,
    data_set_parser,
    fresh_project,
    results_path,
    warm_embedding_cache,
)

K = 5
LATENCY_CALLS = 30
BATCH_SIZES = (1, 32)
SPEEDUP_REQUIRED = 10.0
AUGMENT = {"methods": ["word_dropout", "span_deletion"], "copies": 2}
# (label, distill section without the student): the three variants every student is trained in.
VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("hard", {"alpha": 1.0}),
    ("soft", {"alpha": 0.3, "temperature": 1.0}),
    ("soft+aug", {"alpha": 0.3, "temperature": 1.0, "augment": AUGMENT}),
)
CPU_STUDENTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("tfidf_lr", {}),
    ("embed_lr", {"model": EMBEDDING_MODEL}),
)
FINETUNE_STUDENT = ("finetune", {"model": EMBEDDING_MODEL})
CANDIDATE_VARIANTS = ("soft", "soft+aug")  # what the verdict may pick; "hard" is what they must beat

# Run in a fresh interpreter: RSS after the imports (foldstack.bundle and this module: numpy, scikit-learn's base),
# after the model registry's imports (the same for every bundle), then after loading the predictor + one
# prediction. Prints one JSON line.
RSS_PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
def rss_kib(key="VmRSS"):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1
import foldstack, foldstack.bundle
from bench.distill import load_predictor
imports = rss_kib()
import foldstack.models
foldstack.models.soft_target_kinds()  # imports the model registry: every built-in kind's module
before = rss_kib()
model = load_predictor(sys.argv[2], sys.argv[4] or None)
model.predict_proba(json.loads(sys.argv[3]))
after = rss_kib()
print(json.dumps({"imports_kib": imports, "before_kib": before, "after_kib": after, "peak_kib": rss_kib("VmHWM")}))
"""

# What the libraries a bundle load pulls in cost on their own, step by step, in a fresh interpreter.
LIBRARY_PROBE = r"""
import importlib, json
def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
steps = {}
import foldstack, foldstack.bundle, foldstack.models
foldstack.models.soft_target_kinds()
steps["foldstack.bundle + model registry"] = rss_kib()
for module in ("sklearn.linear_model", "skops.io", "torch", "transformers"):
    importlib.import_module(module)
    steps["+ import " + module] = rss_kib()
print(json.dumps(steps))
"""


# ------------------------------------------------------------------------------------------------------------
# measurements
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Row:
    model: str
    role: str  # base | ensemble | student
    accuracy: float
    log_loss: float
    kind: str | None = None
    variant: str | None = None
    p50_ms: dict[int, float] = field(default_factory=dict)  # batch size -> milliseconds
    bundle_mib: float | None = None
    external_mib: float | None = None
    rss_mib: float | None = None
    rss_total_mib: float | None = None
    train_seconds: float | None = None
    augmented_rows: int | None = None


@dataclass
class DatasetResult:
    name: str
    n_train: int
    n_holdout: int
    n_classes: int
    load_at_start: str
    meta: str = ""
    rows: list[Row] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def find(self, role: str, kind: str | None = None, variant: str | None = None) -> Row | None:
        return next((r for r in self.rows if r.role == role and (kind is None or r.kind == kind)
                     and (variant is None or r.variant == variant)), None)

    @property
    def best_base(self) -> Row:
        return min((r for r in self.rows if r.role == "base"), key=lambda r: r.log_loss)

    @property
    def ensemble(self) -> Row:
        row = self.find("ensemble")
        assert row is not None
        return row


def _mib(n_bytes: float) -> float:
    return n_bytes / 1024**2


def directory_mib(path: Path) -> float:
    return _mib(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()))


def external_model_mib(bundle_dir: Path, base: str | None = None) -> float:
    """Size of the embedding models a bundle (or one of its base models) reads from installed packages: embed_lr
    keeps only its regression in the bundle and names its encoder. Each distinct model counted once."""
    from foldstack.models.transformers.hf import resolve_model_source

    manifest = json.loads((Path(bundle_dir) / "manifest.json").read_text())
    sources = {str(resolve_model_source(entry["params"]["model"])) for entry in manifest["base_models"]
               if entry["kind"] == "embed_lr" and base in (None, entry["name"])}
    return sum(directory_mib(Path(source)) for source in sources)


class BaseMembers:
    """One base model of an ensemble bundle as it serves there: the mean of its members (the fold models), on
    texts normalised as the bundle does. What the best single base model costs to answer."""

    def __init__(self, bundle_dir: str | Path, name: str):
        from foldstack.models import model_class

        bundle_dir = Path(bundle_dir)
        manifest = json.loads((bundle_dir / "manifest.json").read_text())
        entry = next(e for e in manifest["base_models"] if e["name"] == name)
        cls = model_class(entry["kind"])
        self.members = [cls.load(bundle_dir / "base" / name / member, device="cpu", cache_dir=None)
                        for member in entry["members"]]
        self.lowercase = bool(manifest["params"]["data"].get("lowercase", False))

    def predict_proba(self, texts: list[str]):
        import numpy as np

        from foldstack.core.data import normalise_text

        prepared = [normalise_text(text, self.lowercase) for text in texts]
        return np.mean([member.predict_proba(prepared) for member in self.members], axis=0)


def load_predictor(bundle_dir: str | Path, base: str | None = None) -> Any:
    """`foldstack.load(bundle_dir)`, or with `base` that base model's members alone (`BaseMembers`)."""
    import foldstack

    return foldstack.load(bundle_dir) if base is None else BaseMembers(bundle_dir, base)


def _batch(texts: list[str], size: int, index: int) -> list[str]:
    start = index * size
    return [texts[(start + j) % len(texts)] for j in range(size)]


def latency_p50_ms(predictor: Any, texts: list[str], size: int) -> float:
    """Median milliseconds of `predict_proba` on `size` texts: one warm-up call, then LATENCY_CALLS timed ones.
    Every call gets different texts (consecutive windows of the holdout), so embed_lr's one-batch memo never
    answers a timed call."""
    predictor.predict_proba(_batch(texts, size, 0))
    seconds = []
    for index in range(1, LATENCY_CALLS + 1):
        batch = _batch(texts, size, index)
        started = time.perf_counter()
        predictor.predict_proba(batch)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds) * 1000


def rss_probe(bundle_dir: Path, texts: list[str], base: str | None = None) -> dict[str, float]:
    """RSS in MiB of a fresh interpreter: `imports`, `registry` (after the model registry's imports), `after`
    (after loading the predictor and predicting one text)."""
    done = subprocess.run([sys.executable, "-c", RSS_PROBE, str(REPO_ROOT), str(bundle_dir), json.dumps(texts[:1]),
                           base or ""], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"RSS probe of {bundle_dir} ({base or 'bundle'}) failed:\n{done.stderr[-3000:]}")
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    return {"imports": probe["imports_kib"] / 1024, "registry": probe["before_kib"] / 1024,
            "after": probe["after_kib"] / 1024}


def library_rss() -> dict[str, float]:
    """RSS in MiB of a fresh interpreter after each library import a bundle load may pay for (LIBRARY_PROBE)."""
    done = subprocess.run([sys.executable, "-c", LIBRARY_PROBE], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        return {"probe failed": float("nan")}
    return {step: kib / 1024 for step, kib in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def measure(row: Row, bundle_dir: Path, texts: list[str], base: str | None = None) -> dict[str, float]:
    """Latencies, size on disk, packaged encoder size and RSS of a bundle (or of one base model in it)."""
    predictor = load_predictor(bundle_dir, base)
    for size in BATCH_SIZES:
        row.p50_ms[size] = latency_p50_ms(predictor, texts, size)
    del predictor
    row.bundle_mib = directory_mib(Path(bundle_dir) / "base" / base if base else Path(bundle_dir))
    row.external_mib = external_model_mib(bundle_dir, base)
    rss = rss_probe(bundle_dir, texts, base)
    row.rss_mib, row.rss_total_mib = rss["after"] - rss["registry"], rss["after"]
    return rss


# ------------------------------------------------------------------------------------------------------------
# one data set
# ------------------------------------------------------------------------------------------------------------
def run_dataset(name: str, data_root: Path, work_root: Path, *, max_rows: int | None, students,
                verbose: bool) -> DatasetResult:
    from foldstack.config import config_from_dict
    from foldstack.pipeline.distill import distill
    from foldstack.pipeline.stages import Layout, run_pipeline

    cfg, snapshot, load_at_start = fresh_project(name, data_root, work_root, k=K, max_rows=max_rows,
                                                 meta_kind="auto")
    layout = Layout.of(cfg)
    work_dir, cache_dir = work_root / name, cfg.resolve_path(cfg.runtime.cache_dir)
    # The same params dict fresh_project validated: each student variant changes only its distill section.
    params = bench_params(data_root / name / "all.csv", work_dir, work_dir / "cache", k=K, max_rows=max_rows,
                          meta_kind="auto")
    result = DatasetResult(name, len(snapshot.train), len(snapshot.holdout), snapshot.n_classes, load_at_start)
    embed_seconds, n_embedded = warm_embedding_cache(snapshot, cache_dir)
    result.timings["embedding warm-up (cold cache)"] = embed_seconds
    result.notes.append(f"{n_embedded} distinct texts embedded in the warm-up")

    print(f"[{name}] foldstack pipeline (meta auto, {WORKERS} workers)", flush=True)
    clock = StageClock(verbose)
    pipeline = run_pipeline(cfg, clock)
    result.timings["pipeline (teacher) total"] = time.perf_counter() - clock.started
    if pipeline.skipped:
        raise AssertionError(f"{pipeline.skipped} fold tasks were resumed; the work dir was not fresh")
    reports = json.loads((layout.eval / "reports.json").read_text())
    stacked = json.loads((layout.stack / "meta_cv.json").read_text())
    result.meta = f"{stacked['kind']} (requested {stacked['requested']}: {stacked.get('reason', '')})"
    for spec in cfg.base_models:
        result.rows.append(Row(spec.name, "base", reports[spec.name]["accuracy"], reports[spec.name]["log_loss"],
                               kind=spec.kind))
    ensemble = Row(f"ensemble ({stacked['kind']})", "ensemble", reports["ensemble"]["accuracy"],
                   reports["ensemble"]["log_loss"], train_seconds=result.timings["pipeline (teacher) total"])
    result.rows.append(ensemble)

    holdout_texts = snapshot.holdout["text"].astype(str).tolist()
    started = time.perf_counter()
    print(f"[{name}] measure the ensemble bundle and the best base model's members in it", flush=True)
    rss = measure(ensemble, pipeline.bundle, holdout_texts)
    result.notes.append(f"RSS of the probe's fresh interpreter: {rss['imports']:.0f} MiB after importing "
                        "foldstack.bundle and this script (numpy, pandas, scikit-learn's base), "
                        f"{rss['registry']:.0f} MiB after the model registry's imports (every built-in kind; "
                        "paid by any bundle); `RSS + MiB` is counted from there")
    best = result.best_base
    measure(best, pipeline.bundle, holdout_texts, base=best.model)
    result.timings["measure ensemble + best base"] = time.perf_counter() - started

    for kind, student_params in students:
        for variant, section in VARIANTS:
            label = f"student {kind} / {variant}"
            print(f"[{name}] distill: {label}", flush=True)
            distill_section = {"enabled": True, "student": {"kind": kind, "params": dict(student_params)},
                               **json.loads(json.dumps(section))}
            variant_cfg = config_from_dict({**params, "distill": distill_section}, root=REPO_ROOT,
                                           source=f"bench params ({name}, {label})")
            summary = distill(variant_cfg)
            kept = work_dir / "students" / f"{kind}-{variant.replace('+', '-')}"
            shutil.copytree(layout.student, kept)
            row = Row(label, "student", summary["metrics"]["accuracy"], summary["metrics"]["log_loss"], kind=kind,
                      variant=variant, train_seconds=summary["seconds"], augmented_rows=summary["augmented_rows"])
            result.timings[f"distill {kind} / {variant}"] = summary["seconds"]
            started = time.perf_counter()
            measure(row, kept / "bundle", holdout_texts)
            result.timings[f"  measure {kind} / {variant}"] = time.perf_counter() - started
            result.rows.append(row)
    return result


# ------------------------------------------------------------------------------------------------------------
# reporting
# ------------------------------------------------------------------------------------------------------------
def gain_kept(result: DatasetResult, row: Row) -> float | None:
    """(LL_best_base - LL_row) / (LL_best_base - LL_ensemble); None where the ensemble gained no more than a tie."""
    gain = result.best_base.log_loss - result.ensemble.log_loss
    if gain <= TIE_TOLERANCE:  # no gain to keep (e.g. ensemble_selection picked the best base model alone)
        return None
    return (result.best_base.log_loss - row.log_loss) / gain


def speedup(result: DatasetResult, row: Row, size: int = 32) -> float | None:
    mine, theirs = row.p50_ms.get(size), result.ensemble.p50_ms.get(size)
    if not mine or theirs is None:
        return None
    return theirs / mine


def _f(value: float | None, fmt: str) -> str | None:
    return None if value is None else format(value, fmt)


def results_table(result: DatasetResult) -> str:
    best = result.best_base
    rows = []
    for r in result.rows:
        if r.role == "base" and r is not best:
            continue
        model = f"{r.model} (best base by holdout log loss)" if r is best else r.model
        kept = None if r.role == "base" else gain_kept(result, r)
        rows.append((
            model, f"{r.accuracy:.4f}", f"{r.log_loss:.4f}",
            _f(r.p50_ms.get(1), ".2f"), _f(r.p50_ms.get(32), ".2f"),
            _f(speedup(result, r), ".1f") if r.role != "ensemble" else None,
            _f(r.bundle_mib, ".2f"), _f(r.external_mib, ".1f"), _f(r.rss_mib, ".0f"), _f(r.rss_total_mib, ".0f"),
            _f(kept, ".0%") if kept is not None else ("n/a" if r.role != "base" else None),
            _f(r.train_seconds, ".1f"),
        ))
    return markdown_table(("model", "accuracy", "log loss", "p50 ms, 1 text", "p50 ms, 32 texts",
                           "x faster than ensemble (32)", "bundle MiB", "+ packaged encoder MiB", "RSS + MiB",
                           "RSS total MiB", "gain kept", "train s"), rows)


def all_bases_table(result: DatasetResult) -> str:
    return markdown_table(("base model", "accuracy", "log loss"),
                          [(r.model, f"{r.accuracy:.4f}", f"{r.log_loss:.4f}") for r in result.rows
                           if r.role == "base"])


def timings_table(result: DatasetResult) -> str:
    return markdown_table(("step", "seconds"), [(step.replace("  ", "&nbsp;&nbsp;"), f"{seconds:.1f}")
                                                for step, seconds in result.timings.items()])


def _beats(mine: float, theirs: float) -> bool:
    return mine - theirs < -TIE_TOLERANCE


def verdict(results: list[DatasetResult], kinds: list[str]) -> tuple[str, str]:
    """(table, sentence): per candidate (kind, soft variant) and data set, the three criteria."""
    needed = min(2, len(results))
    rows, winners = [], []
    for kind in kinds:
        for variant in CANDIDATE_VARIANTS:
            cells, passed = [], 0
            for result in results:
                row, hard = result.find("student", kind, variant), result.find("student", kind, "hard")
                if row is None or hard is None:
                    cells.append("n/a")
                    continue
                vs_hard = _beats(row.log_loss, hard.log_loss)
                vs_base = _beats(row.log_loss, result.best_base.log_loss)
                fast = speedup(result, row)
                quick = fast is not None and fast >= SPEEDUP_REQUIRED
                ok = vs_hard and vs_base and quick
                passed += ok
                cells.append(f"{'PASS' if ok else 'fail'}: vs hard {row.log_loss - hard.log_loss:+.4f}, "
                             f"vs best base {row.log_loss - result.best_base.log_loss:+.4f}, "
                             f"{_f(fast, '.1f') or 'n/a'}x")
            cpu = kind in dict(CPU_STUDENTS)
            if passed >= needed and cpu:
                winners.append(f"{kind} / {variant} ({passed}/{len(results)})")
            rows.append((f"{kind} / {variant}" + ("" if cpu else " (not a CPU candidate)"), *cells,
                         f"{passed}/{len(results)}"))
    table = markdown_table(("student", *[r.name for r in results], "sets passed"), rows)
    if len(results) < len(DATASETS):
        scope = f" (only {len(results)} of the {len(DATASETS)} data sets were run: at least {needed} must pass)"
    else:
        scope = ""
    if winners:
        sentence = (f"**Yes**{scope}: {', '.join(winners)} beat the same kind on hard labels and the best single "
                    f"base model on log loss, and answered >= {SPEEDUP_REQUIRED:.0f}x faster than the ensemble "
                    f"(32-text p50), on at least {needed} data set{'s' if needed > 1 else ''}.")
    else:
        sentence = (f"**No**{scope}: no CPU student configuration (tfidf_lr or embed_lr, soft or soft+aug) beat "
                    f"both the same kind on hard labels and the best single base model on log loss while "
                    f"answering >= {SPEEDUP_REQUIRED:.0f}x faster than the ensemble (32-text p50) on at least "
                    f"{needed} data set{'s' if needed > 1 else ''}.")
    return table, sentence


def write_markdown(results: list[DatasetResult], output: Path, command: str, started: str, total: float,
                   quick: bool, with_finetune: bool, kinds: list[str], load_range: str,
                   libraries: dict[str, float]) -> None:
    table, sentence = verdict(results, kinds)
    reading = _kept_reading(output) or (
        "_No reading written yet: compare the verdict with the per-data-set tables and write it here; re-runs "
        "keep this section._")
    finetune_line = ("- A `finetune` student (all-MiniLM-L6-v2 fine-tuned, default params) was trained in the same "
                     "three variants (`--with-finetune`); it is not a candidate of the CPU verdict."
                     if with_finetune else
                     "- No `finetune` student: fine-tuning a transformer on 2 CPU cores is slow, so it runs only "
                     "with `--with-finetune` (off in this run).")
    base_names = ", ".join(f"`{spec['name']}`" for spec in BASE_MODELS)
    parts = [
        "# Distillation benchmark: one fast student trained on the ensemble's soft targets (issue 16)",
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
        "Latencies are approximate: the 2 cores may have been shared with other work during the run; the "
        f"1-minute load average was {load_range} at the data sets' starts and the end (2.0 = both cores busy). "
        "Quality numbers are deterministic; latencies are not comparable across runs.",
        "",
        "## Setup",
        "",
        f"- Data: {', '.join(f'`{r.name}`' for r in results)} (`all.csv`, read in place from the shared data "
        f"directory). Holdout: foldstack's group-aware stratified split, fraction {HOLDOUT_FRACTION}, seed {SEED}.",
        f"- Teacher: `run_pipeline` with bench/quality.py's parameters (k={K}, {WORKERS} workers, base models "
        f"{base_names}; `embed_lr` on `{EMBEDDING_MODEL}`) and meta kind "
        "`auto`; the embedding cache warmed first (every train and holdout text embedded once).",
        "- Students: `foldstack.pipeline.distill.distill(cfg)` on the teacher's artifacts, no base model "
        "retrained; each variant a cfg differing only in its `distill` section. `hard`: alpha 1.0 (one-hot "
        "targets through the same `fit_soft` path — the same kind on hard labels, the baseline); `soft`: alpha "
        "0.3, temperature 1 (targets = 0.3 x label + 0.7 x the meta-learner's cross-validated OOF prediction); "
        f"`soft+aug`: soft plus `augment: {json.dumps(AUGMENT)}` (perturbed copies labelled by the fold members "
        "that never saw their source row). A student is one model fitted on every training row.",
        finetune_line,
        "- Accuracy and log loss: the holdout, scored by `foldstack.core.metrics.classification_report` (base "
        "models and ensemble from artifacts/eval/reports.json, students from distill's metrics). A base model's "
        "holdout prediction is the mean of its 5 fold models. The best base model is picked by holdout log loss "
        "(which flatters it).",
        f"- Latency: `foldstack.load(bundle).predict_proba` in the benchmark's own process (OMP_NUM_THREADS=1), "
        f"one warm-up call then {LATENCY_CALLS} timed calls of 1 and of 32 holdout texts, each call on different "
        "texts; the median. The bundles read no embedding cache, so embed_lr and the ensemble embed every text. "
        "The best base model is measured as it serves inside the ensemble bundle: the mean of its 5 fold models "
        "(size: its folder in the bundle; RSS: those members loaded alone).",
        "- Size: `bundle MiB` is the sum of the bundle's files; embed_lr keeps only its regression in the bundle "
        "and reads its encoder from an installed package (`+ packaged encoder MiB`, counted once per bundle). A "
        "finetune student carries its transformer inside the bundle.",
        "- Memory: a fresh interpreter imports foldstack.bundle and this script (numpy, scikit-learn's base) "
        "and the model "
        "registry (every built-in kind's module, which any bundle load imports), reads VmRSS, loads the bundle "
        "and predicts one text, reads VmRSS again: `RSS + MiB` is the difference (the model itself, its encoder "
        "and what that imports on first use), `RSS total MiB` the whole process after it. What the libraries "
        "alone cost in a fresh interpreter, one import after another (MiB of RSS): "
        + "; ".join(f"{step} {mib:.0f}" for step, mib in libraries.items()) + ".",
        "- `train s`: for the ensemble, the whole pipeline's wall time on a warm embedding cache; for a student, "
        "distill's own seconds (targets, the teacher labelling augmented copies, embedding them, the fit and the "
        "holdout scoring).",
        "- Gain kept: (LL_best_base - LL_student) / (LL_best_base - LL_ensemble); 100 % = the student is as good "
        "as the ensemble, 0 % = as good as the best base model, negative = worse than it; n/a where the ensemble "
        f"did not beat the best base model by more than {TIE_TOLERANCE} (no gain to keep).",
        "",
        "## Verdict",
        "",
        f"Question: does one CPU student configuration (tfidf_lr or embed_lr, soft or soft+aug) beat the same kind "
        f"on hard labels AND the best single base model on log loss, while answering >= {SPEEDUP_REQUIRED:.0f}x "
        "faster than the ensemble (32-text p50), on at least two of the three data sets? A log-loss difference "
        f"within ±{TIE_TOLERANCE} is a tie, not a win. Cells: log-loss deltas (negative favours the student) and "
        "the speed-up.",
        "",
        table,
        "",
        sentence,
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
            f"Meta-learner: {result.meta}.",
            "",
            results_table(result),
            "",
            all_bases_table(result),
            "",
            timings_table(result),
            "",
            *[f"- {note}" for note in result.notes],
            *[f"- {r.model}: {r.augmented_rows} augmented rows" for r in result.rows if r.augmented_rows],
            "",
        ]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(parts))


# ------------------------------------------------------------------------------------------------------------
# --tune: the tfidf_lr student's alpha x C on the teachers a full run left in the work dir (nothing retrained)
# ------------------------------------------------------------------------------------------------------------
TUNE_ALPHAS = (1.0, 0.5, 0.3)
TUNE_CS = (4.0, 32.0)
TUNE_START, TUNE_END = "<!-- tune:start -->", "<!-- tune:end -->"


def tune_dataset(name: str, data_root: Path, work_root: Path) -> list[list[Any]]:
    """Rows (alpha, C, accuracy, log loss, best base, ensemble) of tfidf_lr students on a kept teacher."""
    from foldstack.config import config_from_dict
    from foldstack.pipeline.distill import distill
    from foldstack.pipeline.stages import Layout

    work_dir = work_root / name
    params = bench_params(data_root / name / "all.csv", work_dir, work_dir / "cache", k=K, max_rows=None,
                          meta_kind="auto")
    reports_path = Layout.of(config_from_dict(params, root=REPO_ROOT)).eval / "reports.json"
    if not reports_path.is_file():
        raise SystemExit(f"{reports_path}: no teacher to tune on; run bench/distill.py (without --tune) first")
    reports = json.loads(reports_path.read_text())
    best = min((m for m in reports if m in {spec["name"] for spec in BASE_MODELS}),
               key=lambda m: reports[m]["log_loss"])
    rows = []
    for alpha in TUNE_ALPHAS:
        for c in TUNE_CS:
            section = {"enabled": True, "alpha": alpha, "student": {"kind": "tfidf_lr", "params": {"C": c}}}
            print(f"[{name}] tune: tfidf_lr alpha {alpha} C {c:g}", flush=True)
            metrics = distill(config_from_dict({**params, "distill": section}, root=REPO_ROOT))["metrics"]
            rows.append([name, alpha, f"{c:g}", f"{metrics['accuracy']:.4f}", f"{metrics['log_loss']:.4f}",
                         f"{best} {reports[best]['log_loss']:.4f}", f"{reports['ensemble']['log_loss']:.4f}"])
    return rows


def write_tuning(rows: list[list[Any]], output: Path, command: str) -> None:
    table = markdown_table(["data set", "alpha", "student C", "accuracy", "log loss", "best base (log loss)",
                            "ensemble log loss"], rows)
    text = (f"## Tuning the tfidf_lr student (`{command}`)\n\nThe teachers of the run above, reused (no base "
            "model retrained); alpha 1.0 is the same kind on hard labels. Soft targets regularise (they are "
            "never 0 or 1), so the student wants less L2: a larger C.\n\n" + table + "\n")
    body = output.read_text() if output.is_file() else ""
    if TUNE_START in body:
        head, _, rest = body.partition(TUNE_START)
        body = head + TUNE_START + "\n" + text + TUNE_END + rest.partition(TUNE_END)[2]
    else:
        body = body.rstrip("\n") + f"\n\n{TUNE_START}\n{text}{TUNE_END}\n"
    output.write_text(body)


def main(argv: list[str] | None = None) -> int:
    parser = data_set_parser(__doc__, "distill", REPO_ROOT / "bench" / ".work" / "distill")
    parser.add_argument("--with-finetune", action="store_true",
                        help="also a finetune student (all-MiniLM-L6-v2), in the same three variants; slow on CPU")
    parser.add_argument("--tune", action="store_true",
                        help="only sweep the tfidf_lr student's alpha x C on the teachers a full run left in "
                             "--work-dir; writes its own section of the results file")
    args = parser.parse_args(argv)
    output = results_path(args, "distill")
    if args.tune:
        rows = [row for name in args.datasets for row in tune_dataset(name, args.data_root.resolve(),
                                                                       args.work_dir.resolve())]
        write_tuning(rows, output, bench_command("bench/distill.py", argv))
        print(markdown_table(["data set", "alpha", "C", "accuracy", "log loss", "best base", "ensemble"], rows))
        return 0
    max_rows = QUICK_ROWS if args.quick else None
    students = list(CPU_STUDENTS) + ([FINETUNE_STUDENT] if args.with_finetune else [])
    kinds = [kind for kind, _ in students]

    started_at = time.strftime("%Y-%m-%d %H:%M %Z")
    started = time.perf_counter()
    results = [run_dataset(name, args.data_root.resolve(), args.work_dir.resolve(), max_rows=max_rows,
                           students=students, verbose=not args.quiet) for name in args.datasets]
    total = time.perf_counter() - started

    for result in results:
        print(f"\n## {result.name} ({result.n_train} train / {result.n_holdout} holdout), meta {result.meta}\n")
        print(results_table(result))
        print()
        print(timings_table(result))
    table, sentence = verdict(results, kinds)
    print("\n" + table + "\n\n" + sentence)
    command = bench_command("bench/distill.py", argv)
    load_range = " / ".join([r.load_at_start for r in results] + [_load_average()])
    libraries = library_rss()
    write_markdown(results, output, command, started_at, total, args.quick, args.with_finetune, kinds, load_range,
                   libraries)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    (args.work_dir / "distill.json").write_text(json.dumps(
        [{"name": r.name, "load_at_start": r.load_at_start, "meta": r.meta, "rows": [vars(row) for row in r.rows],
          "timings": r.timings, "notes": r.notes} for r in results], indent=2, default=str))
    print(f"\nwrote {output} ({total / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
