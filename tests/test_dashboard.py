"""The dashboard over real HTTP: `schedules serve` against a real Redis with real beats.
The guarded actions (token, sign-in cookie, CSRF, bearer), escaping, hidden arguments,
/healthz agreeing with `health`, paging and search, and mounting under a prefix in a
host WSGI app and in an ASGI server's place. The browser test is test_dashboard_browser.py."""

from __future__ import annotations

import asyncio
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import BeatGroup, cli, make_app
from dashboard import Served, request
from harness import RedisServer, wait_for
from redbeat_safe import Schedules, every, pattern
from redbeat_safe.definitions import EntryDef
from redbeat_safe.registry import upsert as bulk
from redbeat_safe.web import asgi_app, server, wsgi_app

HOSTILE = "<script>alert(1)</script>"
TOKEN = "s3cret-dashboard-token"


@pytest.fixture
def api(redis_server: RedisServer, beats: BeatGroup) -> Schedules:
    return Schedules(make_app(redis_server, beats.prefix))


@pytest.fixture
def served(beats: BeatGroup) -> Iterator[Served]:
    s = Served(beats, env={"REDBEAT_SAFE_DASHBOARD_TOKEN": TOKEN})
    yield s
    s.stop()


def _session(served: Served) -> tuple[str, str]:
    """Sign in with the token: (cookie header, the page's CSRF value for entry 'e1')."""
    reply = served.get("/login", data=urllib.parse.urlencode({"token": TOKEN}).encode(), method="POST")
    assert reply.status == 303, reply.text
    cookie = reply.headers["Set-Cookie"].split(";", 1)[0]
    page = served.get("/entry/e1", headers={"Cookie": cookie}).text
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    return cookie, csrf


def test_the_pages_escape_every_name_and_hide_arguments(beats: BeatGroup, api: Schedules, served: Served) -> None:
    api.upsert(HOSTILE, "beatapp.record", every(60), args=["api-key-123"], kwargs={"password": "hunter2"})
    api.upsert("berlin", "beatapp.record", pattern("30 2 * * *", tz="Europe/Berlin"))
    index = served.get("/")
    assert index.status == 200
    assert HOSTILE not in index.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in index.text
    assert "Europe/Berlin" in index.text and ("CET (UTC+0100)" in index.text or "CEST (UTC+0200)" in index.text)
    page = served.get("/entry/" + urllib.parse.quote(HOSTILE, safe=""))
    assert page.status == 200 and HOSTILE not in page.text and "&lt;script&gt;" in page.text
    assert "api-key-123" not in page.text and "hunter2" not in page.text and "hidden (they may hold secrets" in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    shown = Served(beats, "--show-args")
    try:
        assert "api-key-123" in shown.get("/entry/" + urllib.parse.quote(HOSTILE, safe="")).text
    finally:
        shown.stop()


def test_actions_are_refused_without_the_token_and_work_with_it(beats: BeatGroup, api: Schedules, served: Served) -> None:
    api.upsert("e1", "beatapp.record", every(3600))
    readonly = Served(beats)  # no token at all: read-only, no buttons
    try:
        assert "Read-only (no token configured)" in readonly.get("/entry/e1").text
        refused = readonly.get("/entry/e1/trigger", data=b"", method="POST")
        assert refused.status == 403 and "read-only" in refused.text
    finally:
        readonly.stop()
    assert served.get("/entry/e1/pause", data=b"", method="POST").status == 403  # not signed in
    assert served.get("/login", data=b"token=wrong", method="POST").status == 403
    cookie, csrf = _session(served)
    bad = served.get("/entry/e1/pause", data=b"csrf=forged", headers={"Cookie": cookie}, method="POST")
    assert bad.status == 403 and "CSRF" in bad.text
    forged_cookie = cookie.split(".")[0] + ".0000"
    assert served.get("/entry/e1/pause", data=f"csrf={csrf}".encode(), headers={"Cookie": forged_cookie}, method="POST").status == 403
    assert api.get("e1").enabled  # type: ignore[union-attr]
    ok = served.get("/entry/e1/pause", data=f"csrf={csrf}".encode(), headers={"Cookie": cookie}, method="POST")
    assert ok.status == 303 and not api.get("e1").enabled  # type: ignore[union-attr]
    wrong_bearer = served.get("/entry/e1/resume", data=b"", headers={"Authorization": "Bearer nope"}, method="POST")
    assert wrong_bearer.status == 403 and not api.get("e1").enabled  # type: ignore[union-attr]
    bearer = served.get("/entry/e1/resume", data=b"", headers={"Authorization": f"Bearer {TOKEN}"}, method="POST")
    assert bearer.status == 200 and api.get("e1").enabled  # type: ignore[union-attr]
    beats.start({}, "a").wait_log("registered 0 static entries")
    trig = served.get("/entry/e1/trigger", data=b"", headers={"Authorization": f"Bearer {TOKEN}"}, method="POST")
    assert trig.status == 200, trig.text
    wait_for(lambda: [d for d in api.history("e1") if d.kind == "triggered"], 15, what="the triggered run in history")


def test_healthz_answers_200_exactly_when_health_exits_0(beats: BeatGroup, served: Served) -> None:
    reply = served.get("/healthz")
    assert reply.status == 503 and reply.text.strip() == "beats: 0 alive, at least 1 wanted"
    assert cli(beats, "health").returncode == 1
    beats.start({"e1": {"every": 1}}, "a").wait_log("registered 1 static entries")
    reply = served.get("/healthz")
    assert reply.status == 200 and reply.text == "ok\n"
    assert cli(beats, "health").returncode == 0
    assert "Healthy: 1 beat(s) alive" in served.get("/").text
    assert "alive" in served.get("/beats").text


def test_ten_thousand_entries_page_and_search(beats: BeatGroup, api: Schedules, served: Served) -> None:
    defs = [EntryDef(f"job-{i:05d}", "beatapp.record", every(3600 + i), [], {}, {}) for i in range(10_000)]
    for start in range(0, len(defs), 1000):
        bulk(api.store, defs[start : start + 1000], "api")
    first = served.get("/")
    assert "10000 entries" in first.text and first.text.count("<tr>") == 51  # 50 rows and the header
    assert "page 1 of 200" in first.text and "job-00000" in first.text and "job-00050" not in first.text
    last = served.get("/?page=200")
    assert "job-09999" in last.text and "page 200 of 200" in last.text
    found = served.get("/?q=job-0999")
    assert "10 entries" in found.text and found.text.count("<tr>") == 11


def _serve_in_thread(app: Any) -> tuple[Any, str]:
    httpd = server.make(app, "127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_port}"


def test_mounted_under_a_prefix_in_a_host_wsgi_app(beats: BeatGroup, api: Schedules) -> None:
    """The documented mount: a host app sends /schedules/* to the dashboard (SCRIPT_NAME
    set, as werkzeug's DispatcherMiddleware and Django's WSGI do), behind its own check."""
    api.upsert("e1", "beatapp.record", every(60))
    dashboard = wsgi_app(make_app(beats.server, beats.prefix), authorize=lambda environ: environ.get("HTTP_X_USER") == "ops")

    def host(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/schedules"):
            environ["SCRIPT_NAME"], environ["PATH_INFO"] = "/schedules", path[len("/schedules"):] or "/"
            return dashboard(environ, start_response)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"host app"]

    httpd, url = _serve_in_thread(host)
    try:
        assert request(url + "/").text == "host app"
        assert request(url + "/schedules/").status == 403  # the host's own check says no
        page = request(url + "/schedules/", headers={"X-User": "ops"})
        assert page.status == 200 and 'href="/schedules/entry/e1"' in page.text and 'href="/schedules/static/dashboard.css"' in page.text
        assert request(url + "/schedules/static/dashboard.js", headers={"X-User": "ops"}).status == 200
        assert request(url + "/schedules/healthz").status == 503  # probes need no login; no beat runs here
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_asgi_app_serves_the_same_pages(beats: BeatGroup, api: Schedules) -> None:
    """Called as an ASGI server calls it (asgiref runs the WSGI app in a thread)."""
    api.upsert(HOSTILE, "beatapp.record", every(60))
    app = asgi_app(make_app(beats.server, beats.prefix))

    async def get(path: str) -> tuple[int, bytes]:
        sent: list[dict[str, Any]] = []
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
                 "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": [(b"host", b"x")],
                 "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000)}
        messages = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        status = next(m["status"] for m in sent if m["type"] == "http.response.start")
        return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")

    status, body = asyncio.run(get("/"))
    assert status == 200 and b"&lt;script&gt;alert(1)&lt;/script&gt;" in body and HOSTILE.encode() not in body
    status, body = asyncio.run(get("/metrics"))
    assert status == 200 and b"redbeat_safe_entries" in body


def test_records_planted_by_hand_never_make_a_page_fail(beats: BeatGroup, api: Schedules, served: Served) -> None:
    """Found in review: a name that is not UTF-8, a history key of another type and a
    non-ASCII cookie each turned a page (or /metrics) into a 500 or a false 'Redis down'."""
    from redbeat_safe.store import Keys

    api.upsert("e1", "beatapp.record", every(3600))
    client, k = api.store.client, Keys(beats.prefix)
    now = api.store.now()
    client.zadd(k.due, {b"bad-\xff-name": now - 5000})  # late, damaged, and not UTF-8
    client.zadd(k.instances, {b"inst-\xff": now + 60_000})
    client.set(k.history("e1"), "not a list")
    client.zadd(k.inflight, {b"1:\xfe": now + 1000})
    for path in ("/", "/beats", "/metrics", "/entry/e1", "/entry/bad-%FF-name"):
        reply = served.get(path)
        assert reply.status == 200, (path, reply.status, reply.text[:300])
    assert "bad-\\xff-name" in served.get("/").text  # shown escaped, as the CLI shows it
    assert "redbeat_safe_redis_up 1.0" in served.get("/metrics").text
    assert served.get("/entry/%FF").status == 404
    assert served.get("/", headers={"Cookie": 'redbeat_safe_session="a.\\351"'}).status == 200


def test_actions_refuse_bad_input_and_a_repeated_trigger_runs_once(beats: BeatGroup, api: Schedules, served: Served) -> None:
    api.upsert("e1", "beatapp.record", every(3600))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert served.get("/entry//pause", data=b"", headers=auth, method="POST").status == 400
    assert served.get("/entry/e1/trigger", data=b"request_id=bad%0Aid", headers=auth, method="POST").status == 400
    first = served.get("/entry/e1/trigger", data=b"request_id=form-123", headers=auth, method="POST")
    again = served.get("/entry/e1/trigger", data=b"request_id=form-123", headers=auth, method="POST")
    assert first.status == again.status == 200 and first.text == again.text  # a double submit: the same run
    cookie, _ = _session(served)
    page = served.get("/entry/e1", headers={"Cookie": cookie}).text
    assert 'name="request_id"' in page  # each rendered trigger form carries its own id
    login = served.get("/login", data=urllib.parse.urlencode({"token": TOKEN, "next": "/\\evil.example"}).encode(), method="POST")
    assert login.status == 303 and login.headers["Location"] == "/"
