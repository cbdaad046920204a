"""A minimal Django project for the tests: SQLite, django-celery-beat installed, and a
Celery app configured from Django's settings (the CELERY_ namespace)."""
