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
from redbeat_safe.options import NAMES, OPTIONS

DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md", *sorted((ROOT / "example_project").rglob("*.py"))]


def test_the_configuration_reference_is_the_declared_settings() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(redbeat_safe_[a-z_]+)` \| (.*?) \|", text, re.M)}
    assert set(rows) == NAMES, (sorted(set(rows) - NAMES), sorted(NAMES - set(rows)))
    for option in OPTIONS:
        assert rows[option.name] == option.default, (option.name, rows[option.name], option.default)


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
    assert beat.proc is not None and beat.proc.returncode != 0
    assert "did you mean 'redbeat_safe_catchup'?" in beat.output()
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
