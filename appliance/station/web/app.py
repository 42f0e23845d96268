"""The web station's pages and endpoints (FastAPI): login, the board, a bed page with its chart and the
rating form, the live event stream and a JSON snapshot.

Every page needs a logged-in user (the board names patients); a rating also needs the session's CSRF token.
Headers: a strict Content-Security-Policy (no inline script or style, nothing from other origins), no framing,
no caching of pages that show patient data.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Callable
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from appliance.mqtt import messages
from appliance.station.board import HEALTH_CHANGES_WINDOW_S
from appliance.station.web import bands, chart, commands, nips_items
from appliance.station.web.auth import Session, Sessions, UserStore
from appliance.station.web.history import ITEM_NAMES, HistoryStore, Rating
from appliance.station.web.ingest import Ingest
from appliance.station.web.live import Hub
from appliance.station.web.view import bed_href, bed_key

HERE = Path(__file__).resolve().parent
COOKIE = "neopain_session"
#: The bed page redraws its chart at most this often while scores arrive (seconds).
CHART_REFRESH_S = 5.0
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


@dataclass
class Station:
    """Everything the pages need, built by ``server.run_station`` (or a test)."""

    ingest: Ingest
    history: HistoryStore
    users: UserStore
    hub: Hub
    send: Callable[[commands.RateCommand], "str | None"]  # the command to the broker; None when acknowledged
    connected: Callable[[], tuple[bool, str | None]]  # broker link: (up, why not)
    command_key: bytes | None = None
    tls: bool = False
    sessions: Sessions = field(default_factory=Sessions)
    station_id: str | None = None
    #: Runs when the server shuts down (uvicorn re-raises SIGTERM after its shutdown, so code after
    #: ``server.run()`` would not run): store what is queued, confirm it, close the files.
    on_shutdown: Callable[[], None] | None = None


def create_app(station: Station) -> FastAPI:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(bands=bands.NIPS_BANDS, item_names=ITEM_NAMES, item_label=nips_items.label,
                                 item_levels=nips_items.levels, ranges=chart.RANGES_H,
                                 stale_after_s=station.ingest.stale_after_s, modalities=messages.MODALITIES,
                                 bands_json=json.dumps([[b.upper, b.label, b.meaning] for b in bands.NIPS_BANDS]),
                                 health_window_min=f"{HEALTH_CHANGES_WINDOW_S / 60:g}")
    templates.env.filters["localtime"] = lambda t: datetime.fromtimestamp(t).astimezone().strftime("%H:%M:%S")
    tile = templates.env.get_template("tile.html").module.tile  # type: ignore[attr-defined]
    station.ingest.tile = lambda view: str(tile(view))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        station.hub.attach(asyncio.get_running_loop())
        watcher = asyncio.create_task(_watch_broker(station))
        try:
            yield
        finally:
            watcher.cancel()
            station.hub.close()
            if station.on_shutdown is not None:
                await run_in_threadpool(station.on_shutdown)

    app = FastAPI(title="neopain station", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if not request.url.path.startswith("/static"):
            response.headers["Cache-Control"] = "no-store"
        if station.tls:
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        return response

    def session_of(request: Request) -> Session | None:
        return station.sessions.get(request.cookies.get(COOKIE))

    def to_login(request: Request) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)

    def page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
        up, why = station.connected()
        problems = [f"History file was damaged: {h.brief()}" for h in station.history.healed]
        if station.ingest.last_error:
            problems.append(f"History not being written ({station.ingest.last_error}): scores stay unacknowledged "
                            f"on the broker and turn stale here.")
        return templates.TemplateResponse(request, name, {"broker_up": up, "broker_error": why, "problems": problems,
                                                          **context}, status_code=status)

    # ------------------------------------------------------------------------------------------ login
    @app.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request, next: str = "/") -> HTMLResponse:
        return page(request, "login.html", {"next": _safe_next(next), "error": None, "user": None})

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        name, password = str(form.get("username", "")).strip(), str(form.get("password", ""))
        target = _safe_next(str(form.get("next", "/")))
        if station.sessions.locked_out(name):
            return page(request, "login.html", {"next": target, "user": None,
                                                "error": "Too many wrong passwords for this name: wait a minute."}, 429)
        ok = await run_in_threadpool(station.users.verify, name, password)  # argon2: ~50 ms of CPU
        if not ok:
            station.sessions.failed(name)
            return page(request, "login.html", {"next": target, "user": None,
                                                "error": "Wrong user name or password."}, 401)
        token, _ = station.sessions.open(name)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=station.tls, path="/")
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        station.sessions.close(request.cookies.get(COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # ------------------------------------------------------------------------------------------ pages
    @app.get("/", response_class=HTMLResponse)
    async def board(request: Request) -> Response:
        session = session_of(request)
        if session is None:
            return to_login(request)
        views = await run_in_threadpool(station.ingest.views)
        return page(request, "board.html", {"beds": views, "user": session.user, "csrf": session.csrf})

    @app.get("/bed/{site}/{bed}", response_class=HTMLResponse)
    async def bed_page(request: Request, site: str, bed: str, hours: int = 1, rated: str = "") -> Response:
        session = session_of(request)
        if session is None:
            return to_login(request)
        return await _bed(request, session, site, bed, hours, notice=rated and "sent" or None)

    async def _bed(request: Request, session: Session, site: str, bed: str, hours: int, *,
                   notice: str | None = None, error: str | None = None, form: dict[str, int] | None = None,
                   status: int = 200) -> Response:
        view = station.ingest.view(site, bed)
        if view is None:
            return page(request, "missing.html", {"user": session.user, "csrf": session.csrf,
                                                  "what": f"bed {site}/{bed}"}, 404)
        hours = hours if hours in chart.RANGES_H else chart.RANGES_H[0]
        svg, ratings = await run_in_threadpool(_chart, station, site, bed, hours)
        return page(request, "bed.html", {
            "bed": view, "user": session.user, "csrf": session.csrf, "hours": hours, "chart": svg,
            "ratings": list(reversed(ratings))[:10], "notice": notice, "error": error, "form": form or {},
            "chart_url": f"{bed_href(site, bed)}/chart.svg?hours={hours}", "refresh_s": CHART_REFRESH_S,
            "signed": station.command_key is not None}, status)

    @app.get("/bed/{site}/{bed}/chart.svg")
    async def chart_svg(request: Request, site: str, bed: str, hours: int = 1) -> Response:
        if session_of(request) is None:
            return PlainTextResponse("login required", status_code=401)
        hours = hours if hours in chart.RANGES_H else chart.RANGES_H[0]
        svg, _ = await run_in_threadpool(_chart, station, site, bed, hours)
        return Response(svg, media_type="image/svg+xml")

    @app.post("/bed/{site}/{bed}/rate")
    async def rate(request: Request, site: str, bed: str) -> Response:
        session = session_of(request)
        if session is None:
            return to_login(request)
        form = await request.form()
        hours = int(str(form.get("hours", "1"))) if str(form.get("hours", "1")).isdigit() else 1
        if str(form.get("csrf", "")) != session.csrf:
            return PlainTextResponse("rating refused: the form is out of date (reload the page)", status_code=403)
        if station.ingest.view(site, bed) is None:
            return PlainTextResponse(f"no bed {site}/{bed}", status_code=404)
        entered = {n: int(str(v)) for n, v in form.items() if n in ITEM_NAMES and str(v).isdigit()}
        try:
            items = nips_items.check_items(form)
        except ValueError as exc:
            return await _bed(request, session, site, bed, hours, error=f"Rating not sent: {exc}", form=entered,
                              status=400)
        command = commands.rate_command(site, bed, sum(items.values()), session.user, key=station.command_key)
        problem = await run_in_threadpool(station.send, command)
        if problem is not None:
            return await _bed(request, session, site, bed, hours, error=f"Rating not sent: {problem}", form=entered,
                              status=503)
        await run_in_threadpool(station.history.add_rating, Rating(
            site, bed, command.at.timestamp(), sum(items.values()), items, session.user, command.command_id,
            command.signed))
        station.hub.publish({"type": "rating", "beds": {bed_key(site, bed): None}})
        return RedirectResponse(f"{bed_href(site, bed)}?hours={hours}&rated={command.command_id}", status_code=303)

    # ------------------------------------------------------------------------------------------ data
    @app.get("/api/beds")
    async def api_beds(request: Request) -> Response:
        if session_of(request) is None:
            return JSONResponse({"error": "login required"}, status_code=401)
        return JSONResponse(await run_in_threadpool(station.ingest.views))

    @app.get("/events")
    async def events(request: Request, bed: str | None = None) -> Response:
        if session_of(request) is None:
            return PlainTextResponse("login required", status_code=401)
        views = await run_in_threadpool(station.ingest.views)
        first_beds = {v["key"]: station.ingest.live(v) for v in views if bed is None or v["key"] == bed}
        up, why = station.connected()
        first = {"type": "hello", "beds": first_beds, "broker_up": up, "broker_error": why,
                 "stale_after_s": station.ingest.stale_after_s, "sent_ms": int(time.time() * 1000)}
        return StreamingResponse(station.hub.stream(bed, first, request.is_disconnected),
                                 media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})

    @app.get("/bands.css")
    async def bands_css() -> Response:
        return Response(bands.stylesheet(), media_type="text/css")

    return app


def _safe_next(target: str) -> str:
    """Only a path on this station (never ``//other.host``): an open redirect would hand a login to anyone."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _chart(station: Station, site: str, bed: str, hours: int) -> tuple[str, list[Rating]]:
    until = time.time()
    since = until - hours * 3600.0
    buckets = station.history.buckets(site, bed, since, until, chart.MAX_BUCKETS)
    events = station.history.events(site, bed, since, until)
    ratings = station.history.ratings(site, bed, since, until)
    now = datetime.now(timezone.utc).astimezone()
    svg = chart.render(buckets, events, ratings, since=since, until=until,
                       max_gap_s=station.ingest.stale_after_s,
                       title=f"NIPS of bed {site}/{bed}, last {hours} h, drawn {now:%H:%M:%S}")
    return svg, ratings


async def _watch_broker(station: Station) -> None:
    """Tell the pages when the broker link goes down or comes back (they show a banner while it is down)."""
    last: tuple[bool, str | None] | None = None
    while True:
        state = station.connected()
        if state != last:
            last = state
            station.hub.publish({"type": "station", "broker_up": state[0], "broker_error": state[1]})
        await asyncio.sleep(1.0)
