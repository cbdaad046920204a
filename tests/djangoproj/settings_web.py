"""The project with Django's admin installed, for the dashboard's staff login."""

from djangoproj.settings import *  # noqa: F403

INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions", "django.contrib.admin",
                  "django.contrib.messages", "django_celery_beat"]
ROOT_URLCONF = "djangoproj.urls"
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
