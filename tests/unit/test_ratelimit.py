"""RateLimitedLog: one line per key per window, with a count of what was suppressed."""

from __future__ import annotations

import logging

import pytest

from pbt_actors.transport.ratelimit import RateLimitedLog

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logger() -> logging.Logger:
    return logging.getLogger("test.ratelimit")


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.ratelimit"]


def test_first_per_key_per_window(logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limiter = RateLimitedLog(logger, window_s=60, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        assert limiter.warning("malformed", "bad frame %d", 1)
        for i in range(1000):
            assert not limiter.warning("malformed", "bad frame %d", i)
        assert limiter.warning("version", "old peer")  # another key has its own window
        assert limiter.suppressed("malformed") == 1000
        clock.now += 59.9
        assert not limiter.warning("malformed", "bad frame %d", 2)
        clock.now += 0.1
        assert limiter.warning("malformed", "bad frame %d", 3)
        assert limiter.suppressed("malformed") == 0
        clock.now += 60
        assert limiter.warning("malformed", "bad frame %d", 4)
    assert lines(caplog) == [
        "bad frame 1",
        "old peer",
        "bad frame 3 (1001 similar suppressed in the previous 60s window)",
        "bad frame 4",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_level_and_percent_in_args(logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    limiter = RateLimitedLog(logger, clock=Clock())
    with caplog.at_level(logging.INFO, logger="test.ratelimit"):
        limiter.log(logging.INFO, "k", "peer %r sent %s", b"%s%d", "100%")
    assert lines(caplog) == ["peer b'%s%d' sent 100%"]
    assert caplog.records[0].levelno == logging.INFO


def test_key_table_is_bounded(logger: logging.Logger) -> None:
    clock = Clock()
    limiter = RateLimitedLog(logger, clock=clock, max_keys=8)
    for i in range(100):
        clock.now += 0.001
        assert limiter.warning(i, "m")
        assert len(limiter._windows) <= 8
    assert limiter.warning(0, "m")  # long evicted: logs again
    clock.now += 120
    limiter.warning("fresh", "m")
    assert len(limiter._windows) <= 8


def test_rejects_bad_window(logger: logging.Logger) -> None:
    with pytest.raises(ValueError):
        RateLimitedLog(logger, window_s=0)
