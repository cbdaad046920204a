"""Writes one PeriodicTask of every kind through django-celery-beat's own models, and
one that cannot be imported: run as `python -m djangoproj.make_rows` (Django set up)."""

import json
from datetime import datetime, timezone

import django

django.setup()

from django_celery_beat.models import (  # noqa: E402
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)

UTC = timezone.utc
every_10m = IntervalSchedule.objects.create(every=10, period=IntervalSchedule.MINUTES)
PeriodicTask.objects.create(name="interval-10m", task="djangoproj.record", interval=every_10m, args=json.dumps([1, 2]),
                            kwargs=json.dumps({"k": "v"}), queue="reports", routing_key="reports", priority=5,
                            headers=json.dumps({"team": "billing"}), expire_seconds=300,
                            last_run_at=datetime(2026, 12, 4, 9, 3, tzinfo=UTC), total_run_count=42,
                            description="billing sync")
nightly = CrontabSchedule.objects.create(minute="30", hour="2", day_of_week="1-5", day_of_month="*", month_of_year="*",
                                         timezone="Europe/Berlin")
PeriodicTask.objects.create(name="crontab-weekday-0230-berlin", task="djangoproj.record", crontab=nightly,
                            start_time=datetime(2026, 1, 1, tzinfo=UTC), expires=datetime(2030, 1, 1, tzinfo=UTC))
dawn = SolarSchedule.objects.create(event="sunrise", latitude="52.520000", longitude="13.405000")
PeriodicTask.objects.create(name="solar-sunrise-berlin", task="djangoproj.record", solar=dawn, enabled=False)
once = ClockedSchedule.objects.create(clocked_time=datetime(2027, 6, 1, 12, 0, tzinfo=UTC))
PeriodicTask.objects.create(name="clocked-once", task="djangoproj.record", clocked=once, one_off=True)
hourly = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.HOURS)
PeriodicTask.objects.create(name="one-off-hourly", task="djangoproj.record", interval=hourly, one_off=True)
tiny = IntervalSchedule.objects.create(every=5, period=IntervalSchedule.MICROSECONDS)
PeriodicTask.objects.create(name="refused-5-microseconds", task="djangoproj.record", interval=tiny)
print(PeriodicTask.objects.count(), "rows")
