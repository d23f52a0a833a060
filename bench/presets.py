"""Presets benchmark: the shipped params files (params.yaml = default, presets/cpu-quality.yaml, presets/gpu.yaml when a
GPU is there) run as they are on the three shared data sets; their holdout quality and what each costs.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/quality.py --presets          # this, ~1 h on 2 cores
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/presets.py --quick            # smoke run

For each data set (`<data-root>/<name>/all.csv`, read in place) and each preset, the preset file is loaded and only
what places the run is overridden: the data path, the work folders (artifacts, caches, the data gate's files,
tracking off), device cpu unless the preset is gpu. Then:
1. validate + folds (the same group-aware 20 % holdout and k=5 folds for every preset: same seed, same data);
2. each `embed_lr` base model's embedding pass, timed on its own: every train and holdout text embedded once into
   the data set's embedding cache, which the presets share (all-MiniLM-L6-v2 is embedded once for both) — the
   `encode texts/s` column is this pass's throughput; it is paid once per text, not per fold or per run;
3. `foldstack.pipeline.stages.run_pipeline` (validate, folds, fold tasks in 2 processes, collect, stack with the
   preset's meta-learner, evaluate, bundle); holdout metrics from artifacts/eval/reports.json.
A preset's cost on a fresh machine is its embedding passes plus its pipeline time (minus what another preset has
already embedded).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python bench/presets.py` puts only bench/ on the path
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import machine_markdown, markdown_table  # noqa: E402
from bench.quality import (DATASETS, QUICK_ROWS, StageClock, _load_average, bench_command,  # noqa: E402
                           data_set_parser, results_path)

PRESETS = {"default": REPO_ROOT / "params.yaml", "cpu-quality": REPO_ROOT / "presets" / "cpu-quality.yaml",
           "gpu": REPO_ROOT / "presets" / "gpu.yaml"}
WORKERS = 2


@dataclass
class PresetRun:
    dataset: str
    preset: str
    bases: list[str]
    left_out: list[str]
    n_train: int
    n_holdout: int
    meta: str
    accuracy: float
    log_loss: float
    macro_f1: float
    pipeline_seconds: float
    encode: dict[str, tuple[int, float]] = field(default_factory=dict)  # model -> (texts embedded, seconds)
    load_at_start: str = ""

    @property
    def encode_seconds(self) -> float:
        return sum(seconds for _, seconds in self.encode.values())


def preset_config(preset: str, data_path: Path, work_dir: Path, cache_dir: Path, max_rows: int | None) -> Any:
    """The preset file with only the run's placement overridden."""
    from foldstack.config import config_from_dict

    raw = yaml.safe_load(PRESETS[preset].read_text(encoding="utf-8"))
    raw["data"].update({"path": str(data_path), "text_column": "text", "label_column": "label",
                        "max_rows": max_rows})
    raw["runtime"].update({"artifacts_dir": str(work_dir / "artifacts"), "cache_dir": str(cache_dir),
                           "max_workers": WORKERS, "executor": "local"})
    if preset != "gpu":
        raw["runtime"]["device"] = "cpu"
    raw["validation"].update({"context_dir": str(work_dir / "gx"), "report_dir": str(work_dir / "reports"),
                              "data_docs": False})
    raw["tracking"] = {**raw.get("tracking", {}), "mode": "disabled", "dir": str(work_dir / "wandb")}
    raw["monitoring"].update({"log_dir": str(work_dir / "monitoring"), "reports_dir": str(work_dir / "reports")})
    return config_from_dict(raw, root=PRESETS[preset].parent, source=f"{PRESETS[preset].name} ({data_path.parent.name})")


def left_out_models(preset: str, cfg: Any) -> list[str]:
    raw = yaml.safe_load(PRESETS[preset].read_text(encoding="utf-8"))
    kept = {m.name for m in cfg.base_models}
    return [name for name in raw["base_models"] if name not in kept]


def embedding_pass(cfg: Any, snapshot: Any) -> dict[str, tuple[int, float]]:
    """Embed every train and holdout text once per embed_lr base model; {model: (texts embedded, seconds)}."""
    from foldstack.models import make_model
    from foldstack.models.base import ModelContext

    timings = {}
    for spec in cfg.base_models:
        if spec.kind != "embed_lr":
            continue
        context = ModelContext(n_classes=snapshot.n_classes, device="cpu", seed=cfg.seed,
                               cache_dir=cfg.resolve_path(cfg.runtime.cache_dir), base_dir=cfg.resolve_path("."))
        model = make_model("embed_lr", spec.params, context)
        started = time.perf_counter()
        model.fit(snapshot.train["text"].tolist(), snapshot.train["label"].to_numpy())
        model.predict_proba(snapshot.holdout["text"].tolist())
        timings[spec.name] = (int(model.n_embedded_), time.perf_counter() - started)
        print(f"    {spec.name}: {model.n_embedded_} texts embedded in {timings[spec.name][1]:.0f} s", flush=True)
    return timings


def run_preset(dataset: str, preset: str, data_root: Path, work_root: Path, max_rows: int | None,
               verbose: bool) -> PresetRun:
    from foldstack.pipeline.stages import Layout, load_snapshot, make_folds, run_pipeline, validate

    data_path = data_root / dataset / "all.csv"
    work_dir = work_root / dataset / preset
    if work_dir.exists():  # fresh artifacts: nothing resumed (the data set's embedding cache is kept)
        shutil.rmtree(work_dir)
    cfg = preset_config(preset, data_path, work_dir, work_root / dataset / "cache", max_rows)
    print(f"[{dataset} / {preset}] {', '.join(m.name for m in cfg.base_models)}", flush=True)
    load_at_start = _load_average()
    validate(cfg)
    make_folds(cfg)
    snapshot = load_snapshot(cfg)
    encode = embedding_pass(cfg, snapshot)
    clock = StageClock(verbose)
    pipeline = run_pipeline(cfg, clock)
    seconds = time.perf_counter() - clock.started
    if pipeline.skipped:
        raise AssertionError(f"{pipeline.skipped} fold tasks were resumed; the work dir was not fresh")
    layout = Layout.of(cfg)
    ensemble = json.loads((layout.eval / "reports.json").read_text())["ensemble"]
    meta = json.loads((layout.stack / "meta_cv.json").read_text())["kind"]
    return PresetRun(dataset, preset, [m.name for m in cfg.base_models], left_out_models(preset, cfg),
                     len(snapshot.train), len(snapshot.holdout), str(meta), ensemble["accuracy"],
                     ensemble["log_loss"], ensemble["macro_f1"], seconds, encode, load_at_start)


def results_table(runs: list[PresetRun]) -> str:
    rows = []
    for run in runs:
        encode = "; ".join(f"{name} {n / s:.0f}" for name, (n, s) in run.encode.items() if n and s) or "-"
        rows.append([run.dataset, run.preset, ", ".join(run.bases) + (f" (left out: {', '.join(run.left_out)})"
                                                                      if run.left_out else ""),
                     f"{run.encode_seconds:.0f}", encode, f"{run.pipeline_seconds:.0f}",
                     f"{(run.encode_seconds + run.pipeline_seconds) / 60:.1f}", run.meta, f"{run.accuracy:.4f}",
                     f"{run.macro_f1:.4f}", f"{run.log_loss:.4f}"])
    return markdown_table(["data set", "preset", "base models", "embedding s", "encode texts/s", "pipeline s",
                           "total min", "meta", "accuracy", "macro F1", "log loss"], rows)


def verdicts(runs: list[PresetRun]) -> str:
    lines = []
    for dataset in dict.fromkeys(r.dataset for r in runs):
        by = {r.preset: r for r in runs if r.dataset == dataset}
        if "default" not in by:
            continue
        for preset, run in by.items():
            if preset == "default":
                continue
            delta = run.log_loss - by["default"].log_loss
            word = "beats" if delta < 0 else "does NOT beat"
            lines.append(f"- *{dataset}*: {preset} {word} default on log loss ({run.log_loss:.4f} vs "
                         f"{by['default'].log_loss:.4f}, {delta:+.4f}); accuracy {run.accuracy:.4f} vs "
                         f"{by['default'].accuracy:.4f}")
    return "\n".join(lines)


def write_markdown(runs: list[PresetRun], output: Path, command: str, started_at: str, total: float,
                   loads: str) -> None:
    text = "\n\n".join([
        "# Presets benchmark: default vs cpu-quality (vs gpu when a device is lent)",
        f"Measured {started_at}, {total / 60:.1f} min in all. Command (from the repository root):\n\n```\n{command}\n```",
        "## Machine\n\n" + machine_markdown(),
        f"The 1-minute load average at each run's start and at the end: {loads} (2.0 = both cores busy). Other "
        "work shared the 2 cores, so wall times are approximate; quality numbers are deterministic.",
        "## Setup\n\n" + __doc__.split("\n\n", 2)[2].strip(),
        "## Results\n\n" + results_table(runs),
        "## Verdicts (log loss: lower is better)\n\n" + verdicts(runs),
    ]) + "\n"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = data_set_parser(__doc__, "presets", REPO_ROOT / "bench" / ".work-presets")
    parser.add_argument("--presets", nargs="+", choices=list(PRESETS), default=None,
                        help="default: default and cpu-quality, and gpu when CUDA is available")
    args = parser.parse_args(argv)
    presets = args.presets or ["default", "cpu-quality"] + (["gpu"] if _cuda() else [])
    output = results_path(args, "presets")
    started_at, started = time.strftime("%Y-%m-%d %H:%M %Z"), time.perf_counter()
    runs = []
    for dataset in args.datasets:
        for preset in presets:
            runs.append(run_preset(dataset, preset, args.data_root.resolve(), args.work_dir.resolve(),
                                   QUICK_ROWS if args.quick else None, verbose=not args.quiet))
            print(results_table(runs[-1:]), flush=True)
    total = time.perf_counter() - started
    print("\n" + results_table(runs) + "\n\n" + verdicts(runs))
    loads = " / ".join([r.load_at_start for r in runs] + [_load_average()])
    write_markdown(runs, output, bench_command("bench/presets.py", argv), started_at, total, loads)
    print(f"\nwrote {output} ({total / 60:.1f} min)")
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    raise SystemExit(main())
