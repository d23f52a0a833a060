"""The monitor on a small trained demo project: in-domain windows pass, shifted ones are called drift, too few
requests or no texts say insufficient_data, and the reports are written."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import foldstack
from foldstack.config import load_config
from foldstack.core.demo import make_demo_frame
from foldstack.core.drift import tokens
from foldstack.errors import DataError, StageError
from foldstack.ops.monitoring.checks import CHECKS, check_window
from foldstack.ops.monitoring.feedback import Feedback, record_feedback
from foldstack.ops.monitoring.monitor import run_monitor
from foldstack.ops.monitoring.predlog import PredictionLog
from foldstack.ops.monitoring.reference import prepare_reference, served_role
from foldstack.ops.monitoring.report import REPORT_JSON, REPORT_MD, markdown, write_reports
from foldstack.pipeline.stages import run_pipeline
from tests.conftest import write_params

NEWS = ["parliament", "approved", "the", "budget", "railway", "minister", "said", "on", "tuesday", "election",
        "markets", "fell", "after", "central", "bank", "raised", "rates", "league", "striker", "scored", "twice",
        "storm", "flooded", "coastal", "towns", "officials", "warned", "of", "further", "delays", "in", "talks"]


def hashed_embedder(dim: int = 64):
    """A deterministic stand-in for a sentence embedding: hashed word counts, L2-normalised."""
    def embed(texts):
        out = np.zeros((len(texts), dim))
        for i, text in enumerate(texts):
            for token in tokens(text):
                out[i, int.from_bytes(token.encode()[:8].ljust(8, b"\0"), "little") % dim] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return embed


def news_texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(NEWS, size=rng.integers(25, 45))) + "." for _ in range(n)]


def log_frame(bundle, texts: list[str], *, store_texts: bool = True, start: str = "2026-01-01") -> pd.DataFrame:
    """Prediction-log rows as the contract describes them, predicted by `bundle`."""
    proba = bundle.predict_proba(texts)
    labels = [str(label) for label in bundle.labels]
    frame = pd.DataFrame({
        "request_id": [uuid.uuid4().hex for _ in texts],
        "time": pd.date_range(start, periods=len(texts), freq="s", tz="UTC"),
        "model_version": "1", "bundle_id": bundle.manifest["bundle_id"],
        "text_sha256": "0" * 64, "text_chars": [len(t) for t in texts],
        "text_words": np.array([len(t.split()) for t in texts], dtype=np.int32),
        "text": texts if store_texts else [None] * len(texts),
        "predicted": [labels[i] for i in proba.argmax(axis=1)], "confidence": proba.max(axis=1),
        **{f"proba_{label}": proba[:, i] for i, label in enumerate(labels)},
        "latency_ms": 1.0, "source": "serve",
    })
    return frame


@pytest.fixture(scope="module")
def project(tmp_path_factory, demo_csv):
    directory = tmp_path_factory.mktemp("monitor")
    cfg = load_config(write_params(directory, demo_csv, monitoring={"min_requests": 50,
                                                                    "checks": {"min_feedback": 20}}))
    result = run_pipeline(cfg)
    bundle = foldstack.load(result.bundle)
    reference = prepare_reference(cfg, embedder=hashed_embedder())
    return cfg, bundle, reference


def in_domain(n: int, seed: int) -> list[str]:
    return make_demo_frame(rows=n, n_classes=3, seed=seed)["text"].tolist()


def verdicts(result) -> dict[str, str]:
    return {c["name"]: c["verdict"] for c in result["checks"]}


def test_in_domain_windows_pass_every_check(project):
    cfg, bundle, reference = project
    for seed in (11, 12, 13):
        frame = log_frame(bundle, in_domain(300, seed))
        result = check_window(frame, reference, cfg.monitoring.checks, min_requests=50)
        assert verdicts(result) == {name: "ok" for name in CHECKS[:-1]} | {"accuracy_drop": "insufficient_data"}
        assert result["drift_detected"] is False and result["n_requests"] == 300
        assert [c["name"] for c in result["checks"]] == list(CHECKS)
        stats = {c["name"]: c["statistic"] for c in result["checks"]}
        assert stats["embedding_auc"] < 0.6 and stats["text_length_psi"] < 0.15


def test_another_domain_is_input_drift(project):
    cfg, bundle, reference = project
    result = check_window(log_frame(bundle, news_texts(200, 0)), reference, cfg.monitoring.checks, min_requests=50)
    found = verdicts(result)
    assert result["drift_detected"] is True
    assert found["text_length_psi"] == found["oov_rate_increase"] == found["embedding_auc"] == "drift"
    stats = {c["name"]: c["statistic"] for c in result["checks"]}
    assert stats["oov_rate_increase"] > 0.5 and stats["embedding_auc"] > 0.95


def test_a_class_balance_shift_is_prediction_drift(project):
    cfg, bundle, reference = project
    frame = make_demo_frame(rows=900, n_classes=3, seed=21)
    texts = frame.loc[frame["label"] == "positive", "text"].tolist()[:250]
    result = check_window(log_frame(bundle, texts), reference, cfg.monitoring.checks, min_requests=50)
    assert verdicts(result)["prediction_psi"] == "drift"
    assert "positive" in next(c["detail"] for c in result["checks"] if c["name"] == "prediction_psi")


def feedback_for(frame: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"request_id": frame["request_id"], "label": labels,
                         "time": frame["time"], "source": "api"})


def test_live_quality_from_feedback(project):
    cfg, bundle, reference = project
    demo = make_demo_frame(rows=300, n_classes=3, seed=31)
    frame = log_frame(bundle, demo["text"].tolist())
    truth = feedback_for(frame, demo["label"].tolist())
    good = check_window(frame, reference, cfg.monitoring.checks, min_requests=50, feedback=truth)
    assert good["n_feedback"] == 300 and verdicts(good)["accuracy_drop"] == "ok"
    assert good["quality"]["accuracy"] > 0.6 and good["quality"]["log_loss"] > 0
    assert good["quality"]["holdout"]["accuracy"] == reference.holdout_quality["accuracy"]
    # Labels that disagree with the model: live accuracy collapses.
    wrong = feedback_for(frame, [{"positive": "negative", "negative": "neutral", "neutral": "positive"}[p]
                                 for p in frame["predicted"]])
    bad = check_window(frame, reference, cfg.monitoring.checks, min_requests=50, feedback=wrong)
    assert verdicts(bad)["accuracy_drop"] == "drift" and bad["quality"]["accuracy"] == 0.0
    assert bad["drift_detected"] is True
    # A later label for the same request wins; too few labels: no verdict.
    few = check_window(frame, reference, cfg.monitoring.checks, min_requests=50, feedback=wrong.iloc[:5])
    assert verdicts(few)["accuracy_drop"] == "insufficient_data" and few["n_feedback"] == 5


def test_too_few_requests_say_insufficient_data_and_no_drift(project):
    cfg, bundle, reference = project
    result = check_window(log_frame(bundle, news_texts(20, 1)), reference, cfg.monitoring.checks, min_requests=50)
    assert set(verdicts(result).values()) == {"insufficient_data"}
    assert result["drift_detected"] is False
    assert all("fewer than monitoring.min_requests (50)" in c["detail"] for c in result["checks"])
    empty = check_window(log_frame(bundle, news_texts(1, 1)).iloc[0:0], reference, cfg.monitoring.checks,
                         min_requests=50)
    assert empty["n_requests"] == 0 and empty["window"] == {"first": None, "last": None}


def test_without_logged_texts_the_text_checks_say_why(project):
    cfg, bundle, reference = project
    frame = log_frame(bundle, news_texts(200, 2), store_texts=False)
    result = check_window(frame, reference, cfg.monitoring.checks, min_requests=50)
    found = verdicts(result)
    assert found["oov_rate_increase"] == found["embedding_auc"] == "insufficient_data"
    assert "store_texts is false" in next(c["detail"] for c in result["checks"] if c["name"] == "embedding_auc")
    assert found["text_length_psi"] == "drift"  # the length is logged without the text


def test_reports_are_written_and_readable(project, tmp_path):
    cfg, bundle, reference = project
    frame = log_frame(bundle, news_texts(120, 3))
    result = write_reports(check_window(frame, reference, cfg.monitoring.checks, min_requests=50), frame,
                           reference, tmp_path / "reports")
    saved = json.loads((tmp_path / "reports" / REPORT_JSON).read_text())
    assert saved == result and saved["drift_detected"] is True
    assert saved["plots"] == ["monitoring/text_length.png", "monitoring/class_shares.png", "monitoring/confidence.png"]
    for plot in saved["plots"]:
        assert (tmp_path / "reports" / plot).read_bytes()[:4] == b"\x89PNG"
    text = (tmp_path / "reports" / REPORT_MD).read_text()
    assert "**Drift detected: yes**" in text and "| embedding_auc | input |" in text and "**DRIFT**" in text
    assert not [p for p in (tmp_path / "reports").rglob("*") if ".tmp" in p.name]
    assert saved["quality"]["holdout"]["accuracy"] is not None
    assert "NaN" not in (tmp_path / "reports" / REPORT_JSON).read_text()


def test_markdown_escapes_pipes():
    result = {"drift_detected": False, "n_requests": 0, "n_feedback": 0, "window": {}, "generated_at": "now",
              "checks": [{"name": "x", "kind": "input", "statistic": None, "threshold": 0.2,
                          "verdict": "insufficient_data", "detail": "a | b"}]}
    assert "a \\| b" in markdown(result)


def test_reference_needs_the_trained_artifacts(tmp_path, demo_csv):
    cfg = load_config(write_params(tmp_path, demo_csv))
    with pytest.raises(StageError, match="validate"):
        prepare_reference(cfg, embedder=None)
    assert served_role(cfg, ["whatever"]) == "ensemble"


def test_the_real_embedder_caches_its_vectors(project, tmp_path):
    from foldstack.ops.monitoring.reference import CachedEmbedder

    cfg, _, _ = project
    embedder = CachedEmbedder("tiny:0", cache_dir=tmp_path / "cache", base_dir=tmp_path)
    first = embedder(["a good kettle", "a bad tent"])
    assert first.shape[0] == 2 and np.allclose(np.linalg.norm(first, axis=1), 1.0)
    again = CachedEmbedder("tiny:0", cache_dir=tmp_path / "cache", base_dir=tmp_path)
    np.testing.assert_allclose(again(["a bad tent"]), first[1:], atol=1e-6)
    assert again._encoder is None  # served from the cache: the model was never loaded


def write_log(log_dir: Path, bundle, texts: list[str], *, store_texts: bool = True) -> list[str]:
    """Log `texts` as the service does (PredictionLog, one request per 50 texts); returns the request ids."""
    proba = bundle.predict_proba(texts)
    labels = [str(label) for label in bundle.labels]
    ids = [uuid.uuid4().hex for _ in texts]
    writer = PredictionLog(log_dir, store_texts=store_texts)
    for start in range(0, len(texts), 50):
        part = slice(start, start + 50)
        writer.record(ids[part], texts[part], [labels[i] for i in proba[part].argmax(axis=1)], proba[part],
                      labels=labels, model_version="3", bundle_id=bundle.manifest["bundle_id"], latency_ms=2.0)
    writer.close()
    return ids


def test_run_monitor_reads_the_log_and_feedback_and_writes_the_reports(project, tmp_path):
    cfg, bundle, _ = project
    cfg = cfg.model_copy(update={"monitoring": cfg.monitoring.model_copy(
        update={"reports_dir": str(tmp_path / "reports"), "checks": cfg.monitoring.checks.model_copy(
            update={"embedding_model": "tiny:0"})})})
    demo = make_demo_frame(rows=200, n_classes=3, seed=41)
    ids = write_log(tmp_path / "log", bundle, in_domain(100, 40) + demo["text"].tolist())
    record_feedback(tmp_path / "log", [Feedback(i, label) for i, label in zip(ids[100:], demo["label"], strict=True)],
                    source="api")
    result = run_monitor(cfg, window=250, log_dir=tmp_path / "log")
    assert result["n_requests"] == 250 and result["n_feedback"] == 200 and result["model_version"] == "3"
    assert result["reference"]["model"] == "ensemble" and result["drift_detected"] is False
    assert verdicts(result)["accuracy_drop"] == "ok" and verdicts(result)["embedding_auc"] == "ok"
    saved = json.loads((tmp_path / "reports" / REPORT_JSON).read_text())
    assert saved["checks"] == result["checks"] and (tmp_path / "reports" / REPORT_MD).is_file()
    assert result["window"]["first"] <= result["window"]["last"]


def test_run_monitor_without_a_log_is_a_one_line_error(project, tmp_path):
    cfg, _, _ = project
    with pytest.raises(DataError, match="no prediction log at"):
        run_monitor(cfg, log_dir=tmp_path / "nothing")


def test_the_cli_exits_3_on_drift_and_2_without_a_log(project, tmp_path):
    cfg, bundle, _ = project
    params = cfg.resolve_path(".") / "params.yaml"
    write_log(tmp_path / "log", bundle, news_texts(120, 5))
    cli = [sys.executable, "-m", "foldstack.cli", "monitor", "-p", str(params),
           "--set", f"monitoring.reports_dir={tmp_path / 'reports'}", "--set", "monitoring.checks.embedding_model=tiny:0"]
    drifted = subprocess.run([*cli, "--log-dir", str(tmp_path / "log")], capture_output=True, text=True, timeout=300)
    assert drifted.returncode == 3, drifted.stderr
    assert "drift detected" in drifted.stdout and "oov_rate_increase" in drifted.stdout
    assert json.loads((tmp_path / "reports" / REPORT_JSON).read_text())["drift_detected"] is True
    missing = subprocess.run([*cli, "--log-dir", str(tmp_path / "none")], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2
    assert missing.stderr.strip().startswith("error: no prediction log at") and len(missing.stderr.splitlines()) == 1
