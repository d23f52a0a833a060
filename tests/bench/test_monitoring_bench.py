"""The window arithmetic of bench/monitoring.py: which log rows a monitor sees after n shifted requests, the
detection delay read off a grid, and the class-balance sample (the bench itself needs a served model: not here)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.monitoring import accuracy_false_alarm, balanced_sample, detection_delay, shifted_window


def test_the_window_after_n_shifted_rows_is_the_newest_rows_of_the_log() -> None:
    # 1000 in-domain rows, then 500 shifted from row 1000: after 100 shifted, rows 600..1099 (400 old + 100 new).
    rows = shifted_window(1500, 1000, 100, 500)
    assert (rows.start, rows.stop) == (600, 1100)
    assert shifted_window(1500, 1000, 500, 500) == slice(1000, 1500)  # a fully shifted window
    assert shifted_window(1500, 200, 50, 500) == slice(0, 250)  # a short log: all of it
    with pytest.raises(ValueError, match="do not fit"):
        shifted_window(1500, 1000, 501, 500)
    with pytest.raises(ValueError, match="do not fit"):
        shifted_window(1500, 1000, 0, 500)


def test_the_detection_delay_is_the_smallest_drifted_n() -> None:
    assert detection_delay({25: False, 50: False, 100: True, 150: True}) == 100
    assert detection_delay({25: False, 50: True, 100: False}) == 50  # the first alarm counts
    assert detection_delay({25: False, 50: False}) is None


def test_the_class_balance_sample_has_the_asked_share_and_distinct_rows() -> None:
    labels = np.array([0, 1] * 300)
    rows = balanced_sample(labels, 200, majority=1, share=0.8, seed=3)
    assert rows.size == len(set(rows.tolist())) == 200
    assert (labels[rows] == 1).sum() == 160
    assert not np.array_equal(rows, np.sort(rows))  # shuffled: the classes are interleaved in the stream
    assert np.array_equal(rows, balanced_sample(labels, 200, majority=1, share=0.8, seed=3))
    with pytest.raises(ValueError, match="need 380"):
        balanced_sample(labels, 400, majority=1, share=0.95, seed=0)


def test_the_accuracy_checks_false_alarm_chance_is_that_of_a_one_sided_99_percent_test() -> None:
    at_95 = accuracy_false_alarm(0.789, 100, 0.05, z=1.645)
    assert 0.03 < at_95 < 0.08  # about 6 %: a 95% bound alone would use the whole 1-in-20 budget
    assert accuracy_false_alarm(0.789, 100, 0.05) < 0.02  # the check's own bound (z = 2.326): about 1.4 %
    assert accuracy_false_alarm(0.789, 100, 0.5) < 1e-20  # a drop of 0.5: practically never by chance
