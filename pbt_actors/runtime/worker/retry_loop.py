"""The worker's one retry loop: send a message until the controller answers it.

Layer 4. A function of the round it repeats (one request id, sent and resent by the worker's
connection), so that its rules are tested with scripted rounds and no socket:

1. an unanswered round is followed by another under a new id: forever while healthy (the
   controller may be restarting: a worker outlives it with its result intact), and once the
   process is being preempted, for ``grace_s`` more (a report or fail), not at all for a
   request that can simply be dropped (``hello``, ``request_trial``: ``grace_s=None``);
2. ``check_gone`` raises ``ControllerGone`` once the controller was silent too long (the
   worker's ``controller_timeout_s``), before each round and after each unanswered one;
3. a report or fail answered ``error(internal)`` (the controller could not apply it, which
   says nothing about the result) is sent again as a new request (a resend under the old id
   would get the cached error) after ``INTERNAL_ERROR_BACKOFF.delay(n)``, up to
   ``internal_retries`` times; after that the trial is left to its lease expiry;
4. ``error(wrong_run)`` raises ``WrongRun``: this worker is stale.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from pbt_actors.common.backoff import Backoff
from pbt_actors.model.errors import PbtError, RequestTimeout
from pbt_actors.model.protocol import Error, Message

log = logging.getLogger(__name__)

PREEMPT_GRACE_S = 20.0
RESENDS_PER_ROUND = 2
"""Resends within one round (one request id) before the worker checks for a preemption."""
INTERNAL_ERROR_RETRIES = 8
INTERNAL_ERROR_BACKOFF = Backoff(initial_s=0.2, factor=2.0, max_s=30.0)
"""A report answered ``error(internal)`` is sent again after 0.2, 0.4, ... s (8 times, ~50 s in
all); after that the trial is left to its lease expiry, like a report that never arrived."""


class ControllerGone(PbtError):
    """No reply at all from the controller for ``controller_timeout_s``: it is gone for good (a
    preempted or deleted controller job). The worker stops (``worker_process`` exits with
    ``EXIT_NO_CONTROLLER``, which its host supervisor does not restart) instead of waiting
    forever, so that the cluster manager can reschedule or end the job."""


class WrongRun(PbtError):
    """The controller serves another run than the one this worker joined (``error(wrong_run)``):
    this worker is stale (its run ended while it was away). It must exit, not take the new
    run's trials (``worker_process`` exits with ``EXIT_WRONG_RUN``, which is not restarted)."""


class Preemption(Protocol):
    """What the loop needs of the preempt event (a ``threading.Event``)."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float) -> bool: ...


Round = Callable[[Message, int], Message]
"""Send a message under one request id with this many resends; its reply or ``RequestTimeout``."""


def send_until_answered(round_trip: Round, message: Message, *, preempt: Preemption,
                        check_gone: Callable[[], None], grace_s: float | None,
                        internal_retries: int = 0) -> Message | None:
    """Send ``message`` round after round until answered (the module docstring's rules).

    Returns:
        The reply, or None when the process was preempted before one came.

    Raises:
        ControllerGone: from ``check_gone``.
        WrongRun: the controller serves another run.
    """
    preempted_at: float | None = None
    refused = 0
    while True:
        check_gone()
        try:
            reply = round_trip(message, RESENDS_PER_ROUND)
        except RequestTimeout:
            log.info("controller silent for a %s; still trying", message.TYPE)
            check_gone()
            if preempt.is_set():
                preempted_at = preempted_at or time.monotonic()
                if grace_s is None or time.monotonic() - preempted_at > grace_s:
                    return None
            continue
        if isinstance(reply, Error) and reply.code == "wrong_run":
            log.error("controller refuses this worker: %s; exiting", reply.message)
            raise WrongRun(reply.message)
        if not isinstance(reply, Error) or reply.code != "internal":
            return reply
        if refused >= internal_retries or preempt.is_set():
            return reply
        log.warning("controller failed to apply %s (%s); sending it again", message.TYPE, reply.message[:200])
        preempt.wait(INTERNAL_ERROR_BACKOFF.delay(refused))
        refused += 1
