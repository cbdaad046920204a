"""The dashboard: server-rendered pages, /metrics and /healthz, as a WSGI app (optional extra ``web``)."""
