"""The checks of one window of the prediction log against a `Reference` (see foldstack.ops.monitoring.monitor
for the table of checks, their statistics and thresholds). `check_window` writes nothing and reads nothing:
a bench scores many windows against one prepared reference by calling it repeatedly."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from foldstack.config import DriftChecksConfig
from foldstack.core import drift
from foldstack.ops.monitoring.reference import Reference, quality

# accuracy_drop also needs the live accuracy's one-sided 99% Wilson bound below the holdout's: at 95% an unchanged
# model is called drifted in about 6% of 100-label windows (bench/results/monitoring.md), the whole 1-in-20
# false-alarm budget on its own; at 99% about 1.4%.
ACCURACY_BOUND_Z = 2.326

__all__ = ["CHECKS", "check_window", "predicted_codes"]

CHECKS = ("text_length_psi", "oov_rate_increase", "embedding_auc", "prediction_psi", "confidence_psi",
          "accuracy_drop")
_KINDS = {"text_length_psi": "input", "oov_rate_increase": "input", "embedding_auc": "input",
          "prediction_psi": "prediction", "confidence_psi": "prediction", "accuracy_drop": "quality"}
_THRESHOLD_KEYS = {"text_length_psi": "length_psi"}


def check_window(frame: pd.DataFrame, reference: Reference, checks: DriftChecksConfig, *, min_requests: int,
                 feedback: pd.DataFrame | None = None, ece_bins: int = 15) -> dict[str, Any]:
    """Every check of one window (prediction-log rows) against `reference`: the monitoring.json dict
    (without "plots"). Writes nothing; cheap to call many times with one reference."""
    frame = frame.sort_values("time", kind="stable") if len(frame) else frame
    labelled = _join_feedback(frame, feedback)
    n = len(frame)
    if n < min_requests:
        reason = f"{n} requests in the window, fewer than monitoring.min_requests ({min_requests})"
        results = [_verdict(name, None, _threshold(checks, name), reason) for name in CHECKS]
        live: dict[str, Any] = {}
    else:
        live, accuracy = _quality_check(frame, labelled, reference, checks, ece_bins)
        results = [_length_check(frame, reference, checks), _oov_check(frame, reference, checks, min_requests),
                   _embedding_check(frame, reference, checks, min_requests),
                   *_prediction_checks(frame, reference, checks), accuracy]
    times = pd.to_datetime(frame["time"], utc=True) if n else pd.Series([], dtype="datetime64[ns, UTC]")
    versions = frame["model_version"].astype(str).tolist() if n else []
    return {
        "drift_detected": any(r["verdict"] == "drift" for r in results),
        "n_requests": n, "n_feedback": len(labelled),
        "window": {"first": times.iloc[0].isoformat() if n else None, "last": times.iloc[-1].isoformat() if n else None},
        "model_version": versions[-1] if versions else "", "model_versions": sorted(set(versions)),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "checks": results, "quality": live, "reference": reference.summary(),
    }


def _threshold(checks: DriftChecksConfig, name: str) -> float:
    return float(getattr(checks, _THRESHOLD_KEYS.get(name, name)))


def _verdict(name: str, statistic: float | None, threshold: float, detail: str, *,
             drift: bool | None = None) -> dict[str, Any]:
    """One check's entry: `drift` None means "statistic > threshold"; no statistic: insufficient_data."""
    if statistic is None or not math.isfinite(statistic):
        verdict, statistic = "insufficient_data", None
    else:
        verdict = "drift" if (statistic > threshold if drift is None else drift) else "ok"
    return {"name": name, "kind": _KINDS[name], "statistic": None if statistic is None else float(statistic),
            "threshold": threshold, "verdict": verdict, "detail": detail}


def _texts(frame: pd.DataFrame) -> list[str]:
    return drift.as_texts(frame["text"].tolist()) if "text" in frame.columns else []


def _no_texts(n_texts: int, n: int, min_requests: int) -> str | None:
    if n_texts == 0:
        return "the log holds no texts (monitoring.store_texts is false)"
    if n_texts < min_requests:
        return f"only {n_texts} of {n} rows carry their text, fewer than monitoring.min_requests ({min_requests})"
    return None


def _length_check(frame: pd.DataFrame, ref: Reference, checks: DriftChecksConfig) -> dict[str, Any]:
    words = frame["text_words"].to_numpy(dtype=np.float64)
    value = drift.psi(ref.train_words, words)
    detail = (f"median words {np.median(words):g} in the window, {np.median(ref.train_words):g} in the "
              f"{ref.train_words.size} training texts")
    return _verdict("text_length_psi", value, checks.length_psi, detail)


def _oov_check(frame: pd.DataFrame, ref: Reference, checks: DriftChecksConfig, min_requests: int) -> dict[str, Any]:
    texts = _texts(frame)
    missing = _no_texts(len(texts), len(frame), min_requests)
    if missing:
        return _verdict("oov_rate_increase", None, checks.oov_rate_increase, missing)
    rate = drift.oov_rate(texts, ref.vocabulary)
    detail = (f"OOV rate {rate:.4f} in the window, {ref.holdout_oov:.4f} in the holdout texts (training "
              f"vocabulary of {len(ref.vocabulary)} tokens)")
    return _verdict("oov_rate_increase", rate - ref.holdout_oov, checks.oov_rate_increase, detail)


def _embedding_check(frame: pd.DataFrame, ref: Reference, checks: DriftChecksConfig,
                     min_requests: int) -> dict[str, Any]:
    texts = _texts(frame)
    missing = _no_texts(len(texts), len(frame), min_requests)
    if missing is None and ref.embedder is None:
        missing = "the embedding check is off (no embedder)"
    if missing:
        return _verdict("embedding_auc", None, checks.embedding_auc, missing)
    pool = ref.embeddings()
    current = ref.embedder(texts)
    sample = pool[drift.sample_rows(len(pool), len(current), ref.seed)]
    current = current[drift.sample_rows(len(current), len(sample), ref.seed)]  # as many on each side
    auc = drift.domain_classifier_auc(sample, current, seed=ref.seed)
    detail = (f"{len(current)} window texts against {len(sample)} training texts, {checks.embedding_model}, "
              "5-fold logistic regression")
    return _verdict("embedding_auc", auc, checks.embedding_auc, detail)


def predicted_codes(frame: pd.DataFrame, labels: list[str]) -> np.ndarray:
    """The window's predicted classes as the reference's class codes (-1: a label it does not know)."""
    index = {label: i for i, label in enumerate(labels)}
    return np.fromiter((index.get(str(v), -1) for v in frame["predicted"]), dtype=np.int64, count=len(frame))


def _prediction_checks(frame: pd.DataFrame, ref: Reference, checks: DriftChecksConfig) -> list[dict[str, Any]]:
    codes = predicted_codes(frame, ref.labels)
    known = codes >= 0
    shares = drift.category_shares(codes[known], len(ref.labels))
    expected = drift.category_shares(ref.holdout_predicted, len(ref.labels))
    detail = ", ".join(f"{label} {q:.2f} (holdout {p:.2f})" for label, q, p in zip(ref.labels, shares, expected,
                                                                                      strict=True))
    if not known.all():
        detail += f"; {int((~known).sum())} rows predict labels the model in artifacts/ does not have"
    value = drift.categorical_psi(ref.holdout_predicted, codes[known], len(ref.labels)) if known.any() else None
    confidence = frame["confidence"].to_numpy(dtype=np.float64)
    conf_detail = (f"median confidence {np.median(confidence):.3f} in the window, "
                   f"{np.median(ref.holdout_confidence):.3f} on the {ref.holdout_confidence.size} holdout rows "
                   f"({ref.role})")
    return [_verdict("prediction_psi", value, checks.prediction_psi, "class shares: " + detail),
            _verdict("confidence_psi", drift.psi(ref.holdout_confidence, confidence), checks.confidence_psi,
                     conf_detail)]


def _join_feedback(frame: pd.DataFrame, feedback: pd.DataFrame | None) -> pd.DataFrame:
    if feedback is None or not len(feedback) or not len(frame):
        return frame.iloc[0:0].assign(label=pd.Series(dtype=object))
    labels = feedback[["request_id", "label"]].drop_duplicates("request_id", keep="last")
    return frame.merge(labels, on="request_id", how="inner")


def _quality_check(frame: pd.DataFrame, labelled: pd.DataFrame, ref: Reference, checks: DriftChecksConfig,
                   ece_bins: int) -> tuple[dict[str, Any], dict[str, Any]]:
    holdout = ref.holdout_quality
    n_fb = len(labelled)
    if n_fb < checks.min_feedback:
        reason = (f"{n_fb} labelled requests in the window, fewer than monitoring.checks.min_feedback "
                  f"({checks.min_feedback})")
        return {"n": n_fb, "holdout": holdout}, _verdict("accuracy_drop", None, checks.accuracy_drop, reason)
    index = {label: i for i, label in enumerate(ref.labels)}
    y = labelled["label"].astype(str).map(index)
    labelled, y = labelled[y.notna()], y[y.notna()].to_numpy(dtype=np.int64)
    columns = [f"proba_{label}" for label in ref.labels]
    if all(c in labelled.columns for c in columns):
        live = quality(y, labelled[columns].to_numpy(dtype=np.float64), ece_bins)
    else:  # without the probabilities: accuracy from the predicted labels only
        correct = predicted_codes(labelled, ref.labels) == y
        live = {"n": int(y.size), "accuracy": float(correct.mean()) if y.size else math.nan,
                "log_loss": math.nan, "ece": math.nan}
    drop = holdout["accuracy"] - live["accuracy"]
    upper = drift.wilson_upper(round(live["accuracy"] * live["n"]), live["n"], ACCURACY_BOUND_Z)
    detail = (f"live accuracy {live['accuracy']:.4f} on {live['n']} labelled requests (99% upper bound "
              f"{upper:.4f}), holdout {holdout['accuracy']:.4f}; live log loss {live['log_loss']:.4f} "
              f"(holdout {holdout['log_loss']:.4f}), ECE {live['ece']:.4f} (holdout {holdout['ece']:.4f})")
    verdict = _verdict("accuracy_drop", drop, checks.accuracy_drop, detail,
                       drift=drop > checks.accuracy_drop and upper < holdout["accuracy"])
    return {**live, "holdout": holdout}, verdict
