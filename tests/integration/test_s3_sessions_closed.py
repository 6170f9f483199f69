"""Issue 20, item 18: nothing is printed after the test command's summary.

s3fs closes its aiohttp session in a finalizer that waits 0.1 s on fsspec's IO loop, and not
at all once that loop has stopped (as the test support stops it between servers): the session
was then dropped at interpreter exit and aiohttp printed "Unclosed client session" after
pytest's summary. ``storage.fsspec_checkpoints.close_filesystems`` closes every filesystem
the process made while the loop runs (at exit, and in ``tests.support.s3_server`` before it
stops the loop).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import pytest

from pbt_actors.runtime.checkpoint_payloads import load_checkpoint, save_checkpoint, store_for
from tests.support.runs import REPO
from tests.support.s3_server import serving_bucket

pytest.importorskip("s3fs", reason="object-storage tests need the s3 extra: pip install .[s3] (.ci/install does)")
pytestmark = pytest.mark.timeout(120)

SCRIPT = textwrap.dedent("""
    import uuid
    from tests.support.s3_server import serving_bucket
    from pbt_actors.runtime.checkpoint_payloads import load_checkpoint, save_checkpoint

    with serving_bucket("exit") as server:
        root = f"s3://exit/{uuid.uuid4().hex[:8]}"
        ref = save_checkpoint(root, "t1/a.ckpt", {"x": 1}, 5)
        assert load_checkpoint(root, ref)["x"] == 1
    print("done", flush=True)
""")


def test_a_process_that_used_s3_exits_without_an_unclosed_session() -> None:
    done = subprocess.run([sys.executable, "-W", "always", "-c", SCRIPT], cwd=str(REPO), capture_output=True,
                          text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done"
    assert "Unclosed" not in done.stderr, done.stderr


def test_the_filesystem_session_is_closed_before_the_io_loop_stops_and_reopens_on_use() -> None:
    with serving_bucket("reuse") as _server:
        root = f"s3://reuse/{uuid.uuid4().hex[:8]}"
        ref = save_checkpoint(root, "t1/a.ckpt", {"x": 1}, 5)
        fs = store_for(root).fs
        sessions = fs._s3._endpoint.http_session._sessions
        assert sessions and not any(s.closed for s in sessions.values())
        from pbt_actors.storage.fsspec_checkpoints import close_filesystems

        close_filesystems()
        assert all(s.closed for s in sessions.values())
        assert load_checkpoint(root, ref)["x"] == 1  # reconnects
    assert fs._s3 is None  # closed again when the server went (before fsspec's loop stopped)
