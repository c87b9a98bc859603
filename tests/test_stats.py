"""train.study.stats: mean ± std and the paired t-interval, checked against hand-worked examples."""

import math

import pytest

from train.study import stats


@pytest.mark.parametrize(
    ("df", "expected"),
    # Two-sided 95% values from any printed t table.
    [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)],
)
def test_t_quantile_matches_the_table(df, expected):
    assert stats.t_quantile(0.975, df) == pytest.approx(expected, abs=5e-5)


def test_paired_interval_hand_worked():
    # a - b = d = [1, 2, 3]:
    #   mean d = 6 / 3 = 2
    #   s_d^2 = ((1-2)^2 + (2-2)^2 + (3-2)^2) / (3 - 1) = 2 / 2 = 1  ->  s_d = 1
    #   standard error = s_d / sqrt(3) = 0.577350
    #   t_{0.975, df=2} = 4.302653 (table)
    #   half width = 4.302653 * 0.577350 = 2.484138
    #   interval = [2 - 2.484138, 2 + 2.484138] = [-0.484138, 4.484138]  (contains 0)
    ci = stats.paired_difference([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    assert ci.n == 3
    assert ci.mean == pytest.approx(2.0)
    assert ci.low == pytest.approx(-0.484138, abs=1e-6)
    assert ci.high == pytest.approx(4.484138, abs=1e-6)
    assert not ci.excludes_zero


def test_paired_interval_accuracy_example():
    # Accuracies of a pooler and of max pooling for seeds 0..3:
    #   a = [0.990, 0.985, 0.992, 0.987], b = [0.985, 0.982, 0.986, 0.983]
    #   d = [0.005, 0.003, 0.006, 0.004], mean d = 0.018 / 4 = 0.0045
    #   deviations [0.0005, -0.0015, 0.0015, -0.0005], squares sum = 5e-6 -> s_d^2 = 5e-6 / 3
    #   s_d = 0.00129099, standard error = s_d / 2 = 0.000645497
    #   t_{0.975, df=3} = 3.182446; half width = 0.00205426
    #   interval = [0.00244574, 0.00655426]  (excludes 0: the pooler is better)
    ci = stats.paired_difference([0.990, 0.985, 0.992, 0.987], [0.985, 0.982, 0.986, 0.983])
    assert ci.mean == pytest.approx(0.0045)
    assert ci.low == pytest.approx(0.00244574, abs=1e-8)
    assert ci.high == pytest.approx(0.00655426, abs=1e-8)
    assert ci.excludes_zero


def test_pairing_matters():
    # Same marginal spread, perfectly paired: a constant difference gives a zero-width interval,
    # which an unpaired comparison of two spread-out samples would never give.
    ci = stats.paired_difference([0.90, 0.95, 0.99], [0.89, 0.94, 0.98])
    assert ci.low == pytest.approx(0.01) and ci.high == pytest.approx(0.01)
    assert ci.excludes_zero


def test_one_pair_has_no_interval():
    ci = stats.paired_difference([0.9], [0.8])
    assert ci.mean == pytest.approx(0.1)
    assert math.isnan(ci.low) and math.isnan(ci.high)
    assert not ci.excludes_zero


def test_mean_std_uses_sample_std():
    # values 1, 2, 3, 4: mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5;
    # sample variance 5 / 3 -> std 1.290994
    mean, std = stats.mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert std == pytest.approx(1.290994, abs=1e-6)
    mean, std = stats.mean_std([0.7])
    assert mean == pytest.approx(0.7) and math.isnan(std)
    assert all(math.isnan(v) for v in stats.mean_std([]))


@pytest.mark.parametrize(
    ("a", "b"),
    [([1.0, 2.0], [1.0]), ([], [])],
)
def test_bad_inputs_raise(a, b):
    with pytest.raises(ValueError):
        stats.paired_difference(a, b)


@pytest.mark.parametrize(("p", "df"), [(0.975, 0), (1.0, 3), (0.0, 3)])
def test_t_quantile_rejects_bad_arguments(p, df):
    with pytest.raises(ValueError):
        stats.t_quantile(p, df)


def test_mean_interval_hand_worked():
    # x = [1, 2, 3]: mean 2, s = 1, standard error 1 / sqrt(3) = 0.577350, t_{0.975, 2} = 4.302653:
    # half width 2.484138 (the same numbers as the paired example above, whose d is this x).
    ci = stats.mean_interval([1.0, 2.0, 3.0])
    assert (ci.n, ci.mean) == (3, pytest.approx(2.0))
    assert ci.low == pytest.approx(2 - 2.484138, abs=1e-6)
    assert ci.high == pytest.approx(2 + 2.484138, abs=1e-6)
    one = stats.mean_interval([0.5])
    assert one.mean == 0.5 and math.isnan(one.low) and math.isnan(one.high)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        stats.mean_interval([])
