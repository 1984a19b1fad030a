"""Welch's t-test and t intervals against values from statistical tables."""

import math

import pytest

from evolve.search.stats import betainc, mean_ci, t_cdf, t_ppf, welch

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("t, df, p", [(2.015, 5, 0.95), (2.776, 4, 0.975), (1.0, 1, 0.75), (0.0, 7, 0.5),
                                      (-2.228, 10, 0.025), (4.303, 2, 0.975)])
def test_t_cdf_matches_the_tables(t, df, p):
    assert t_cdf(t, df) == pytest.approx(p, abs=5e-4)
    assert t_ppf(p, df) == pytest.approx(t, abs=5e-3)


def test_betainc_edges_and_symmetry():
    assert betainc(2, 3, 0.0) == 0.0 and betainc(2, 3, 1.0) == 1.0
    assert betainc(2, 3, 0.4) == pytest.approx(1 - betainc(3, 2, 0.6), abs=1e-12)
    assert betainc(1, 1, 0.3) == pytest.approx(0.3, abs=1e-12)


def test_mean_ci_is_the_t_interval():
    m, lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and hi - m == pytest.approx(4.303 * 1.0 / math.sqrt(3), abs=1e-2)
    assert mean_ci([5.0]) == (5.0, 5.0, 5.0)


def test_welch_one_sided():
    # a clearly lower than b: small p; the other way round: p near 1
    t, df, p = welch([2.50, 2.52, 2.49], [2.70, 2.68, 2.73])
    assert t < 0 and p < 0.01 and 2 <= df <= 4
    assert welch([2.70, 2.68, 2.73], [2.50, 2.52, 2.49])[2] > 0.99
    # Welch's worked example (Wikipedia, "Welch's t-test", example 1): t = -2.46, df = 25, two-sided p = 0.021
    t, df, p = welch([27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4],
                     [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4])
    assert t == pytest.approx(-2.46, abs=0.01) and df == pytest.approx(25.0, abs=0.1)
    assert 2 * p == pytest.approx(0.021, abs=0.001)
    assert welch([1.0, 1.0], [1.0, 1.0])[2] == 0.5
    with pytest.raises(ValueError, match="2 or more values"):
        welch([1.0], [1.0, 2.0])
