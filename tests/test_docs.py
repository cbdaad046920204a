"""The docs cannot drift from the code: every `schedules` subcommand and option a page
names exists (and every subcommand is in the operating reference), every Python name
a page imports or spells as `redbeat_safe.X` resolves, and every method a page calls
on `Schedules` exists with the keywords it passes. Settings have their own test
(test_options.py)."""

from __future__ import annotations

import builtins
import dataclasses
import importlib
import inspect
import re

import click
import pytest

import redbeat_safe
from harness import ROOT
from redbeat_safe import Schedules
from redbeat_safe.cli import schedules
from redbeat_safe.views import Dispatch, Entry, Instance

PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
#: What Celery's own `celery` command takes before the subcommand.
CELERY_GLOBAL = {"-A", "--app", "-b", "--broker", "--loader", "--config", "--workdir", "-q", "--quiet", "--no-color"}


def _options(command: click.Command, secondary: bool = True) -> set[str]:
    names = {"--help"}
    for p in command.params:
        names.update(o for o in (*p.opts, *(p.secondary_opts if secondary else ())) if o.startswith("-"))
    return names


COMMANDS: dict[str, click.Command] = dict(schedules.commands)  # type: ignore[attr-defined]
#: `schedules NAME` in prose that is not a subcommand ("schedules with ...").
_USE = re.compile(r"\bschedules ([a-z][a-z-]*)((?:[^`|\n;&)]*))")


def _code(text: str) -> list[str]:
    """Inline code spans and fenced-block lines: where a command is written to be run."""
    fenced = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    lines = [line for block in fenced for line in block.splitlines()]
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return lines + inline


def test_every_subcommand_and_option_a_page_names_exists() -> None:
    wrong, checked = [], 0
    for page in PAGES:
        for snippet in _code(page.read_text()):
            if not re.search(r"\bcelery\b.*\bschedules ", snippet) and not re.match(r"\s*schedules [a-z]", snippet):
                continue  # a command line is `celery ... schedules SUB ...`, or `schedules SUB ...` in prose
            for sub, rest in _USE.findall(snippet):
                checked += 1
                if sub not in COMMANDS:
                    wrong.append((page.name, snippet, f"no subcommand {sub!r}"))
                    continue
                unknown = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", rest)) - _options(COMMANDS[sub]) - CELERY_GLOBAL
                wrong += [(page.name, snippet, f"{sub} has no option {o}") for o in sorted(unknown)]
    assert wrong == [], "\n".join(map(str, wrong))
    assert checked > 40, checked  # the pages do show commands: the test read them


def test_the_operating_reference_lists_every_subcommand_with_only_its_options() -> None:
    text = (ROOT / "docs" / "operating.md").read_text()
    table = re.findall(r"^\| `([a-z-]+)([^`]*)`(?: / `([a-z-]+)[^`]*`)? \|", text, re.M)
    listed = {row[0] for row in table} | {row[2] for row in table if row[2]}
    assert listed == set(COMMANDS), (sorted(set(COMMANDS) - listed), sorted(listed - set(COMMANDS)))
    for sub, rest, _ in table:
        if sub == "edit":
            rest = rest.replace("but --paused", "")  # "any option of add but --paused"
        named = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", rest))
        assert named <= _options(COMMANDS[sub]), (sub, sorted(named - _options(COMMANDS[sub])))
        if sub == "edit":
            continue  # "any option of add but --paused"
        documented_elsewhere = {"--help", "--json"}  # --json: "every subcommand takes --json"
        want = _options(COMMANDS[sub], secondary=False) - documented_elsewhere  # --no-align goes without saying
        assert want <= named, (sub, sorted(want - named))


def test_every_subcommand_takes_json() -> None:
    assert [name for name, c in COMMANDS.items() if "--json" not in _options(c) and name != "serve"] == []


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_every_python_name_a_page_uses_resolves() -> None:
    missing = []
    for page in PAGES:
        text = page.read_text()
        names = set(re.findall(r"\bredbeat_safe(?:\.[A-Za-z_][A-Za-z0-9_]*)+", text))
        names |= {f"{mod}.{n.strip()}" for mod, imported in re.findall(r"from (redbeat_safe[\w.]*) import ([\w, ]+)", text)
                  for n in imported.split(",") if n.strip()}
        for name in sorted(names):
            try:
                _resolve(name.rstrip("."))
            except (ImportError, AttributeError) as exc:
                missing.append((page.name, name, repr(exc)))
    assert missing == [], missing


@pytest.mark.parametrize("page", [p.name for p in PAGES])
def test_every_schedules_method_a_page_calls_exists_with_its_keywords(page: str) -> None:
    path = ROOT / ("README.md" if page == "README.md" else f"docs/{page}")
    text = "\n".join(_code(path.read_text()))
    calls = re.findall(r"\b(?:s|api|Schedules\(app\))\.([a-z_]+)\(([^()]*)", text)
    assert calls or page not in ("operating.md", "README.md")
    for method, args in calls:
        fn = getattr(Schedules, method, None)
        assert callable(fn), (page, method)
        params = inspect.signature(fn).parameters
        for keyword in re.findall(r"\b([a-z_]+)=", args):
            assert keyword in params, (page, method, keyword)
    for method in re.findall(r"\bSchedules\.([a-z_]+)", path.read_text()):  # `Schedules.trigger` in prose too
        assert callable(getattr(Schedules, method, None)), (page, f"Schedules.{method}")


#: What an operator reads off these objects; a page naming another attribute names nothing.
_RECORDS = {"Entry": Entry, "Dispatch": Dispatch, "Instance": Instance}


def test_every_attribute_a_page_reads_off_an_entry_exists() -> None:
    wrong = []
    for page in PAGES:
        text = page.read_text()
        for cls, attr in re.findall(r"\b(Entry|Dispatch|Instance)\.([a-z_]+)\b", text):
            if not hasattr(_RECORDS[cls], attr) and attr not in {f.name for f in dataclasses.fields(_RECORDS[cls])}:
                wrong.append((page.name, f"{cls}.{attr}"))
        for snippet in _code(text):  # s.get(name).next_tick
            for attr in re.findall(r"\bs\.get\([^()]*\)\.([a-z_]+)\b", snippet):
                if not hasattr(Entry, attr) and attr not in {f.name for f in dataclasses.fields(Entry)}:
                    wrong.append((page.name, snippet, attr))
    assert wrong == [], wrong


#: Class and exception names the pages mention that are not ours: Celery's, kombu's,
#: redis-py's, Kubernetes' and systemd's words, the alert names of the documented rules.
FOREIGN = {
    "ClusterCollector", "ClusterError", "CronJob", "DispatcherMiddleware", "ExecStart", "ExponentialWithJitterBackoff",
    "HttpOnly", "ImproperlyConfigured", "KillSignal", "PersistentScheduler", "PodDisruptionBudget", "RedBeatScheduler",
    "RedBeatSchedulerEntry", "RedisCluster", "RedisError", "RestartSec", "RollingUpdate", "SameSite", "ScheduleAnyway",
    "TimeoutStopSec", "TryAgainError", "WantedBy", "WorkingDirectory", "ZoneInfo",
}


def test_every_class_or_exception_name_a_page_uses_exists() -> None:
    """A name spelt like a class (`EntryNotFound`) in a command, a snippet or a code
    span is one of redbeat_safe's public names, a builtin, or a known foreign one."""
    ours = set(redbeat_safe.__all__)
    wrong = []
    for page in PAGES:
        for snippet in _code(page.read_text()):
            for name in re.findall(r"\b([A-Z][a-z0-9]+(?:[A-Z][A-Za-z0-9]*)+)\b", snippet):
                if name in ours or hasattr(builtins, name) or name in FOREIGN or name.startswith("RedbeatSafe"):
                    continue
                wrong.append((page.name, name))
    assert sorted(set(wrong)) == [], sorted(set(wrong))
