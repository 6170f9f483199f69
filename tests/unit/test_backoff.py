"""The one retry backoff: exponential, capped, optional jitter that never exceeds the cap."""

from __future__ import annotations

import pytest

from pbt_actors.common.backoff import Backoff

pytestmark = pytest.mark.timeout(10)


def test_the_sequence_doubles_and_is_capped() -> None:
    backoff = Backoff(initial_s=0.2, factor=2.0, max_s=1.0)
    assert [backoff.delay(n) for n in range(6)] == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_other_factors_and_negative_counts() -> None:
    assert [Backoff(1.0, 3.0, 100.0).delay(n) for n in range(-1, 5)] == pytest.approx([1, 1, 3, 9, 27, 81])
    assert Backoff(1.0, 1.0, 5.0).delay(50) == 1.0  # factor 1: constant


def test_a_huge_retry_count_stays_at_the_cap() -> None:
    assert Backoff(0.2, 2.0, 30.0).delay(100_000) == 30.0
    assert Backoff(0.0, 2.0, 30.0).delay(100_000) == 0.0


def test_the_defaults_are_the_supervisors() -> None:
    assert [Backoff().delay(n) for n in range(8)] == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0])


def test_jitter_draws_below_the_plain_delay_and_never_above_the_cap() -> None:
    backoff = Backoff(initial_s=1.0, factor=2.0, max_s=4.0, jitter=0.5)
    assert backoff.delay(1, rand=lambda: 0.0) == pytest.approx(2.0)
    assert backoff.delay(1, rand=lambda: 1.0) == pytest.approx(1.0)
    assert backoff.delay(9, rand=lambda: 0.5) == pytest.approx(3.0)
    assert all(2.0 <= backoff.delay(3) <= 4.0 for _ in range(200))


@pytest.mark.parametrize("kwargs", [{"initial_s": -1.0}, {"max_s": -1.0}, {"factor": 0.5}, {"jitter": 1.5}])
def test_nonsense_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)
