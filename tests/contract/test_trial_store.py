"""One contract suite for every ``TrialStore``: the in-memory twin and the LMDB store.

Each test takes the ``store`` fixture, parametrized over store *factories*, so a behaviour
pinned here holds for simulations and for real runs alike (``test_store_histories`` drives
both with the same random operations and demands identical observable state).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pbt_actors.model.errors import TrialNotFound, WireError
from pbt_actors.model.records import (
    Measurement,
    Origin,
    OriginKind,
    TrialSpec,
    TrialStatus,
)
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.storage.memory import InMemoryTrialStore
from pbt_actors.storage.trial_store import TRIAL_ID_COUNTER, TrialStore, status_counter
from tests.contract.store_helpers import (
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    STOPPED,
    Boom,
    complete,
    make_ref,
    make_spec,
    run_batch,
    snapshot,
    start,
)

pytestmark = pytest.mark.timeout(30)

StoreFactory = Callable[[Path], TrialStore]



def make_memory(_: Path) -> TrialStore:
    return InMemoryTrialStore()


def make_lmdb(tmp: Path) -> TrialStore:
    return LmdbTrialStore(tmp / "store")


def make_lmdb_tiny(tmp: Path) -> TrialStore:
    """A 64 KiB map: every contract test then also crosses map growth on the way."""
    return LmdbTrialStore(tmp / "store", map_size=64 * 1024, sync=False)


STORE_FACTORIES = [
    pytest.param(make_memory, id="memory"),
    pytest.param(make_lmdb, id="lmdb"),
    pytest.param(make_lmdb_tiny, id="lmdb-tiny-map"),
]


@pytest.fixture(params=STORE_FACTORIES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TrialStore]:
    factory: StoreFactory = request.param
    s = factory(tmp_path)
    try:
        yield s
    finally:
        s.close()


# --- creation and lookup ---------------------------------------------------------------------------
def test_create_assigns_dense_ids_from_one(store: TrialStore) -> None:
    created = [store.create_trial(make_spec(lr=i / 10), now=float(i)) for i in range(5)]
    assert [t.id for t in created] == [1, 2, 3, 4, 5]
    assert store.counter(TRIAL_ID_COUNTER) == 5
    first = created[0]
    assert first.status is PENDING and first.attempt == 1 and first.created_at == 0.0
    assert dict(first.hparams) == {"lr": 0.0, "opt": "adam", "layers": 3}
    assert store.get_trial(3) == created[2]
    assert store.count() == 5 and store.count(PENDING) == 5


def test_get_and_find(store: TrialStore) -> None:
    store.create_trial(make_spec(), 0.0)
    assert store.find_trial(1) is not None
    assert store.find_trial(2) is None
    assert store.find_trial(0) is None
    assert store.find_trial(-1) is None
    with pytest.raises(TrialNotFound) as info:
        store.get_trial(2)
    assert info.value.trial_id == 2
    assert isinstance(info.value, KeyError)
    with pytest.raises(TrialNotFound):
        store.trials([1, 7])
    assert [t.id for t in store.trials([1])] == [1]


def test_create_refuses_specs_that_cannot_be_indexed(store: TrialStore) -> None:
    bad = [
        make_spec(generation=-1),
        make_spec(parent_id=-3),
        TrialSpec(generation=0, hparams={"lr": [0.1]}, start_step=0, end_step=10, origin=Origin(OriginKind.SEED)),
        TrialSpec(
            generation=0, hparams={"lr": float("nan")}, start_step=0, end_step=10, origin=Origin(OriginKind.SEED)
        ),
    ]
    for spec in bad:
        with pytest.raises(ValueError):
            store.create_trial(spec, 0.0)
    assert store.count() == 0 and store.counter(TRIAL_ID_COUNTER) == 0
    assert store.create_trial(make_spec(), 0.0).id == 1


def test_returned_records_are_not_aliased_by_later_writes(store: TrialStore) -> None:
    created = store.create_trial(make_spec(), 0.0)
    fetched = store.get_trial(1)
    start(store, 1)
    assert created.status is PENDING and fetched.status is PENDING
    assert store.get_trial(1).status is RUNNING


# --- compare-and-set -------------------------------------------------------------------------------
def test_transition_is_compare_and_set(store: TrialStore) -> None:
    t = store.create_trial(make_spec(), 0.0)
    running = t.evolve(status=RUNNING, worker="w1")
    assert not store.transition(1, RUNNING, 1, running)  # wrong expected status
    assert not store.transition(1, PENDING, 2, running)  # wrong expected attempt
    assert store.get_trial(1) == t
    assert store.count(RUNNING) == 0 and store.ids_with_status(PENDING) == [1]
    assert not store.transition(9, PENDING, 1, running.evolve(id=9))  # no such trial
    assert store.count() == 1
    assert store.transition(1, PENDING, 1, running)
    assert store.get_trial(1) == running
    assert not store.transition(1, PENDING, 1, running)  # stale writer loses
    retry = running.evolve(status=PENDING, attempt=2, worker=None)
    assert store.transition(1, RUNNING, 1, retry)
    assert not store.transition(1, PENDING, 1, retry.evolve(status=RUNNING))
    assert store.transition(1, PENDING, 2, retry.evolve(status=RUNNING))


def test_transition_refuses_mismatched_id(store: TrialStore) -> None:
    store.create_trial(make_spec(), 0.0)
    store.create_trial(make_spec(), 0.0)
    other = store.get_trial(2).evolve(status=RUNNING)
    with pytest.raises(ValueError):
        store.transition(1, PENDING, 1, other)
    assert store.get_trial(1).status is PENDING and store.get_trial(2).status is PENDING


def test_transition_refuses_lineage_change(store: TrialStore) -> None:
    store.create_trial(make_spec(), 0.0)
    store.create_trial(make_spec(generation=1, parent_id=1), 0.0)
    t = store.get_trial(2)
    for changed in (t.evolve(generation=2), t.evolve(parent_id=None)):
        with pytest.raises(ValueError):
            store.transition(2, PENDING, 1, changed.evolve(status=RUNNING))
    assert store.get_trial(2) == t and store.count(RUNNING) == 0
    assert store.generation(1) == [2] and store.children(1) == [2]


def test_record_measurement(store: TrialStore) -> None:
    store.create_trial(make_spec(), 0.0)
    m1, m2 = Measurement(10, {"loss": 1.0}), Measurement(20, {"loss": 0.5})
    assert not store.record_measurement(1, 1, m1)  # still PENDING
    start(store, 1)
    assert not store.record_measurement(1, 2, m1)  # wrong attempt
    assert not store.record_measurement(5, 1, m1)  # no such trial
    assert store.record_measurement(1, 1, m1)
    assert store.record_measurement(1, 1, m2)
    assert store.get_trial(1).measurements == (m1, m2)
    assert store.count(RUNNING) == 1


# --- status indexes and counts ---------------------------------------------------------------------
def test_status_indexes_and_counts(store: TrialStore) -> None:
    for _ in range(6):
        store.create_trial(make_spec(), 0.0)
    assert store.first_with_status(RUNNING) is None
    start(store, 2)
    start(store, 4)
    complete(store, 4)
    start(store, 5)
    t5 = store.get_trial(5)
    assert store.transition(5, RUNNING, 1, t5.evolve(status=FAILED, error="boom"))
    t6 = store.get_trial(6)
    assert store.transition(6, PENDING, 1, t6.evolve(status=STOPPED, stop_reason="budget"))
    assert store.ids_with_status(PENDING) == [1, 3]
    assert store.ids_with_status(RUNNING) == [2]
    assert store.ids_with_status(COMPLETED) == [4]
    assert store.ids_with_status(FAILED) == [5]
    assert store.ids_with_status(STOPPED) == [6]
    assert store.first_with_status(PENDING) == 1
    assert store.first_with_status(COMPLETED) == 4
    assert {s: store.count(s) for s in TrialStatus} == {
        PENDING: 2, RUNNING: 1, COMPLETED: 1, FAILED: 1, STOPPED: 1}
    assert store.count() == 6
    assert store.counter(status_counter(PENDING)) == 2
    # Same-status rewrite (a heartbeat's lease renewal) moves nothing.
    t2 = store.get_trial(2)
    assert store.transition(2, RUNNING, 1, t2.evolve(worker="w9"))
    assert store.count(RUNNING) == 1 and store.ids_with_status(RUNNING) == [2]
    # Back to the queue on a lost lease: the FIFO head is the smallest id.
    assert store.transition(2, RUNNING, 1, t2.evolve(status=PENDING, attempt=2))
    assert store.ids_with_status(PENDING) == [1, 2, 3]
    assert store.first_with_status(PENDING) == 1
    assert store.count(RUNNING) == 0 and store.first_with_status(RUNNING) is None


def test_children_generations_and_max_generation(store: TrialStore) -> None:
    assert store.max_generation() == -1
    assert store.generation(0) == [] and store.children(1) == []
    store.create_trial(make_spec(0), 0.0)  # 1
    store.create_trial(make_spec(0), 0.0)  # 2
    store.create_trial(make_spec(1, parent_id=2, kind=OriginKind.TOURNAMENT), 0.0)  # 3
    store.create_trial(make_spec(1, parent_id=1, kind=OriginKind.TOURNAMENT), 0.0)  # 4
    store.create_trial(make_spec(1, parent_id=2, kind=OriginKind.TOURNAMENT), 0.0)  # 5
    store.create_trial(make_spec(3, parent_id=5, kind=OriginKind.CONTINUE), 0.0)  # 6
    assert store.generation(0) == [1, 2]
    assert store.generation(1) == [3, 4, 5]
    assert store.generation(2) == []
    assert store.generation(3) == [6]
    assert store.generation(-1) == []
    assert store.max_generation() == 3
    assert store.children(2) == [3, 5]
    assert store.children(1) == [4]
    assert store.children(5) == [6]
    assert store.children(6) == [] and store.children(0) == [] and store.children(-1) == []
    # Transitions leave the lineage indexes alone.
    start(store, 3)
    complete(store, 3)
    assert store.children(2) == [3, 5] and store.generation(1) == [3, 4, 5]


def test_uninitiated_follows_status_and_initiated(store: TrialStore) -> None:
    for _ in range(4):
        store.create_trial(make_spec(), 0.0)
    assert store.uninitiated() == []
    for i in (1, 2, 3):
        start(store, i)
    complete(store, 2)
    complete(store, 1)
    assert store.uninitiated() == [1, 2]
    t1 = store.get_trial(1)
    assert store.transition(1, COMPLETED, 1, t1.evolve(initiated=True))
    assert store.uninitiated() == [2]
    t3 = store.get_trial(3)  # completed already initiated: never enters the set
    assert store.transition(3, RUNNING, 1, t3.evolve(status=COMPLETED, initiated=True))
    assert store.uninitiated() == [2]
    t2 = store.get_trial(2)  # leaving COMPLETED removes it as well
    assert store.transition(2, COMPLETED, 1, t2.evolve(status=STOPPED))
    assert store.uninitiated() == []


# --- checkpoint index ------------------------------------------------------------------------------
def test_checkpoint_index(store: TrialStore) -> None:
    for _ in range(3):
        store.create_trial(make_spec(), 0.0)
    assert store.checkpoint_ids() == [] and store.checkpoint(1) is None
    for i in (1, 2, 3):
        start(store, i)
    complete(store, 3)
    complete(store, 1)
    complete(store, 2, checkpoint=False)
    assert store.checkpoint_ids() == [1, 3]
    assert store.checkpoint(1) == make_ref(1)
    assert store.checkpoint(2) is None
    store.delete_checkpoint(1)
    store.delete_checkpoint(2)  # not indexed: a no-op
    store.delete_checkpoint(99)
    assert store.checkpoint_ids() == [3] and store.checkpoint(1) is None
    assert store.get_trial(1).checkpoint == make_ref(1)  # the record keeps its history
    # A record without a checkpoint does not clear the index (only GC does, explicitly).
    t3 = store.get_trial(3)
    assert store.transition(3, COMPLETED, 1, t3.evolve(initiated=True, checkpoint=None))
    assert store.checkpoint(3) == make_ref(3)
    # A new checkpoint replaces the indexed one.
    t3 = store.get_trial(3)
    assert store.transition(3, COMPLETED, 1, t3.evolve(checkpoint=make_ref(3, 2, 200)))
    assert store.checkpoint(3) == make_ref(3, 2, 200)


# --- meta and counters -----------------------------------------------------------------------------
def test_counters(store: TrialStore) -> None:
    assert store.counter("x") == 0
    assert store.incr_counter("x") == 1
    assert store.incr_counter("x", 5) == 6
    assert store.incr_counter("x", -10) == -4
    assert store.counter("x") == -4
    assert store.counter("y") == 0


def test_meta_round_trip(store: TrialStore) -> None:
    assert store.get_meta("cfg") is None
    cfg = {"name": "exp", "seed": 7, "ratio": 0.25, "on": True, "none": None,
           "nested": {"list": [1, 2, {"k": "v"}]}, "blob": b"\x00\x01"}
    store.put_meta("cfg", cfg)
    assert store.get_meta("cfg") == cfg
    got = store.get_meta("cfg")
    got["name"] = "mutated"  # callers own what they get back
    assert store.get_meta("cfg")["name"] == "exp"
    store.put_meta("pair", (1, 2))
    assert store.get_meta("pair") == [1, 2]  # a msgpack round trip, in every store
    store.put_meta("cfg", 3)
    assert store.get_meta("cfg") == 3
    with pytest.raises(WireError):
        store.put_meta("bad", object())
    assert store.get_meta("bad") is None


# --- iteration ----------------------------------------------------------------------------------
def test_iter_trials_in_id_order(store: TrialStore) -> None:
    assert list(store.iter_trials()) == []

    def body() -> None:
        for i in range(600):  # more than one LMDB read chunk
            store.create_trial(make_spec(generation=i % 3), float(i))

    run_batch(store, body)
    start(store, 300)
    ids = [t.id for t in store.iter_trials()]
    assert ids == list(range(1, 601))
    assert [t.id for t in store.iter_trials(598)] == [598, 599, 600]
    assert [t.id for t in store.iter_trials(0)][:2] == [1, 2]
    assert list(store.iter_trials(601)) == []
    assert next(t for t in store.iter_trials(300)).status is RUNNING


def test_iter_trials_stops_at_the_id_counter_of_its_start(store: TrialStore) -> None:
    for _ in range(3):
        store.create_trial(make_spec(), 0.0)
    it = store.iter_trials()
    assert next(it).id == 1
    store.create_trial(make_spec(), 0.0)
    assert [t.id for t in it] == [2, 3]


# --- batches ------------------------------------------------------------------------------------------
def test_batch_commits_together(store: TrialStore) -> None:
    def body() -> None:
        store.create_trial(make_spec(), 0.0)
        store.create_trial(make_spec(generation=1, parent_id=1), 0.0)
        store.incr_counter("a", 2)
        store.put_meta("note", "x")

    run_batch(store, body)
    assert store.count() == 2 and store.counter("a") == 2 and store.get_meta("note") == "x"
    assert store.children(1) == [2]


def test_batch_is_atomic_on_exception(store: TrialStore) -> None:
    store.create_trial(make_spec(), 0.0)
    start(store, 1)
    store.put_meta("note", "before")
    before = snapshot(store)

    def body() -> None:
        store.create_trial(make_spec(generation=1, parent_id=1), 0.0)
        complete(store, 1)
        store.delete_checkpoint(1)
        store.incr_counter("a", 3)
        store.put_meta("note", "during")
        store.put_meta("cfg", {"x": 1})
        raise Boom

    with pytest.raises(Boom):
        run_batch(store, body)
    assert snapshot(store) == before
    assert store.count() == 1 and store.counter(TRIAL_ID_COUNTER) == 1
    assert store.get_trial(1).status is RUNNING
    assert store.counter("a") == 0 and store.get_meta("note") == "before"
    # The store is fully usable afterwards and ids stay dense.
    assert store.create_trial(make_spec(), 0.0).id == 2


def test_nested_batch_joins_the_outer_one(store: TrialStore) -> None:
    def failing() -> None:
        store.create_trial(make_spec(), 0.0)
        with store.batch():
            store.create_trial(make_spec(), 0.0)
            store.incr_counter("a")
        assert store.count() == 2  # the inner exit did not end the outer batch
        raise Boom

    with pytest.raises(Boom):
        run_batch(store, failing)
    assert store.count() == 0 and store.counter("a") == 0

    def body() -> None:
        store.create_trial(make_spec(), 0.0)
        with store.batch():
            store.create_trial(make_spec(), 0.0)
        with store.batch(), store.batch():
            store.incr_counter("b")

    run_batch(store, body)
    assert store.count() == 2 and store.counter("b") == 1
    assert store.create_trial(make_spec(), 0.0).id == 3  # the batch is over: plain writes


def test_reads_inside_a_batch_see_its_writes(store: TrialStore) -> None:
    store.create_trial(make_spec(), 0.0)

    def body() -> None:
        t = store.create_trial(make_spec(generation=2, parent_id=1), 0.0)
        assert store.get_trial(t.id) == t
        assert store.count() == 2 and store.count(PENDING) == 2
        assert store.ids_with_status(PENDING) == [1, 2]
        assert store.children(1) == [2] and store.max_generation() == 2
        start(store, 1)
        complete(store, 1)
        assert store.first_with_status(COMPLETED) == 1
        assert store.uninitiated() == [1] and store.checkpoint_ids() == [1]
        assert store.incr_counter("a") == 1 and store.counter("a") == 1
        store.put_meta("note", "inside")
        assert store.get_meta("note") == "inside"
        assert [x.id for x in store.iter_trials()] == [1, 2]

    run_batch(store, body)


def test_closed_store_refuses_calls(store: TrialStore) -> None:
    store.create_trial(make_spec(), 0.0)
    store.close()
    with pytest.raises(RuntimeError):
        store.find_trial(1)
    with pytest.raises(RuntimeError):
        store.create_trial(make_spec(), 0.0)
    with pytest.raises(RuntimeError), store.batch():
        pass
    store.close()  # idempotent


def test_store_is_a_context_manager(store: TrialStore) -> None:
    with store as s:
        s.create_trial(make_spec(), 0.0)
    with pytest.raises(RuntimeError):
        store.count()

