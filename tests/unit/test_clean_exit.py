"""``AnsweredPeers``: whom a finished controller still waits for before it exits."""

from __future__ import annotations

from pbt_actors.control.clean_exit import SILENT_S, AnsweredPeers
from pbt_actors.model.protocol import Ack, Done


def test_a_restarted_worker_its_host_announced_is_waited_for_until_it_speaks_or_the_silence_limit() -> None:
    """Issue 24's kill test: a worker killed late is restarted under a new id, announced by its
    host's ``hello``; the run may end before the new process says a word. The controller must
    wait for it (else it asks a gone controller forever), but not longer than ``SILENT_S``."""
    peers = AnsweredPeers()
    peers.answered("sup", Ack(), ("w0", "w1"), now=0.0)
    peers.answered("w0", Ack(), now=0.0)
    peers.answered("w1", Ack(), now=0.0)
    peers.forget("w0")  # killed, reported lost
    peers.answered("sup", Ack(), ("w0b", "w1"), now=1.0)  # its restart announced
    peers.answered("w1", Done(), now=2.0)
    assert peers.not_done(now=2.0) == {"sup", "w0b"}
    peers.answered("sup", Ack(), ("w0b", "w1"), now=4.0)  # a periodic hello does not extend the wait
    assert peers.not_done(now=1.0 + SILENT_S + 0.5) == set()
    peers.answered("w0b", Done(), now=3.0)  # once it spoke and heard done: nobody left
    assert peers.not_done(now=3.0) == set()


def test_an_announced_worker_reported_lost_is_not_waited_for() -> None:
    peers = AnsweredPeers()
    peers.answered("sup", Ack(), ("wa", "wb"), now=0.0)
    peers.answered("wa", Done(), now=0.0)
    assert peers.not_done(now=0.0) == {"sup", "wb"}
    peers.forget("wb")
    assert peers.not_done(now=0.0) == set()
