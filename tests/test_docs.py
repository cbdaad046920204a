"""The docs cannot drift from the code: every `schedules` subcommand and option a page
names exists (and every subcommand is in the operating reference), every Python name
a page imports or spells as `redbeat_safe.X` resolves, and every method a page calls
on `Schedules` exists with the keywords it passes. Settings have their own test
(test_options.py)."""

from __future__ import annotations

import importlib
import inspect
import re

import click
import pytest

from harness import ROOT
from redbeat_safe import Schedules
from redbeat_safe.cli import schedules

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
            if not re.search(r"\bcelery\b.*\bschedules ", snippet):
                continue  # a command line is `celery ... schedules SUB ...`
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


@pytest.mark.parametrize("page", ["operating.md", "README.md", "time.md", "migrating-from-redbeat.md", "monitoring.md"])
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
