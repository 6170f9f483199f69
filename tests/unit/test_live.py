"""The CLI's live displays: drawn in place on a terminal, plain lines anywhere else."""

from __future__ import annotations

import io
import threading

import pytest

from pbt_actors.cli.live import LiveProgress, LiveText


@pytest.fixture(autouse=True)
def _an_ordinary_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """rich reads these at console creation; CI may set any of them."""
    monkeypatch.setenv("TERM", "xterm-256color")
    for name in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_TERMINAL", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_progress_is_plain_lines_at_a_slow_cadence() -> None:
    out = io.StringIO()
    progress = LiveProgress(True, "trials", stream=out, plain_every_s=3600)
    progress.update(1, 10, "best Q=0.5")
    progress.update(2, 10, "best Q=0.6")  # within the cadence: not printed
    progress.update(10, 10, "best Q=0.9", final=True)  # the last one always is
    progress.close()
    assert out.getvalue().splitlines() == ["trials 1/10  best Q=0.5", "trials 10/10  best Q=0.9"]
    assert "\x1b" not in out.getvalue()


def test_an_unknown_total_shows_only_the_count() -> None:
    out = io.StringIO()
    LiveProgress(True, "trials", stream=out).update(7, None, "busy 2/2")
    assert out.getvalue() == "trials 7  busy 2/2\n"


def test_on_a_terminal_progress_is_a_bar_redrawn_in_place() -> None:
    out = _Tty()
    progress = LiveProgress(True, "runs", stream=out)
    progress.update(3, 10, "run at 40 trials")
    progress.update(4, 10, "run at 41 trials")
    progress.close()
    text = out.getvalue()
    assert "\x1b[" in text and "4/10" in text and "run at 41 trials" in text
    assert text.count("\n") <= 2  # redrawn, not a line per update


def test_a_disabled_display_writes_nothing() -> None:
    out = _Tty()
    progress = LiveProgress(False, "trials", stream=out)
    progress.update(1, 2, "x", final=True)
    progress.close()
    assert out.getvalue() == ""


def test_live_text_redraws_on_a_terminal_and_appends_blocks_elsewhere() -> None:
    plain = io.StringIO()
    with LiveText(plain) as screen:
        screen.show("first")
        screen.show("second")
    assert plain.getvalue() == "first\n\nsecond\n\n"
    tty = _Tty()
    with LiveText(tty) as screen:
        screen.show("first")
        screen.show("second")
    assert "second" in tty.getvalue() and "\x1b[" in tty.getvalue()


def test_displays_start_no_thread() -> None:
    """``run`` forks its zygote before any thread: a display must never add one."""
    before = threading.active_count()
    progress = LiveProgress(True, "trials", stream=_Tty())
    progress.update(1, 2, "")
    screen = LiveText(_Tty())
    screen.show("x")
    assert threading.active_count() == before
    progress.close()
    screen.close()
