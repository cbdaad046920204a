"""The admin (its login page) and the dashboard under /schedules/, as a project routes them."""

from django.contrib import admin
from django.urls import path, re_path

from djangoproj.celery_app import app
from redbeat_safe.web.django import dashboard_view

urlpatterns = [path("admin/", admin.site.urls), re_path(r"^schedules/(?P<path>.*)$", dashboard_view(app))]
