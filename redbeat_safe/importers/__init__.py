"""Importers from other schedulers (their data in, entries out). celery-redbeat's and
redbeat_safe's own export are in transfer.py; django-celery-beat's is here."""
