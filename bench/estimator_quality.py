"""`FoldStackClassifier()` with its defaults (the recommended stack, meta-learner auto) on the three shared data
sets, next to the pipeline's numbers in bench/results/quality.md.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/estimator_quality.py [--max-rows N]

The split is the pipeline's own (`data.build_snapshot` with bench/quality.py's params: a 20 % group-aware
stratified holdout, seed 0), so the estimator is fitted and scored on exactly the rows quality.md's pipeline
was. As in quality.py, every train and holdout text is embedded once into the cache first (timed on its own
line), so the fit's wall time excludes embedding. Rows per data set:

- `FoldStackClassifier()`: the recommended stack (tfidf_lr, char_svm, nb_svm, minilm_lr), meta-learner auto;
- the same OOF with the meta-learner quality.md's pipeline used (`logreg`), refitted;
- `FoldStackClassifier(base_models=<quality.py's four specs>, meta={"kind": "logreg"})`: exactly the params of
  quality.md's pipeline, so the same OOF bit for bit and the same holdout numbers (a base model's name is part
  of its spec, and so of its folds' seeds: the recommended stack's `char_svm` and quality.py's
  `tfidf_char_svm` are the same kind with differently seeded LinearSVCs).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python bench/estimator_quality.py` puts only bench/ on the path
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import machine_markdown, markdown_table  # noqa: E402
from bench.quality import BASE_MODELS, DATASETS, bench_params, warm_embedding_cache  # noqa: E402
from foldstack.config import MetaConfig, config_from_dict  # noqa: E402
from foldstack.core.crossfit import fit_meta  # noqa: E402
from foldstack.core.data import build_snapshot  # noqa: E402
from foldstack.estimator import FoldStackClassifier  # noqa: E402
from foldstack.core.metrics import classification_report  # noqa: E402


def run_dataset(name: str, data_root: Path, work_root: Path, max_rows: int | None, n_jobs: int) -> dict:
    work_dir = work_root / name
    shutil.rmtree(work_dir, ignore_errors=True)
    cache_dir = work_dir / "cache"
    cfg = config_from_dict(bench_params(data_root / name / "all.csv", work_dir, cache_dir, k=5, max_rows=max_rows),
                           root=REPO_ROOT)
    snapshot = build_snapshot(cfg)
    embed_seconds, _ = warm_embedding_cache(snapshot, cache_dir)
    train_labels = snapshot.label_map.decode(snapshot.train["label"])
    clf = FoldStackClassifier(n_jobs=n_jobs, cache_dir=str(cache_dir))
    started = time.perf_counter()
    clf.fit(snapshot.train["text"], train_labels)
    fit_seconds = time.perf_counter() - started
    holdout = snapshot.holdout["text"].tolist()
    y = snapshot.holdout["label"].to_numpy()
    names = snapshot.label_map.names
    assert [str(c) for c in clf.classes_] == names, "the estimator's classes are the pipeline's label order"
    reports = {f"estimator, meta auto -> {clf.meta_kind_}": classification_report(y, clf.predict_proba(holdout), names)}
    # quality.md's pipeline stacked with logreg: the same OOF, that meta-learner.
    codes = snapshot.train["label"].to_numpy()
    _, logreg = fit_meta(MetaConfig(kind="logreg"), list(clf.oof_.values()), codes, len(names), clf.seed,
                         clf.folds_.group)
    base = clf.predictor_.base_probas(holdout)
    reports["estimator, meta logreg (same OOF)"] = classification_report(y, logreg.predict_proba(list(base.values())),
                                                                         names)
    pipeline_params = FoldStackClassifier(base_models=[dict(spec) for spec in BASE_MODELS], meta={"kind": "logreg"},
                                          n_jobs=n_jobs, cache_dir=str(cache_dir))
    reports["estimator with quality.md's pipeline params"] = classification_report(
        y, pipeline_params.fit(snapshot.train["text"], train_labels).predict_proba(holdout), names)
    return {"name": name, "n_train": len(snapshot.train), "n_holdout": len(snapshot.holdout), "reports": reports,
            "embed_seconds": embed_seconds, "fit_seconds": fit_seconds, "meta_reason": clf.meta_selection_.reason,
            "base_models": [m["name"] for m in clf.base_models_]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "bench" / ".work" / "estimator")
    parser.add_argument("--max-rows", type=int, default=None, help="a seeded sample of each set")
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "estimator.md")
    args = parser.parse_args()
    started = time.perf_counter()
    results = []
    for name in DATASETS:
        print(f"[{name}] ...", flush=True)
        results.append(run_dataset(name, args.data_root, args.work_dir, args.max_rows, args.n_jobs))
        print(f"[{name}] done in {results[-1]['fit_seconds']:.1f}s", flush=True)
    rows = [(r["name"], f"{r['n_train']} / {r['n_holdout']}", model, f"{rep['accuracy']:.4f}", f"{rep['log_loss']:.4f}")
            for r in results for model, rep in r["reports"].items()]
    sample = f"a seeded sample of {args.max_rows} rows of each set" if args.max_rows else "the full sets"
    text = "\n".join([
        "# FoldStackClassifier() with its defaults on the shared sets", "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {(time.perf_counter() - started) / 60:.1f} "
        f"min in all, {sample}. Command: `OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python "
        f"bench/estimator_quality.py" + (f" --max-rows {args.max_rows}" if args.max_rows else "") + "`", "",
        "Rows: the pipeline's own split (20 % group-aware stratified holdout, seed 0), i.e. the rows of "
        "bench/results/quality.md. Default base models: " + ", ".join(results[0]["base_models"]) + "; k = 5; "
        f"n_jobs = {args.n_jobs}. The last row of each set has exactly the params of quality.md's pipeline "
        "(its base model names too, which seed the folds), so it must equal quality.md's "
        "`foldstack ensemble (logreg)` row.", "",
        markdown_table(["data set", "train / holdout", "model", "accuracy", "log loss"], rows), "",
        markdown_table(["data set", "embedding warm-up s", "default fit s (cache warm)", "auto's reason"],
                       [(r["name"], f"{r['embed_seconds']:.1f}", f"{r['fit_seconds']:.1f}", r["meta_reason"])
                        for r in results]), "",
        "## Machine", "", machine_markdown(), "",
    ])
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
