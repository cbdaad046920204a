"""Cron arithmetic on wall-clock time, with explicit daylight-saving rules.

croniter walks naive wall-clock times; this module maps each wall-clock match
to an instant in the pattern's zone. Two places need a decision because a wall
time is not always exactly one instant:

* **Gap** (spring forward, e.g. 02:00-02:59 does not exist): every match in the
  gap fires once, at the first instant after the gap (what Vixie cron and
  cronie do). A daily ``30 2 * * *`` therefore still runs that day, and
  ``*/20 * * * *`` does not burst.
* **Fold** (fall back, e.g. 02:00-02:59 happens twice): every match fires in the
  first pass. In the second pass only patterns whose hour field is a wildcard
  fire again, so ``*/20 * * * *`` and ``0 * * * *`` keep their spacing in
  real time while a fixed-time daily job runs once (Celery 5.7 skips the
  repeated hour altogether, its issue #10107).
"""

from __future__ import annotations

import re
import threading
from datetime import datetime, timedelta, timezone, tzinfo
from functools import lru_cache

from croniter import croniter
from croniter.croniter import CroniterBadCronError, CroniterBadDateError

UTC = timezone.utc
#: The same fall-back window is never more than a day long; a match further
#: away belongs to another window.
_SAME_WINDOW = timedelta(days=1)
MAX_PATTERN_LENGTH = 1000
#: Patterns have second resolution at most; ticks are whole seconds.
_SECOND = timedelta(seconds=1)


class CronError(ValueError):
    """A pattern croniter refuses, or one that never matches."""


#: (name, lowest, highest) of each field, seconds first when there are six.
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day-of-month", 1, 31), ("month", 1, 12), ("day-of-week", 0, 6))
_SECONDS_FIELD = ("second", 0, 59)


def _check_steps(fields: list[str], has_seconds: bool) -> None:
    """Refuse a step that leaves one value of its range (``*/61`` in the minute
    field is minute 0 only, hourly): croniter accepts it, and it is surely a
    mistake for the single value, which is how it must be written instead."""
    names = ((_SECONDS_FIELD,) if has_seconds else ()) + _FIELDS
    for field, (name, lowest, highest) in zip(fields, names, strict=True):
        for part in field.split(","):
            base, slash, step_text = part.partition("/")
            if not slash or not step_text.isdigit() or int(step_text) == 0:
                continue  # no step, or one croniter refuses with its own message
            lo, _, hi = base.partition("-")
            if base == "*":
                first, last = lowest, highest
            elif lo.isdigit() and (not hi or hi.isdigit()):
                first, last = int(lo), int(hi) if hi else highest
                if first > last:
                    continue  # a wrapping range: its span is checked by croniter
            else:
                continue  # names (mon-fri): croniter's business
            if int(step_text) > last - first:
                raise CronError(f"step /{step_text} in the {name} field ({part}) matches only {first}: "
                                f"write {first} if that is what you mean")


_RANGE = re.compile(r"^(\d+)-(\d+)(?:/(\d+))?$")


def _unwrapped(fields: list[str], has_seconds: bool) -> list[str]:
    """Reversed ranges spelled out: ``22-2`` in the hour field is ``22,23,0,1,2``.
    croniter before 2.0.7 refuses them and later versions wrap them, so we never hand
    croniter one: every installation reads the pattern the same way."""
    names = ((_SECONDS_FIELD,) if has_seconds else ()) + _FIELDS
    out = []
    for field, (_, lowest, highest) in zip(fields, names, strict=True):
        parts = []
        for part in field.split(","):
            m = _RANGE.match(part)
            if m and int(m.group(2)) < int(m.group(1)) <= highest:
                first, last, step = int(m.group(1)), int(m.group(2)), int(m.group(3) or 1)
                values = [*range(first, highest + 1), *range(lowest, last + 1)][::max(step, 1)]
                parts.append(",".join(str(v) for v in values))
            else:
                parts.append(part)
        out.append(",".join(parts))
    return out


def _days_and(fields: list[str], has_seconds: bool, day_and: bool) -> bool:
    """Vixie cron and cronie OR the day fields only when neither starts with ``*``
    (``0 0 */2 * 1`` is odd days that are Mondays); croniter ORs them otherwise."""
    if day_and or len(fields) == 1:
        return day_and
    dom, dow = fields[2 + has_seconds], fields[4 + has_seconds]
    return dom.startswith("*") or dow.startswith("*")


def parse(expr: str, day_and: bool) -> tuple[str, str, bool, bool, bool]:
    """Validate ``expr``; return (normalised expr, the expression croniter walks,
    has_seconds, hour_is_wildcard, days_and: whether day-of-month and day-of-week
    must both match)."""
    text = " ".join(str(expr).split())
    if not text:
        raise CronError("the pattern is empty")
    if len(text) > MAX_PATTERN_LENGTH:
        raise CronError(f"the pattern is {len(text)} characters long; the limit is {MAX_PATTERN_LENGTH}")
    fields = text.split(" ")
    if text.lower() == "@reboot":
        raise CronError("'@reboot' has no time to compute: beats start and stop independently, so there is no single boot; "
                        "run the task from your deploy instead (or `schedules trigger`)")
    if any(re.search(r"(^|[^a-z])h([^a-z]|$)", f.lower()) for f in fields):
        raise CronError(f"{text!r}: 'H' (a hashed value, Jenkins syntax) is not supported; pick the value yourself, "
                        "e.g. '17 * * * *' instead of 'H * * * *'")
    if text.startswith("@"):
        if len(fields) != 1:
            raise CronError(f"{text!r}: an @alias stands alone")
        has_seconds = False
    elif len(fields) in (5, 6):
        has_seconds = len(fields) == 6
    else:
        raise CronError(
            f"{text!r} has {len(fields)} fields; a pattern has 5 "
            "(minute hour day month weekday) or 6 with seconds first"
        )
    if len(fields) > 1:
        _check_steps(fields, has_seconds)
        walk = " ".join(_unwrapped(fields, has_seconds))
    else:
        walk = text
    days_and = _days_and(fields, has_seconds, day_and)
    try:
        expanded, _ = croniter.expand(walk, second_at_beginning=has_seconds)
    except (CroniterBadCronError, ValueError, KeyError, TypeError) as exc:
        raise CronError(f"{text!r} is not a valid pattern: {exc}") from None
    hours = expanded[1]
    wildcard = hours == ["*"] or len(set(hours)) == 24
    # A pattern that can never match (31 April, 30 February) would leave the
    # entry without a future tick; refuse it up front.
    try:
        _walker(walk, has_seconds, days_and).next_wall(datetime(2000, 1, 1))
    except CroniterBadDateError:
        raise CronError(f"{text!r} never matches any date") from None
    return text, walk, has_seconds, wildcard, days_and


class _Walker:
    """A reusable croniter over naive wall-clock datetimes."""

    def __init__(self, expr: str, has_seconds: bool, day_and: bool) -> None:
        self._lock = threading.Lock()
        self._it = croniter(
            expr,
            datetime(2000, 1, 1),
            ret_type=datetime,
            day_or=not day_and,
            second_at_beginning=has_seconds,
            max_years_between_matches=50,
        )

    def next_wall(self, after: datetime) -> datetime:
        """First matching wall time strictly after ``after`` (naive). A croniter has
        state, and a walker is shared (cached) between threads (the dashboard's
        requests): one at a time, so no caller, and no memoised answer, sees another's."""
        with self._lock:
            self._it.set_current(after, force=True)
            result: datetime = self._it.get_next()
        return result


@lru_cache(maxsize=4096)
def _walker(expr: str, has_seconds: bool, day_and: bool) -> _Walker:
    return _Walker(expr, has_seconds, day_and)


def _to_ms(instant: datetime) -> int:
    return int(round(instant.timestamp() * 1000))


def _instant(wall: datetime, zone: tzinfo, fold: int) -> datetime:
    return wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)


def _offsets(wall: datetime, zone: tzinfo) -> tuple[timedelta, timedelta]:
    first = wall.replace(tzinfo=zone, fold=0).utcoffset()
    second = wall.replace(tzinfo=zone, fold=1).utcoffset()
    assert first is not None and second is not None
    return first, second


def _transition(lo: datetime, hi: datetime) -> datetime:
    """First whole-second instant in (lo, hi] whose UTC offset differs from lo's.

    Both are aware datetimes in the pattern's zone; zone transitions fall on
    whole seconds, so a binary search over seconds finds it exactly.
    """
    zone, offset = lo.tzinfo, lo.utcoffset()
    lo_s, hi_s = int(lo.timestamp()), int(hi.timestamp()) + 1
    while hi_s - lo_s > 1:
        mid = (lo_s + hi_s) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == offset:
            lo_s = mid
        else:
            hi_s = mid
    return datetime.fromtimestamp(hi_s, UTC)


def _gap_end(wall: datetime, zone: tzinfo) -> datetime:
    """The first instant after the spring-forward gap that contains ``wall``."""
    before = _instant(wall, zone, 1).astimezone(zone)  # an instant before the gap
    after = _instant(wall, zone, 0).astimezone(zone)  # an instant after it
    return _transition(before, after)


def _fold_start(instant: datetime, zone: tzinfo) -> datetime:
    """Wall time at which the fold that ``instant`` (first pass) is in repeats."""
    local = instant.astimezone(zone)
    first, second = _offsets(local.replace(tzinfo=None), zone)
    switch = _transition(local, (instant + (first - second)).astimezone(zone))
    return switch.astimezone(zone).replace(tzinfo=None)


@lru_cache(maxsize=16384)
def next_after(
    expr: str, has_seconds: bool, day_and: bool, wildcard_hour: bool, zone: tzinfo, after_ms: int
) -> int:
    """First fire instant (ms) strictly after ``after_ms`` under the rules above.

    A pure function of its arguments, so it is memoised: in a burst, thousands of
    entries with the same pattern and zone ask for the same next tick (a cron walk
    costs tens of microseconds; a cache hit, well under one)."""
    walker = _walker(expr, has_seconds, day_and)
    local = datetime.fromtimestamp(after_ms / 1000, UTC).astimezone(zone)
    wall = local.replace(tzinfo=None)
    first, second = _offsets(wall, zone)
    in_fold = first > second
    second_pass = in_fold and local.fold == 1
    cursor = wall
    while True:
        match = walker.next_wall(cursor)
        m_first, m_second = _offsets(match, zone)
        if m_first < m_second:  # in a gap
            return _to_ms(_gap_end(match, zone))
        same_window = in_fold and m_first > m_second and match - wall < _SAME_WINDOW
        if second_pass:
            if same_window and not wildcard_hour:
                cursor = match  # the repeat of a fixed-time match does not fire
                continue
            return _to_ms(_instant(match, zone, 1 if same_window else 0))
        if in_fold and not same_window and wildcard_hour:
            # The first pass ran out of matches; the second pass comes first.
            start = _fold_start(local.astimezone(UTC), zone)
            repeat = walker.next_wall(start - _SECOND)
            r_first, r_second = _offsets(repeat, zone)
            if r_first > r_second and repeat - start < _SAME_WINDOW:
                return _to_ms(_instant(repeat, zone, 1))
        return _to_ms(_instant(match, zone, 0))
