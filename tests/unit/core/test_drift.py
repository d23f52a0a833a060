"""The drift statistics on samples with known answers: identical, shifted, separable."""

from __future__ import annotations

import math

import numpy as np
import pytest

from foldstack.core import drift


def test_psi_of_the_same_distribution_is_near_zero_and_of_a_shift_is_large():
    rng = np.random.default_rng(0)
    reference = rng.normal(0.0, 1.0, 20_000)
    assert drift.psi(reference, reference) == pytest.approx(0.0, abs=1e-12)
    same = drift.psi(reference, rng.normal(0.0, 1.0, 500))
    assert same < 0.05  # expectation about 9 / 500
    shifted = drift.psi(reference, rng.normal(1.0, 1.0, 500))
    assert shifted > 0.5
    assert drift.psi(reference, rng.normal(0.0, 3.0, 500)) > 0.5  # wider, same centre


def test_psi_matches_the_formula_by_hand():
    reference = np.repeat([1.0, 2.0, 3.0, 4.0], 25)  # quartile edges 2, 3, 4 (tied quantiles merge)
    current = np.repeat([1.0, 4.0], [10, 30])
    edges = drift.quantile_edges(reference, bins=4, min_per_bin=25)
    np.testing.assert_allclose(edges, [1.75, 2.5, 3.25])
    p = (np.array([25, 25, 25, 25]) + 0.5) / 102
    q = (np.array([10, 0, 0, 30]) + 0.5) / 42
    assert drift.psi(reference, current, bins=4, min_per_bin=10) == pytest.approx(float(np.sum((q - p) * np.log(q / p))))


def test_psi_bins_need_enough_reference_values_per_bin():
    assert drift.quantile_edges(np.arange(100.0), bins=10, min_per_bin=25).size == 3  # 4 bins
    assert drift.quantile_edges(np.arange(30.0), bins=10, min_per_bin=25).size == 0  # one bin: PSI 0
    assert drift.psi(np.arange(30.0), np.full(10, 1000.0), min_per_bin=25) == pytest.approx(0.0)
    # The smaller sample decides too: a window of 100 gets 4 bins, one of 250 or more 10.
    assert drift.quantile_edges(np.arange(5000.0), n_current=100).size == 3
    assert drift.quantile_edges(np.arange(5000.0), n_current=250).size == 9
    assert drift.quantile_edges(np.zeros(1000)).size == 1  # all tied: one edge, two bins
    with pytest.raises(ValueError, match="finite reference"):
        drift.psi(np.array([np.nan]), np.ones(3))
    with pytest.raises(ValueError, match="finite current"):
        drift.psi(np.ones(3), np.array([]))


def test_an_empty_bin_in_a_small_window_adds_a_bounded_term():
    reference = np.random.default_rng(1).normal(size=10_000)
    window = np.clip(np.random.default_rng(2).normal(size=300), -1.0, None)  # the lowest bins left empty
    assert 0.1 < drift.psi(reference, window) < 2.0


def test_categorical_psi():
    rng = np.random.default_rng(0)
    reference = rng.choice(3, size=5000, p=[0.5, 0.3, 0.2])
    assert drift.categorical_psi(reference, rng.choice(3, size=500, p=[0.5, 0.3, 0.2]), 3) < 0.03
    assert drift.categorical_psi(reference, rng.choice(3, size=500, p=[0.1, 0.2, 0.7]), 3) > 0.5
    assert drift.categorical_psi(reference, np.zeros(200, dtype=int), 3) > 1.0  # one class only
    np.testing.assert_allclose(drift.category_shares(np.array([0, 0, 2]), 3), [2 / 3, 0, 1 / 3])
    with pytest.raises(ValueError, match="0..2"):
        drift.categorical_psi(reference, np.array([3]), 3)


def test_tokens_are_the_tfidf_models_word_tokens():
    from sklearn.feature_extraction.text import CountVectorizer

    text = "Don't SHOUT: it's 2x bigger — naïve café, a b c!"
    analyzer = CountVectorizer().build_analyzer()
    assert drift.tokens(text) == analyzer(text)
    assert drift.count_words(["two words", "", " one "]).tolist() == [2, 0, 1]


def test_oov_rate():
    vocab = drift.vocabulary(["the cat sat", "on the mat"])
    assert vocab == {"the", "cat", "sat", "on", "mat"}
    assert drift.oov_rate(["the cat", "sat on the mat"], vocab) == 0.0
    assert drift.oov_rate(["the dog barked", "a"], vocab) == pytest.approx(2 / 3)  # "a" is no token
    assert math.isnan(drift.oov_rate(["", "!"], vocab))


def test_domain_classifier_auc_is_chance_on_one_distribution_and_one_on_separable_ones():
    rng = np.random.default_rng(0)
    reference, current = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    same = drift.domain_classifier_auc(reference, current, seed=0)
    assert 0.4 < same < 0.6
    assert drift.domain_classifier_auc(reference, current, seed=0) == same  # seeded
    apart = drift.domain_classifier_auc(reference, current + np.r_[2.0, np.zeros(15)], seed=0)
    assert apart > 0.9
    with pytest.raises(ValueError, match="at least 2 rows"):
        drift.domain_classifier_auc(reference[:1], current[:1])
    with pytest.raises(ValueError, match="one dim"):
        drift.domain_classifier_auc(reference, current[:, :3])


def test_domain_classifier_false_alarms_are_rare_at_the_default_threshold():
    rng = np.random.default_rng(1)
    aucs = [drift.domain_classifier_auc(rng.normal(size=(100, 32)), rng.normal(size=(100, 32)), seed=s)
            for s in range(10)]
    assert max(aucs) < 0.65


def test_wilson_upper_and_sampling():
    assert drift.wilson_upper(50, 100) == pytest.approx(0.5 + 0.082, abs=0.002)
    assert drift.wilson_upper(100, 100) == 1.0
    assert math.isnan(drift.wilson_upper(0, 0))
    rows = drift.sample_rows(10, 4, seed=3)
    assert len(set(rows.tolist())) == 4 and rows.max() < 10
    assert np.array_equal(rows, drift.sample_rows(10, 4, seed=3))
    assert sorted(drift.sample_rows(3, 5, seed=0).tolist()) == [0, 1, 2]
    assert drift.as_texts(["a", None, float("nan"), "b"]) == ["a", "b"]
