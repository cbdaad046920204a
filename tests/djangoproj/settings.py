"""Django settings: everything the tests vary comes from the environment."""

import json
import os

SECRET_KEY = "tests-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = ["django.contrib.contenttypes", "django_celery_beat"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ.get("DJANGO_DB", ":memory:")}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

# Celery, in the CELERY_ namespace, as a Django project configures it
CELERY_BROKER_URL = os.environ.get("BEAT_BROKER_URL", "redis://127.0.0.1:1/1")
CELERY_REDBEAT_SAFE_REDIS_URL = os.environ.get("BEAT_REDIS_URL", "redis://127.0.0.1:1/0")
CELERY_REDBEAT_SAFE_KEY_PREFIX = os.environ.get("BEAT_PREFIX", "django")
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("BEAT_QUEUE", "celery")
CELERY_TIMEZONE = "Europe/Berlin"
CELERY_RESULT_BACKEND = None
CELERY_RESULT_EXPIRES = None
CELERY_BEAT_SCHEDULE = {name: {"task": "djangoproj.record", "schedule": spec["every"]}
                        for name, spec in json.loads(os.environ.get("BEAT_SCHEDULE", "{}")).items()}
