"""The dashboard's web app (Starlette): JSON routes over a ``StoreIndex`` and the page itself.

One daemon thread refreshes the index every ``refresh_s`` seconds; request handlers only read
it (under its lock), so a hundred open tabs cost the store nothing more than one. A store that
cannot be read (damaged, or not there yet) is reported in the summary's ``error`` and the
refresher keeps trying; it never takes the dashboard down.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pbt_actors.model.errors import PbtError
from pbt_actors.tools.dashboard import analysis, views
from pbt_actors.tools.dashboard.index import StoreIndex

log = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")


def plotly_js() -> Path:
    """plotly.min.js as the ``plotly`` package ships it: served locally, never from a CDN."""
    path = Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))
    if not path.is_file():
        raise FileNotFoundError(f"plotly.min.js not found at {path}; reinstall pbt-actors[dashboard]")
    return path


class Refresher:
    """Refreshes ``index`` in a daemon thread until stopped; remembers the last error."""

    def __init__(self, index: StoreIndex, refresh_s: float) -> None:
        self.index = index
        self.refresh_s = refresh_s
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dashboard-refresh", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def refresh_once(self) -> None:
        try:
            self.index.refresh()
            self.error = None
        except (PbtError, OSError, ValueError) as exc:  # a damaged record or a vanished store
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("dashboard: reading the store failed: %s", self.error)

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh_once()


def create_app(index: StoreIndex, store_dir: Path, *, refresh_s: float = 1.0,
               host_states: Callable[[], list[dict[str, Any]]] | None = None) -> Starlette:
    """The app; the caller has opened ``index.store`` read-only (and closes it)."""
    refresher = Refresher(index, refresh_s)
    refresher.refresh_once()

    def guarded(build: Callable[[Request], Any]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            try:
                with index.lock:
                    body = build(request)
            except (PbtError, OSError) as exc:
                return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=503)
            if body is None:
                return JSONResponse({"error": "not found"}, status_code=404)
            return JSONResponse(body, headers={"Cache-Control": "no-store"})
        return endpoint

    def int_param(request: Request, name: str, default: int | None = None) -> int:
        raw = request.query_params.get(name, request.path_params.get(name))
        if raw is None and default is not None:
            return default
        try:
            return int(str(raw))
        except ValueError:
            raise ValueError(f"{name} must be an integer") from None

    def bad_request(build: Callable[[Request], Any]) -> Callable[[Request], Any]:
        def wrapped(request: Request) -> Any:
            try:
                return build(request)
            except ValueError as exc:
                return {"error": str(exc)}
        return wrapped

    def summary(_: Request) -> Any:
        return {**index.summary(), "error": refresher.error, "store": str(store_dir)}

    def update_view(request: Request) -> Any:
        body = views.updates(index, int_param(request, "cursor", 0))
        body["summary"]["error"] = refresher.error
        return body

    def trials(request: Request) -> Any:
        q = request.query_params
        return analysis.trials_table(index, sort=q.get("sort", "id"), desc=q.get("desc", "0") == "1",
                                     query=q.get("q", ""), offset=int_param(request, "offset", 0),
                                     limit=int_param(request, "limit", analysis.TABLE_LIMIT))

    fitted: dict[str, Any] = {}

    def importance() -> Any:
        """Refitted when the completed trials grew by a twentieth (a live run's every second
        would refit a forest per poll), or when the run finished."""
        done = sum(1 for r in index.rows if r.fitness is not None)
        last = fitted.get("done", -1)
        if "body" not in fitted or done - last > max(1, last // 20) or (index.finished and not fitted["finished"]):
            fitted.update(body={**analysis.importance(index), "completed": done}, done=done, finished=index.finished)
        return fitted["body"]

    def workers(_: Request) -> Any:
        return views.workers(index, host_states() if host_states else [])

    async def page(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def plotly(_: Request) -> Response:  # 4.8 MB that never changes within an install
        return FileResponse(plotly_js(), media_type="application/javascript",
                            headers={"Cache-Control": "public, max-age=86400"})

    async def no_icon(_: Request) -> Response:
        return Response(status_code=204)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        refresher.start()
        try:
            yield
        finally:
            refresher.stop()

    routes = [
        Route("/", page),
        Route("/vendor/plotly.min.js", plotly),
        Route("/favicon.ico", no_icon),
        Route("/api/summary", guarded(summary)),
        Route("/api/updates", guarded(bad_request(update_view))),
        Route("/api/population", guarded(lambda _: {"population": views.population(index)})),
        Route("/api/curves", guarded(lambda _: index.memo("curves", lambda: views.curves(index)))),
        Route("/api/tree", guarded(lambda _: index.memo("tree", lambda: views.tree(index)))),
        Route("/api/tree/{trial_id:int}", guarded(lambda r: views.neighbourhood(index, int_param(r, "trial_id")))),
        Route("/api/trial/{trial_id:int}",
              guarded(lambda r: views.trial_details(index, int_param(r, "trial_id"), store_dir))),
        Route("/api/schedule", guarded(lambda _: index.memo("schedule", lambda: {"schedule": views.schedule(index)}))),
        Route("/api/trials", guarded(bad_request(trials))),
        Route("/api/parallel", guarded(lambda _: index.memo("parallel", lambda: analysis.parallel(index)))),
        Route("/api/importance", guarded(lambda _: importance())),
        Route("/api/pareto", guarded(lambda _: index.memo("pareto", lambda: analysis.pareto(index)))),
        Route("/api/failed-attempts", guarded(lambda _: {"attempts": views.failed_attempt_list(index),
                                                          "total": index.failed_attempts,
                                                          "trials": len(index.retried)})),
        Route("/api/workers", guarded(workers)),
        Route("/api/failures", guarded(lambda _: {"failures": views.failures(index)})),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
