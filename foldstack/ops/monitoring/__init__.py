"""Monitoring what the served model sees: the prediction log, feedback labels, the drift checks.

predlog (the buffered log writer), logfiles (the log's files: naming, schema, reading, id lookup), feedback
(true labels from the API or a file), merge (feedback rows into the training data), monitor (the checks).
"""

from foldstack.ops.monitoring.feedback import (Feedback, FeedbackError, check_feedback, import_feedback_file,
                                               read_feedback, record_feedback)
from foldstack.ops.monitoring.logfiles import read_prediction_log
from foldstack.ops.monitoring.predlog import PredictionLog, is_sampled

__all__ = ["Feedback", "FeedbackError", "PredictionLog", "check_feedback", "import_feedback_file", "is_sampled",
           "read_feedback", "read_prediction_log", "record_feedback"]
