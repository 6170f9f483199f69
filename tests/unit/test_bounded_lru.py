"""The one bounded LRU every per-peer structure of the protocol session uses."""

from __future__ import annotations

import pytest

from pbt_actors.common.bounded_lru import BoundedLru


def test_storing_past_the_cap_drops_and_returns_the_least_recently_stored() -> None:
    lru: BoundedLru[str, int] = BoundedLru(2)
    assert lru.put("a", 1) == () and lru.put("b", 2) == ()
    assert lru.put("a", 3) == ()  # a is now the most recent
    assert lru.put("c", 4) == [("b", 2)]
    assert list(lru.items()) == [("a", 3), ("c", 4)] and "b" not in lru and len(lru) == 2


def test_put_all_applies_the_cap_once_with_the_same_result_as_one_put_each() -> None:
    one_by_one: BoundedLru[str, None] = BoundedLru(3)
    for key in "abcde":
        one_by_one.put(key, None)
    at_once: BoundedLru[str, None] = BoundedLru(3)
    assert at_once.put_all("abcde", None) == [("a", None), ("b", None)]
    assert list(at_once) == list(one_by_one) == ["c", "d", "e"]
    assert at_once.keys() == {"c", "d", "e"}  # a set-like view


def test_reading_does_not_refresh_and_take_all_empties() -> None:
    lru: BoundedLru[str, int] = BoundedLru(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1 and lru.get("z") is None
    assert lru.put("c", 3) == [("a", 1)]
    assert lru.pop("b") == 2 and lru.pop("b") is None
    assert dict(lru.take_all()) == {"c": 3} and not lru and len(lru) == 0


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="cap"):
        BoundedLru(0)
