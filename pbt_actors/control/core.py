"""ControllerCore: the controller's whole logic as a plain class over a ``TrialStore``.

Layer 3. No threads, no sockets, no clock of its own (``now`` is passed in), no random state
(each decision derives its generator from ``(seed, trial id, kind)``), and no state outside the
store. So the simulator, the tests and the ``ControllerActor`` all drive this same code, and a
core rebuilt from the store mid-run continues exactly as the original would have.

Protocol semantics it implements (docs/design.md §6):

* ``request_trial`` leases the oldest PENDING trial to the worker (releasing any trial the
  same worker still held: a worker only asks when idle, so that attempt is dead; except a
  *pending completion*, whose checkpoint the worker is still writing: docs/design.md §15).
* ``report(pending)``: ``train`` returned, the checkpoint is not durable yet. The trial stays
  RUNNING and leased (its ``final`` set marks it), the worker's heartbeats renew it; the second,
  ordinary ``report`` completes it. So a trial completes, and becomes a parent, only durable.
* ``heartbeat`` renews the lease of the current attempt and may record a measurement; the
  early-stop hook may answer ``stop``. A heartbeat from an older attempt is acknowledged
  without renewing, so that attempt may still finish and report.
* ``report`` is idempotent by ``(trial_id, attempt)``: the first valid completion wins, even
  from an expired attempt; later ones get ``ack`` and change nothing.
* ``fail``/``worker_lost``/lease expiry re-queue the trial with ``attempt + 1``, until
  ``max_attempts``; then it is FAILED and the policy may refill its slot.
* Every acknowledged change is in the store when the caller sends the reply, provided the
  caller sends replies after ``handle_batch`` returns (it commits before returning).
* ``budget_steps`` (``control/budget.py``): a spawn that would commit steps past the budget is
  not made (its initiator retires, like ``max_trials``), and a never-leased trial that does not
  fit (a budget lowered on resume) is STOPPED instead of leased. The steps charged so far are
  the store's totals, moved by each record write in its transaction (so a rolled-back batch
  takes its charges with it); the core keeps no count of its own.
"""

from __future__ import annotations

import logging
import statistics
import uuid
from collections.abc import Sequence

from pbt_actors.control.budget import BudgetLedger
from pbt_actors.control.deadlines import (
    AUTO,
    AUTO_SAMPLE,
    TIMEOUT_ERROR,
    attempt_steps,
    completed_rates,
    death_is_failure,
    effective_timeout,
    is_timeout_error,
    timed_out,
    timeout_error,
)
from pbt_actors.control.policies import (
    Decision,
    Event,
    Idle,
    PopulationView,
    Retire,
    Spawn,
    StopTrial,
    TrialCompleted,
    TrialEnded,
    early_stop_decision,
    make_policy,
)
from pbt_actors.control.progress import run_finished
from pbt_actors.model.errors import ConfigError, SchemaError, StoreRetry, TrialNotFound
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.protocol import (
    Ack,
    Done,
    Error,
    Fail,
    Heartbeat,
    Hello,
    Message,
    Reply,
    Report,
    RequestTrial,
    Stop,
    TrialAssignment,
    Wait,
    WorkerLost,
)
from pbt_actors.model.records import (
    AttemptRecord,
    Lease,
    Measurement,
    Trial,
    TrialStatus,
    owns_checkpoint,
    trial_checkpoint_prefix,
)
from pbt_actors.model.rng import decision_rng
from pbt_actors.model.trial_cost import trial_cost, was_leased
from pbt_actors.storage.trial_store import META_EXPERIMENT, META_FINISHED_AT, META_RUN_ID, TrialStore

log = logging.getLogger(__name__)

MAX_BATCH_RETRIES = 8


class _Poisoned(Exception):
    """Internal: message ``index`` of a batch raised; the batch is rolled back and re-run."""

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(index)
        self.index = index
        self.error = error


class ControllerCore:
    """Handles protocol messages against the store. Not thread-safe: one caller at a time."""

    def __init__(self, store: TrialStore, experiment: Experiment | None = None, *,
                 now: float = 0.0, wait_s: float = 1.0) -> None:
        self.store = store
        self.experiment = self._reconcile(store, experiment)
        self.run_id = self._run_id(store)
        """This store's run id: sent in the ``ack`` to ``hello``; workers of another are refused."""
        self.policy = make_policy(self.experiment)
        self.view = PopulationView(store, self.experiment, committed_steps=lambda: self.ledger.committed)
        self.wait_s = wait_s
        self._timeout_cache: tuple[int, tuple[float, ...]] | None = None
        self.checkpoint_store_fault: str | None = None
        """A worker could not write its checkpoint (``Fail.fault``): nothing more is leased, and
        the controller stops serving (an infrastructure fault; a rerun starts without it)."""
        if store.count() == 0:
            with store.batch():
                for spawn in self.policy.initial(self._rngs):
                    self._apply(spawn, now)

    @staticmethod
    def _reconcile(store: TrialStore, experiment: Experiment | None) -> Experiment:
        """Use the stored definition; refuse a different one for the same store."""
        stored = store.get_meta(META_EXPERIMENT)
        if stored is None:
            if experiment is None:
                raise ConfigError("the store holds no experiment and none was given")
            for index, hparams in enumerate(experiment.initial):  # all of it checked before the store is touched
                try:
                    experiment.space_.complete(hparams, decision_rng(experiment.seed, index, "check-initial"))
                except ConfigError as exc:
                    raise ConfigError(f"experiment {experiment.name!r}: initial[{index}]: {exc}") from exc
            store.put_meta(META_EXPERIMENT, experiment.to_dict())
            return experiment
        on_disk = Experiment.from_dict(stored)
        if experiment is None:
            return on_disk
        mine, theirs = experiment.decision_fields(), on_disk.decision_fields()
        changed = sorted(k for k in mine if mine[k] != theirs.get(k))
        if changed:
            raise ConfigError(
                f"the store at hand was created by a different definition of experiment "
                f"{on_disk.name!r} (differs in: {', '.join(changed)}); use another --store"
            )
        if experiment.to_dict() != stored:  # lease, max_trials, ... may change on resume
            store.put_meta(META_EXPERIMENT, experiment.to_dict())
        return experiment

    @staticmethod
    def _run_id(store: TrialStore) -> str:
        """The store's run id, made (uuid4 hex) and stored the first time a controller opens it."""
        stored = store.get_meta(META_RUN_ID)
        if isinstance(stored, str) and stored:
            return stored
        run_id = uuid.uuid4().hex
        store.put_meta(META_RUN_ID, run_id)
        return run_id

    def _rngs(self, trial_id: int, kind: str):  # type: ignore[no-untyped-def]  # RngFactory
        return decision_rng(self.experiment.seed, trial_id, kind)

    # --- public API -------------------------------------------------------------------------
    def handle(self, message: Message, now: float) -> Reply:
        """Handle one request and commit before returning its reply."""
        return self.handle_batch([message], now)[0]

    def handle_batch(self, messages: Sequence[Message], now: float) -> list[Reply]:
        """Handle several requests in one store transaction (one fsync), replies in order.

        A message whose handling raises unexpectedly is answered ``error(internal)`` and the
        batch is re-run without its effects, so one bad request cannot corrupt or block the
        others. A ``StoreRetry`` (the store had to grow) re-runs the batch transparently.
        """
        poisoned: dict[int, Reply] = {}
        # Only results must survive a power cut before their ack; a lost lease or heartbeat
        # merely re-queues work, so batches without one skip the fsync.
        # A pending report (``Report.pending``) completes nothing: like a lease, it may be lost.
        durable = any(isinstance(m, Fail | WorkerLost) or (isinstance(m, Report) and not m.pending) for m in messages)
        for _ in range(MAX_BATCH_RETRIES + len(messages)):
            try:
                with self.store.batch(durable=durable):
                    replies = []
                    for index, message in enumerate(messages):
                        if index in poisoned:
                            replies.append(poisoned[index])
                            continue
                        try:
                            replies.append(self._dispatch(message, now))
                        except TrialNotFound as exc:
                            replies.append(Error("unknown_trial", str(exc)))
                        except SchemaError as exc:
                            replies.append(Error("malformed", str(exc)))
                        except StoreRetry:
                            raise
                        except Exception as exc:
                            raise _Poisoned(index, exc) from exc
                return replies
            except StoreRetry:
                log.info("store grew its map; re-running a batch of %d messages", len(messages))
            except _Poisoned as bad:
                log.exception("internal error handling %r", messages[bad.index], exc_info=bad.error)
                poisoned[bad.index] = Error("internal", f"{type(bad.error).__name__}: {bad.error}")
        raise RuntimeError("could not commit a batch after repeated store growth")

    def tick(self, now: float) -> list[int]:
        """Expire leases past their deadline; returns the trial ids released."""
        released: list[int] = []
        for _ in range(MAX_BATCH_RETRIES):
            try:
                with self.store.batch():
                    released = []
                    configured, rates = self.experiment.trial_timeout_s, self._timeout_rates()
                    for trial_id in self.store.ids_with_status(TrialStatus.RUNNING):
                        trial = self.store.get_trial(trial_id)
                        timeout_s = effective_timeout(configured, rates, attempt_steps(trial))
                        if trial.lease is not None and trial.lease.deadline < now:
                            self._release(trial, now, f"lease expired (worker {trial.lease.worker} "
                                                      f"silent for {self.experiment.lease_s:g}s)", lost=True)
                            released.append(trial_id)
                        elif timed_out(trial.started_at, now, timeout_s):
                            assert timeout_s is not None and trial.started_at is not None
                            # a failure, not a loss; its worker hears `stop` (trial timeout) at
                            # its next heartbeat and ends its process if train does not return
                            self._release(trial, now, timeout_error(trial.attempt, now - trial.started_at,
                                                                    timeout_s))
                            released.append(trial_id)
                return released
            except StoreRetry:
                continue
        raise RuntimeError("could not commit lease expiry after repeated store growth")

    def _timeout_rates(self) -> tuple[float, ...]:
        """With ``trial_timeout_s="auto"``: the median seconds per step of the last completed
        attempts (one number; none before any completed) for ``effective_timeout``; else ().
        Read again only when more trials completed."""
        if self.experiment.trial_timeout_s != AUTO:
            return ()
        completed = self.store.count(TrialStatus.COMPLETED)
        if self._timeout_cache is None or self._timeout_cache[0] != completed:
            recent = self.store.ids_with_status(TrialStatus.COMPLETED)[-AUTO_SAMPLE:]
            rates = completed_rates(self.store.trials(recent))
            self._timeout_cache = (completed, (statistics.median(rates),) if rates else ())
        return self._timeout_cache[1]

    @property
    def ledger(self) -> BudgetLedger:
        """Leased and queued steps against ``budget_steps`` (``control/budget.py``): the
        store's totals as the current transaction sees them."""
        return BudgetLedger.read(self.store, self.experiment.budget_steps)

    @property
    def leased_steps(self) -> int:
        """Steps of the trials leased so far (what the budget has spent)."""
        return self.ledger.leased

    @property
    def finished(self) -> bool:
        """The run is over (``pbt_actors.control.progress.run_finished``: the one rule)."""
        return run_finished(self.store)

    # --- dispatch ----------------------------------------------------------------------------------
    def _dispatch(self, message: Message, now: float) -> Reply:
        if isinstance(message, RequestTrial):
            return self._request_trial(message, now)
        if isinstance(message, Heartbeat):
            return self._heartbeat(message, now)
        if isinstance(message, Report):
            reply = self._report(message, now)
            if message.next and isinstance(reply, Ack | Stop):  # applied: now lease the next
                return self._request_trial(RequestTrial(message.worker), now)
            return reply
        if isinstance(message, Fail):
            return self._fail(message, now)
        if isinstance(message, WorkerLost):
            for trial in self._leased_to(message.worker):
                error = f"worker {message.worker} lost: {message.reason}".rstrip(": ")
                if trial.final is not None:  # a pending completion: trained, its write cut short by a death
                    # the worker died running another trial (which is charged the death); this one is
                    # a loss only, never a poison suspect
                    self._release(trial, now, f"{error} (while its checkpoint was being written)", lost=True)
                else:
                    self._release(trial, now, error, lost=True, death=True)
            return Ack()
        if isinstance(message, Hello):
            return Ack(self.run_id)
        return Error("unknown_type", f"{type(message).__name__} is not a request")

    def _request_trial(self, msg: RequestTrial, now: float) -> Reply:
        for stale in self._leased_to(msg.worker):
            if stale.final is None:  # a pending completion (``final`` set) is still being written: kept
                self._release(stale, now, f"worker {msg.worker} asked for new work while holding it", lost=True)
        if self.checkpoint_store_fault is not None:
            return Wait(self.wait_s)  # every trial would fail on the store: lease none
        if self.finished:
            return Done()
        trial_id = self.store.first_with_status(TrialStatus.PENDING)
        if trial_id is None:
            self._decide(Idle(), now)
            trial_id = self.store.first_with_status(TrialStatus.PENDING)
        trial = self.store.get_trial(trial_id) if trial_id is not None else None
        if trial is not None and not was_leased(trial) and not self.ledger.admits_lease(trial_cost(trial)):
            self._drop_unaffordable(now)  # only a budget lowered on resume gets here
            trial_id = self.store.first_with_status(TrialStatus.PENDING)  # a retry, charged already
            trial = self.store.get_trial(trial_id) if trial_id is not None else None
        if trial is None:
            if self.store.count(TrialStatus.RUNNING) == 0:
                self.store.put_meta(META_FINISHED_AT, now)
                return Done()
            return Wait(self.wait_s)
        running = trial.evolve(status=TrialStatus.RUNNING,
                               lease=Lease(msg.worker, now + self.experiment.lease_s),
                               started_at=now, worker=msg.worker)
        if not self.store.transition(trial.id, TrialStatus.PENDING, trial.attempt, running):
            raise RuntimeError(f"trial {trial.id} changed under a single writer")
        return self._assignment(running)

    def _drop_unaffordable(self, now: float) -> None:
        """STOP every never-leased PENDING trial the budget cannot lease (no refill: there is no
        budget for one). Leased-before trials (retries) stay: they are charged already."""
        for trial in self.store.trials(self.store.ids_with_status(TrialStatus.PENDING)):
            if was_leased(trial) or self.ledger.admits_lease(trial_cost(trial)):
                continue
            stopped = trial.evolve(status=TrialStatus.STOPPED, stop_reason="compute budget spent", ended_at=now)
            self.store.transition(trial.id, TrialStatus.PENDING, trial.attempt, stopped)

    def _assignment(self, trial: Trial) -> TrialAssignment:
        parent_ckpt = trial.resume
        start = trial.start_step
        if parent_ckpt is not None:
            start = parent_ckpt.step
        elif trial.parent_id is not None:
            parent_ckpt = self.store.checkpoint(trial.parent_id)
        return TrialAssignment(
            trial_id=trial.id, attempt=trial.attempt, generation=trial.generation,
            hparams=dict(trial.hparams), start_step=start, end_step=trial.end_step,
            parent_id=trial.parent_id, parent_checkpoint=parent_ckpt,
            heartbeat_s=self.experiment.heartbeat_interval_s, experiment=self.experiment.name,
        )

    def _heartbeat(self, msg: Heartbeat, now: float) -> Reply:
        trial = self.store.get_trial(msg.trial_id)
        if msg.attempt > trial.attempt:
            return Error("bad_attempt", f"trial {trial.id} has no attempt {msg.attempt} yet")
        if trial.status.terminal:
            return Stop(trial.id, self._terminal_reason(trial))
        if trial.status is not TrialStatus.RUNNING or trial.attempt != msg.attempt:
            if not self._ran_attempt(trial, msg.attempt, msg.worker):
                return Error("not_leaseholder", f"{msg.worker} did not run attempt {msg.attempt}")
            if msg.attempt == trial.attempt - 1 and is_timeout_error(trial.error):
                return Stop(trial.id, trial.error or TIMEOUT_ERROR)  # it timed out: end it
            return Ack()  # an older attempt may still finish first: let it
        assert trial.lease is not None
        if trial.lease.worker != msg.worker:
            return Error("not_leaseholder", f"trial {trial.id} is leased to another worker")
        measurements = trial.measurements
        if msg.metrics is not None:
            new = Measurement(msg.step, dict(msg.metrics))
            if not measurements or measurements[-1] != new:  # a resent heartbeat records once
                measurements = (*measurements, new)
        renewed = trial.evolve(lease=Lease(msg.worker, now + self.experiment.lease_s),
                               measurements=measurements)
        self.store.transition(trial.id, TrialStatus.RUNNING, trial.attempt, renewed)
        self._renew_pending(msg.worker, now, trial.id)
        if msg.metrics is not None:
            stop = early_stop_decision(self.view, self.experiment.early_stop, renewed, msg.step, msg.metrics)
            if stop is not None:
                self._apply(stop, now)
                return Stop(trial.id, stop.reason)
        return Ack()

    def _report(self, msg: Report, now: float) -> Reply:
        trial = self.store.get_trial(msg.trial_id)
        if msg.attempt > trial.attempt:
            return Error("bad_attempt", f"trial {trial.id} has no attempt {msg.attempt} yet")
        if trial.status is TrialStatus.COMPLETED:
            return Ack()  # duplicate, or a slower attempt after the first completion
        if trial.status.terminal:
            return Stop(trial.id, self._terminal_reason(trial))
        current = trial.status is TrialStatus.RUNNING and trial.attempt == msg.attempt
        if current:
            assert trial.lease is not None
            if trial.lease.worker != msg.worker:
                return Error("not_leaseholder", f"trial {trial.id} is leased to another worker")
        elif not self._ran_attempt(trial, msg.attempt, msg.worker):
            return Error("not_leaseholder", f"{msg.worker} did not run attempt {msg.attempt}")
        missing = [name for name in self.experiment.objective_.names if name not in msg.final]
        if missing:  # the worker checks this too (trial_runner); a report must not complete with {}
            if current:
                self._release(trial, now, f"attempt {msg.attempt} reported no value for the objective metric "
                                          f"{', '.join(map(repr, missing))} (final {dict(msg.final)!r:.200})")
            return Ack()
        if msg.checkpoint is not None and not owns_checkpoint(self.experiment.name, trial.id, msg.checkpoint):
            log.warning("trial %d attempt %d: %s reported checkpoint %r, outside the trial's own prefix %r: "
                        "refused (a checkpoint of another trial?)", trial.id, msg.attempt, msg.worker,
                        msg.checkpoint.uri, trial_checkpoint_prefix(self.experiment.name, trial.id))
            if current:
                self._release(trial, now, f"attempt {msg.attempt} reported checkpoint {msg.checkpoint.uri!r}, "
                                          "which is not under the trial's own prefix "
                                          f"{trial_checkpoint_prefix(self.experiment.name, trial.id)!r}")
            return Ack()
        if msg.pending:
            if current:  # keep the lease while its checkpoint is written; complete nothing yet
                held = trial.evolve(final=dict(msg.final), measurements=tuple(msg.measurements) or trial.measurements,
                                    lease=Lease(msg.worker, now + self.experiment.lease_s))
                self.store.transition(trial.id, TrialStatus.RUNNING, trial.attempt, held)
            return Ack()  # an older attempt's pending report: its completing report may still win
        history = self._with_attempt_ended(trial, now) if current else trial.history
        completed = trial.evolve(
            status=TrialStatus.COMPLETED, final=dict(msg.final),
            measurements=tuple(msg.measurements) or trial.measurements,
            checkpoint=msg.checkpoint, completed_attempt=msg.attempt, ended_at=now, lease=None,
            worker=msg.worker, history=history,
        )
        if not self.store.transition(trial.id, trial.status, trial.attempt, completed):
            raise RuntimeError(f"trial {trial.id} changed under a single writer")
        self._decide(TrialCompleted(completed), now)
        return Ack()

    def _fail(self, msg: Fail, now: float) -> Reply:
        trial = self.store.get_trial(msg.trial_id)
        if msg.attempt > trial.attempt:
            return Error("bad_attempt", f"trial {trial.id} has no attempt {msg.attempt} yet")
        if trial.status is not TrialStatus.RUNNING or trial.attempt != msg.attempt:
            return Ack()  # a stale attempt's failure changes nothing
        assert trial.lease is not None
        if trial.lease.worker != msg.worker:
            return Error("not_leaseholder", f"trial {trial.id} is leased to another worker")
        resume: Fail | None = msg
        if msg.resume is not None and not owns_checkpoint(self.experiment.name, trial.id, msg.resume):
            log.warning("trial %d: resume checkpoint %r is not under the trial's own prefix: ignored",
                        trial.id, msg.resume.uri)
            resume = None
        if msg.fault == "checkpoint_store":  # the store's fault, not the trial's: re-queued uncharged
            self._release(trial, now, msg.error, resume=resume, lost=True, fault=True)
            self.checkpoint_store_fault = msg.error
            return Ack()
        self._release(trial, now, msg.error, retryable=msg.retryable, resume=resume, lost=msg.preempted)
        return Ack()

    # --- state changes ------------------------------------------------------------------------------
    def _release(self, trial: Trial, now: float, error: str, *, retryable: bool = True,
                 resume: Fail | None = None, lost: bool = False, death: bool = False, fault: bool = False) -> None:
        """Take a RUNNING trial back: re-queue with ``attempt + 1`` or, past a limit, FAIL.

        A *loss* (``lost``: the machine's fault) counts against ``max_losses``, a failure of
        the trial's own code against ``max_attempts``; see ``docs/protocol.md`` §4. A
        ``death`` (its worker process died) is a loss the first time, a failure after that
        (``control.deadlines.death_is_failure``). A ``fault`` of the checkpoint store is a loss
        that never fails the trial: it is re-queued whatever its counts.
        """
        history = self._with_attempt_ended(trial, now)
        resume_ref = resume.resume if resume is not None and resume.resume is not None else trial.resume
        deaths = trial.deaths + (1 if death else 0)
        if death and death_is_failure(deaths):
            lost = False
            error = f"{error} (death {deaths} of a worker running this trial: counted as its failure)"
        losses = trial.losses + (1 if lost else 0)
        failures = trial.attempt - losses
        if fault:
            again = True
        elif lost:
            again = losses < self.experiment.max_losses
        else:
            again = retryable and failures < self.experiment.max_attempts
        if again:
            queued = trial.evolve(status=TrialStatus.PENDING, attempt=trial.attempt + 1, lease=None, final=None,
                                  error=error, history=history, resume=resume_ref, losses=losses, deaths=deaths)
            self.store.transition(trial.id, TrialStatus.RUNNING, trial.attempt, queued)
            log.info("trial %d re-queued as attempt %d: %s", trial.id, queued.attempt, error)
            return
        failed = trial.evolve(status=TrialStatus.FAILED, lease=None, final=None, error=error, ended_at=now,
                              history=history, losses=losses, deaths=deaths)
        self.store.transition(trial.id, TrialStatus.RUNNING, trial.attempt, failed)
        log.warning("trial %d FAILED after %d attempt(s): %s", trial.id, trial.attempt, error)
        self._decide(TrialEnded(failed), now)

    def _decide(self, event: Event, now: float) -> None:
        for decision in self.policy.decide(self.view, event, self._rngs):
            self._apply(decision, now)

    def _apply(self, decision: Decision, now: float) -> None:
        if isinstance(decision, Spawn):
            initiator = None
            if decision.initiator_id is not None:
                initiator = self.store.get_trial(decision.initiator_id)
                if initiator.initiated:
                    return  # exactly once, whatever the event history
            cap = self.experiment.max_trials
            if (cap is not None and self.store.count() >= cap) or not self.ledger.admits_new(
                    trial_cost(decision.spec)):
                if initiator is not None:
                    self._mark_initiated(initiator)
                return
            self.store.create_trial(decision.spec, now)
            if initiator is not None:
                self._mark_initiated(initiator)
        elif isinstance(decision, Retire):
            initiator = self.store.get_trial(decision.initiator_id)
            if not initiator.initiated:
                self._mark_initiated(initiator)
        elif isinstance(decision, StopTrial):
            trial = self.store.get_trial(decision.trial_id)
            if not trial.status.active:
                return
            running = trial.status is TrialStatus.RUNNING
            history = self._with_attempt_ended(trial, now) if running else trial.history
            stopped = trial.evolve(status=TrialStatus.STOPPED, lease=None, stop_reason=decision.reason,
                                   ended_at=now, history=history)
            self.store.transition(trial.id, trial.status, trial.attempt, stopped)
            self._decide(TrialEnded(stopped), now)
        else:
            raise TypeError(f"unknown decision {decision!r}")

    def _mark_initiated(self, trial: Trial) -> None:
        self.store.transition(trial.id, trial.status, trial.attempt, trial.evolve(initiated=True))

    # --- helpers ----------------------------------------------------------------------------------------
    def _leased_to(self, worker: str) -> list[Trial]:
        return self.store.trials(self.store.running_leased_to(worker))

    def _renew_pending(self, worker: str, now: float, current: int) -> None:
        """Renew the leases of ``worker``'s pending completions (``Report.pending``: trained,
        checkpoint still being written) with its running trial's heartbeat: the same process
        lives. A worker holds one running trial and rarely a pending one, so this reads little."""
        ids = self.store.running_leased_to(worker)
        if len(ids) < 2:
            return
        for trial in self.store.trials([i for i in ids if i != current]):
            if trial.final is not None and trial.lease is not None:
                renewed = trial.evolve(lease=Lease(worker, now + self.experiment.lease_s))
                self.store.transition(trial.id, TrialStatus.RUNNING, trial.attempt, renewed)

    @staticmethod
    def _with_attempt_ended(trial: Trial, now: float) -> tuple[AttemptRecord, ...]:
        """``trial.history`` with its current attempt, run by the leaseholder, ended ``now``."""
        worker = trial.lease.worker if trial.lease else (trial.worker or "?")
        started = trial.started_at if trial.started_at is not None else now  # 0.0 is a time (virtual clocks)
        return (*trial.history, AttemptRecord(trial.attempt, worker, started, now))

    @staticmethod
    def _ran_attempt(trial: Trial, attempt: int, worker: str) -> bool:
        return any(h.attempt == attempt and h.worker == worker for h in trial.history)

    @staticmethod
    def _terminal_reason(trial: Trial) -> str:
        if trial.status is TrialStatus.STOPPED:
            return f"trial stopped: {trial.stop_reason}"
        if trial.status is TrialStatus.FAILED:
            return f"trial failed: {trial.error}"
        return "trial already completed"
