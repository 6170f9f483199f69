"""The current population as an index: the COMPLETED trials no COMPLETED trial follows.

Layer 2, pure. Every trial after generation 0 names its *initiator*, the completed trial of
its population slot that spawned it (``Origin.initiator``), so a slot is a chain of
initiators and its current member is the chain's latest COMPLETED trial
(``control.final_population``). Finding those by walking generations down from the newest read
28,600 records at 100k simulated trials (slots drift hundreds of generations apart), so the
writer keeps the answer:

* ``indexes.FOLLOWED`` (a plain set index, ``index_edits``): key the initiator, item a COMPLETED
  trial naming it: "is this trial followed?" is one prefix probe;
* ``TAILS`` (this module): the ids of COMPLETED trials with no FOLLOWED entry. Not a pure
  function of one record (a completion removes its initiator), so ``tail_edits`` takes two
  probes of the store's state *after* the write's own FOLLOWED edits.

Reading the population is then O(population). A store written before the index gets it from
its migration to storage schema v2 (``pbt_actors.storage.migrations``).
"""

from __future__ import annotations

from collections.abc import Callable

from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.storage.indexes import ADD, REMOVE

_COMPLETED = TrialStatus.COMPLETED


def tail_edits(old: Trial | None, new: Trial, followed: Callable[[int], bool],
               completed: Callable[[int], bool]) -> list[tuple[int, int]]:
    """``(ADD or REMOVE, id)`` edits of ``TAILS`` that writing ``new`` over ``old`` implies.

    ``followed(i)``: some COMPLETED trial names ``i`` as initiator; ``completed(i)``: ``i`` is
    COMPLETED; both as the store stands after this write's set-index edits. Applied in order.
    """
    was = old is not None and old.status is _COMPLETED
    now = new.status is _COMPLETED
    old_initiator = old.origin.initiator if old is not None and was else None
    new_initiator = new.origin.initiator if now else None
    if was == now and (not now or old_initiator == new_initiator):
        return []
    out: list[tuple[int, int]] = []
    if was:
        out.append((REMOVE, new.id))
        if old_initiator is not None and completed(old_initiator) and not followed(old_initiator):
            out.append((ADD, old_initiator))  # its only follower left: it heads its slot again
    if now:
        if not followed(new.id):
            out.append((ADD, new.id))
        if new_initiator is not None:
            out.append((REMOVE, new_initiator))
    return out


def tails_of(completed: list[Trial]) -> list[int]:
    """The ``TAILS`` a store of these COMPLETED trials holds (building it by migration)."""
    followed = {t.origin.initiator for t in completed if t.origin.initiator is not None}
    return sorted(t.id for t in completed if t.id not in followed)
