"""Headless Chromium for the dashboard's browser tests (Debian's ``chromium`` via Playwright).

Playwright drives the system Chromium (``/usr/bin/chromium``, or ``PBT_CHROMIUM``); we never
download a browser. Tests skip with the reason when Chromium or Playwright is missing.
Screenshots go to ``$PBT_ARTEFACTS`` (default ``tests/.artefacts``, git-ignored).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.runs import REPO, cli

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("PBT_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="session")
def artefacts() -> Path:
    folder = Path(os.environ.get("PBT_ARTEFACTS", REPO / "tests" / ".artefacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")  # closed after each module: later tests fork and need no threads
def browser() -> Iterator[Any]:
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium (apt-get install chromium chromium-driver, or set PBT_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with tempfile.TemporaryDirectory(prefix="pbt-chromium-") as profile, sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(profile, executable_path=path, args=CHROMIUM_ARGS,
                                                        headless=True, viewport={"width": 1500, "height": 1300})
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    tab = browser.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.page_errors = errors  # checked by the tests: a script error fails them
    try:
        yield tab
    finally:
        tab.close()


def start_dashboard(store: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """``pbt-actors dashboard`` on a free loopback port; returns the process and its URL."""
    proc = cli("dashboard", "--store", str(store), "--port", "0", *extra)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("dashboard: http://"):
            return proc, line.split()[1]
    raise AssertionError(f"the dashboard exited ({proc.wait(5)}) without printing its URL")


def click_tree_node(page: Any, trial_id: int) -> None:
    """Click the tree's marker of ``trial_id`` with the mouse, where plotly drew it."""
    point = page.evaluate("""(id) => {
        const gd = document.getElementById('tree');
        const trace = gd.data.findIndex((t) => t.customdata);
        const i = gd.data[trace].customdata.indexOf(id);
        if (i < 0) return null;
        const fl = gd._fullLayout, box = gd.getBoundingClientRect();
        return {x: box.left + fl._size.l + fl.xaxis.d2p(gd.data[trace].x[i]),
                y: box.top + fl._size.t + fl.yaxis.d2p(gd.data[trace].y[i])};
    }""", trial_id)
    assert point is not None, f"trial {trial_id} is not in the tree"
    page.mouse.click(point["x"], point["y"])


def isolated_tree_node(page: Any, prefer: int | None = None) -> int:
    """A trial whose marker no other marker overlaps (so a click can only mean it); ``prefer``
    if that one is isolated."""
    trial_id = page.evaluate("""(prefer) => {
        const gd = document.getElementById('tree');
        const t = gd.data.find((d) => d.customdata);
        const fl = gd._fullLayout;
        const px = t.x.map((x, i) => [fl.xaxis.d2p(x), fl.yaxis.d2p(t.y[i])]);
        const free = (i) => px.every((p, j) => j === i || Math.hypot(p[0] - px[i][0], p[1] - px[i][1]) > 12)
            && px[i][0] > 5 && px[i][1] > 5 && px[i][0] < fl._size.w - 5 && px[i][1] < fl._size.h - 5;
        const k = t.customdata.indexOf(prefer);
        if (k >= 0 && free(k)) return prefer;
        for (let i = px.length - 1; i >= 0; i--) if (free(i)) return t.customdata[i];
        return null;
    }""", prefer)
    assert trial_id is not None, "every marker of the tree overlaps another"
    return int(trial_id)
