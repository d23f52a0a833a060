"""The stack stage (the meta-learner on the OOF matrices) and the evaluate stage (the holdout metrics of
every model, the leakage diagnostics, the leaderboard and plots)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from foldstack.common.files import atomic_directory, load_array, read_json, save_array, write_json
from foldstack.config import Config, MetaConfig
from foldstack.core import crossfit, leakage
from foldstack.core.data import Snapshot
from foldstack.core.meta import load_meta, make_meta
from foldstack.core.metrics import classification_report, flat_metrics, leaderboard, leaderboard_markdown
from foldstack.core.plots import write_plots
from foldstack.models.base import check_proba
from foldstack.pipeline.base_models import load_base_predictions
from foldstack.pipeline.layout import Layout, load_folds, load_snapshot, require
from foldstack.pipeline.learning_curve import write_learning_curve
from foldstack.pipeline.report import write_report

log = logging.getLogger("foldstack")


def stack(cfg: Config) -> dict[str, Any]:
    """Choose (meta.kind auto) and fit the meta-learner on the OOF matrices; estimate its quality by CV on
    the OOF, keeping the folds' overlap groups whole; predict the holdout."""
    snapshot = load_snapshot(cfg)
    groups = load_folds(cfg).group
    names, oofs, holdouts = load_base_predictions(cfg)
    y = snapshot.train["label"].to_numpy()
    selection, meta = crossfit.fit_meta(cfg.meta, oofs, y, snapshot.n_classes, cfg.seed, groups)
    holdout_proba = check_proba(meta.predict_proba(holdouts), len(snapshot.holdout), snapshot.n_classes, "meta")
    summary = {"kind": selection.config.kind, "requested": cfg.meta.kind, "reason": selection.reason,
               "base_models": names, "cv": selection.cv, "candidates": selection.candidates}
    with atomic_directory(Layout.of(cfg).stack) as tmp:
        (tmp / "meta").mkdir()
        meta.save(tmp / "meta")
        save_array(tmp / "holdout_proba.npy", holdout_proba)
        # The meta-learner's own out-of-fold predictions: what the leakage diagnostics compare to the holdout.
        save_array(tmp / "meta_cv_proba.npy", selection.held_out_proba)
        write_json(tmp / "meta_cv.json", summary)
    return summary


def holdout_reports(cfg: Config) -> tuple[dict[str, dict], dict[str, str], dict[str, np.ndarray]]:
    """Metrics on the holdout of every base model, every baseline and the ensemble."""
    require(Layout.of(cfg).stack, "stack")
    names, oofs, holdouts = load_base_predictions(cfg)
    return _holdout_reports(cfg, load_snapshot(cfg), names, oofs, holdouts)


def _holdout_reports(cfg: Config, snapshot: Snapshot, names: list[str], oofs: list[np.ndarray],
                     holdouts: list[np.ndarray]) -> tuple[dict[str, dict], dict[str, str], dict[str, np.ndarray]]:
    layout = Layout.of(cfg)
    y_train = snapshot.train["label"].to_numpy()
    y = snapshot.holdout["label"].to_numpy()
    labels = snapshot.label_map.names
    probas: dict[str, np.ndarray] = dict(zip(names, holdouts, strict=True))
    roles = {name: "base" for name in names}
    for baseline in cfg.evaluate.baselines:
        meta_cfg = MetaConfig(kind=baseline)
        probas[f"baseline:{baseline}"] = make_meta(meta_cfg, snapshot.n_classes, cfg.seed).fit(
            oofs, y_train).predict_proba(holdouts)
        roles[f"baseline:{baseline}"] = "baseline"
    probas["ensemble"] = load_array(layout.stack / "holdout_proba.npy")
    roles["ensemble"] = "ensemble"
    student = layout.student / "holdout_proba.npy"
    if cfg.distill.enabled:  # scored like the rest, on the same untouched holdout (metrics.json: student.*)
        require(student, "distill")
        probas["student"], roles["student"] = load_array(student), "student"
    reports = {name: classification_report(y, p, labels, cfg.evaluate.ece_bins) for name, p in probas.items()}
    return reports, roles, probas


def evaluate(cfg: Config) -> dict[str, Any]:
    """Holdout metrics of every model, the leakage diagnostics (OOF vs holdout), the leaderboard and plots."""
    layout = Layout.of(cfg)
    require(layout.stack, "stack")
    snapshot = load_snapshot(cfg)
    names, oofs, holdouts = load_base_predictions(cfg)  # read once: the reports and the diagnostics share them
    reports, roles, probas = _holdout_reports(cfg, snapshot, names, oofs, holdouts)
    stacked = read_json(layout.stack / "meta_cv.json")
    diagnosis = leakage.diagnose(dict(zip(names, oofs, strict=True)), snapshot.train["label"].to_numpy(),
                                 probas, snapshot.holdout["label"].to_numpy(),
                                 load_array(layout.stack / "meta_cv_proba.npy"), probas["ensemble"])
    for warning in diagnosis["warnings"]:
        log.warning("LEAKAGE? %s", warning)
    board = leaderboard(reports, roles)
    flat = flat_metrics(reports)
    flat.update({f"meta_cv.{k}": float(v) for k, v in stacked["cv"].items() if isinstance(v, (int, float))})
    flat.update(leakage.flat(diagnosis))
    grouping = snapshot.grouping
    flat.update({f"grouping.{k}": float(grouping[k]) for k in
                 ("n_groups", "largest_group", "largest_group_share", "rows_in_multi_row_groups") if k in grouping})
    markdown = "\n".join([leaderboard_markdown(board), _meta_choice_markdown(stacked, reports),
                          leakage.markdown(diagnosis)])
    with atomic_directory(layout.eval) as tmp:
        write_json(tmp / "metrics.json", flat)
        write_json(tmp / "reports.json", reports)
        write_json(tmp / "leakage.json", diagnosis)
        board.to_csv(tmp / "leaderboard.csv", index=False)
        (tmp / "leaderboard.md").write_text(markdown)
        if cfg.evaluate.plots:
            write_plots(snapshot.holdout["label"].to_numpy(), probas, snapshot.label_map.names, tmp / "plots",
                        cfg.evaluate.ece_bins, seed=cfg.seed, meta=load_meta(layout.stack / "meta"),
                        oof=(snapshot.train["label"].to_numpy(), dict(zip(names, oofs, strict=True))))
        write_report(cfg, tmp, board.to_dict(orient="records"), diagnosis)  # eval/report.html, after the plots
    if cfg.evaluate.learning_curve:  # after the box: evaluate replaces the whole of eval/, the curve included
        write_learning_curve(cfg)
    return {"metrics": flat, "leaderboard": board.to_dict(orient="records"), "leakage": diagnosis,
            "meta": {k: stacked.get(k) for k in ("kind", "requested", "reason")}}


def _meta_choice_markdown(stacked: dict[str, Any], reports: dict[str, dict]) -> str:
    """Which meta-learner was fitted and why; with `auto`, every candidate's CV score."""
    line = f"**Meta-learner:** {stacked['kind']}"
    if stacked.get("requested") == "auto":
        line = f"**Meta-learner:** `auto` chose **{stacked['kind']}**: {stacked.get('reason', '')}"
    lines = [line + ".", ""]
    if stacked.get("candidates"):
        lines += ["| candidate | CV log loss on OOF | minus best | paired SE | CV accuracy |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {kind} | {c['log_loss']:.4f} | {c['log_loss_minus_best']:+.4f} | {c['paired_se']:.4f} | "
                  f"{c['accuracy']:.4f} |" for kind, c in stacked["candidates"].items()]
        lines.append("")
    mean = reports.get("baseline:weighted_mean")
    if mean is not None:
        ensemble = reports["ensemble"]
        lines.append(f"On the holdout the ensemble's log loss is {ensemble['log_loss'] - mean['log_loss']:+.4f} and "
                     f"its accuracy {ensemble['accuracy'] - mean['accuracy']:+.4f} against the plain mean of its "
                     f"base models.")
        lines.append("")
    return "\n".join(lines)
