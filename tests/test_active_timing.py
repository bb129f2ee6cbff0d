"""When to query: the log-curve fit and the saturation vote on synthetic agreement curves."""

from __future__ import annotations

import numpy as np
import pytest

from terraseg.active import QuerySchedule, decide_query, fit_log_curve, log_curve
from terraseg.errors import ConfigError, DataError

X = np.arange(20.0)


def test_fit_recovers_a_clean_log_curve() -> None:
    y = log_curve(X, 2.0, 0.3, 0.4)
    f = fit_log_curve(X, y)
    assert f.ok
    assert (f.a, f.b, f.c) == pytest.approx((2.0, 0.3, 0.4), rel=1e-6)
    assert float(f.slope(1.0)) == pytest.approx(2.0 * 0.3 / 3.0, rel=1e-6)


def test_fit_is_unit_free() -> None:
    """x in validation indices or in training steps gives the same slope ratio and decision."""
    rng = np.random.default_rng(4)
    y = log_curve(X, 1.5, 0.08, 0.5) + rng.normal(0, 0.002, X.size)
    a = decide_query({"2d": y}, x=X)
    b = decide_query({"2d": y}, x=X * 500)
    ta, tb = a.trends["2d"], b.trends["2d"]
    assert ta.relative_change == pytest.approx(tb.relative_change, rel=1e-4)
    assert a.query == b.query


def test_saturating_noisy_log_curves_trigger_a_query() -> None:
    rng = np.random.default_rng(0)
    curves = {m: log_curve(X, 3.0, 0.05, 0.5) + rng.normal(0, 0.003, X.size) for m in ("2d", "3d", "2d+3d")}
    d = decide_query(curves)
    assert d.query and d.votes == 3
    for t in d.trends.values():
        assert abs(t.slope) < 0.15 * abs(t.start_slope)  # below (1 - r) of the start
    assert "3 of 3 modalities saturated (need 2)" in d.reason


def test_still_rising_curves_do_not_query() -> None:
    # a = 0.05: at x = 19 the slope is still 1 / (1 + 0.05 * 19) * (1 + 0.05) = 54 % of its start
    curves = {m: log_curve(X, 0.05, 0.05, 0.5) for m in ("2d", "3d")}
    d = decide_query(curves)
    assert not d.query and d.votes == 0
    assert d.trends["2d"].relative_change == pytest.approx(1 - 1.05 / 1.95, rel=1e-4)


def test_linear_curve_never_saturates() -> None:
    d = decide_query({"2d": 0.3 + 0.01 * X, "3d": 0.2 + 0.02 * X})
    assert not d.query
    for t in d.trends.values():
        assert t.relative_change < 1e-3 and not t.flat


def test_flat_curves_are_saturated() -> None:
    rng = np.random.default_rng(1)
    d = decide_query({"2d": np.full(20, 0.6), "3d": 0.55 + rng.normal(0, 0.002, 20)})
    assert d.query
    assert all(t.flat for t in d.trends.values())
    assert "2d: flat" in d.reason and "3d: flat" in d.reason


def test_too_few_points_no_query_yet() -> None:
    y = log_curve(np.arange(5.0), 3.0, 0.05, 0.5)
    d = decide_query({"2d": y, "3d": y})
    assert not d.query and "too few points (5 < 6)" in d.reason
    assert decide_query({"2d": np.full(6, 0.7)}).query  # six points are enough to decide
    # with the start at x = 1, |y'(x)| / |y'(1)| = (a + 1) / (a x + 1) > 1 / x: the slope can only
    # fall below 15 % of its start from x = 7 on, i.e. from the eighth validation
    assert not decide_query({"2d": log_curve(np.arange(7.0), 1e4, 0.05, 0.5)}).query
    assert decide_query({"2d": log_curve(np.arange(8.0), 1e4, 0.05, 0.5)}).query


def test_votes_one_per_modality() -> None:
    """One saturated modality out of three is not enough (the reference counted once per point)."""
    sat = log_curve(X, 3.0, 0.05, 0.5)
    d = decide_query({"2d": sat, "3d": 0.3 + 0.01 * X, "2d+3d": 0.3 + 0.02 * X})
    assert d.votes == 1 and not d.query
    assert decide_query({"2d": sat, "3d": 0.3 + 0.01 * X}, min_votes=1).query


def test_bad_curves() -> None:
    with pytest.raises(DataError, match="differ in length"):
        decide_query({"2d": [1, 2, 3], "3d": [1, 2]})
    with pytest.raises(DataError, match="strictly increasing"):
        fit_log_curve([0, 2, 1, 3], [0, 1, 2, 3])
    with pytest.raises(ConfigError, match=r"r must lie in \(0, 1\)"):
        decide_query({"2d": [1.0] * 8}, r=1.5)


def test_schedule_fixed_and_automatic_rounds() -> None:
    s = QuerySchedule.from_reference([0.0, 0.5, -1.0])
    assert s.fractions == (0.0, 0.5) and s.auto_rounds == 1 and s.rounds == 3
    assert s.steps(1000) == (0, 500)
    assert s.is_due(0, 1000, rounds_done=0).query
    assert not s.is_due(499, 1000, rounds_done=1).query
    assert s.is_due(500, 1000, rounds_done=1).query
    assert not s.is_due(700, 1000, rounds_done=2).query  # automatic: no curve yet
    sat = log_curve(X, 3.0, 0.05, 0.5)
    assert s.is_due(700, 1000, rounds_done=2, curves={"2d": sat, "3d": sat}).query
    assert not s.is_due(900, 1000, rounds_done=3, curves={"2d": sat, "3d": sat}).query  # all done
    with pytest.raises(ConfigError, match=r"fractions must lie in \[0, 1\]"):
        QuerySchedule((1.5,))
    with pytest.raises(ConfigError, match="at least one"):
        QuerySchedule((), 0)
