"""The project's Celery app: configured from Django's settings, as Django projects do."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoproj.settings")

app = Celery("djangoproj")
app.config_from_object("django.conf:settings", namespace="CELERY")


@app.task(name="djangoproj.record")
def record(*args: object, **kwargs: object) -> None:
    """Never executed: the tests read the messages off the broker."""
