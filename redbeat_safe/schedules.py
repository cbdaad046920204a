"""Schedule objects: ``every`` and ``pattern``, their JSON form and tick arithmetic.

A tick is an integer number of milliseconds since the epoch (UTC). Next ticks
are always computed from the previous *nominal* tick, never from "now", so an
``every`` entry never drifts and a restart keeps its phase.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from typing import Any, Literal, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import BaseSchedule, schedstate

from . import cron

UTC = timezone.utc
CatchupPolicy = Literal["coalesce", "skip", "all"]
CATCHUP_POLICIES: tuple[str, ...] = ("coalesce", "skip", "all")
#: What to do with a tick that falls due while the entry's previous run is still queued
#: or running (the run ledger, redbeat_safe.runs, reports runs; docs/runs.md).
OVERLAP_POLICIES: tuple[str, ...] = ("allow", "skip", "buffer_one", "replace")
#: Longest per-tick expiry and jitter: longer is surely a mistake of units.
MAX_RUN_OPTION_MS = 366 * 86_400_000
MAX_JITTER_MS = 3_600_000


def _duration_ms(value: Any, what: str, allow_zero: bool = False) -> int:
    """Seconds (a number) or a timedelta, as whole ms."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ScheduleError(f"{what} must be a number of seconds or a timedelta, not {value!r}")
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise ScheduleError(f"{what} must be a {'non-negative' if allow_zero else 'positive'} number of seconds, not {value!r}")
    ms = int(round(seconds * 1000))
    if ms > MAX_RUN_OPTION_MS:
        raise ScheduleError(f"{what} is longer than a year")
    return ms
MIN_INTERVAL_MS = 10
MAX_INTERVAL_MS = 1000 * 365 * 24 * 3600 * 1000  # a thousand years
#: datetime cannot represent year 10000; a tick beyond it means "never".
MAX_TICK_MS = 253402300799000


class ScheduleError(ValueError):
    """A schedule that cannot be honoured; the message says why."""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_ms(value: datetime, what: str) -> int:
    if not isinstance(value, datetime):
        raise ScheduleError(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ScheduleError(f"{what} must be timezone-aware (got naive {value.isoformat()})")
    micros = (value - _EPOCH) // timedelta(microseconds=1)  # exact, unlike timestamp() * 1000
    return int((micros + 500) // 1000)


def ms_to_datetime(ms: int) -> datetime:
    """Exact: ``fromtimestamp(ms / 1000)`` loses microseconds beyond year 2255 or so."""
    return _EPOCH + timedelta(milliseconds=int(ms))


def iso(ms: int) -> str:
    """A tick in ISO 8601, UTC, for logs: 2026-12-01T22:37:06.123Z."""
    try:
        return ms_to_datetime(ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):
        return str(ms)


#: Names the zone database holds that are not zones every host agrees on: `localtime`
#: is each host's own /etc/localtime (two beats would compute different ticks),
#: `posixrules` and `Factory` are artefacts, `posix/` and `right/` are copies (the
#: latter counting leap seconds, which Unix time does not).
_NOT_IANA = frozenset({"localtime", "posixrules", "Factory"})
_NOT_IANA_DIRS = ("posix/", "right/")


def zone_name(tz: Union[str, tzinfo, None]) -> str:
    """IANA name of a zone given as a name or a tzinfo; refuses what is not IANA."""
    if tz is None:
        raise ScheduleError("no time zone given")
    if isinstance(tz, str):
        name = tz
    elif tz is UTC or getattr(tz, "zone", None) == "UTC":
        name = "UTC"
    else:
        name = getattr(tz, "key", None) or getattr(tz, "zone", None) or str(tz)
    if name in _NOT_IANA or name.startswith(_NOT_IANA_DIRS):
        raise ScheduleError(f"time zone {name!r} is not an IANA zone every host agrees on (use a name such as 'Europe/Berlin')")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ScheduleError(f"unknown time zone {name!r} (use an IANA name such as 'Europe/Berlin')") from None
    return name


class Schedule(BaseSchedule):  # type: ignore[misc]
    """Common options of every schedule kind.

    A Celery ``BaseSchedule`` too, so a ``beat_schedule`` that uses ``every`` or
    ``pattern`` still works if someone runs Celery's default scheduler on it
    (with Celery's semantics there: no anchoring, no coordination).
    """

    kind = ""

    def __init__(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int | None = None,
        catchup: str | None = None,
        overlap: str | None = None,
        terminate: bool = False,
        expires_after: float | timedelta | None = None,
        jitter: float | timedelta | None = None,
    ) -> None:
        BaseSchedule.__init__(self)
        self._run_options(overlap, terminate, expires_after, jitter)
        self.start_ms = None if start is None else to_ms(start, "start")
        self.end_ms = None if end is None else to_ms(end, "end")
        if self.start_ms is not None and self.end_ms is not None and self.end_ms < self.start_ms:
            raise ScheduleError("end is before start")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ScheduleError(f"limit must be a whole number >= 1 (got {limit!r})")
        self.limit = limit
        if catchup is not None and catchup not in CATCHUP_POLICIES:
            raise ScheduleError(f"catchup must be one of {', '.join(CATCHUP_POLICIES)} (got {catchup!r})")
        self.catchup = catchup

    def _run_options(self, overlap: Any, terminate: Any, expires_after: Any, jitter: Any) -> None:
        """What happens to a tick's run, beside when it falls due (docs/runs.md): ``overlap``
        (None: the ``redbeat_safe_overlap`` setting), ``terminate`` (replace: kill the
        running task, not only revoke it), ``expires_after`` (a worker discards the
        tick's message this long after its nominal tick) and ``jitter`` (publish up to
        this much later, the same delay for the same entry and tick)."""
        if overlap is not None and overlap not in OVERLAP_POLICIES:
            raise ScheduleError(f"overlap must be one of {', '.join(OVERLAP_POLICIES)} (got {overlap!r})")
        if not isinstance(terminate, bool):
            raise ScheduleError(f"terminate must be True or False, not {terminate!r}")
        if terminate and overlap != "replace":
            raise ScheduleError("terminate applies to overlap='replace' only")
        self.overlap: str | None = overlap
        self.terminate = terminate
        self.expires_after_ms: int | None = None if expires_after is None else _duration_ms(expires_after, "expires_after")
        self.jitter_ms = 0 if jitter is None else _duration_ms(jitter, "jitter", allow_zero=True)
        if self.jitter_ms > MAX_JITTER_MS:
            raise ScheduleError("jitter is longer than an hour")

    # -- arithmetic -----------------------------------------------------
    def _raw_next(self, after_ms: int) -> int:
        raise NotImplementedError

    def first_after(self, now_ms: int) -> int | None:
        """First tick of a newly registered entry (strictly after ``now_ms``)."""
        raise NotImplementedError

    def next_after(self, tick_ms: int) -> int | None:
        """Next nominal tick after ``tick_ms``, or None when the schedule has ended."""
        nxt = self._raw_next(tick_ms)
        return self._bounded(nxt)

    def at_or_after(self, tick_ms: int, when_ms: int) -> int | None:
        """First tick >= ``when_ms`` of the series that contains ``tick_ms``."""
        if when_ms <= tick_ms:
            return tick_ms
        return self.next_after(when_ms - 1)

    def ticks_from(self, tick_ms: int, upto_ms: int, count: int) -> list[int]:
        """Up to ``count`` ticks from ``tick_ms`` (a tick) to ``upto_ms``, oldest first."""
        out: list[int] = []
        current: int | None = tick_ms
        while current is not None and current <= upto_ms and len(out) < count:
            out.append(current)
            current = self.next_after(current)
        return out

    def count_ticks(self, tick_ms: int, upto_ms: int, cap: int) -> int:
        """How many ticks of the series from ``tick_ms`` are <= ``upto_ms`` (at most ``cap``)."""
        n, current = 0, self._bounded(tick_ms)
        while current is not None and current <= upto_ms and n < cap:
            n += 1
            current = self.next_after(current)
        return n

    def latest_ticks(self, tick_ms: int, upto_ms: int, count: int) -> list[int]:
        """The last ``count`` ticks in [tick_ms, upto_ms], oldest first (``tick_ms`` is a tick).

        Found backwards from ``upto_ms``, one tick at a time, by searching rather
        than walking: the cost is O(count x log(span)) tick computations whatever
        lies between. A walk forward through the window once cost 2.7M
        computations (58 s, every beat at once) for "every second in January"
        planned in December.
        """
        if upto_ms < tick_ms or count < 1:
            return []
        found: list[int] = []
        hi, hint = upto_ms, 1000
        while len(found) < count:
            last = self._last_at_or_before(tick_ms, hi, hint)
            if found:
                hint = max(1, found[-1] - last)
            found.append(last)
            if last <= tick_ms:
                break
            hi = last - 1
        found.reverse()
        return found

    def _last_at_or_before(self, tick_ms: int, hi: int, hint: int) -> int:
        """The last tick in [tick_ms, hi] (tick_ms itself when there is none later).

        ``first(x)``, the first tick >= x, grows with x: an exponential step back
        from ``hi`` (from ``hint``, the previous gap) finds a tick <= hi, then a
        bisection that jumps to the ticks it meets finds the last one, in
        O(log(hi - tick_ms)) calls of ``next_after``.
        """
        def first(x: int) -> int | None:
            t = self.at_or_after(tick_ms, x)
            return t if t is not None and t <= hi else None

        step, good = max(1, hint), tick_ms
        while hi - step > tick_ms:
            t = first(hi - step)
            if t is not None:
                good = t
                break
            step *= 2
        bad = hi + 1  # invariant: good is a tick <= hi; no tick in [bad, hi]
        while True:
            nxt = first(good + 1)
            if nxt is None:
                return good
            good = nxt
            mid = (good + bad) // 2
            t = first(mid) if mid > good else None
            if t is not None:
                good = t
            elif mid > good:
                bad = mid

    def _bounded(self, tick: int | None) -> int | None:
        if tick is None or tick > MAX_TICK_MS:
            return None
        if self.end_ms is not None and tick > self.end_ms:
            return None
        return tick

    # -- serialisation --------------------------------------------------
    def _common_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in (("start", self.start_ms), ("end", self.end_ms), ("limit", self.limit), ("catchup", self.catchup),
                           ("overlap", self.overlap), ("expires_after_ms", self.expires_after_ms)):
            if value is not None:
                out[key] = value
        if self.terminate:
            out["terminate"] = True
        if self.jitter_ms:
            out["jitter_ms"] = self.jitter_ms
        return out

    def with_run_options(self, **given: Any) -> Schedule:
        """This schedule with run options given beside it (a ``beat_schedule`` item's
        ``overlap``, ``expires_after``, ``jitter``, ``terminate`` keys); one set twice,
        differently, is refused."""
        spec = self.to_json()
        mine = {"overlap": self.overlap, "terminate": self.terminate or None, "expires_after": self.expires_after_ms,
                "jitter": self.jitter_ms or None}
        for key, value in given.items():
            if value is None:
                continue
            if mine.get(key) is not None:
                raise ScheduleError(f"{key} is given both in the schedule and beside it")
            if key in ("expires_after", "jitter"):
                spec[f"{key}_ms"] = _duration_ms(value, key, allow_zero=key == "jitter")
            else:
                spec[key] = value
        return Schedule.from_json(spec)

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    def human(self) -> str:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(repr(sorted(self.to_json().items())))

    def __repr__(self) -> str:
        return f"<{self.human()}>"

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        return Schedule.from_json, (self.to_json(),)

    # -- Celery's BaseSchedule interface (used only by Celery's own schedulers)
    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        last = to_ms(self.maybe_make_aware(last_run_at), "last_run_at")
        nxt = self.next_after(last)
        now = to_ms(self.maybe_make_aware(self.now()), "now")
        return timedelta(milliseconds=(MAX_TICK_MS if nxt is None else nxt) - now)

    def is_due(self, last_run_at: datetime) -> schedstate:
        remaining = self.remaining_estimate(last_run_at).total_seconds()
        if remaining > 0:
            return schedstate(False, remaining)
        now = to_ms(self.maybe_make_aware(self.now()), "now")
        following = self.next_after(now)
        return schedstate(True, 3600.0 if following is None else (following - now) / 1000)

    @staticmethod
    def from_json(data: dict[str, Any]) -> Schedule:
        kind = data.get("kind")
        start = None if data.get("start") is None else ms_to_datetime(data["start"])
        end = None if data.get("end") is None else ms_to_datetime(data["end"])
        limit, catchup = data.get("limit"), data.get("catchup")
        run: dict[str, Any] = {"overlap": data.get("overlap"), "terminate": data.get("terminate", False),
                               "expires_after": None if data.get("expires_after_ms") is None else data["expires_after_ms"] / 1000,
                               "jitter": None if data.get("jitter_ms") is None else data["jitter_ms"] / 1000}
        if kind == "every":
            return every(
                milliseconds=data["interval_ms"], align=bool(data.get("align", False)), start=start, end=end, limit=limit, catchup=catchup,
                **run,
            )
        if kind == "pattern":
            return pattern(data["expr"], tz=data["tz"], day_and=bool(data.get("day_and", False)), start=start, end=end, limit=limit,
                           catchup=catchup, **run)
        if kind == "at":
            return at(ms_to_datetime(data["when"]), catchup=catchup, **run)
        if kind == "solar":
            return solar(data["event"], data["lat"], data["lon"], start=start, end=end, limit=limit, catchup=catchup, **run)
        raise ScheduleError(f"unknown schedule kind {kind!r}")


def _fmt_interval(ms: int) -> str:
    parts = []
    for unit, size in (("d", 86400000), ("h", 3600000), ("m", 60000), ("s", 1000), ("ms", 1)):
        if ms >= size:
            count, ms = divmod(ms, size)
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


class every(Schedule):
    """A fixed interval; ticks are anchored (tick + interval), so they never drift.

    Without ``start`` the first tick is one interval after the entry is
    created; with ``start`` the ticks are ``start + k * interval``. ``align``
    anchors at the epoch instead (ticks on multiples of the interval, in UTC),
    which is what Celery's ``schedule(relative=True)`` becomes.
    """

    kind = "every"

    def __init__(
        self,
        interval: Union[float, int, timedelta, None] = None,
        *,
        seconds: float = 0,
        minutes: float = 0,
        hours: float = 0,
        days: float = 0,
        milliseconds: float = 0,
        align: bool = False,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int | None = None,
        catchup: str | None = None,
        overlap: str | None = None,
        terminate: bool = False,
        expires_after: float | timedelta | None = None,
        jitter: float | timedelta | None = None,
    ) -> None:
        super().__init__(start=start, end=end, limit=limit, catchup=catchup, overlap=overlap, terminate=terminate,
                         expires_after=expires_after, jitter=jitter)
        try:
            total = self._total_ms(interval, seconds, minutes, hours, days, milliseconds)
        except OverflowError:  # an int too large for a float (10**400)
            raise ScheduleError("the interval is longer than a thousand years") from None
        if not math.isfinite(total):
            raise ScheduleError("the interval is not a finite number")
        rounded = int(round(total))
        if abs(total - rounded) > 1e-6 * max(1.0, abs(total)):
            raise ScheduleError(f"the interval must be a whole number of milliseconds (got {total!r} ms)")
        if rounded < MIN_INTERVAL_MS:
            raise ScheduleError(f"the interval must be at least {MIN_INTERVAL_MS} ms (got {total:g} ms)")
        if rounded > MAX_INTERVAL_MS:
            raise ScheduleError("the interval is longer than a thousand years")
        if not isinstance(align, bool):
            raise ScheduleError(f"align must be True or False, not {align!r}")
        if self.jitter_ms >= rounded:
            raise ScheduleError(f"jitter ({self.jitter_ms} ms) must be shorter than the interval ({rounded} ms): ticks would go out of order")
        self.interval_ms = rounded
        self.align = align

    @staticmethod
    def _total_ms(interval: Any, seconds: Any, minutes: Any, hours: Any, days: Any, milliseconds: Any) -> float:
        total = 0.0
        if interval is not None:
            if isinstance(interval, timedelta):
                total += interval.total_seconds() * 1000
            elif isinstance(interval, (int, float)) and not isinstance(interval, bool):
                total += float(interval) * 1000
            else:
                raise ScheduleError(f"an interval must be a number of seconds or a timedelta, not {type(interval).__name__}")
        for value, factor in ((milliseconds, 1), (seconds, 1000), (minutes, 60000), (hours, 3600000), (days, 86400000)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ScheduleError(f"interval parts must be numbers, not {type(value).__name__}")
            if value < 0:  # every(seconds=70, minutes=-1) would be 10 s: surely not what was meant
                raise ScheduleError(f"interval parts must not be negative (got {value!r})")
            total += float(value) * factor
        return total

    def _raw_next(self, after_ms: int) -> int:
        return after_ms + self.interval_ms

    def at_or_after(self, tick_ms: int, when_ms: int) -> int | None:
        if when_ms <= tick_ms:
            return tick_ms
        steps = -(-(when_ms - tick_ms) // self.interval_ms)
        return self._bounded(tick_ms + steps * self.interval_ms)

    def count_ticks(self, tick_ms: int, upto_ms: int, cap: int) -> int:
        if self.end_ms is not None:
            upto_ms = min(upto_ms, self.end_ms)
        if upto_ms < tick_ms or tick_ms > MAX_TICK_MS:
            return 0
        return min(cap, (min(upto_ms, MAX_TICK_MS) - tick_ms) // self.interval_ms + 1)

    def latest_ticks(self, tick_ms: int, upto_ms: int, count: int) -> list[int]:
        if upto_ms < tick_ms or count < 1:
            return []
        last = tick_ms + (upto_ms - tick_ms) // self.interval_ms * self.interval_ms
        if self.end_ms is not None and last > self.end_ms:
            last = tick_ms + (self.end_ms - tick_ms) // self.interval_ms * self.interval_ms
        first = max(tick_ms, last - (count - 1) * self.interval_ms)
        return list(range(first, last + 1, self.interval_ms))

    def first_after(self, now_ms: int) -> int | None:
        anchor = self.start_ms if self.start_ms is not None else (0 if self.align else None)
        if anchor is None:
            first = now_ms + self.interval_ms
        elif anchor > now_ms:
            first = anchor
        else:
            first = self.grid_after(anchor, now_ms)
        return self._bounded(first)

    def grid_after(self, anchor_ms: int, now_ms: int) -> int:
        """First tick of the grid through ``anchor_ms`` strictly after ``now_ms``."""
        steps = (now_ms - anchor_ms) // self.interval_ms + 1
        return anchor_ms + steps * self.interval_ms

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "every", "interval_ms": self.interval_ms}
        if self.align:
            out["align"] = True
        out.update(self._common_json())
        return out

    def human(self) -> str:
        return f"every {_fmt_interval(self.interval_ms)}" + (" (aligned)" if self.align else "")


class pattern(Schedule):
    """A cron expression: 5 fields, or 6 with seconds first, in an IANA zone.

    ``tz=None`` means the app's ``timezone`` (resolved when the entry is
    registered). ``day_and=True`` ANDs day-of-month with day-of-week, as
    Celery's ``crontab`` does; classic cron (the default) ORs them.
    """

    kind = "pattern"

    def __init__(
        self,
        expr: str,
        tz: Union[str, tzinfo, None] = None,
        *,
        day_and: bool = False,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int | None = None,
        catchup: str | None = None,
        overlap: str | None = None,
        terminate: bool = False,
        expires_after: float | timedelta | None = None,
        jitter: float | timedelta | None = None,
    ) -> None:
        super().__init__(start=start, end=end, limit=limit, catchup=catchup, overlap=overlap, terminate=terminate,
                         expires_after=expires_after, jitter=jitter)
        if not isinstance(expr, str):
            raise ScheduleError(f"a pattern must be a string, not {type(expr).__name__}")
        self.day_and = bool(day_and)
        try:
            self.expr, self._walk, self._seconds, self._wildcard_hour, self._days_and = cron.parse(expr, self.day_and)
        except cron.CronError as exc:
            raise ScheduleError(str(exc)) from None
        self.tz_name: str | None = None if tz is None else zone_name(tz)

    @property
    def zone(self) -> ZoneInfo:
        if self.tz_name is None:
            raise ScheduleError(f"pattern {self.expr!r} has no time zone yet")
        return ZoneInfo(self.tz_name)

    @property  # Celery's BaseSchedule.tz: the zone this schedule is evaluated in
    def tz(self) -> tzinfo:
        return self.zone if self.tz_name is not None else self.app.timezone

    def with_zone(self, default: Union[str, tzinfo]) -> pattern:
        """This pattern with ``tz`` resolved (the app's zone when it had none)."""
        if self.tz_name is not None:
            return self
        clone = pattern.__new__(pattern)
        clone.__dict__.update(self.__dict__)
        clone.tz_name = zone_name(default)
        return clone

    def _raw_next(self, after_ms: int) -> int:
        if self.start_ms is not None and after_ms < self.start_ms:
            after_ms = self.start_ms - 1
        try:
            return cron.next_after(self._walk, self._seconds, self._days_and, self._wildcard_hour, self.tz, after_ms)
        except (OverflowError, ValueError):  # past year 9999 (datetime's end): no next tick, not an error
            return MAX_TICK_MS + 1

    def first_after(self, now_ms: int) -> int | None:
        return self.next_after(now_ms)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "pattern", "expr": self.expr, "tz": self.tz_name}
        if self.day_and:
            out["day_and"] = True
        out.update(self._common_json())
        return out

    def human(self) -> str:
        return f"pattern '{self.expr}' in {self.tz_name or 'the app zone'}" + (" (day AND weekday)" if self.day_and else "")


class at(Schedule):
    """One run at a given instant (django-celery-beat's clocked schedule, Celery's long
    ETAs without their duplicates on a Redis broker).

    Its single tick is ``when``; registered after ``when`` has passed, it runs at once
    (late: as a missed tick, by the misfire policy). Once it ran the entry is finished,
    and a finished entry is removed after ``redbeat_safe_finished_retention``.
    """

    kind = "at"

    def __init__(
        self,
        when: datetime,
        *,
        catchup: str | None = None,
        overlap: str | None = None,
        terminate: bool = False,
        expires_after: float | timedelta | None = None,
        jitter: float | timedelta | None = None,
    ) -> None:
        super().__init__(catchup=catchup, overlap=overlap, terminate=terminate, expires_after=expires_after, jitter=jitter)
        self.when_ms = to_ms(when, "when")

    def _raw_next(self, after_ms: int) -> int:
        return self.when_ms if after_ms < self.when_ms else MAX_TICK_MS + 1

    def first_after(self, now_ms: int) -> int | None:
        return self.when_ms  # even when it has passed: it runs once, at once

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "at", "when": self.when_ms}
        out.update(self._common_json())
        return out

    def human(self) -> str:
        return f"once at {iso(self.when_ms)}"


#: Celery's solar events: the observer's horizon, the ephem method, whether the sun's
#: centre (not its upper edge) is what crosses it. The same values as celery.schedules.solar.
SOLAR_EVENTS: dict[str, tuple[str, str, bool]] = {
    "dawn_astronomical": ("-18", "next_rising", True),
    "dawn_nautical": ("-12", "next_rising", True),
    "dawn_civil": ("-6", "next_rising", True),
    "sunrise": ("-0:34", "next_rising", False),
    "solar_noon": ("0", "next_transit", False),
    "sunset": ("-0:34", "next_setting", False),
    "dusk_civil": ("-6", "next_setting", True),
    "dusk_nautical": ("-12", "next_setting", True),
    "dusk_astronomical": ("-18", "next_setting", True),
}
#: Days searched for an event that does not occur every day (polar day or night), as Celery does.
SOLAR_SEARCH_DAYS = 366


class solar(Schedule):
    """A solar event at a place (Celery's ``solar``, same events and arithmetic): the
    event's next time after the previous tick, computed with the ``ephem`` package
    (``pip install 'redbeat-safe[solar]'``). Where an event does not occur on some days
    (sunrise in the polar night), the search goes on day by day, as Celery's does; if it
    does not occur within a year the entry has no next tick (Celery would instead fire
    at the end of its search)."""

    kind = "solar"

    def __init__(
        self,
        event: str,
        lat: float,
        lon: float,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int | None = None,
        catchup: str | None = None,
        overlap: str | None = None,
        terminate: bool = False,
        expires_after: float | timedelta | None = None,
        jitter: float | timedelta | None = None,
    ) -> None:
        super().__init__(start=start, end=end, limit=limit, catchup=catchup, overlap=overlap, terminate=terminate,
                         expires_after=expires_after, jitter=jitter)
        if event not in SOLAR_EVENTS:
            raise ScheduleError(f"solar event {event!r} is not one of {', '.join(sorted(SOLAR_EVENTS))}")
        for value, low, high, what in ((lat, -90, 90, "latitude"), (lon, -180, 180, "longitude")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
                raise ScheduleError(f"solar {what} must be a number from {low} to {high}, not {value!r}")
        self.event, self.lat, self.lon = event, float(lat), float(lon)
        _ephem()  # refused now, not at the first tick, when the extra is missing

    def _raw_next(self, after_ms: int) -> int:
        if self.start_ms is not None and after_ms < self.start_ms:
            after_ms = self.start_ms - 1
        nxt = _solar_next(self.event, self.lat, self.lon, after_ms)
        return MAX_TICK_MS + 1 if nxt is None else nxt

    def first_after(self, now_ms: int) -> int | None:
        return self.next_after(now_ms)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "solar", "event": self.event, "lat": self.lat, "lon": self.lon}
        out.update(self._common_json())
        return out

    def human(self) -> str:
        return f"solar {self.event} at {self.lat:g}, {self.lon:g}"


def _ephem() -> Any:
    try:
        import ephem  # noqa: PLC0415 - the optional extra, loaded only for solar schedules
    except ImportError:
        raise ScheduleError("solar schedules need the 'ephem' package: pip install 'redbeat-safe[solar]'") from None
    return ephem


@lru_cache(maxsize=65536)
def _solar_next(event: str, lat: float, lon: float, after_ms: int) -> int | None:
    """The event's first time strictly after ``after_ms`` (ms), as Celery's solar computes
    it (an observer at sea level, no refraction, the same horizons); None if it does not
    occur within SOLAR_SEARCH_DAYS. A pure function of its arguments, so memoised: many
    entries with one solar schedule cost one computation per tick."""
    ephem = _ephem()
    horizon, method, use_center = SOLAR_EVENTS[event]
    cal = ephem.Observer()
    cal.lat, cal.lon, cal.elev, cal.horizon, cal.pressure = str(lat), str(lon), 0, horizon, 0
    sun = ephem.Sun()
    kwargs = {"use_center": True} if use_center else {}
    start = ephem.Date(ms_to_datetime(after_ms + 1).replace(tzinfo=None))  # strictly after the tick it follows
    for _ in range(SOLAR_SEARCH_DAYS):
        try:
            found = getattr(cal, method)(sun, start=start, **kwargs)
        except ephem.CircumpolarError:
            start = cal.next_antitransit(sun, start=start)
            continue
        ms = int(round(found.datetime().replace(tzinfo=timezone.utc).timestamp() * 1000))
        return ms if ms > after_ms else ms + 1
    return None


def _crontab_field(values: Any, full: range) -> str:
    chosen = sorted(int(v) for v in values)
    if chosen == list(full):
        return "*"
    return ",".join(str(v) for v in chosen)


#: Celery's ``relative=True`` rounds each run down to the interval's unit in the
#: app's local zone; for exactly one hour or one day that is every local hour or
#: midnight, which a pattern in the app zone is (in every zone, across DST).
_LOCAL_UNITS = {3_600_000: "0 * * * *", 86_400_000: "0 0 * * *"}


def _relative(interval: every, relative: bool) -> Schedule:
    """Celery's ``relative`` flag: local boundaries for one hour or one day, as Celery
    does; any other interval on UTC multiples (docs/time.md says where that differs)."""
    if not relative:
        return interval
    if interval.interval_ms in _LOCAL_UNITS:
        return pattern(_LOCAL_UNITS[interval.interval_ms])
    return every(milliseconds=interval.interval_ms, align=True)


def from_celery(value: Any, relative: bool = False) -> Schedule:
    """Convert what Celery accepts as a beat schedule into ours, or refuse clearly."""
    from celery import schedules as cs

    if isinstance(value, Schedule):
        return value
    if isinstance(value, bool):
        raise ScheduleError("a schedule cannot be a boolean")
    if isinstance(value, (int, float, timedelta)):
        return _relative(every(value), bool(relative))
    if isinstance(value, cs.crontab):
        fields = [
            _crontab_field(value.minute, range(0, 60)),
            _crontab_field(value.hour, range(0, 24)),
            _crontab_field(value.day_of_month, range(1, 32)),
            _crontab_field(value.month_of_year, range(1, 13)),
            _crontab_field(value.day_of_week, range(0, 7)),
        ]
        return pattern(" ".join(fields), day_and=True)
    if isinstance(value, cs.schedule) and type(value) is cs.schedule:
        return _relative(every(value.run_every), bool(relative or value.relative))
    if isinstance(value, cs.solar):
        return solar(value.event, value.lat, value.lon)
    if isinstance(value, datetime):  # a clocked, one-off run (django-celery-beat's ClockedSchedule)
        return at(value)
    if isinstance(value, str):
        raise ScheduleError(f"a string schedule is ambiguous; write pattern({value!r}) for a cron expression")
    raise ScheduleError(
        f"unsupported schedule type {type(value).__name__}; use a number of seconds, a timedelta, "
        "celery.schedules.schedule/crontab, redbeat_safe.every or redbeat_safe.pattern"
    )
