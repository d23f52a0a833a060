"""Leakage benchmark: how fold grouping changes the honesty of the OOF estimate, and what grouping costs.

    OMP_NUM_THREADS=1 .venv/bin/python bench/leakage.py            # everything, ~10-15 min on 2 cores
    OMP_NUM_THREADS=1 .venv/bin/python bench/leakage.py --quick    # smaller sets, no 1M timing

Part 1, quality: for the phrase-level set built from rt_polarity (`foldstack.core.phrases`: each training sentence
plus 2 sub-spans of it; the holdout holds 1,500 whole unseen sentences) and for the three shared sets
(`<data-root>/<name>/all.csv`, 20 % group-aware holdout), the pipeline runs with three grouping modes: exact
copies only (the old behaviour), exact + containment, and all three kinds (the default). Base models: the
three scikit-learn kinds with default params (the embedding model is left out to keep the run short); meta
`auto`. Reported: tfidf_lr's OOF and holdout accuracy with the gap and its SE, whether the leakage
diagnostics flag it, the meta-learner `auto` chose and the ensemble's holdout log loss and accuracy against
the plain mean of its bases, and the grouping's own seconds.

Part 2, scale: `group_texts` with every kind on 100k and 1M synthetic texts made from rt_polarity sentences
(each sentence, sub-spans of it, word-dropout copies, and joined pairs of sentences), each size in a fresh
process so that its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python bench/leakage.py` puts only bench/ on the path
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import machine_markdown, markdown_table  # noqa: E402

DATASETS = ("rt_polarity", "sms_spam", "ag_news_test")
MODES = {
    "exact only": {"exact": True, "containment": False, "near_duplicates": False},
    "exact + containment": {"exact": True, "containment": True, "near_duplicates": False},
    "all (default)": {},
}
BASE_MODELS = {"tfidf_lr": {"kind": "tfidf_lr"}, "char_svm": {"kind": "tfidf_char_svm"},
               "nb_svm": {"kind": "nb_svm"}}
SIZES = (100_000, 1_000_000)


def run_mode(name: str, data: dict[str, Any], grouping: dict[str, Any], work: Path) -> dict[str, Any]:
    from foldstack.config import config_from_dict
    from foldstack.common.files import read_json
    from foldstack.pipeline.stages import Layout, run_pipeline

    raw = {"seed": 0, "data": data, "folds": {"k": 5, "grouping": grouping}, "base_models": BASE_MODELS,
           "meta": {"kind": "auto"}, "validation": {"enabled": False}, "evaluate": {"plots": False},
           "tracking": {"mode": "disabled"},
           "runtime": {"artifacts_dir": str(work / "artifacts"), "cache_dir": str(work / "cache"),
                       "max_workers": 2, "device": "cpu"}}
    cfg = config_from_dict(raw, root=REPO_ROOT)
    started = time.perf_counter()
    run_pipeline(cfg)
    seconds = time.perf_counter() - started
    layout = Layout.of(cfg)
    leakage = read_json(layout.eval / "leakage.json")
    metrics = read_json(layout.eval / "metrics.json")
    stacked = read_json(layout.stack / "meta_cv.json")
    snapshot = read_json(layout.snapshot / "snapshot.json")
    row = next(r for r in leakage["rows"] if r["model"] == "tfidf_lr")
    ensemble = next(r for r in leakage["rows"] if r["model"] == "ensemble")
    return {
        "data": name, "grouping": grouping, "pipeline_seconds": round(seconds, 1),
        "grouping_stats": snapshot["grouping"], "tfidf_lr": row, "ensemble_cv": ensemble,
        "flagged": [r["model"] for r in leakage["rows"] if r["optimistic"]],
        "meta": stacked["kind"],
        "ensemble": {k: metrics[f"ensemble.{k}"] for k in ("accuracy", "log_loss")},
        "mean": {k: metrics[f"baseline:weighted_mean.{k}"] for k in ("accuracy", "log_loss")},
    }


def grouping_seconds(texts: list[str], grouping: dict[str, Any]) -> dict[str, float]:
    from foldstack.config import GroupingConfig
    from foldstack.core.grouping import group_texts

    return group_texts(texts, GroupingConfig.model_validate(grouping)).seconds


def quality(data_root: Path, work: Path, quick: bool) -> list[dict[str, Any]]:
    import pandas as pd

    from foldstack.core.phrases import write_phrase_dataset

    results = []
    n_train, n_holdout = (600, 600) if quick else (3000, 1500)
    phrases = write_phrase_dataset(data_root / "rt_polarity" / "all.csv", work / "phrases", n_train=n_train,
                                   n_holdout=n_holdout, spans_per_sentence=2, seed=0)
    sets = [(f"rt_polarity phrases ({phrases['train_rows']} rows, holdout {phrases['holdout_rows']} sentences)",
             {"path": phrases["train"], "test_path": phrases["holdout"]}, phrases["train"])]
    for name in DATASETS:
        path = data_root / name / "all.csv"
        if quick:  # a seeded sample keeps the quick run quick
            sample = work / f"{name}.csv"
            pd.read_csv(path).sample(n=1500, random_state=0).to_csv(sample, index=False)
            path = sample
        sets.append((name, {"path": str(path)}, str(path)))
    for name, data, train_path in sets:
        texts = pd.read_csv(train_path)["text"].astype(str).tolist()
        for mode, grouping in MODES.items():
            print(f"[{name}] grouping {mode}", flush=True)
            result = run_mode(name, data, grouping, work / "run")
            result["mode"] = mode
            result["grouping_seconds"] = grouping_seconds(texts, grouping)
            results.append(result)
    return results


def synthetic_texts(source: Path, n: int, seed: int = 0) -> list[str]:
    """n texts of rt_polarity's vocabulary and shape, with every kind of overlap the grouping looks for."""
    import numpy as np
    import pandas as pd

    from foldstack.core.phrases import sub_spans

    rng = np.random.default_rng(seed)
    sentences = pd.read_csv(source)["text"].astype(str).tolist()
    texts = list(sentences)
    while len(texts) < n:
        words = sentences[int(rng.integers(len(sentences)))].split()
        kind = rng.random()
        if kind < 0.4:
            texts += sub_spans(words, 2, rng)
        elif kind < 0.7:  # a lightly edited copy: one word in ten dropped
            texts.append(" ".join(w for w in words if rng.random() > 0.1))
        else:  # two sentences joined: a new container
            texts.append(" ".join(words + sentences[int(rng.integers(len(sentences)))].split()))
    return texts[:n]


def scale_child(source: str, n: int) -> None:
    """In a fresh process: time group_texts on n synthetic texts; print one JSON line."""
    from foldstack.config import GroupingConfig
    from foldstack.core.grouping import group_texts

    texts = synthetic_texts(Path(source), n)
    started = time.perf_counter()
    result = group_texts(texts, GroupingConfig())
    total = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n": n, "seconds": round(total, 1),
                      "by_kind": {k: round(v, 1) for k, v in result.seconds.items()},
                      "peak_rss_mib": round(peak_mib), **result.stats()}))


def scale(data_root: Path, sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    out = []
    for n in sizes:
        print(f"[scale] grouping {n:,} texts", flush=True)
        proc = subprocess.run([sys.executable, __file__, "--scale-child", str(n), "--data-root", str(data_root)],
                              capture_output=True, text=True, check=True)
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def report(results: list[dict[str, Any]], scaled: list[dict[str, Any]], command: str, minutes: float) -> str:
    rows = []
    for r in results:
        t, stats = r["tfidf_lr"], r["grouping_stats"]
        ens, mean = r["ensemble"], r["mean"]
        rows.append([
            r["data"], r["mode"], f"{t['oof_accuracy']:.4f}", f"{t['holdout_accuracy']:.4f}",
            f"{t['accuracy_gap']:+.4f} ± {t['accuracy_gap_se']:.4f}", ", ".join(r["flagged"]) or "none",
            r["meta"], f"{ens['log_loss'] - mean['log_loss']:+.4f} / {ens['accuracy'] - mean['accuracy']:+.4f}",
            f"{stats['n_groups']} / {stats['rows_in_multi_row_groups']}",
            f"{sum(r['grouping_seconds'].values()):.2f}",
        ])
    quality_table = markdown_table(
        ["data", "grouping", "tfidf_lr OOF acc", "holdout acc", "gap ± SE", "flagged optimistic", "meta auto chose",
         "ensemble − mean: log loss / acc", "groups / rows in shared groups", "grouping s"], rows)
    scale_table = markdown_table(
        ["texts", "total s", "exact s", "containment s", "near-duplicates s", "peak RSS MiB", "groups",
         "largest group", "rows in shared groups"],
        [[f"{s['n']:,}", s["seconds"], s["by_kind"].get("exact"), s["by_kind"].get("containment"),
          s["by_kind"].get("near_duplicates"), s["peak_rss_mib"], f"{s['n_groups']:,}", s["largest_group"],
          f"{s['rows_in_multi_row_groups']:,}"] for s in scaled]) if scaled else "(not run: --quick)"
    return "\n".join([
        "# Leakage benchmark: fold grouping and the honesty of the OOF estimate", "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {minutes:.1f} min in all. Command:", "",
        "```", command, "```", "", "## Machine", "", machine_markdown(), "",
        "## Quality: OOF vs holdout by grouping mode", "",
        "Base models tfidf_lr, char_svm (tfidf_char_svm), nb_svm with default params; k=5; meta `auto`. The gap is "
        "tfidf_lr's OOF accuracy minus its holdout accuracy (positive: optimistic) with its standard error; "
        "'flagged' lists the estimates the leakage diagnostics call optimistic beyond 3 SE (`ensemble` is the "
        "meta-learner's CV estimate). 'grouping s' is `group_texts` alone on the training file.", "",
        quality_table, "",
        "## Scale: `group_texts` with every kind on synthetic texts", "",
        "Texts: rt_polarity sentences, sub-spans of them, word-dropout copies and joined pairs (see "
        "`synthetic_texts`); each size in a fresh process, peak RSS of that process (texts included).", "",
        scale_table, "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "bench" / ".work" / "leakage")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "leakage.md")
    parser.add_argument("--quick", action="store_true", help="small samples, no 1M timing (a smoke run)")
    parser.add_argument("--scale-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scale_child:
        scale_child(str(args.data_root / "rt_polarity" / "all.csv"), args.scale_child)
        return
    started = time.perf_counter()
    results = quality(args.data_root, args.work_dir, args.quick)
    scaled = scale(args.data_root, (20_000,) if args.quick else SIZES)
    command = "OMP_NUM_THREADS=1 .venv/bin/python bench/leakage.py" + (" --quick" if args.quick else "")
    text = report(results, scaled, command, (time.perf_counter() - started) / 60)
    print(text)
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        args.out.with_suffix(".json").write_text(json.dumps({"quality": results, "scale": scaled}, indent=2,
                                                            default=str))


if __name__ == "__main__":
    main()
