"""A discrete-event simulator: the real ``ControllerCore`` and policies, virtual workers, virtual time.

Layer 5. Nothing here re-implements a decision: every trial is leased, reported, lost,
re-queued and reproduced by the unchanged ``ControllerCore`` through the same protocol
messages a real worker sends (``RequestTrial``, ``Heartbeat``, ``Report`` with ``next``,
``Fail``, ``WorkerLost``) and its ``tick`` for lease expiry. Every message passes the same
``ProtocolSession`` in front of the core as in the real controller (control/session.py: reply
cache, sender check, long poll), on the virtual clock, so simulations exercise those rules
too. The simulator only replaces the workers, the network and the clock:

* **Workers** — ``SimConfig.workers`` at start, each with a speed drawn once
  (``exp(N(0, speed_spread))``). A trial of ``k`` steps takes
  ``k / steps_per_trial · trial_s / speed · exp(N(0, duration_cv) − duration_cv²/2)`` virtual
  seconds (lognormal, mean-preserving). Training itself is the objective's O(1) ``train``.
* **Checkpoints** — ``CheckpointRef``s with fake uris and sha256 (no files); the objective's
  state lives in ``Simulation.states`` keyed by uri. A child resumes from its
  ``TrialAssignment.parent_checkpoint`` (or from a ``resume`` checkpoint after a graceful
  preemption), exactly as a real worker would.
* **Heartbeats** every ``experiment.heartbeat_interval_s`` renew the lease; the controller's
  lease-expiry scan (``core.tick``, then the session's tick) runs every ``tick_s``.
* **Waiting** — a request for work that finds none is *held* by the session (long poll), as
  in production: it is answered the moment a report, failure, lost worker or lease expiry
  creates work or ends the run, or with ``wait(0)`` after ``park_s`` (then the worker asks
  again at once). ``park_s = 0`` turns the long poll off: the worker gets the core's
  ``wait(wait_s)`` and asks again after it (the simulator's behaviour before the session).
* **Lost replies** (``reply_loss``) — the reply to a ``request_trial`` or ``report`` is lost
  on the way back; the worker resends the same request (same id) after ``resend_s`` and the
  session's reply cache answers it (a resent report is not applied twice, a resent request
  for work does not lease a second trial).
* **Preemption** — a Poisson process at ``preempt_rate`` per worker-hour while a worker is
  busy (an idle worker loses nothing). The trial in flight is lost and re-queued by the core,
  as in production, in one of three ways:

  - *supervised* (probability ``lost_notice``): the process was killed; its host supervisor
    sends ``WorkerLost`` at once and restarts the worker under the same id after
    ``restart_s``;
  - *silent* (the rest): the whole host vanished. Nobody tells the controller; the lease
    expires (``tick``) and a fresh worker with a new id joins after ``restart_s``;
  - *graceful* (probability ``graceful``, taken first): SIGTERM with notice — the worker
    saves a checkpoint and sends ``Fail(retryable, resume=..., preempted=True)``; the retry
    continues from it.

  All three are *losses* to the core (they count against ``max_losses``, not
  ``max_attempts``).

* **Churn** — workers join and leave over time: an explicit ``schedule`` of
  ``(time_s, delta)`` and/or Poisson arrivals (``join_per_hour``) and departures
  (``leave_per_worker_hour``). A departing worker drains: it finishes and reports its trial,
  then stops asking. One whose request for work is being held leaves at its answer (if that
  is a trial, it runs it first: it has asked, and a trial leased to a departed worker would
  wait for lease expiry).

Determinism: all randomness comes from ``random.Random`` streams seeded by strings derived
from ``SimConfig.seed`` and only ``random()`` is used (Python guarantees its sequence), events
with equal times are ordered by insertion, and the core is deterministic; so one seed gives
one trial graph, byte for byte. What a run spent and reached: ``sim_result.py``.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Callable
from typing import Any

from pbt_actors.control.core import ControllerCore
from pbt_actors.control.session import Outgoing, ProtocolSession
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.protocol import (
    Ack,
    Done,
    Fail,
    Heartbeat,
    Message,
    Reply,
    Report,
    RequestTrial,
    Stop,
    TrialAssignment,
    Wait,
    WorkerLost,
)
from pbt_actors.model.records import CheckpointRef, TrialStatus, trial_checkpoint_prefix
from pbt_actors.storage.memory import InMemoryTrialStore
from pbt_actors.storage.trial_store import META_CHECKPOINT_ROOT, SIMULATED_CHECKPOINTS, TrialStore
from pbt_actors.tools.sim.cluster_model import SimConfig
from pbt_actors.tools.sim.objectives import SimObjective, State, normal
from pbt_actors.tools.sim.sim_result import SimResult, score_run

# Event kinds (ints: they sort fast and tuples compare cheaply in the heap).
_REQUEST, _FINISH, _HEARTBEAT, _PREEMPT, _TICK, _JOIN, _LEAVE, _SCHEDULE, _PARK, _RESEND = range(10)
_FAKE_SHA_PAD = "0" * 48
_SUPERVISOR = b"sim-supervisor"
"""The peer that sends ``WorkerLost`` for every virtual host (one identity is enough: the
session exempts ``worker_lost`` from the sender check, and its requests are never held)."""



class _Worker:
    __slots__ = ("alive", "busy_since", "draining", "duration", "index", "last_id", "name", "peer", "pending", "spec",
                 "speed", "token")

    def __init__(self, index: int, speed: float) -> None:
        self.index = index
        self.name = f"sim-w{index}"
        self.peer = self.name.encode()
        self.speed = speed
        self.last_id = 0  # request ids: a counter per worker, as a real endpoint's
        self.pending: tuple[int, Message] | None = None  # the request awaiting its reply (held, or its reply lost)
        self.alive = True
        self.draining = False
        self.token = 0  # bumped whenever the worker's current activity ends; stale events check it
        self.spec: TrialAssignment | None = None
        self.busy_since = 0.0
        self.duration = 0.0


def fake_checkpoint(trial_id: int, attempt: int, step: int, experiment: str = "sim") -> CheckpointRef:
    """A checkpoint reference that points at no file (the state lives in the simulator), under
    the trial's own prefix as a real worker's (the controller refuses any other)."""
    return CheckpointRef(f"{trial_checkpoint_prefix(experiment, trial_id)}a{attempt}-s{step}.ckpt", 0,
                         f"{trial_id:08x}{attempt:08x}{_FAKE_SHA_PAD}", step)


class Simulation:
    """Drive ``ControllerCore`` with virtual workers until the experiment ends.

    Args:
        experiment: the experiment (``objective.experiment(...)`` builds a fitting one).
        objective: the synthetic problem the virtual workers "train".
        config: cluster and fault model.
        store: a fresh ``TrialStore`` (default: in memory). The caller closes it.
        on_progress: called as ``on_progress(completed_trials)`` every ``progress_every``
            completions (for progress bars).
    """

    def __init__(self, experiment: Experiment, objective: SimObjective, config: SimConfig | None = None,
                 store: TrialStore | None = None, *, on_progress: Callable[[int], None] | None = None,
                 progress_every: int = 1000) -> None:
        self.experiment = experiment
        self.objective = objective
        self.config = config or SimConfig()
        self.store = store if store is not None else InMemoryTrialStore()
        cfg = self.config
        self.core = ControllerCore(self.store, experiment, now=0.0,
                                   wait_s=cfg.wait_s if cfg.wait_s is not None else cfg.trial_s / 20)
        with self.store.batch():  # its checkpoint refs name no file: `verify` must not look for them
            self.store.put_meta(META_CHECKPOINT_ROOT, SIMULATED_CHECKPOINTS)
        self.session = ProtocolSession(park_s=cfg.park_s if cfg.park_s is not None else self.core.wait_s,
                                       clock=lambda: self.now, logger=None)
        """The real controller's protocol rules between the virtual workers and the core."""
        self.states: dict[str, State] = {}
        self.truth: dict[str, dict[str, float]] = {}
        self.now = 0.0
        self.on_progress = on_progress
        self.progress_every = max(1, progress_every)
        seed = cfg.seed
        self._rng_cluster = random.Random(f"pbt-sim:{seed}:cluster")
        self._rng_duration = random.Random(f"pbt-sim:{seed}:duration")
        self._rng_fault = random.Random(f"pbt-sim:{seed}:fault")
        self._rng_noise = random.Random(f"pbt-sim:{seed}:noise")
        self._rng_network = random.Random(f"pbt-sim:{seed}:network")  # drawn only if reply_loss > 0
        self._heap: list[tuple[float, int, int, int, int]] = []
        self._seq = 0
        self._workers: list[_Worker] = []
        self._by_peer: dict[bytes, _Worker] = {}
        self._supervisor_ids = 0
        self._supervisor_asks: dict[int, str] = {}  # WorkerLost request id -> the lost worker
        self._park_at: float | None = None  # when the scheduled _PARK event fires (None: none scheduled)
        self._live = 0
        self._arrivals_pending = 0  # JOIN/SCHEDULE events in the heap: workers that may still come
        self._finished_seen = False
        self._finished_at: float | None = None
        self._initial = objective.initial_state()
        self._tick_s = cfg.tick_s if cfg.tick_s is not None else experiment.lease_s / 4
        self._heartbeat_s = experiment.heartbeat_interval_s
        self._spt = experiment.steps_per_trial
        # accounting
        self.compute_s = 0.0
        self.useful_s = 0.0
        self.lost_s = 0.0
        self.steps_trained = 0
        self.lost_steps = 0
        self.preemptions = 0
        self.trials_lost = 0
        self.leases_expired = 0
        self.completions = 0
        self.resends = 0
        self.events = 0
        self.errors: list[str] = []

    # --- scheduling --------------------------------------------------------------------------
    def _push(self, at: float, kind: int, worker: int = -1, token: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, worker, token))

    def _add_worker(self, at: float) -> int:
        cfg = self.config
        speed = math.exp(cfg.speed_spread * normal(self._rng_cluster)) if cfg.speed_spread else 1.0
        index = len(self._workers)
        worker = _Worker(index, speed)
        self._workers.append(worker)
        self._by_peer[worker.peer] = worker
        self._live += 1
        self._push(at, _REQUEST, index)
        if cfg.leave_per_worker_hour > 0:
            self._push(at + _exponential(self._rng_cluster, cfg.leave_per_worker_hour / 3600.0), _LEAVE, index)
        return index

    # --- the loop ----------------------------------------------------------------------------------
    def run(self) -> SimResult:
        """Run to the end (or until no worker is left / ``max_events``) and summarise."""
        started = time.perf_counter()
        cfg = self.config
        for _ in range(cfg.workers):
            self._add_worker(0.0)
        for index, (at, _delta) in enumerate(cfg.schedule):
            self._push(float(at), _SCHEDULE, index)
            self._arrivals_pending += 1
        if cfg.join_per_hour > 0:
            self._push(_exponential(self._rng_cluster, cfg.join_per_hour / 3600.0), _JOIN)
            self._arrivals_pending += 1
        self._push(self._tick_s, _TICK)
        heap = self._heap
        pop = heapq.heappop
        limit = cfg.max_events
        handlers = (self._on_request, self._on_finish, self._on_heartbeat, self._on_preempt,
                    self._on_tick, self._on_join, self._on_leave, self._on_schedule, self._on_park, self._on_resend)
        while heap:
            at, _, kind, worker, token = pop(heap)
            self.now = at
            self.events += 1
            handlers[kind](worker, token)
            if self._live == 0 and self._arrivals_pending == 0:
                break  # no worker left and none to come: nothing more can happen
            if limit is not None and self.events >= limit:
                break
        return self.summarize(time.perf_counter() - started)

    # --- handlers ------------------------------------------------------------------------------------
    def _on_request(self, index: int, token: int) -> None:
        worker = self._workers[index]
        if not worker.alive or worker.spec is not None or worker.pending is not None:
            return
        if worker.draining:
            self._retire(worker)
            return
        self._ask(worker, RequestTrial(worker.name))

    # --- the wire: every request through the protocol session, then the core ------------------------
    def _ask(self, worker: _Worker, message: Message) -> None:
        """Send ``message`` under the worker's next request id. Its reply reaches ``_deliver``
        now, or later if the session holds the request (or the reply is lost and resent)."""
        worker.last_id += 1
        worker.pending = (worker.last_id, message)
        self._send(worker.peer, worker.last_id, message)

    def _send(self, peer: bytes, request_id: int, message: Message) -> None:
        """One round, as the bridge runs it: the session, the core's batch, the session's answers
        (which may release other workers' held requests: they are delivered too)."""
        session = self.session
        self._deliver_all(session.serve(session.receive(((peer, request_id, message),)), self._handle, self.now))

    def _handle(self, messages: list[Message]) -> list[Reply]:
        return self.core.handle_batch(messages, self.now)

    def _deliver_all(self, outgoing: list[Outgoing]) -> None:
        for out in outgoing:
            self._deliver(out)
        if self._park_at is None:  # the oldest held request's wait(0) is due then
            deadline = self.session.next_deadline()
            if deadline is not None:
                self._park_at = deadline
                self._push(deadline, _PARK)

    def _deliver(self, out: Outgoing) -> None:
        """A reply reaches its peer (unless the network loses it) and the worker acts on it."""
        worker = self._by_peer.get(out.peer)
        if worker is None:
            if out.peer == _SUPERVISOR and not isinstance(out.reply, Ack):
                lost = self._supervisor_asks.get(out.request_id, "?")
                self.errors.append(f"{self.now:.1f}s worker_lost {lost} -> {out.reply!r}")
            self._supervisor_asks.pop(out.request_id, None)
            return
        pending = worker.pending
        if not worker.alive or pending is None or pending[0] != out.request_id:
            return  # nobody waits for this answer any more
        message = pending[1]
        cfg = self.config
        if cfg.reply_loss and isinstance(message, RequestTrial | Report) \
                and self._rng_network.random() < cfg.reply_loss:
            self._push(self.now + cfg.resend_s, _RESEND, worker.index, out.request_id)
            return
        worker.pending = None
        if isinstance(message, RequestTrial):
            self._serve(worker, out.reply)
        elif isinstance(message, Report):
            self._on_report_reply(worker, message, out.reply)
        elif isinstance(message, Heartbeat):
            self._on_heartbeat_reply(worker, message, out.reply)
        elif not isinstance(out.reply, Ack):  # Fail
            self.errors.append(f"{self.now:.1f}s {worker.name} {message.TYPE} -> {out.reply!r}")

    def _on_resend(self, index: int, request_id: int) -> None:
        """The reply did not come: the same request again, under the same id."""
        worker = self._workers[index]
        pending = worker.pending
        if not worker.alive or pending is None or pending[0] != request_id:
            return
        self.resends += 1
        self._send(worker.peer, request_id, pending[1])

    def _on_park(self, _index: int, _token: int) -> None:
        self._park_at = None
        self._deliver_all(self.session.release_overdue(self.now))

    def _serve(self, worker: _Worker, reply: object) -> None:
        """Act on the controller's answer to a request for work (``RequestTrial``, ``Report(next)``)."""
        if isinstance(reply, TrialAssignment):
            self._start(worker, reply)
        elif isinstance(reply, Wait):
            self._push(self.now + reply.retry_after_s, _REQUEST, worker.index)
        elif isinstance(reply, Done):
            if not self._finished_seen:
                self._finished_seen, self._finished_at = True, self.now
            self._retire(worker)
        else:
            self.errors.append(f"{self.now:.1f}s {worker.name} request_trial -> {reply!r}")
            self._push(self.now + self.core.wait_s, _REQUEST, worker.index)

    def _retire(self, worker: _Worker) -> None:
        if worker.alive:
            worker.alive = False
            worker.token += 1
            self._live -= 1

    def _start(self, worker: _Worker, spec: TrialAssignment) -> None:
        cfg = self.config
        steps = spec.end_step - spec.start_step
        duration = steps / self._spt * cfg.trial_s / worker.speed
        if cfg.duration_cv:
            duration *= math.exp(cfg.duration_cv * normal(self._rng_duration) - cfg.duration_cv ** 2 / 2)
        worker.token += 1
        worker.spec = spec
        worker.busy_since = self.now
        worker.duration = duration
        index = worker.index
        if cfg.preempt_rate > 0:
            # memoryless: the time to this worker's next preemption, drawn afresh per trial
            until = _exponential(self._rng_fault, cfg.preempt_rate / 3600.0)
            if until < duration:
                self._push(self.now + until, _PREEMPT, index, worker.token)
                self._schedule_heartbeat(worker, index, self.now + until)
                return
        self._push(self.now + duration, _FINISH, index, worker.token)
        self._schedule_heartbeat(worker, index, self.now + duration)

    def _schedule_heartbeat(self, worker: _Worker, index: int, ends: float) -> None:
        if self.config.heartbeats:
            beat = self.now + self._heartbeat_s
            if beat < ends:
                self._push(beat, _HEARTBEAT, index, worker.token)

    def _end_work(self, worker: _Worker) -> tuple[TrialAssignment, float]:
        spec = worker.spec
        assert spec is not None
        spent = self.now - worker.busy_since
        self.compute_s += spent
        worker.spec = None
        worker.token += 1
        return spec, spent

    def _on_finish(self, index: int, token: int) -> None:
        worker = self._workers[index]
        if token != worker.token or worker.spec is None:
            return
        spec, spent = self._end_work(worker)
        self.steps_trained += spec.end_step - spec.start_step
        state = self._parent_state(spec)
        state = self.objective.train(state, spec.hparams, spec.start_step, spec.end_step)
        true = self.objective.evaluate(state)
        observed = self.objective.observe(true, self._rng_noise)
        ckpt = fake_checkpoint(spec.trial_id, spec.attempt, spec.end_step, spec.experiment)
        self.states[ckpt.uri] = state
        self.truth[ckpt.uri] = true
        # the report asks for the next trial in the same round trip (as WorkerClient does),
        # unless the worker is leaving
        self._ask(worker, Report(worker.name, spec.trial_id, spec.attempt, observed, checkpoint=ckpt,
                                 next=not worker.draining))
        trial = self.store.get_trial(spec.trial_id)  # applied, even if the reply is held or lost
        if trial.status is TrialStatus.COMPLETED and trial.completed_attempt == spec.attempt:
            self.useful_s += spent
        self.completions += 1
        if self.on_progress is not None and self.completions % self.progress_every == 0:
            self.on_progress(self.completions)

    def _on_report_reply(self, worker: _Worker, report: Report, reply: object) -> None:
        refused = not isinstance(reply, TrialAssignment | Wait | Done) if report.next else \
            not isinstance(reply, Ack | Stop)
        if refused:
            self.errors.append(f"{self.now:.1f}s {worker.name} report {report.trial_id}/{report.attempt} "
                               f"-> {reply!r}")
        if not report.next:
            self._retire(worker)
        elif refused:  # nothing was leased: ask as a separate request
            self._push(self.now, _REQUEST, worker.index)
        else:
            self._serve(worker, reply)

    def _parent_state(self, spec: TrialAssignment) -> State:
        if spec.parent_checkpoint is None:
            return self._initial
        return self.states[spec.parent_checkpoint.uri]

    def _on_heartbeat(self, index: int, token: int) -> None:
        worker = self._workers[index]
        spec = worker.spec
        if token != worker.token or spec is None:
            return
        fraction = (self.now - worker.busy_since) / worker.duration
        step = spec.start_step + int(fraction * (spec.end_step - spec.start_step))
        self._ask(worker, Heartbeat(worker.name, spec.trial_id, spec.attempt, step))

    def _on_heartbeat_reply(self, worker: _Worker, heartbeat: Heartbeat, reply: object) -> None:
        if isinstance(reply, Stop):  # early-stopped, or completed by another attempt
            self._end_work(worker)
            self._on_request(worker.index, 0)
            return
        if not isinstance(reply, Ack):
            self.errors.append(f"{self.now:.1f}s {worker.name} heartbeat {heartbeat.trial_id}/{heartbeat.attempt} "
                               f"-> {reply!r}")
        beat = self.now + self._heartbeat_s
        if beat < worker.busy_since + worker.duration:
            self._push(beat, _HEARTBEAT, worker.index, worker.token)

    def _on_preempt(self, index: int, token: int) -> None:
        worker = self._workers[index]
        if token != worker.token or worker.spec is None:
            return
        cfg = self.config
        self.preemptions += 1
        spec, spent = self._end_work(worker)
        steps = spec.end_step - spec.start_step
        done_steps = min(steps - 1, int(spent / worker.duration * steps))
        roll = self._rng_fault.random()
        if roll < cfg.graceful and done_steps > 0:
            # SIGTERM with notice: save where we are; the retry continues from there
            step = spec.start_step + done_steps
            state = self.objective.train(self._parent_state(spec), spec.hparams, spec.start_step, step)
            ckpt = fake_checkpoint(spec.trial_id, spec.attempt, step, spec.experiment)
            self.states[ckpt.uri] = state
            saved = worker.duration * done_steps / steps
            self.useful_s += saved
            self.lost_s += spent - saved
            self.steps_trained += done_steps
            self.trials_lost += 1
            self._ask(worker, Fail(worker.name, spec.trial_id, spec.attempt, "preempted (graceful)",
                                   True, resume=ckpt, preempted=True))
            self._push(self.now + cfg.restart_s, _REQUEST, index)
            return
        self.lost_s += spent
        self.lost_steps += done_steps
        self.steps_trained += done_steps
        self.trials_lost += 1
        if self._rng_fault.random() < cfg.lost_notice:
            # the process died; its supervisor tells the controller and restarts it (same id)
            self._supervisor_ids += 1
            self._supervisor_asks[self._supervisor_ids] = worker.name
            self._send(_SUPERVISOR, self._supervisor_ids, WorkerLost(worker.name, "preempted"))
            self._push(self.now + cfg.restart_s, _REQUEST, index)
        else:
            # the host vanished: nobody tells the controller (the lease will expire); a fresh
            # worker with a new id replaces it (unless this one was leaving anyway)
            draining = worker.draining
            self._retire(worker)
            if not draining:
                self._add_worker(self.now + cfg.restart_s)

    def _on_tick(self, _index: int, _token: int) -> None:
        released = self.core.tick(self.now)
        self.leases_expired += len(released)
        # as the bridge: re-queued trials go to held requests at once; overdue ones get wait(0)
        self._deliver_all(self.session.serve(self.session.tick(self.now, released=bool(released)), self._handle,
                                             self.now))
        if self._heap:  # anything else still to happen: keep scanning
            self._push(self.now + self._tick_s, _TICK)

    def _on_join(self, _index: int, _token: int) -> None:
        cfg = self.config
        self._arrivals_pending -= 1
        if self._finished_seen:
            return
        if cfg.max_workers is None or self._live < cfg.max_workers:
            self._add_worker(self.now)
        self._push(self.now + _exponential(self._rng_cluster, cfg.join_per_hour / 3600.0), _JOIN)
        self._arrivals_pending += 1

    def _on_leave(self, index: int, _token: int) -> None:
        worker = self._workers[index]
        if not worker.alive or worker.draining:
            return
        staying = sum(1 for w in self._workers if w.alive and not w.draining)
        if staying <= self.config.min_workers:
            return
        self._drain(worker, index)

    def _drain(self, worker: _Worker, index: int) -> None:
        worker.draining = True
        if worker.spec is None and worker.pending is None:  # idle or between requests: leaves now
            self._retire(worker)

    def _on_schedule(self, index: int, _token: int) -> None:
        self._arrivals_pending -= 1
        _, delta = self.config.schedule[index]
        if delta > 0:
            for _ in range(delta):
                self._add_worker(self.now)
            return
        leaving = [i for i in range(len(self._workers) - 1, -1, -1)
                   if self._workers[i].alive and not self._workers[i].draining][: -delta]
        for i in leaving:
            self._drain(self._workers[i], i)

    # --- results ------------------------------------------------------------------------------------------
    def summarize(self, wall_s: float = 0.0) -> SimResult:
        """The run's result: its accounting, and its score by true metrics (``score_run``)."""
        score = score_run(self.store, self.experiment, self.objective, self.truth)
        return SimResult(
            objective=self.objective.name, policy=self.experiment.policy, seed=self.config.seed,
            population=self.experiment.population, finished=self.core.finished, trials=self.store.count(),
            by_status={s.value: self.store.count(s) for s in TrialStatus}, best=score.best, median=score.median,
            best_step=score.best_step, hypervolume=score.hypervolume,
            compute_s=self.compute_s, useful_s=self.useful_s, lost_s=self.lost_s,
            steps_trained=self.steps_trained, lost_steps=self.lost_steps, preemptions=self.preemptions,
            trials_lost=self.trials_lost, leases_expired=self.leases_expired,
            virtual_s=self._finished_at if self._finished_at is not None else self.now,
            workers_seen=len(self._workers), events=self.events, wall_s=wall_s, errors=list(self.errors),
            held=self.session.held_total, resends=self.resends,
        )


def _exponential(rng: random.Random, rate: float) -> float:
    """An exponential waiting time with ``rate`` (events per second), from ``random()`` only."""
    return -math.log(1.0 - rng.random()) / rate


def simulate(objective: SimObjective, *, policy: str = "initiator", population: int = 10, seed: int = 0,
             config: SimConfig | None = None, store: TrialStore | None = None,
             on_progress: Callable[[int], None] | None = None, progress_every: int = 1000,
             **experiment_overrides: Any) -> tuple[SimResult, Simulation]:
    """Build the experiment for ``objective`` and run one simulation.

    ``config.seed`` defaults to ``seed`` (the experiment's decision seed), so one number
    reproduces the whole run. ``experiment_overrides`` are ``Experiment`` fields
    (``budget_mode``, ``opponent_window``, ``max_trials``, ``crossover_prob``, ...).
    """
    from dataclasses import replace

    config = replace(config, seed=seed) if config is not None else SimConfig(seed=seed)
    experiment_overrides.setdefault("lease_s", config.lease)
    experiment = objective.experiment(policy, population, seed, **experiment_overrides)
    sim = Simulation(experiment, objective, config, store, on_progress=on_progress, progress_every=progress_every)
    return sim.run(), sim
