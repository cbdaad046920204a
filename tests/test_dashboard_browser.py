"""The dashboard in a real browser: Debian's Chromium (a browser download cannot work
on these machines), driven by Playwright, against a real Redis, a real beat and the real
`schedules serve`. UPDATE_SCREENSHOTS=1 also writes the screenshots into docs/."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import BeatGroup, make_app
from dashboard import Served
from harness import ROOT, RedisServer
from redbeat_safe import Schedules, every, pattern

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HOSTILE = "<script>alert(1)</script>"
TOKEN = "browser-test-token"

pytestmark = [pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (scripts/setup installs it)")]


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def test_the_dashboard_in_chromium(beats: BeatGroup, redis_server: RedisServer, browser: Any, tmp_path: Path) -> None:
    api = Schedules(make_app(redis_server, beats.prefix))
    api.upsert(HOSTILE, "beatapp.record", every(3600))
    api.upsert("nightly-report", "beatapp.record", pattern("30 2 * * *", tz="Europe/Berlin"))
    api.upsert("slow", "beatapp.record", every(100))
    api.upsert("paused-one", "beatapp.record", every(60), enabled=False)
    beat = beats.start({"heartbeat": {"every": 2}}, "a")
    beat.wait_log("registered 1 static entries")
    served = Served(beats, env={"REDBEAT_SAFE_DASHBOARD_TOKEN": TOKEN})
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 760})
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(served.url + "/")
        # the table lists the entries; the hostile name is text, and no script ran
        names = page.locator("#entries td.name").all_inner_texts()
        assert sorted(names) == sorted([HOSTILE, "heartbeat", "nightly-report", "paused-one", "slow"]), names
        assert page.locator("#entries td.name script").count() == 0
        assert page.locator("#health").inner_text().startswith("Healthy: 1 beat(s) alive")
        assert "paused" in page.locator("#entries tr", has_text="paused-one").inner_text()
        assert "Europe/Berlin" in page.locator("#entries tr", has_text="nightly-report").inner_text()
        # the countdown advances (by the browser's own clock, anchored on the server's)
        countdown = page.locator("#entries tr", has_text="slow").locator(".countdown")
        first = countdown.inner_text()
        page.wait_for_timeout(2200)
        second = countdown.inner_text()
        assert first.startswith("(in ") and second.startswith("(in ") and first != second, (first, second)
        assert int(second[4:-2]) < int(first[4:-2])
        page.reload()  # the table is as of the page load; now with the heartbeat's runs
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        # without the token: no buttons, and a POST is refused
        page.goto(served.url + "/entry/slow")
        assert page.locator("#actions button").count() == 0
        # (the page's CSP forbids fetch() from it, so POST through the browser context, with its cookies)
        assert page.context.request.post(served.url + "/entry/slow/trigger").status == 403
        forged = page.context.request.post(served.url + "/entry/slow/trigger", form={"csrf": "x"})
        assert forged.status == 403 and not [d for d in api.history("slow") if d.kind == "triggered"]
        # signed in with the token: trigger, and the run shows up in the history
        page.goto(served.url + "/?login=1")
        page.fill("input[name=token]", TOKEN)
        page.click("form.login button")
        page.goto(served.url + "/entry/slow")
        page.click("#actions button[value=trigger]")
        page.wait_for_url("**/entry/slow")
        deadline = time.monotonic() + 20
        def history() -> str:
            return page.locator("#history").inner_text() if page.locator("#history").count() else ""

        while "triggered" not in history():
            assert time.monotonic() < deadline, "the triggered run never showed up in the history"
            page.wait_for_timeout(500)
            page.reload()
        assert page.locator("#chart rect.t").count() == 1  # the history picture marks it
        assert page.locator("#next-runs li").count() == 10
        page.goto(served.url + "/entry/heartbeat")
        page.wait_for_timeout(300)
        entry_shot = tmp_path / "dashboard-entry.png"
        page.screenshot(path=str(entry_shot), full_page=True)
        page.goto(served.url + "/entry/" + "%3Cscript%3Ealert(1)%3C%2Fscript%3E")
        assert page.locator("h2").inner_text() == HOSTILE
        assert dialogs == []  # no alert() ever ran
        if os.environ.get("UPDATE_SCREENSHOTS"):
            shutil.copy(shot, ROOT / "docs" / "dashboard.png")
            shutil.copy(entry_shot, ROOT / "docs" / "dashboard-entry.png")
    finally:
        served.stop()
