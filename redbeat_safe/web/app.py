"""The dashboard as a WSGI application: pages, /metrics, /healthz and the guarded actions.

Read-only unless a token is configured. With one, an operator signs in with it
once (a cookie holding a random nonce and its HMAC under the token), and every
action is a POST carrying a CSRF value derived from that nonce: a page of another
site can neither read the value nor forge it. Scripts may instead send
``Authorization: Bearer <token>``. Tokens are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from http.cookies import SimpleCookie
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote
from zoneinfo import ZoneInfo

from celery import Celery
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import ResponseError

from .. import health as health_checks
from ..api import EntryDamaged, EntryNotFound, Schedules
from ..connection import STORE_ERRORS, refusal
from ..definitions import DefinitionError
from ..metrics import cluster_registry
from ..overview import EntryRow
from ..overview import entries as read_entries
from ..schedules import Schedule, ms_to_datetime, pattern
from ..trigger import new_request_id
from ..views import Entry, entry_from_stored, printable
from .html import Html, esc, join, tag

StartResponse = Callable[..., Any]
#: Who may see the dashboard at all, when it is mounted in an app with its own login:
#: called with the WSGI environ; False answers 403. /healthz is not asked.
Authorize = Callable[[dict[str, Any]], bool]

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
COOKIE = "redbeat_safe_session"
ACTIONS = ("pause", "resume", "trigger")
_STATIC = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
_SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
]


class Response:
    def __init__(self, body: str | bytes, status: str = "200 OK", content_type: str = "text/html; charset=utf-8",
                 headers: list[tuple[str, str]] | None = None) -> None:
        self.body = body.encode("utf-8", "replace") if isinstance(body, str) else body
        self.status, self.content_type, self.headers = status, content_type, headers or []


class Dashboard:
    """``Dashboard(celery_app)`` is a WSGI callable. Options: ``token`` (enables the
    pause, resume and trigger buttons), ``show_args`` (entry arguments may hold
    secrets, so they are hidden unless this is True), ``authorize`` (a check of the
    host app's own login), ``entry_series`` (which per-entry series /metrics carries:
    late, all or none, see redbeat_safe.metrics.ENTRY_SERIES)."""

    def __init__(self, app: Celery, token: str | None = None, show_args: bool = False, authorize: Authorize | None = None,
                 entry_series: str = "late") -> None:
        self.api = Schedules(app)
        self.token = token or None
        self.show_args = show_args
        self.authorize = authorize
        self.registry = cluster_registry(self.api.store, entry_series=entry_series)

    # -- WSGI ---------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            response = self.route(environ)
        except STORE_ERRORS as exc:
            said = refusal(exc) or f"Redis unavailable ({type(exc).__name__})"
            response = Response(self._page(environ, "Redis unavailable", tag("p", said, class_="bad")), "503 Service Unavailable")
        headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body))), *_SECURITY_HEADERS,
                   *response.headers]
        start_response(response.status, headers)
        return [response.body] if environ.get("REQUEST_METHOD") != "HEAD" else [b""]

    def route(self, environ: dict[str, Any]) -> Response:
        path = _text(environ.get("PATH_INFO") or "/")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/healthz":
            return self.healthz()
        if self.authorize is not None and not self.authorize(environ):
            return Response("forbidden\n", "403 Forbidden", "text/plain; charset=utf-8")
        if path.startswith("/static/") and path[8:] in _STATIC:
            data = resources.files(__package__).joinpath("static").joinpath(path[8:]).read_bytes()
            return Response(data, content_type=_STATIC[path[8:]])
        if method == "POST":
            return self.post(environ, path)
        if method not in ("GET", "HEAD"):
            return Response("method not allowed\n", "405 Method Not Allowed", "text/plain; charset=utf-8", [("Allow", "GET, HEAD, POST")])
        if path == "/metrics":
            return Response(generate_latest(self.registry), content_type=CONTENT_TYPE_LATEST)
        if path == "/":
            return self.index(environ)
        if path == "/beats":
            return self.beats(environ)
        if path.startswith("/entry/"):
            return self.entry(environ, path[7:])
        return Response(self._page(environ, "Not found", tag("p", "No such page.")), "404 Not Found")

    # -- auth ---------------------------------------------------------------
    def _sign(self, text: str) -> str:
        assert self.token is not None
        return hmac.new(self.token.encode(), text.encode(), hashlib.sha256).hexdigest()

    def _session(self, environ: dict[str, Any]) -> str | None:
        """The signed-in session's nonce, or None."""
        if self.token is None:
            return None
        cookie = SimpleCookie()
        try:
            cookie.load(environ.get("HTTP_COOKIE", ""))
        except Exception:  # noqa: BLE001 - a malformed cookie header is no session
            return None
        nonce, _, mac = (cookie[COOKIE].value if COOKIE in cookie else "").partition(".")
        if nonce and hmac.compare_digest(_bytes(mac), self._sign("session:" + nonce).encode()):
            return nonce
        return None

    def _bearer(self, environ: dict[str, Any]) -> bool:
        header = environ.get("HTTP_AUTHORIZATION", "")
        return self.token is not None and header.startswith("Bearer ") and hmac.compare_digest(
            _bytes(header[7:].strip()), self.token.encode())

    def _csrf(self, nonce: str) -> str:
        return self._sign("csrf:" + nonce)

    def post(self, environ: dict[str, Any], path: str) -> Response:
        if self.token is None:
            return Response("read-only: start the dashboard with a token (--token, or redbeat_safe_dashboard_token) to "
                            "enable actions\n", "403 Forbidden", "text/plain; charset=utf-8")
        form = _form(environ)
        if path == "/login":
            given = form.get("token", "")
            if not hmac.compare_digest(_bytes(given), self.token.encode()):
                time.sleep(0.5)  # a slow wrong guess; the comparison itself is constant-time
                return Response(self._page(environ, "Sign in", join([tag("p", "Wrong token.", class_="bad"), self._login_form(environ)])),
                                "403 Forbidden")
            nonce = secrets.token_hex(16)
            cookie = (f"{COOKIE}={nonce}.{self._sign('session:' + nonce)}; HttpOnly; SameSite=Strict; "
                      f"Path={environ.get('SCRIPT_NAME') or '/'}")
            return self._redirect(environ, "/", [("Set-Cookie", cookie)])
        if path == "/logout":
            return self._redirect(environ, "/", [("Set-Cookie", f"{COOKIE}=; Max-Age=0; Path={environ.get('SCRIPT_NAME') or '/'}")])
        parts = path.rsplit("/", 1)
        if not (parts[0].startswith("/entry/") and len(parts) == 2 and parts[1] in ACTIONS):
            return Response("not found\n", "404 Not Found", "text/plain; charset=utf-8")
        if not self._bearer(environ):
            session = self._session(environ)
            if session is None:
                return Response("refused: sign in with the dashboard's token first\n", "403 Forbidden", "text/plain; charset=utf-8")
            if not hmac.compare_digest(_bytes(form.get("csrf", "")), self._csrf(session).encode()):
                return Response("refused: missing or wrong CSRF value (reload the page)\n", "403 Forbidden", "text/plain; charset=utf-8")
        name, action = parts[0][7:], parts[1]
        try:
            if action == "trigger":
                result = self.api.trigger(name, request_id=form.get("request_id") or new_request_id())
            else:
                result = getattr(self.api, action)(name)
        except (EntryNotFound, EntryDamaged) as exc:
            return Response(f"{printable(exc)}\n", "404 Not Found", "text/plain; charset=utf-8")
        except (DefinitionError, ValueError) as exc:
            return Response(f"refused: {printable(exc)}\n", "400 Bad Request", "text/plain; charset=utf-8")
        if environ.get("HTTP_ACCEPT", "").startswith("application/json") or self._bearer(environ):
            return Response(json.dumps({"name": name, "action": action, "result": result}), content_type="application/json")
        return self._redirect(environ, "/entry/" + _q(name))

    def _redirect(self, environ: dict[str, Any], where: str, headers: list[tuple[str, str]] | None = None) -> Response:
        if not where.startswith("/") or where.startswith("//"):
            where = "/"  # only within the dashboard
        return Response("", "303 See Other", headers=[("Location", (environ.get("SCRIPT_NAME") or "") + where), *(headers or [])])

    # -- pages --------------------------------------------------------------
    def healthz(self) -> Response:
        result = health_checks.check(self.api.store, redis_url=self.api.settings.redis_url)
        text = "ok\n" if result.ok else "\n".join(result.failures) + "\n"
        return Response(text, "200 OK" if result.ok else "503 Service Unavailable", "text/plain; charset=utf-8")

    def index(self, environ: dict[str, Any]) -> Response:
        query = _query(environ)
        search = query.get("q", "").strip()
        size = min(MAX_PAGE_SIZE, max(1, _int(query.get("size"), PAGE_SIZE)))
        names = self.api.store.names()
        if search:
            needle = search.casefold()
            names = [n for n in names if needle in n.casefold()]
        pages = max(1, -(-len(names) // size))
        page = min(pages, max(1, _int(query.get("page"), 1)))
        now, rows = read_entries(self.api.store, names[(page - 1) * size : page * size], full=True)
        body = [self._health_bar(), self._search_form(search, len(names)), self._entries_table(environ, rows, now),
                self._pager(environ, page, pages, search, size)]
        return Response(self._page(environ, "Schedules", join(body), now=now))

    def entry(self, environ: dict[str, Any], name: str) -> Response:
        now, rows = read_entries(self.api.store, [name], full=True)
        if not rows:
            return Response(self._page(environ, "Not found", tag("p", "No entry named ", tag("code", name), ".")), "404 Not Found")
        row = rows[0]
        e = None if row.stored is None else entry_from_stored(row.stored)
        assert e is not None
        try:
            history = self.api.history(name, 100)
        except (DefinitionError, ResponseError):  # a name no API call accepts, a history key of another type:
            history = []  # planted by hand; the entry is shown without its history
        parts = [self._health_bar(), tag("h2", name), self._definition(e, row, now), self._actions(environ, e),
                 tag("h3", "Lateness of the last ", str(len(history)), " dispatches"), _history_chart(history),
                 self._history_table(history, e), tag("h3", "Next runs"), self._next_runs(e, row)]
        return Response(self._page(environ, f"Entry {name}", join(parts), now=now))

    def beats(self, environ: dict[str, Any]) -> Response:
        instances = self.api.instances()
        now = self.api.store.now()
        rows = [tag("tr", tag("td", i.id), tag("td", i.host), tag("td", str(i.pid)), tag("td", i.version),
                    tag("td", "-" if i.heartbeat_age_ms is None else f"{i.heartbeat_age_ms / 1000:.1f}s ago"),
                    tag("td", str(i.ticks_dispatched)), tag("td", "alive" if i.alive else "stopped heartbeating",
                                                            class_=None if i.alive else "bad"))
                for i in instances]
        beats_table = _table(("Instance", "Host", "PID", "Version", "Heartbeat", "Ticks sent", "State"), rows, "beats") if rows \
            else tag("p", "No beat is registered.", class_="bad")
        flight = []
        for m, deadline in self.api.store.inflight():
            tick, _, entry_name = m.partition(":")
            flight.append(tag("tr", tag("td", entry_name or m), tag("td", tick), tag("td", f"{(deadline - now) / 1000:.1f}s",
                                                                                     class_="bad" if deadline < now else None)))
        flight_table = _table(("Entry", "Tick (ms)", "Lease left"), flight, "inflight") if flight else tag("p", "Nothing in flight.")
        return Response(self._page(environ, "Beats", join([self._health_bar(), tag("h2", "Beats"), beats_table,
                                                           tag("h2", "In flight"), flight_table]), now=now))

    # -- pieces -------------------------------------------------------------
    def _page(self, environ: dict[str, Any], title: str, body: Html, now: int | None = None) -> str:
        base = environ.get("SCRIPT_NAME") or ""
        signed_in = self._session(environ) is not None
        auth: Html = Html("")
        if self.token is not None:
            auth = (tag("form", tag("button", "Sign out"), method="post", action=base + "/logout", class_="inline") if signed_in
                    else tag("a", "Sign in to act", href=base + "/?login=1"))
        if self.token is not None and not signed_in and _query(environ).get("login"):
            body = Html(self._login_form(environ) + body)
        nav = tag("nav", tag("a", "Entries", href=base + "/"), tag("a", "Beats", href=base + "/beats"),
                  tag("a", "Metrics", href=base + "/metrics"), tag("a", "Health", href=base + "/healthz"), auth)
        head = Html(f'<meta charset="utf-8"><meta name="viewport" content="width=device-width">'
                    f"<title>{esc(title)} - redbeat_safe</title>"
                    f'<link rel="stylesheet" href="{esc(base)}/static/dashboard.css">'
                    f'<script src="{esc(base)}/static/dashboard.js" defer></script>')
        now_attr = f' data-now="{now}"' if now is not None else ""
        return f"<!doctype html><html lang=\"en\"><head>{head}</head><body{now_attr}>" \
               f"<header><h1>redbeat_safe</h1>{nav}</header><main>{body}</main></body></html>"

    def _login_form(self, environ: dict[str, Any]) -> Html:
        return tag("form", tag("label", "Token ", tag("input", type="password", name="token", autocomplete="current-password")),
                   tag("button", "Sign in"), method="post", action=(environ.get("SCRIPT_NAME") or "") + "/login", class_="login")

    def _health_bar(self) -> Html:
        result = health_checks.check(self.api.store, redis_url=self.api.settings.redis_url)
        if result.ok:
            return tag("p", f"Healthy: {result.beats_alive} beat(s) alive, nothing late.", class_="health ok", id="health")
        return tag("div", tag("strong", "Not healthy:"), tag("ul", *(tag("li", f) for f in result.failures)), class_="health bad",
                   id="health")

    def _search_form(self, search: str, count: int) -> Html:
        return tag("form", tag("input", type="search", name="q", value=search, placeholder="name contains", aria_label="Search"),
                   tag("button", "Search"), tag("span", f" {count} entr{'y' if count == 1 else 'ies'}", id="count"),
                   method="get", action="", class_="search")

    def _entries_table(self, environ: dict[str, Any], rows: list[EntryRow], now: int) -> Html:
        base = environ.get("SCRIPT_NAME") or ""
        out = []
        for row in rows:
            e = None if row.stored is None else entry_from_stored(row.stored)
            if e is None:
                continue
            zone = self._zone(e.schedule)
            state = _state_word(row, now)
            d = row.last_dispatch
            last = Html("-") if d is None else join([_when(d.published_at, zone), tag(
                "span", f" ({_late(d.published_at.timestamp() * 1000 - d.tick_ms)} late)", class_="muted")])
            nxt = Html("-") if row.next_ms is None else join([_when(ms_to_datetime(row.next_ms), zone), " ",
                                                              tag("span", "", class_="countdown", data_ms=str(row.next_ms))])
            out.append(tag("tr", tag("td", tag("a", e.name, href=f"{base}/entry/{_q(e.name)}"), class_="name"),
                           tag("td", "?" if e.schedule is None else e.schedule.human(), tag("div", zone.key, class_="muted")),
                           tag("td", nxt), tag("td", last), tag("td", state, class_="state " + state)))
        if not out:
            return tag("p", "No entries.", id="entries")
        return _table(("Name", "Schedule", "Next run", "Last run", "State"), out, "entries")

    def _pager(self, environ: dict[str, Any], page: int, pages: int, search: str, size: int) -> Html:
        def link(p: int, text: str) -> Html:
            q = f"?page={p}" + (f"&size={size}" if size != PAGE_SIZE else "") + (f"&q={quote(search)}" if search else "")
            return tag("a", text, href=(environ.get("SCRIPT_NAME") or "") + "/" + q, rel=text.lower() if text in ("Next", "Previous") else None)

        items: list[Any] = []
        if page > 1:
            items.append(link(page - 1, "Previous"))
        items.append(tag("span", f" page {page} of {pages} "))
        if page < pages:
            items.append(link(page + 1, "Next"))
        return tag("nav", *items, class_="pager")

    def _zone(self, schedule: Schedule | None) -> ZoneInfo:
        if isinstance(schedule, pattern):
            return schedule.zone
        return ZoneInfo(self.api.settings.timezone)

    def _definition(self, e: Entry, row: EntryRow, now: int) -> Html:
        zone = self._zone(e.schedule)
        items: list[tuple[str, Any]] = [
            ("Task", tag("code", e.task or "?")),
            ("Schedule", "?" if e.schedule is None else e.schedule.human()),
            ("Zone", zone.key),
            ("State", _state_word(row, now)),
            ("Next run", "-" if row.next_ms is None else join([_when(ms_to_datetime(row.next_ms), zone), " ",
                                                               tag("span", "", class_="countdown", data_ms=str(row.next_ms))])),
            ("Runs", str(e.total_runs)),
            ("Source", e.source),
            ("Options", tag("code", json.dumps(e.options, sort_keys=True))),
            ("Arguments", tag("code", json.dumps({"args": e.args, "kwargs": e.kwargs}, sort_keys=True)) if self.show_args
             else tag("span", "hidden (they may hold secrets; start with --show-args to show them)", class_="muted")),
        ]
        if e.problem:
            items.append(("Problem", tag("span", e.problem, class_="bad")))
        return tag("dl", *(join([tag("dt", k), tag("dd", v)]) for k, v in items), class_="definition")

    def _actions(self, environ: dict[str, Any], e: Entry) -> Html:
        if self.token is None:
            return tag("p", "Read-only (no token configured).", class_="muted", id="actions")
        nonce = self._session(environ)
        if nonce is None:
            return tag("p", tag("a", "Sign in", href=(environ.get("SCRIPT_NAME") or "") + "/?login=1"), " to pause, resume or trigger.",
                       class_="muted", id="actions")
        base = (environ.get("SCRIPT_NAME") or "") + "/entry/" + _q(e.name)
        buttons = [tag("form", tag("input", type="hidden", name="csrf", value=self._csrf(nonce)),
                       tag("input", type="hidden", name="request_id", value=new_request_id()) if action == "trigger" else "",
                       tag("button", action.capitalize(), name="action", value=action), method="post", action=f"{base}/{action}",
                       class_="inline")
                   for action in ("resume" if not e.enabled else "pause", "trigger")]
        return tag("div", *buttons, id="actions")

    def _history_table(self, history: list[Any], e: Entry) -> Html:
        zone = self._zone(e.schedule)
        rows = [tag("tr", tag("td", _when(d.tick, zone)), tag("td", d.kind, class_="kind " + d.kind),
                    tag("td", _late(d.published_at.timestamp() * 1000 - d.tick_ms)), tag("td", tag("code", d.task_id)),
                    tag("td", d.instance), tag("td", d.outcome_text(), class_="outcome")) for d in history[:20]]
        if not rows:
            return tag("p", "No dispatches yet.", id="history")
        return _table(("Tick", "Kind", "Late", "Task id", "By", "Outcome"), rows, "history")

    def _next_runs(self, e: Entry, row: EntryRow) -> Html:
        if e.schedule is None or row.next_ms is None:
            return tag("p", "None scheduled.")
        zone, ticks, t = self._zone(e.schedule), list[int](), row.next_ms
        t_next: int | None = t
        while t_next is not None and len(ticks) < 10:
            t = t_next
            ticks.append(t)
            t_next = e.schedule.next_after(t)
        return tag("ol", *(tag("li", _when(ms_to_datetime(x), zone), tag("span", f"  {ms_to_datetime(x).isoformat()}",
                                                                           class_="muted")) for x in ticks), id="next-runs")


# -- helpers ------------------------------------------------------------------

def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _text(wsgi: str) -> str:
    """A WSGI path (URL-decoded bytes as latin-1) as the text it spells; bytes that are
    not UTF-8 stay as surrogates, as entry names from Redis do."""
    return wsgi.encode("latin-1", "replace").decode("utf-8", "surrogateescape")


def _q(name: str) -> str:
    """An entry name as one URL path segment."""
    return quote(name.encode("utf-8", "surrogateescape"), safe="")


def _table(headers: Iterable[str], rows: list[Html], ident: str) -> Html:
    return tag("table", tag("thead", tag("tr", *(tag("th", h) for h in headers))), tag("tbody", *rows), id=ident)


def _when(d: datetime, zone: ZoneInfo) -> Html:
    try:
        local = d.astimezone(zone)
    except (OverflowError, ValueError):
        local = d.astimezone(timezone.utc)
    return tag("time", local.strftime("%Y-%m-%d %H:%M:%S %Z (UTC%z)"), datetime=d.isoformat())


def _late(ms: float) -> str:
    return f"{ms / 1000:.2f}s" if abs(ms) < 60_000 else f"{ms / 60_000:.1f}min"


def _state_word(row: EntryRow, now: int) -> str:
    state = row.state
    if state == "enabled" and row.next_ms is not None and now - row.next_ms > health_checks.DEFAULT_MAX_LATE_S * 1000:
        return "late"
    return "active" if state == "enabled" else state


def _history_chart(history: list[Any]) -> Html:
    """Lateness per tick, oldest left, as an inline SVG bar chart; re-publishes in red,
    triggers in blue. No script, no external file."""
    if not history:
        return Html("")
    points = list(reversed(history))
    late = [max(0.0, d.published_at.timestamp() * 1000 - d.tick_ms) for d in points]
    top = max(max(late), 1.0)
    width, height, bar = 600, 120, 600 / max(len(points), 1)
    bars = []
    for i, (d, ms) in enumerate(zip(points, late, strict=True)):
        h = max(1.0, ms / top * (height - 20))
        cls = {"republished": "r", "triggered": "t", "refused": "x"}.get(d.kind, "s")
        bars.append(f'<rect class="{cls}" x="{i * bar:.1f}" y="{height - h:.1f}" width="{max(bar - 1, 1):.1f}" height="{h:.1f}">'
                    f"<title>{esc(d.tick.isoformat())}: {esc(_late(ms))} late ({esc(d.kind)})</title></rect>")
    axis = f'<text x="2" y="12">max {esc(_late(top))}</text>'
    return Html(f'<svg id="chart" class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
                f'aria-label="lateness per dispatch">{axis}{"".join(bars)}</svg>'
                '<p class="legend muted"><span class="key s"></span> scheduled <span class="key r"></span> re-published by the reaper '
                '<span class="key t"></span> triggered</p>')


def _query(environ: dict[str, Any]) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _form(environ: dict[str, Any]) -> dict[str, str]:
    try:
        length = min(int(environ.get("CONTENT_LENGTH") or 0), 64 * 1024)
    except ValueError:
        length = 0
    raw = environ["wsgi.input"].read(length) if length > 0 else b""
    return {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default
