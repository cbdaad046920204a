"""Settings declared once (redbeat_safe/options.py): the configuration reference agrees
with the declarations, no page names a `redbeat_safe_*` name that does not exist, and
a typo is refused, by a real beat and by the CLI, with the name it meant."""

from __future__ import annotations

import json
import re

import pytest
from celery import Celery
from celery.exceptions import ImproperlyConfigured

from conftest import BeatGroup, cli
from harness import ROOT, wait_for
from redbeat_safe import dispatch
from redbeat_safe.config import Settings
from redbeat_safe.connection import DEFAULTS as CONNECTION_DEFAULTS
from redbeat_safe.options import CELERY_SETTINGS, NAMES, OPTIONS, reference_table

DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md", *sorted((ROOT / "example_project").rglob("*.py"))]


def test_the_configuration_reference_is_the_declared_settings() -> None:
    """The settings table is generated from options.py, to the character; every
    declared setting has its section below it, and no section names another."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    table = text.split("-->\n", 1)[1].split("\n<!-- end of generated table -->", 1)[0]
    assert table == reference_table(), "docs/configuration.md: regenerate the table with `python -m redbeat_safe.options`"
    sections = {m.group(1) for m in re.finditer(r"^### `([a-z_]+)`", text.split("## Each setting in detail", 1)[1].split("\n## ", 1)[0], re.M)}
    assert sections == {o.name for o in OPTIONS + CELERY_SETTINGS}, sections ^ {o.name for o in OPTIONS + CELERY_SETTINGS}


def test_the_connection_defaults_the_docs_give_are_the_code_s() -> None:
    """Found by a review of the docs: configuration.md once gave socket_timeout=10 and
    health_check_interval=30 where connection.py had 5 and 15."""
    checked = 0
    for page in DOCS:
        text = page.read_text()
        for key, default in CONNECTION_DEFAULTS.items():
            for said in re.findall(rf"`{key}(?:=|` \| )([0-9.]+)", text):
                checked += 1
                assert float(said) == float(default), (page.name, key, said, default)
    assert checked >= 3, checked


def test_every_setting_the_redbeat_migration_lacks_is_named_there() -> None:
    text = (ROOT / "docs" / "migrating-from-redbeat.md").read_text()
    assert [o.name for o in OPTIONS if f"`{o.name}`" not in text] == []


@pytest.mark.parametrize(("conf", "said"), [
    ({"redbeat_safe_dashboard_show_args": "false"}, "redbeat_safe_dashboard_show_args must be True or False, not 'false'"),
    ({"redbeat_safe_dashboard_token": 123}, "redbeat_safe_dashboard_token must be a string, not 123"),
    ({"redbeat_safe_lease": float("nan")}, "redbeat_safe_lease must be a positive number"),
    ({"redbeat_safe_lease": float("inf")}, "redbeat_safe_lease must be a positive number"),
    ({"redbeat_safe_catchup_max": 1.5}, "redbeat_safe_catchup_max must be a whole number"),
    ({"redbeat_safe_redis_options": {"socket_timeout": "x"}}, "socket_timeout must be a positive number of seconds"),
    ({"redbeat_safe_redis_options": {"health_check_interval": "abc"}}, "health_check_interval must be a whole number"),
    ({"redbeat_safe_redis_options": {"socket_connect_timeout": -1}}, "socket_connect_timeout must be a positive number"),
    ({"timezone": "Nowhere/City"}, "the app's timezone 'Nowhere/City' is not a time zone"),
    ({"timezone": "Europe/Berlin "}, "the app's timezone 'Europe/Berlin ' is not a time zone"),
])
def test_a_value_of_the_wrong_type_is_refused_in_one_line(conf: dict[str, object], said: str) -> None:
    """Found by the issue-14 check: these raised ZoneInfoNotFoundError, ValueError or
    TypeError with a traceback (or were accepted: a string "false" showed the arguments)."""
    app = Celery("t", set_as_current=False)
    app.conf.update(redbeat_safe_redis_url="redis://localhost/0", **conf)
    with pytest.raises(ImproperlyConfigured, match=re.escape(said)) as caught:
        Settings.from_app(app)
    assert "\n" not in str(caught.value)


def _known_names() -> set[str]:
    """Settings, the message headers, the metric families (with _total for counters)."""
    src = (ROOT / "redbeat_safe" / "metrics.py").read_text()
    metrics = {"redbeat_safe_" + m for m in re.findall(r'f"\{PREFIX\}_([a-z_]+)"', src) + re.findall(r'_gauge\("([a-z_]+)"', src)}
    counters = {"redbeat_safe_" + m + "_total" for m in re.findall(r'Counter(?:MetricFamily)?\(f"\{PREFIX\}_([a-z_]+)"', src)}
    headers = {dispatch.HEADER_ENTRY, dispatch.HEADER_TICK, dispatch.HEADER_TRIGGER, dispatch.HEADER_INSTANCE}
    return set(NAMES) | metrics | counters | headers


def test_no_page_names_a_redbeat_safe_name_that_does_not_exist() -> None:
    known = _known_names()
    test_names = {m for p in (ROOT / "tests").glob("test_*.py") for m in re.findall(r"def (test_\w+)", p.read_text())}
    unknown = []
    for page in DOCS:
        text = re.sub(r"unknown setting '[^']*'", "", page.read_text())  # the refusal's own example of a typo
        text = re.sub(r"\btest_\w+", lambda m: "" if m.group(0) in test_names else m.group(0), text)  # a test, by its name
        unknown += [(page.name, n) for n in re.findall(r"redbeat_safe_[a-z_]*[a-z]", text) if n not in known]
        # the Django namespace's spelling: CELERY_REDBEAT_SAFE_LEASE is redbeat_safe_lease
        unknown += [(page.name, n) for n in re.findall(r"\bCELERY_(REDBEAT_SAFE_[A-Z_]*[A-Z])\b", text) if n.lower() not in NAMES]
    assert sorted(set(unknown)) == [], sorted(set(unknown))


@pytest.mark.parametrize(("conf", "said"), [
    ({"redbeat_safe_catchpu": "all"}, "unknown setting 'redbeat_safe_catchpu'; did you mean 'redbeat_safe_catchup'?"),
    ({"redbeat_safe_lease_seconds": 5}, "unknown setting 'redbeat_safe_lease_seconds'; did you mean 'redbeat_safe_lease'?"),
    ({"redbeat_safe_zzz": 1}, "unknown setting 'redbeat_safe_zzz'; the known ones are in docs/configuration.md"),
])
def test_an_unknown_setting_is_refused_with_the_nearest_name(conf: dict[str, object], said: str) -> None:
    app = Celery("t", set_as_current=False)
    app.conf.update(redbeat_safe_redis_url="redis://localhost/0", **conf)
    with pytest.raises(ImproperlyConfigured) as caught:
        Settings.from_app(app)
    assert str(caught.value) == "redbeat_safe: " + said


def test_the_django_namespace_is_checked_and_answered_in_its_spelling() -> None:
    class DjangoSettings:  # what `config_from_object("django.conf:settings", namespace="CELERY")` reads
        CELERY_BROKER_URL = "redis://localhost/1"
        CELERY_REDBEAT_SAFE_REDIS_URL = "redis://localhost/0"
        CELERY_REDBEAT_SAFE_LEASE_SECONDS = 5

    app = Celery("t", set_as_current=False)
    app.config_from_object(DjangoSettings, namespace="CELERY")
    with pytest.raises(ImproperlyConfigured, match=re.escape("unknown setting 'CELERY_REDBEAT_SAFE_LEASE_SECONDS'; did you mean "
                                                             "'CELERY_REDBEAT_SAFE_LEASE'?")):
        Settings.from_app(app)
    del DjangoSettings.CELERY_REDBEAT_SAFE_LEASE_SECONDS
    DjangoSettings.CELERY_REDBEAT_SAFE_LEASE = 5  # type: ignore[attr-defined]
    app = Celery("t", set_as_current=False)
    app.config_from_object(DjangoSettings, namespace="CELERY")
    assert Settings.from_app(app).lease_ms == 5000  # the right spelling is read


def test_a_beat_and_the_cli_refuse_a_typo(beats: BeatGroup) -> None:
    extra = json.dumps({"redbeat_safe_catchpu": "all"})
    beat = beats.start({"e1": {"every": 1}}, "typo", BEAT_EXTRA_CONF=extra)
    wait_for(lambda: beat.proc is not None and beat.proc.poll() is not None, 30, what="the beat to exit")
    assert beat.proc is not None and beat.proc.returncode == 2
    # one line, no traceback (before: 54 lines, the reason on the last)
    assert "celery beat: redbeat_safe: unknown setting 'redbeat_safe_catchpu'; did you mean 'redbeat_safe_catchup'?" in beat.output()
    assert "Traceback" not in beat.output() and len(beat.output().strip().splitlines()) <= 2, beat.output()
    assert beats.broker.messages() == []
    done = cli(beats, "list", env={"BEAT_EXTRA_CONF": extra})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip() == ("error: configuration: redbeat_safe: unknown setting 'redbeat_safe_catchpu'; "
                                   "did you mean 'redbeat_safe_catchup'?")


def test_a_spelling_celery_never_reads_is_refused() -> None:
    """Found in review: REDBEAT_SAFE_LEASE without a namespace was accepted and ignored."""
    app = Celery("t", set_as_current=False)
    app.config_from_object({"redbeat_safe_redis_url": "redis://localhost/0", "REDBEAT_SAFE_LEASE": 5})
    with pytest.raises(ImproperlyConfigured, match="setting 'REDBEAT_SAFE_LEASE' is never read in this spelling; "
                                                   "write it as 'redbeat_safe_lease'"):
        Settings.from_app(app)
