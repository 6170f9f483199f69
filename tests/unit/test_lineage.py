"""Lineage DAGs, schedules and their JSON form, replay planning, export rows: pure, in memory."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbt_actors.model.errors import LineageError, ReplayError, TrialNotFound
from pbt_actors.model.records import Measurement, Origin, OriginKind, TrialSpec, TrialStatus
from pbt_actors.storage.memory import InMemoryTrialStore
from pbt_actors.tools.export import COLUMNS, export_rows, trial_rows, write_rows
from pbt_actors.tools.lineage import (
    SCHEDULE_FORMAT,
    SCHEDULE_VERSION,
    Schedule,
    Segment,
    lineage,
    resolve_trial,
    schedule,
)
from pbt_actors.tools.replay import plan, start_checkpoint

SEED = Origin(OriginKind.SEED)
CHILD = Origin(OriginKind.TOURNAMENT)


def add(store: InMemoryTrialStore, generation: int, start: int, end: int, parent: int | None = None,
        crossover: int | None = None, **hparams: object) -> int:
    spec = TrialSpec(
        generation=generation,
        hparams=hparams or {"lr": 0.1},
        start_step=start,
        end_step=end,
        origin=CHILD if parent else SEED,
        parent_id=parent,
        crossover_id=crossover,
    )
    return store.create_trial(spec, now=0.0).id


def chain_store() -> InMemoryTrialStore:
    """1, 2 seeds; 3 <- 1 (x 2); 4 <- 2; 5 <- 3 (x 4); 6 <- 5."""
    store = InMemoryTrialStore()
    add(store, 0, 0, 10, lr=0.1)
    add(store, 0, 0, 10, lr=0.2)
    add(store, 1, 10, 20, parent=1, crossover=2, lr=0.15)
    add(store, 1, 10, 20, parent=2, lr=0.25)
    add(store, 2, 20, 30, parent=3, crossover=4, lr=0.3)
    add(store, 3, 30, 35, parent=5, lr=0.35)
    return store


# --- lineage -------------------------------------------------------------------------------------
@pytest.mark.timeout(10)
def test_lineage_holds_parents_and_crossover_sources_in_topological_order() -> None:
    dag = lineage(chain_store(), 6)
    assert set(dag.order) == {1, 2, 3, 4, 5, 6}
    assert dag.order[-1] == 6
    position = {i: n for n, i in enumerate(dag.order)}
    edges = {(e.source, e.target, e.kind) for e in dag.edges}
    assert edges == {(1, 3, "parent"), (2, 3, "crossover"), (2, 4, "parent"), (3, 5, "parent"),
                     (4, 5, "crossover"), (5, 6, "parent")}
    assert all(position[s] < position[t] for s, t, _ in edges)


@pytest.mark.timeout(10)
def test_lineage_without_crossover_is_the_warm_start_chain() -> None:
    assert lineage(chain_store(), 6, crossover=False).order == [1, 3, 5, 6]


@pytest.mark.timeout(10)
def test_lineage_json_lists_trials_and_edges() -> None:
    data = json.loads(json.dumps(lineage(chain_store(), 5).to_dict()))
    assert data["format"] == "pbt-actors-lineage" and data["trial_id"] == 5
    assert [t["id"] for t in data["trials"]] == data["order"]
    assert {"from": 4, "to": 5, "kind": "crossover"} in data["edges"]


@pytest.mark.timeout(10)
def test_lineage_refuses_a_dangling_parent_and_a_cycle() -> None:
    store = InMemoryTrialStore()
    add(store, 0, 0, 10, parent=99)
    with pytest.raises(LineageError, match="99"):
        lineage(store, 1)
    loop = InMemoryTrialStore()
    add(loop, 0, 0, 10, parent=2)
    add(loop, 1, 10, 20, parent=1)
    with pytest.raises(LineageError, match="cycle"):
        lineage(loop, 2)
    with pytest.raises(LineageError, match="loops"):
        schedule(loop, 2)
    with pytest.raises(TrialNotFound):
        lineage(loop, 3)


@st.composite
def random_dags(draw: st.DrawFn) -> tuple[list[tuple[int | None, int | None]], int]:
    """``n`` trials whose ids are a random permutation of a hidden topological rank, so that
    id order is NOT a topological order: the sort must really sort."""
    n = draw(st.integers(1, 25))
    rank_of_id = draw(st.permutations(list(range(n))))  # rank_of_id[id - 1]
    id_of_rank = {r: i + 1 for i, r in enumerate(rank_of_id)}
    links: list[tuple[int | None, int | None]] = []
    for trial_index in range(n):
        rank = rank_of_id[trial_index]
        earlier = [id_of_rank[r] for r in range(rank)]
        parent = draw(st.sampled_from([None, *earlier])) if earlier and draw(st.booleans()) else None
        crossover = draw(st.sampled_from(earlier)) if earlier and draw(st.integers(0, 2)) == 0 else None
        links.append((parent, crossover))
    target = draw(st.integers(1, n))
    return links, target


@pytest.mark.timeout(60)
@settings(max_examples=200, deadline=None)
@given(random_dags())
def test_topological_order_holds_on_random_dags_with_crossover(case: tuple[list[tuple[int | None, int | None]], int]
                                                              ) -> None:
    links, target = case
    store = InMemoryTrialStore()
    for i, (parent, crossover) in enumerate(links, start=1):
        spec = TrialSpec(
            generation=i % 3,
            hparams={"x": float(i)},
            start_step=0,
            end_step=1,
            origin=SEED,
            parent_id=parent,
            crossover_id=crossover,
        )
        assert store.create_trial(spec, 0.0).id == i
    dag = lineage(store, target)
    # exactly the ancestors (by a plain graph search), each once, the target last
    expected, todo = {target}, [target]
    while todo:
        parent, crossover = links[todo.pop() - 1]
        for source in (parent, crossover):
            if source is not None and source not in expected:
                expected.add(source)
                todo.append(source)
    assert sorted(dag.order) == sorted(expected)
    assert len(dag.order) == len(set(dag.order))
    assert dag.order[-1] == target
    position = {i: n for n, i in enumerate(dag.order)}
    for trial_id in dag.order:
        parent, crossover = links[trial_id - 1]
        for source in (parent, crossover):
            if source is not None:
                assert position[source] < position[trial_id], (source, trial_id, dag.order)
    for edge in dag.edges:
        assert position[edge.source] < position[edge.target]


# --- schedule ------------------------------------------------------------------------------------
@pytest.mark.timeout(10)
def test_schedule_is_the_warm_start_chain_with_each_segments_hparams() -> None:
    sched = schedule(chain_store(), 6)
    assert [(s.start_step, s.end_step, dict(s.hparams), s.trial_id) for s in sched.segments] == [
        (0, 10, {"lr": 0.1}, 1), (10, 20, {"lr": 0.15}, 3), (20, 30, {"lr": 0.3}, 5), (30, 35, {"lr": 0.35}, 6)]
    assert sched.segments[1].crossover_id == 2  # recorded, but not a segment of its own
    assert sched.boundaries == [0, 10, 20, 30, 35]
    assert sched.hparams_at(0) == {"lr": 0.1} and sched.hparams_at(29) == {"lr": 0.3}
    with pytest.raises(ValueError):
        sched.hparams_at(35)


@pytest.mark.timeout(10)
def test_schedule_refuses_a_child_that_does_not_start_where_its_parent_ended() -> None:
    store = InMemoryTrialStore()
    add(store, 0, 0, 10)
    add(store, 1, 12, 20, parent=1)
    with pytest.raises(LineageError, match="starts at step 12"):
        schedule(store, 2)


@pytest.mark.timeout(10)
def test_schedule_json_round_trips_with_format_and_version() -> None:
    store = chain_store()
    store.put_meta("experiment", {"name": "demo", "objective": {"comparison": "weighted", "metrics": []}})
    sched = schedule(store, 6)
    data = json.loads(sched.to_json())
    assert data["format"] == SCHEDULE_FORMAT and data["version"] == SCHEDULE_VERSION
    assert data["experiment"] == "demo" and data["start_step"] == 0 and data["end_step"] == 35
    assert Schedule.from_json(sched.to_json()) == sched


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.update(version=SCHEDULE_VERSION + 1), "newer"),
    (lambda d: d.update(format="something-else"), "not a pbt-actors schedule"),
    (lambda d: d.update(version="1"), "version"),
    (lambda d: d["segments"][0].update(start_step="0"), r"segments\[0\].start_step"),
    (lambda d: d["segments"][1].update(hparams={"lr": [1]}), r"segments\[1\].hparams"),
    (lambda d: d.update(segments=[]), "at least one segment"),
    (lambda d: d["segments"].pop(1), "starts at step 20"),
])
def test_schedule_reader_names_what_is_wrong(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    data = schedule(chain_store(), 6).to_dict()
    mutate(data)
    with pytest.raises(LineageError, match=message):
        Schedule.from_dict(data)
    with pytest.raises(LineageError, match="JSON"):
        Schedule.from_json("{not json")


@pytest.mark.timeout(10)
def test_resolve_trial_accepts_ids_and_best() -> None:
    from pbt_actors.model.experiment import Experiment
    from pbt_actors.model.space import Float

    store = chain_store()
    assert resolve_trial(store, "3") == 3
    with pytest.raises(TrialNotFound):
        resolve_trial(store, 42)
    with pytest.raises(LineageError, match="no experiment"):
        resolve_trial(store, "best")
    store.put_meta("experiment", Experiment("demo", {"lr": Float(0.01, 1.0)}, "acc").to_dict())
    with pytest.raises(LineageError, match="no completed trial"):
        resolve_trial(store, "best")
    for trial_id, acc in ((3, 0.5), (4, 0.9)):
        trial = store.get_trial(trial_id)
        store.transition(trial_id, TrialStatus.PENDING, 1, trial.evolve(status=TrialStatus.COMPLETED,
                                                                          final={"acc": acc}))
    assert resolve_trial(store, "best") == 4
    with pytest.raises(LineageError, match="trial id or 'best'"):
        resolve_trial(store, "worst")


# --- replay planning -----------------------------------------------------------------------------
def _sched() -> Schedule:
    return Schedule(9, (Segment(0, 10, {"lr": 1.0}, 1), Segment(10, 20, {"lr": 2.0}, 2),
                        Segment(20, 30, {"lr": 3.0}, 9)))


@pytest.mark.timeout(10)
def test_plan_covers_the_whole_schedule_by_default_and_cuts_sub_ranges() -> None:
    assert [(p.segment.trial_id, p.start_step, p.end_step) for p in plan(_sched())] == [(1, 0, 10), (2, 10, 20),
                                                                                          (9, 20, 30)]
    sub = plan(_sched(), 10, 25)
    assert [(p.segment.trial_id, p.start_step, p.end_step, p.complete) for p in sub] == [(2, 10, 20, True),
                                                                                       (9, 20, 25, False)]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("start", "end", "message"), [(5, 20, "not a segment boundary"), (10, 10, "after the start"),
                                                       (0, 31, "at most")])
def test_plan_refuses_bad_ranges(start: int, end: int, message: str) -> None:
    with pytest.raises(ReplayError, match=message):
        plan(_sched(), start, end)


@pytest.mark.timeout(10)
def test_a_sub_range_needs_the_stored_checkpoint_at_its_start() -> None:
    assert start_checkpoint(_sched(), 0) is None
    with pytest.raises(ReplayError, match="no stored checkpoint"):
        start_checkpoint(_sched(), 10)


# --- export --------------------------------------------------------------------------------------
@pytest.mark.timeout(10)
def test_export_gives_one_row_per_measurement_plus_final_and_one_for_bare_trials() -> None:
    store = chain_store()
    trial = store.get_trial(1)
    done = trial.evolve(status=TrialStatus.COMPLETED, final={"acc": 0.5, "loss": float("nan")},
                        measurements=(Measurement(5, {"acc": 0.3}), Measurement(10, {"acc": 0.5})))
    store.transition(1, TrialStatus.PENDING, 1, done)
    rows = trial_rows(store.get_trial(1))
    assert [(r["kind"], r["step"]) for r in rows] == [("measurement", 5), ("measurement", 10), ("final", 10)]
    assert trial_rows(store.get_trial(2))[0]["kind"] == "trial"
    columns, table = export_rows(store)
    assert columns[:len(COLUMNS)] == list(COLUMNS)
    assert columns[len(COLUMNS):] == ["hparam.lr", "metric.acc", "metric.loss"]
    assert len(table) == 3 + 5
    out = io.StringIO()
    write_rows(columns, table, out, "json")
    parsed = json.loads(out.getvalue())  # strict JSON: NaN became null
    assert parsed[2]["metric.loss"] is None and parsed[2]["metric.acc"] == 0.5
    out = io.StringIO()
    assert write_rows(columns, table, out, "csv") == 8
    assert out.getvalue().splitlines()[0].startswith("trial_id,generation,parent_id")
