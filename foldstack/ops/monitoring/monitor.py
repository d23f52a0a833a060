"""`foldstack monitor`: the newest window of the prediction log against the training snapshot.

`run_monitor(cfg)` reads the window (`monitoring.window_requests` newest logged predictions) and the feedback
labels, runs every check (`check_window`) against a `Reference` (foldstack.ops.monitoring.reference), and
writes `<reports_dir>/monitoring.json`, `monitoring.md` and plots under `<reports_dir>/monitoring/`.
A bench or a notebook scoring many windows prepares the reference once and calls `check_window` per window.

The checks, each with the threshold of the same name in `monitoring.checks` (statistics: foldstack.core.drift):

| check | kind | statistic: drift when it is above the threshold |
|---|---|---|
| text_length_psi | input | PSI of words per text, window against the training texts |
| oov_rate_increase | input | window OOV rate minus the holdout texts' OOV rate, both against the training vocabulary |
| embedding_auc | input | domain-classifier AUC, window embeddings against as many training embeddings |
| prediction_psi | prediction | PSI of the predicted-class shares against the holdout predictions' |
| confidence_psi | prediction | PSI of the top-class probability against the holdout predictions' |
| accuracy_drop | quality | holdout accuracy minus live accuracy on the window's labelled requests; drift also needs the |
| | | drop to be more than chance: the live accuracy's one-sided 99% Wilson upper bound below the holdout's |

Fewer than `min_requests` rows: every check says `insufficient_data` and nothing is called drift; the same
for the text checks when the log holds no texts (`store_texts: false`), and for accuracy with fewer than
`min_feedback` labels. Live log loss and ECE are reported beside accuracy (`quality`), without a verdict: on
tens of labels their noise is larger than any useful threshold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from foldstack.config import Config
from foldstack.errors import DataError
from foldstack.ops.monitoring.checks import CHECKS, check_window
from foldstack.ops.monitoring.feedback import read_feedback
from foldstack.ops.monitoring.logfiles import read_prediction_log
from foldstack.ops.monitoring.reference import Reference, prepare_reference, served_role
from foldstack.ops.monitoring.report import write_reports

__all__ = ["CHECKS", "Reference", "check_window", "prepare_reference", "run_monitor"]


def run_monitor(cfg: Config, *, window: int | None = None, log_dir: Path | None = None) -> dict[str, Any]:
    """Check the newest `window` (default monitoring.window_requests) logged predictions; write the reports."""
    mon = cfg.monitoring
    log_dir = Path(log_dir) if log_dir is not None else cfg.resolve_path(mon.log_dir)
    if not (log_dir / "predictions").is_dir():
        raise DataError(f"no prediction log at {log_dir / 'predictions'}: serve or predict with "
                        "monitoring.log_predictions: true first (or give --log-dir)")
    frame = read_prediction_log(log_dir, last=window or mon.window_requests)
    feedback = read_feedback(log_dir)
    bundle_ids = frame["bundle_id"].astype(str).tolist() if len(frame) else []
    reference = prepare_reference(cfg, served_role(cfg, bundle_ids))
    result = check_window(frame, reference, cfg.monitoring.checks, min_requests=mon.min_requests,
                          feedback=feedback, ece_bins=cfg.evaluate.ece_bins)
    result["log_dir"] = str(log_dir)
    return write_reports(result, frame, reference, cfg.resolve_path(mon.reports_dir))
