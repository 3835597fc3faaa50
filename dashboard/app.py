"""The dashboard's web app: the page, its assets (all served from here: it works with no internet), and the
feed as server-sent events.

Routes: ``/`` the page; ``/static/*`` its script and style; ``/vendor/plotly.min.js`` Plotly from the
installed ``plotly`` package (a pinned dependency, so no JavaScript is vendored into this repository);
``/events`` the feed (history, then live messages); ``/report`` the run's ``report.html`` once
``fab analyze`` (or the end of ``fab experiment``) has written it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import plotly
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dashboard.feed import Feed

STATIC = Path(__file__).parent / "static"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
REPORT_HTML = "report.html"


def make_app(feed: Feed, run_dir: Callable[[], Path | None] = lambda: None) -> Starlette:
    """The app over ``feed``; ``run_dir`` says where the run directory is once it exists (for ``/report``)."""

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def plotly_js(request: Request) -> Response:
        return FileResponse(PLOTLY_JS, media_type="text/javascript")

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[dict]:
            history, queue = feed.subscribe()
            try:
                for message in history:
                    yield {"data": json.dumps(message)}
                yield {"data": json.dumps({"ev": "live", "backlog": len(history)})}
                while True:
                    yield {"data": json.dumps(await queue.get())}
            finally:
                feed.unsubscribe(queue)

        return EventSourceResponse(stream(), ping=5)

    async def report(request: Request) -> Response:
        run = run_dir()
        if run is None or not (Path(run) / REPORT_HTML).exists():
            return PlainTextResponse("no report yet: it is written when the run has been analysed", status_code=404)
        return FileResponse(Path(run) / REPORT_HTML)

    return Starlette(routes=[
        Route("/", page),
        Route("/vendor/plotly.min.js", plotly_js),
        Route("/events", events),
        Route("/report", report),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ])
