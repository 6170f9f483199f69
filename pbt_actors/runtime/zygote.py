"""A fork server for worker processes: fork a pre-warmed *zygote* instead of starting Python.

Layer 5 (with ``launch``). Why: a worker started as ``python -m pbt_actors.cli worker-process``
imports torch (~2 s on a small CPU host), then its first digits trial imports scikit-learn
(~1.9 s) and its first ``torch.optim.SGD`` lazily imports ``torch._dynamo`` (~1.7 s): several
seconds of CPU per worker start, and again after every preemption (SIGKILL) restart. The CLI
process has already imported torch and the experiment module when it starts its workers, so
``Zygote.start`` forks a child of the CLI *before any thread exists*, imports what is still
missing (``preload``: ``torch._dynamo`` when torch is imported), and from then on forks one
worker process per request, which starts in milliseconds with everything already imported
(copy-on-write). The idea is Android's zygote or ``multiprocessing``'s forkserver.

How: parent and zygote talk over two ``os.pipe``s, each message a 4-byte big-endian length
and one msgpack map (``pbt_actors.model.wire``; never pickle):

* request ``{"argv": [...], "env": {...}, "log": path | None}`` (``argv``: the CLI arguments
  after ``pbt-actors``) → reply ``{"pid": int}`` or ``{"error": str}``;
* unsolicited ``{"exit": pid, "code": int}`` when a worker ends (``subprocess``'s returncode
  convention: the exit status, or ``-signal`` when a signal killed it). The zygote reaps with
  ``os.waitpid(-1, WNOHANG)``, woken by SIGCHLD through ``signal.set_wakeup_fd``.

The zygote is single-threaded (no threads, no ZeroMQ context, no pykka), ignores SIGINT and
SIGTERM (a Ctrl-C or a process-group SIGTERM reaches the workers and the CLI, which stops
them; the zygote keeps reporting their exits meanwhile) and exits when its request pipe
reaches EOF: when the parent calls ``close`` or dies. It does not call ``setsid``: it stays
in the CLI's process group, so killing that group kills it too.

A worker child closes the zygote's pipes, restores the signal handlers of a fresh
interpreter, replaces ``os.environ`` by the request's ``env`` (and applies ``OMP_NUM_THREADS``
to torch, whose OpenMP runtime read the environment when the CLI imported it), points fds
1 and 2 at the log file (append), runs ``pbt_actors.cli.app.main(argv)`` and always ends with
``os._exit`` (it never returns into the zygote's loop). Randomness: CPython reseeds
``random`` in a forked child; numpy's and torch's global generators are inherited from the
zygote, so forked workers share their state; our code derives all randomness from explicit
seeds (``torch_helpers.seed_everything``, per-trial seeds), so this does not matter to it.

Fallback: ``Zygote.start`` refuses (``ZygoteError``) when the process already has more than
one Python thread, or when torch has initialised CUDA (a forked child cannot use it); the
CLI then logs one warning and starts fresh interpreters, as does ``launch`` whenever
``spawn`` fails (for instance the zygote was killed). ``pbt-actors run|worker --no-zygote``
always starts fresh interpreters: use it when the experiment module is not fork-safe (it
initialises CUDA, starts threads or opens connections at import time).

A ``ZygoteProcess`` duck-types the part of ``subprocess.Popen`` the host supervisor uses.
If the zygote dies, exits can no longer be reported: ``poll`` then checks whether the pid
still exists (``os.kill(pid, 0)``) and, once it is gone, reports ``EXIT_UNKNOWN`` (-9, as if
SIGKILLed: an abnormal exit, so a supervisor restarts the slot).

Measured on a 2-core CPU host (``examples/digits.py --workers 2``): see README.md.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from pbt_actors.model import wire

log = logging.getLogger(__name__)

EXIT_UNKNOWN = -signal.SIGKILL  # the returncode of a child whose exit the dead zygote could not report
REPLY_TIMEOUT_S = 30.0
_HEADER = struct.Struct(">I")
_MAX_MESSAGE = 16 * 1024 * 1024
_SAFETY_TIMEOUT_S = 1.0  # the zygote's select also wakes this often, in case a SIGCHLD wake-up was lost
_ORPHAN_POLL_S = 0.05

# Parent-side pipe ends of every open zygote: a zygote forked later closes them in its child,
# so that each zygote sees EOF when its own parent closes it.
_OPEN_PARENT_FDS: set[int] = set()


class ZygoteError(RuntimeError):
    """The zygote cannot start, or cannot spawn (dead, broken pipe, fork failed)."""


# --- framing ------------------------------------------------------------------------------------
def _write_message(fd: int, message: Mapping[str, Any]) -> None:
    data = wire.pack(dict(message))
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks, missing = [], size
    while missing:
        chunk = os.read(fd, missing)
        if not chunk:
            return None
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def _read_message(fd: int) -> dict[str, Any] | None:
    """One message, or None at EOF (or a truncated message)."""
    header = _read_exactly(fd, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > _MAX_MESSAGE:
        raise ZygoteError(f"zygote message of {size} bytes exceeds {_MAX_MESSAGE}")
    body = _read_exactly(fd, size)
    if body is None:
        return None
    message = wire.unpack(body, max_bytes=_MAX_MESSAGE)
    if not isinstance(message, dict):
        raise ZygoteError(f"zygote message is not a map: {message!r}")
    return message


# --- parent side ----------------------------------------------------------------------------------
class ZygoteProcess:
    """A worker forked by the zygote; the part of ``subprocess.Popen`` the supervisor uses."""

    def __init__(self, pid: int, args: Sequence[str], zygote: Zygote) -> None:
        self.pid = pid
        self.args = list(args)
        self.returncode: int | None = None
        self._zygote = zygote

    def __repr__(self) -> str:
        return f"<ZygoteProcess pid={self.pid} returncode={self.returncode}>"

    def poll(self) -> int | None:
        with self._zygote._cond:
            if self.returncode is None and self._zygote._dead:
                self._check_orphan()
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._zygote._cond:
            while True:
                if self.returncode is None and self._zygote._dead:
                    self._check_orphan()
                if self.returncode is not None:
                    return self.returncode
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout if timeout is not None else 0.0)
                if self._zygote._dead:  # nobody will notify: look again soon
                    left = _ORPHAN_POLL_S if left is None else min(left, _ORPHAN_POLL_S)
                self._zygote._cond.wait(left)

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _check_orphan(self) -> None:
        """The zygote is gone: the pid was reparented and is reaped by someone else."""
        if not _pid_alive(self.pid):
            self.returncode = EXIT_UNKNOWN


def _pid_alive(pid: int) -> bool:
    """The pid exists and is not a zombie (an orphan's new parent may be slow to reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the pid now belongs to another user's process: ours is gone
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc (not Linux): kill(pid, 0) is all we know


class Zygote:
    """Parent-side handle of a zygote process (see the module doc). Thread-safe."""

    def __init__(self, pid: int, request_fd: int, reply_fd: int) -> None:
        self.pid = pid
        self._request_fd = request_fd
        self._reply_fd = reply_fd
        self._lock = threading.Lock()  # one request/reply at a time
        self._cond = threading.Condition()  # guards everything below and every handle's returncode
        self._replies: list[dict[str, Any]] = []
        self._handles: dict[int, ZygoteProcess] = {}
        self._unclaimed_exits: dict[int, int] = {}
        self._dead = False
        self._closed = False
        self._reaped = False
        self._reader = threading.Thread(target=self._read_loop, name="pbt-zygote-reader", daemon=True)
        self._reader.start()

    # --- life cycle --------------------------------------------------------------------------
    @classmethod
    def start(cls, preload: Sequence[str] | None = None) -> Zygote:
        """Fork a zygote from this process and preload ``preload`` in it.

        ``preload`` defaults to ``torch._dynamo`` (when torch is imported), ``pbt_actors.cli.app``
        and ``pbt_actors.runtime.worker``. Modules that fail to import are logged and skipped.

        Raises:
            ZygoteError: this process has other threads, or torch has initialised CUDA.
        """
        if threading.active_count() != 1:
            names = ", ".join(t.name for t in threading.enumerate())
            raise ZygoteError(f"cannot fork a zygote from a process with {threading.active_count()} "
                              f"threads ({names}): start it before any thread")
        torch = sys.modules.get("torch")
        if torch is not None:
            cuda = getattr(torch, "cuda", None)
            if cuda is not None and cuda.is_initialized():
                raise ZygoteError("cannot fork a zygote after torch initialised CUDA: forked children "
                                  "could not use it")
        if preload is None:
            preload = default_preload()
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        for stream in (sys.stdout, sys.stderr):  # or the child would write our buffered output again
            with contextlib.suppress(Exception):
                stream.flush()
        pid = os.fork()
        if pid == 0:  # the zygote
            code = 1
            try:
                os.close(request_w)
                os.close(reply_r)
                for fd in list(_OPEN_PARENT_FDS):  # other zygotes' parent ends: theirs, not ours
                    with contextlib.suppress(OSError):
                        os.close(fd)
                _OPEN_PARENT_FDS.clear()
                code = _zygote_main(request_r, reply_w, list(preload))
            except BaseException:
                with contextlib.suppress(Exception):
                    traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stderr.flush()
                os._exit(code)
        os.close(request_r)
        os.close(reply_w)
        _OPEN_PARENT_FDS.update((request_w, reply_r))
        return cls(pid, request_w, reply_r)

    def close(self, timeout_s: float = 5.0) -> None:
        """Close the pipes (the zygote exits at EOF) and reap it; SIGKILL it after ``timeout_s``.
        Workers it forked keep running; their handles fall back to liveness checks."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
        with self._lock:
            self._close_fd(self._request_fd)
        self._reader.join(timeout_s)
        if self._reader.is_alive():
            log.warning("the zygote (pid %d) did not exit within %.1fs; killing it", self.pid, timeout_s)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._reader.join()
        self._reap()
        self._close_fd(self._reply_fd)

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        with self._cond:
            return not self._dead

    # --- spawning ----------------------------------------------------------------------------
    def spawn(self, argv: Sequence[str], env: Mapping[str, str], log_path: str | os.PathLike[str] | None = None,
              ) -> ZygoteProcess:
        """Fork a worker running ``pbt_actors.cli.app.main(argv)`` with exactly ``env``, its stdout
        and stderr appended to ``log_path`` (else inherited).

        Raises:
            ZygoteError: the zygote is dead or closed, did not answer, or could not fork.
        """
        args = [str(a) for a in argv]
        request = {"argv": args, "env": {str(k): str(v) for k, v in env.items()},
                   "log": None if log_path is None else os.fspath(log_path)}
        with self._lock:
            with self._cond:
                if self._dead or self._closed:
                    raise ZygoteError(f"the zygote (pid {self.pid}) is not running")
                self._replies.clear()
            try:
                _write_message(self._request_fd, request)
            except OSError as exc:
                raise ZygoteError(f"the zygote (pid {self.pid}) is not running: {exc}") from exc
            deadline = time.monotonic() + REPLY_TIMEOUT_S
            with self._cond:
                while not self._replies and not self._dead:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ZygoteError(f"the zygote (pid {self.pid}) did not answer within {REPLY_TIMEOUT_S}s")
                    self._cond.wait(left)
                if not self._replies:
                    raise ZygoteError(f"the zygote (pid {self.pid}) died")
                reply = self._replies.pop(0)
                if "pid" not in reply:
                    raise ZygoteError(f"the zygote could not fork: {reply.get('error', reply)}")
                pid = int(reply["pid"])
                handle = ZygoteProcess(pid, args, self)
                if pid in self._unclaimed_exits:
                    handle.returncode = self._unclaimed_exits.pop(pid)
                else:
                    self._handles[pid] = handle
                return handle

    # --- internals ---------------------------------------------------------------------------
    def _read_loop(self) -> None:
        try:
            while True:
                message = _read_message(self._reply_fd)
                if message is None:
                    break
                with self._cond:
                    if "exit" in message:
                        pid, code = int(message["exit"]), int(message["code"])
                        handle = self._handles.pop(pid, None)
                        if handle is None:
                            self._unclaimed_exits[pid] = code
                        else:
                            handle.returncode = code
                    else:
                        self._replies.append(message)
                    self._cond.notify_all()
        except Exception:
            log.exception("reading from the zygote (pid %d) failed", self.pid)
        finally:
            with self._cond:
                self._dead = True
                self._cond.notify_all()
            if not self._closed:
                log.warning("the zygote (pid %d) exited; workers will start as fresh processes", self.pid)

    def _reap(self) -> None:
        if self._reaped:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        self._reaped = True

    @staticmethod
    def _close_fd(fd: int) -> None:
        _OPEN_PARENT_FDS.discard(fd)
        with contextlib.suppress(OSError):
            os.close(fd)


def default_preload() -> list[str]:
    """What a zygote imports when ``preload`` is not given."""
    modules = ["pbt_actors.cli.app", "pbt_actors.runtime.worker"]
    if "torch" in sys.modules:
        modules.insert(0, "torch._dynamo")  # imported lazily by the first torch.optim optimizer
    return modules


# --- the zygote -------------------------------------------------------------------------------------
def _zygote_main(request_fd: int, reply_fd: int, preload: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception as exc:
            log.warning("zygote: cannot preload %s: %s: %s", name, type(exc).__name__, exc)
    if threading.active_count() != 1:
        log.warning("zygote: preloading started threads (%s); forked workers will not have them",
                    ", ".join(t.name for t in threading.enumerate()))
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # a Python handler, so the wake-up fd is written
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    own_fds = [request_fd, reply_fd, wake_r, wake_w]
    try:
        while True:
            readable, _, _ = select.select([request_fd, wake_r], [], [], _SAFETY_TIMEOUT_S)
            if wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 512):
                        pass
            if request_fd in readable:
                try:
                    request = _read_message(request_fd)
                except Exception as exc:
                    _write_message(reply_fd, {"error": f"bad request: {exc}"})
                    continue
                if request is None:  # the parent closed the pipe, or died
                    return 0
                _write_message(reply_fd, _fork_worker(request, own_fds))
            _reap_children(reply_fd)
    except BrokenPipeError:  # the parent is gone
        return 0


def _reap_children(reply_fd: int) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _write_message(reply_fd, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def _fork_worker(request: dict[str, Any], own_fds: list[int]) -> dict[str, Any]:
    try:
        argv = [str(a) for a in request["argv"]]
        env = {str(k): str(v) for k, v in dict(request["env"]).items()}
        log_path = None if request.get("log") is None else str(request["log"])
    except (KeyError, TypeError, ValueError) as exc:
        return {"error": f"bad request: {exc!r}"}
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        pid = os.fork()
    except OSError as exc:
        return {"error": f"fork failed: {exc}"}
    if pid == 0:
        _run_worker(argv, env, log_path, own_fds)  # never returns
    return {"pid": pid}


def _run_worker(argv: list[str], env: dict[str, str], log_path: str | None, own_fds: list[int]) -> None:
    """In the forked worker: become a fresh-looking ``pbt-actors`` process, run, ``os._exit``."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for fd in own_fds:
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
        if torch is not None and env.get("OMP_NUM_THREADS", "").isdigit() and int(env["OMP_NUM_THREADS"]) > 0:
            torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
        sys.argv = [sys.argv[0] if sys.argv else "pbt-actors", *argv]
        _set_process_title([sys.executable, "-m", "pbt_actors.cli", *argv])
        _forget_user_modules()
        root = logging.getLogger()  # as in a fresh process, so that cli.main's basicConfig applies
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.setLevel(logging.WARNING)
        from pbt_actors.cli.app import main

        result = main(argv)
        code = result if isinstance(result, int) else 0
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            with contextlib.suppress(Exception):
                print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        with contextlib.suppress(Exception):
            traceback.print_exc()
        code = 1
    finally:
        try:
            for thread in threading.enumerate():  # like interpreter shutdown: non-daemon threads finish
                if thread is not threading.current_thread() and not thread.daemon:
                    thread.join()
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(code & 0xFF if code >= 0 else 1)


def _forget_user_modules() -> None:
    """Drop the experiment files (and the modules beside them) from ``sys.modules``, so that
    the worker runs their module code itself, with its own environment and ``sys.argv``, as a
    fresh interpreter would; their imports (torch, scikit-learn, ...) stay warm."""
    from pbt_actors.runtime.launch import EXPERIMENT_MODULE_PREFIX

    folders = set()
    for name, module in list(sys.modules.items()):
        if name.startswith(EXPERIMENT_MODULE_PREFIX):
            file = getattr(module, "__file__", None)
            if file:
                folders.add(os.path.dirname(os.path.abspath(file)))
            del sys.modules[name]
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and os.path.dirname(os.path.abspath(file)) in folders:
            del sys.modules[name]


_TITLE_BUFFERS: list[Any] = []  # the argument area set by PR_SET_MM_MAP must stay allocated


def _set_process_title(args: list[str]) -> None:
    """Best effort, Linux: make ``/proc/<pid>/cmdline`` (``ps``, ``pgrep -f``, tools that look
    for ``worker-process`` processes) show the worker's command instead of the CLI's.

    First choice: point the kernel's argument area at a new NUL-separated copy with
    ``prctl(PR_SET_MM, PR_SET_MM_MAP)`` (unprivileged since Linux 3.18 when the executable link
    is left alone; needs CONFIG_CHECKPOINT_RESTORE). Otherwise overwrite the CLI's argument area
    in place, as the ``setproctitle`` package does: NUL-separated when it fits, else joined by
    spaces and run on into the environment area, which the kernel then shows up to the first
    NUL. Call it only after ``os.environ`` was replaced: the C ``environ`` then no longer points
    into that area."""
    import ctypes

    try:
        with open("/proc/self/stat", "rb") as stat:
            fields = [int(f) for f in stat.read().rsplit(b")", 1)[1].split()[1:]]
    except (OSError, ValueError):
        return

    def field(number: int) -> int:  # proc(5) numbering: field 3 is the state, the first after ")"
        return fields[number - 4]

    try:
        arg_start, arg_end, env_start, env_end = field(48), field(49), field(50), field(51)
    except IndexError:
        return
    data = b"\0".join(a.encode(errors="replace") for a in args) + b"\0"
    with contextlib.suppress(Exception):
        if _set_argument_area(ctypes, data, field):
            return
    room = arg_end - arg_start
    if arg_start <= 0 or room <= 1:
        return
    if len(data) <= room:
        data = data.ljust(room, b"\0")
    else:
        limit = (env_end if env_start == arg_end and env_end > env_start else arg_end) - arg_start
        data = b" ".join(a.encode(errors="replace") for a in args)[:limit - 1] + b"\0"
    ctypes.memmove(arg_start, data, len(data))


def _set_argument_area(ctypes: Any, data: bytes, field: Any) -> bool:
    class MmMap(ctypes.Structure):  # struct prctl_mm_map, linux/prctl.h
        _fields_ = [(name, ctypes.c_uint64) for name in (
            "start_code", "end_code", "start_data", "end_data", "start_brk", "brk", "start_stack",
            "arg_start", "arg_end", "env_start", "env_end")] + [
            ("auxv", ctypes.c_void_p), ("auxv_size", ctypes.c_uint32), ("exe_fd", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    libc.sbrk.restype = ctypes.c_void_p
    libc.sbrk.argtypes = [ctypes.c_long]
    buffer = ctypes.create_string_buffer(data, len(data))
    start = ctypes.addressof(buffer)
    mm = MmMap(start_code=field(26), end_code=field(27), start_data=field(45), end_data=field(46),
               start_brk=field(47), brk=libc.sbrk(0) or field(47), start_stack=field(28), arg_start=start,
               arg_end=start + len(data), env_start=field(50), env_end=field(51), auxv=None, auxv_size=0,
               exe_fd=0xFFFFFFFF)
    pr_set_mm, pr_set_mm_map = 35, 14
    if libc.prctl(pr_set_mm, pr_set_mm_map, ctypes.byref(mm), ctypes.sizeof(mm), 0) != 0:
        return False
    _TITLE_BUFFERS.append(buffer)
    return True


__all__ = ["EXIT_UNKNOWN", "Zygote", "ZygoteError", "ZygoteProcess", "default_preload"]
