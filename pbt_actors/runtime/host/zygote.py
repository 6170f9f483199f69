"""A fork server for worker processes: fork a pre-warmed *zygote* instead of starting Python.

Layer 4. Why: a fresh worker interpreter imports torch (~2 s on a small CPU host), its first
digits trial imports scikit-learn (~1.9 s) and its first ``torch.optim`` optimizer lazily
imports ``torch._dynamo`` (~1.7 s): seconds of CPU per worker start, and again after every
preemption restart. The CLI has already imported torch and the experiment file's libraries
when it starts its workers, so ``Zygote.start`` forks a child of the CLI *before any thread
exists*, imports what is still missing there (``default_preload``: ``torch._dynamo``), and
from then on forks one worker per request, which starts in milliseconds with all of it
imported (copy-on-write). ``benchmarks/runtime.py`` (d) measures it against a fresh
interpreter. (Why not ``multiprocessing``'s forkserver: its server is a fresh interpreter
that would import torch and scikit-learn once more, seconds on the first workers' path,
and it pickles each process object; this zygote inherits the CLI's imports by forking.)

Protocol: one ``AF_UNIX`` ``SOCK_SEQPACKET`` socket pair (a request is one datagram: no
framing). A request is a JSON map ``{"config": WorkerProcessConfig fields, "env": {...},
"log": path | null}`` with one file descriptor attached (``SCM_RIGHTS``): the write end of a
pipe the parent made for this worker, its *status pipe*. Into it the zygote writes 4-byte
big-endian signed ints (a second descriptor, if attached, is the read end of the parent's
lifeline pipe, ``worker_process.Lifeline``: the worker gets it as ``PBT_LIFELINE_FD`` and
exits when its supervisor is gone): the worker's pid (or ``-errno`` if it could not fork it), later its
exit code (``subprocess``'s convention: the exit status, or ``-signal``), then closes it.
Each worker has its own channel, so concurrent spawns need no lock and the parent no reader
thread: ``ForkedWorker.poll`` is a non-blocking read. A worker keeps its own copy of that
write end (and no other pipe of the zygote's): if the zygote dies, the parent reads
end-of-file only once the worker is gone too, and reports ``EXIT_UNKNOWN`` (-9, as if
SIGKILLed: an abnormal exit, so a supervisor restarts the slot).

The zygote is single-threaded, reaps with ``waitpid(-1, WNOHANG)`` woken by SIGCHLD
(``signal.set_wakeup_fd``), ignores SIGINT and SIGTERM (a Ctrl-C or a group SIGTERM reaches
the workers and the CLI, which stops them) and exits at end-of-file on its socket: when the
parent calls ``close`` or dies (and it asks the kernel for a SIGKILL when its parent dies,
``PR_SET_PDEATHSIG``, in case it is busy). It stays in the CLI's process group, as do its workers.

A worker child restores a fresh interpreter's signal handlers, replaces ``os.environ`` by
the request's ``env`` (and applies ``OMP_NUM_THREADS`` to torch, whose OpenMP runtime read
the environment when the CLI imported it), appends fds 1 and 2 to the log file, sets
``sys.argv`` to what a fresh worker has (``[..., "worker-process", *config.argv()]``), calls
``worker_process.run(config)`` and always ends with ``os._exit``. The experiment file's
own module code runs in each worker (the zygote forgot it after preloading), so it sees the
worker's environment. Randomness: CPython reseeds ``random`` in a forked child; numpy's and
torch's global generators are inherited, which our code never relies on (explicit seeds).

Fallback: ``Zygote.start`` refuses (``ZygoteError``) when the process already has another
thread or has touched CUDA; the CLI then warns once and starts fresh interpreters, as
``launch`` does when ``spawn`` fails (the zygote died). ``--no-zygote`` always does.

CUDA: a process forked after its parent touched the CUDA driver cannot use CUDA ("Cannot
re-initialize CUDA in forked subprocess"). Two ways an experiment file does that at import:
``torch.cuda.init()`` or a CUDA tensor (``torch.cuda.is_initialized()``: checked in the parent
before forking) and ``torch.cuda.is_available()``, which queries the driver without
initialising torch's CUDA state but *poisons fork* all the same (torch marks its forked
children as in a "bad fork"; ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` avoids it). The second is
invisible from the parent, so the zygote checks ``torch.cuda._is_in_bad_fork()`` in itself
once it has preloaded (and in a probe child it forks, in case preloading touched CUDA), and
its first datagram to the parent is ``ready`` or the reason it refuses; ``start`` waits for it
(the first spawn would wait for the preloading anyway). The CLI loads the experiment file before it starts the
zygote, so both checks run right after that file's module code. A worker selects its GPU by
``CUDA_VISIBLE_DEVICES`` in its ``env`` (``launch``): the child writes its environment with
``os.environ`` (``putenv``) before anything touches CUDA, and since the parent never did, the
driver reads it at the child's first CUDA call, as in a fresh process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import importlib
import io
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence

from pbt_actors.common.exit_codes import EXIT_UNKNOWN
from pbt_actors.model.errors import PbtError, ZygoteError
from pbt_actors.runtime.experiment_loader import forget_experiment_modules
from pbt_actors.runtime.worker import worker_process
from pbt_actors.runtime.worker.worker_process import LIFELINE_ENV, Lifeline, WorkerProcessConfig

log = logging.getLogger(__name__)

REPLY_TIMEOUT_S = 30.0
_INT = struct.Struct(">i")
_MAX_REQUEST = 1024 * 1024
_READY = b"ready"  # the zygote's first (and only) datagram to its parent, unless it refuses
_PROBE_POISONED = 3  # exit code of the zygote's probe child when it finds itself in a bad fork
START_TIMEOUT_S = 120.0  # for the zygote's "ready": it preloads first (torch._dynamo: ~2 s, more on a busy host)
CUDA_HINT = ("before forking, and forked children could not use CUDA. Avoid touching CUDA when the "
             "experiment file is imported (do it in train(ctx), e.g. through ctx.device; or set "
             "PYTORCH_NVML_BASED_CUDA_CHECK=1 for torch.cuda.is_available()), or pass --no-zygote")

# The parent ends of every open zygote's socket: a zygote forked later closes them, so that
# each zygote sees end-of-file when its own parent closes it.
_PARENT_SOCKETS: set[socket.socket] = set()


class ForkedWorker:
    """A worker forked by the zygote; the part of ``subprocess.Popen`` the supervisor uses."""

    def __init__(self, pid: int, status_fd: int, args: Sequence[str]) -> None:
        self.pid = pid
        self.args = list(args)
        self.returncode: int | None = None
        self._status_fd = status_fd  # closed when the handle is dropped: wait() may be selecting on it
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ForkedWorker pid={self.pid} returncode={self.returncode}>"

    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is None and _readable(self._status_fd, 0):
                code = _read_int(self._status_fd)
                self.returncode = EXIT_UNKNOWN if code is None else code
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            _readable(self._status_fd, left)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __del__(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.close(self._status_fd)


class Zygote:
    """The parent's handle of a zygote process (see the module doc). Thread-safe."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self._sock: socket.socket | None = sock
        self._lock = threading.Lock()  # guards _sock against a concurrent close
        self._reaped = False

    @classmethod
    def start(cls, preload: Sequence[str] | None = None) -> Zygote:
        """Fork a zygote from this process and import ``preload`` in it (default:
        ``default_preload()``; a module that fails to import is logged and skipped).

        Raises:
            ZygoteError: this process has other threads, or has touched CUDA (initialised it,
                or queried the driver: the zygote finds itself in a bad fork), or the zygote
                died or did not say it was ready.
        """
        if threading.active_count() != 1:
            names = ", ".join(t.name for t in threading.enumerate())
            raise ZygoteError(f"cannot fork a zygote from a process with {threading.active_count()} threads "
                              f"({names}): start it before any thread")
        if cuda_initialised():
            raise ZygoteError(f"cannot fork a zygote: torch initialised CUDA in this process {CUDA_HINT}")
        modules = default_preload() if preload is None else list(preload)
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        _flush_stdio()  # or the child would write our buffered output again
        parent_pid = os.getpid()
        pid = os.fork()
        if pid == 0:  # the zygote
            code = 1
            try:
                _die_with_parent(parent_pid)
                Lifeline.drop_inherited()
                parent_sock.close()
                for other in _PARENT_SOCKETS:  # other zygotes' parent ends: theirs, not ours
                    other.close()
                _PARENT_SOCKETS.clear()
                code = _serve(child_sock, modules)
            except BaseException:
                with contextlib.suppress(Exception):
                    traceback.print_exc()
            finally:
                _flush_stdio()
                os._exit(code)
        child_sock.close()
        _PARENT_SOCKETS.add(parent_sock)
        zygote = cls(pid, parent_sock)
        refusal = zygote._await_ready()
        if refusal is not None:
            zygote.close()
            raise ZygoteError(refusal)
        return zygote

    def _await_ready(self) -> str | None:
        """None once the zygote said ``ready``, else why it cannot serve (its own words, or
        that it died or kept silent for ``START_TIMEOUT_S``)."""
        assert self._sock is not None
        if not _readable(self._sock.fileno(), START_TIMEOUT_S):
            return f"the zygote (pid {self.pid}) did not say it was ready within {START_TIMEOUT_S:.0f}s"
        try:
            data = self._sock.recv(_MAX_REQUEST)
        except OSError as exc:
            return f"the zygote (pid {self.pid}) died before it was ready: {exc}"
        if data == _READY:
            return None
        if not data:
            return f"the zygote (pid {self.pid}) died before it was ready"
        return data.decode("utf-8", "replace")

    def spawn(self, config: WorkerProcessConfig, env: Mapping[str, str],
              log_path: str | os.PathLike[str] | None = None, lifeline_fd: int | None = None) -> ForkedWorker:
        """Fork a worker running ``worker_process.run(config)`` with exactly ``env``, its stdout
        and stderr appended to ``log_path`` (else the zygote's); with ``lifeline_fd`` (the read
        end of ``Lifeline``) the worker exits when this process is gone.

        Raises:
            ZygoteError: the zygote is closed or dead, did not answer, or could not fork.
        """
        request = json.dumps({"config": dataclasses.asdict(config), "env": {str(k): str(v) for k, v in env.items()},
                              "log": None if log_path is None else os.fspath(log_path)}).encode()
        status_r, status_w = os.pipe()
        try:
            with self._lock:
                if self._sock is None:
                    raise ZygoteError(f"the zygote (pid {self.pid}) is closed")
                socket.send_fds(self._sock, [request], [status_w] if lifeline_fd is None else [status_w, lifeline_fd])
        except OSError as exc:
            os.close(status_r)
            raise ZygoteError(f"the zygote (pid {self.pid}) is not running: {exc}") from exc
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
        pid = _read_int(status_r) if _readable(status_r, REPLY_TIMEOUT_S) else None
        if pid is None or pid <= 0:
            os.close(status_r)
            why = "did not answer" if pid is None else f"could not fork: {os.strerror(-pid)}"
            raise ZygoteError(f"the zygote (pid {self.pid}) {why}")
        return ForkedWorker(pid, status_r, ["worker-process", *config.argv()])

    def close(self, timeout_s: float = 5.0) -> None:
        """Close the socket (the zygote exits at end-of-file) and reap it; SIGKILL it after
        ``timeout_s``. Workers it forked keep running (see the module doc)."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is None:
            return
        _PARENT_SOCKETS.discard(sock)
        sock.close()
        deadline = time.monotonic() + timeout_s
        while not self._reap(block=False):
            if time.monotonic() > deadline:
                log.warning("the zygote (pid %d) did not exit within %.1fs; killing it", self.pid, timeout_s)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self._reap(block=True)
                return
            time.sleep(0.01)

    def _reap(self, *, block: bool) -> bool:
        if not self._reaped:
            try:
                self._reaped = os.waitpid(self.pid, 0 if block else os.WNOHANG)[0] != 0
            except ChildProcessError:
                self._reaped = True
        return self._reaped


def cuda_initialised() -> bool:
    """Whether torch has initialised CUDA in this process (``torch.cuda.init()``, a CUDA
    tensor); False when torch is not imported (importing it here would cost seconds)."""
    cuda = getattr(sys.modules.get("torch"), "cuda", None)
    return bool(cuda is not None and cuda.is_initialized())


def cuda_poisoned() -> bool:
    """In a forked child: whether torch marked it a "bad fork" (its parent touched the CUDA
    driver, e.g. with ``torch.cuda.is_available()``), so CUDA cannot be used in it."""
    cuda = getattr(sys.modules.get("torch"), "cuda", None)
    in_bad_fork = getattr(cuda, "_is_in_bad_fork", None)
    return bool(in_bad_fork is not None and in_bad_fork())


def _cuda_refusal(preload: Sequence[str]) -> str | None:
    """In the zygote, after preloading: why its workers could not use CUDA, or None.

    Its parent touched CUDA (this process is a bad fork), or preloading did: then the zygote's
    own children would be bad forks, which only a child can tell, so a probe child is forked
    (a few milliseconds) and says so in its exit code.
    """
    if cuda_poisoned():
        return (f"cannot fork workers from a zygote: this process touched CUDA (e.g. torch.cuda.is_available() "
                f"in the experiment file) {CUDA_HINT}")
    if "torch" not in sys.modules:
        return None
    pid = os.fork()
    if pid == 0:
        os._exit(_PROBE_POISONED if cuda_poisoned() else 0)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == _PROBE_POISONED:
        return (f"cannot fork workers from a zygote: preloading {', '.join(preload) or 'nothing'} touched CUDA "
                f"in the zygote, and its forked children could not use CUDA; pass --no-zygote")
    return None


def default_preload() -> list[str]:
    """What a zygote imports when ``preload`` is not given: ``torch._dynamo`` (which the first
    ``torch.optim`` optimizer imports lazily) when torch is imported."""
    return ["torch._dynamo"] if "torch" in sys.modules else []


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL this process when its parent dies; exit now if it already has (the race
    between ``fork`` and ``prctl``). Elsewhere a no-op: the socket's end-of-file still ends us."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(0)


# --- pipe helpers --------------------------------------------------------------------------------
def _readable(fd: int, timeout_s: float | None) -> bool:
    poller = select.poll()  # not select.select: the parent's fds may be numbered past 1024
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout_s is None else max(0.0, timeout_s) * 1000))


def _read_int(fd: int) -> int | None:
    """One int from a status pipe, or None at end-of-file (4-byte writes are atomic)."""
    data = os.read(fd, _INT.size)
    return _INT.unpack(data)[0] if len(data) == _INT.size else None


def _write_int(fd: int, value: int) -> bool:
    """False when the parent has closed its end (it gave up waiting, or dropped the handle)."""
    try:
        os.write(fd, _INT.pack(value))
        return True
    except OSError:
        return False


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


# --- the zygote --------------------------------------------------------------------------------------
def _serve(sock: socket.socket, preload: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception as exc:
            log.warning("zygote: cannot preload %s: %s: %s", name, type(exc).__name__, exc)
    forget_experiment_modules()  # each worker runs the experiment file's module code itself
    if threading.active_count() != 1:
        log.warning("zygote: preloading started threads (%s); forked workers will not have them",
                    ", ".join(t.name for t in threading.enumerate()))
    refusal = _cuda_refusal(preload)
    sock.send(_READY if refusal is None else refusal.encode())
    if refusal is not None:
        return 0
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # a Python handler, so the wake-up fd is written
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    statuses: dict[int, int] = {}  # worker pid -> write end of its status pipe
    own_fds = [sock.fileno(), wake_r, wake_w]
    while True:
        readable, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 512):
                    pass
        if sock.fileno() in readable:
            try:
                data, fds, flags, _ = socket.recv_fds(sock, _MAX_REQUEST, 2)  # status pipe, lifeline
            except ConnectionError:
                return 0
            if not data and not fds:  # end-of-file: the parent closed its end, or died
                return 0
            _fork_worker(data, fds, flags, statuses, own_fds)
        _reap_workers(statuses)


def _fork_worker(data: bytes, fds: list[int], flags: int, statuses: dict[int, int], own_fds: list[int]) -> None:
    if not fds:
        log.warning("zygote: ignoring a request without its status pipe")
        return
    status_fd = fds[0]
    lifeline_fd = fds[1] if len(fds) > 1 else None
    if lifeline_fd is not None:
        os.set_inheritable(lifeline_fd, False)
    for fd in fds[2:]:
        os.close(fd)
    try:
        _fork_worker_with(data, status_fd, lifeline_fd, flags, statuses, own_fds)
    finally:
        if lifeline_fd is not None:  # the worker has its copy; the zygote needs none
            os.close(lifeline_fd)


def _fork_worker_with(data: bytes, status_fd: int, lifeline_fd: int | None, flags: int, statuses: dict[int, int],
                      own_fds: list[int]) -> None:
    os.set_inheritable(status_fd, False)  # SCM_RIGHTS fds arrive inheritable: keep them from exec'd programs
    try:
        if flags & socket.MSG_TRUNC:
            raise ValueError(f"request larger than {_MAX_REQUEST} bytes")
        request = json.loads(data)
        config = WorkerProcessConfig(**request["config"])
        env = {str(k): str(v) for k, v in dict(request["env"]).items()}
        log_path = None if request.get("log") is None else str(request["log"])
        if lifeline_fd is not None:
            env[LIFELINE_ENV] = str(lifeline_fd)
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("zygote: bad request: %r", exc)
        _write_int(status_fd, -errno.EINVAL)
        os.close(status_fd)
        return
    _flush_stdio()
    try:
        pid = os.fork()
    except OSError as exc:
        _write_int(status_fd, -(exc.errno or errno.EAGAIN))
        os.close(status_fd)
        return
    if pid == 0:
        _run_worker(config, env, log_path, [*own_fds, *statuses.values()])  # never returns
    statuses[pid] = status_fd
    if not _write_int(status_fd, pid):  # the parent stopped waiting (REPLY_TIMEOUT_S): nobody would supervise it
        os.kill(pid, signal.SIGKILL)


def _reap_workers(statuses: dict[int, int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = statuses.pop(pid, None)
        if fd is not None:
            _write_int(fd, os.waitstatus_to_exitcode(status))
            os.close(fd)


def _run_worker(config: WorkerProcessConfig, env: dict[str, str], log_path: str | None,
                zygote_fds: list[int]) -> None:
    """In the forked worker: look like a fresh worker process, run it, ``os._exit``."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for fd in zygote_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # what a fresh interpreter has
        os.environ.clear()
        os.environ.update(env)
        if log_path is not None:
            fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
        # new text streams on fds 1 and 2 (the parent's may be replaced, e.g. under pytest),
        # line-buffered so that a log shows each line as it is written
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True,
                                      errors="backslashreplace")
        torch = sys.modules.get("torch")
        threads = env.get("OMP_NUM_THREADS", "")
        if torch is not None and threads.isdigit() and int(threads) > 0:
            torch.set_num_threads(int(threads))
        sys.argv = [sys.argv[0] if sys.argv else "pbt-actors", "worker-process", *config.argv()]
        root = logging.getLogger()  # configured as `pbt-actors worker-process` configures a fresh one
        for handler in list(root.handlers):
            root.removeHandler(handler)
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        code = worker_process.run(config)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except PbtError as exc:  # as the CLI reports it
        print(f"pbt-actors: {exc}", file=sys.stderr)
        code = 2
    except BaseException:
        with contextlib.suppress(Exception):
            traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(BaseException):
            for thread in threading.enumerate():  # like interpreter shutdown: non-daemon threads finish
                if thread is not threading.current_thread() and not thread.daemon:
                    thread.join()
            for handler in logging.getLogger().handlers:
                handler.flush()
            _flush_stdio()
        os._exit(code & 0xFF if code >= 0 else 1)


__all__ = ["ForkedWorker", "Zygote", "default_preload"]
