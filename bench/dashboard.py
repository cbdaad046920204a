"""The exporter and the dashboard with 10,000 entries stored (issue 13).

    python -m bench.dashboard        (~2 min; writes bench/results/dashboard.json)

One beat with 100 entries due every second and 10,000 idle ones (its
``beat_schedule``), on a private redis-server. First the read side alone: a
scrape of /metrics (with each choice of per-entry series) and page renders, over real HTTP, each
30 times. Then the beat's own metrics (``redbeat_safe_metrics_port``) over two
windows of the same length, without and with a scrape of /metrics and a render
of the first page every second: its Redis calls per second, passes per second,
claims won per second and mean round trips, which should not move.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from bench.common import Servers, pct, save, start_beat, table, wait_for
from harness import free_port
from redbeat_safe.web import server, wsgi_app


def get(url: str) -> tuple[float, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        body = r.read()
    return (time.perf_counter() - started) * 1000, len(body)


def beat_numbers(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    out: dict[str, float] = {"calls": 0.0, "seconds": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "redbeat_safe_beat_redis_seconds_count":
                out["calls"] += s.value
            elif s.name == "redbeat_safe_beat_redis_seconds_sum":
                out["seconds"] += s.value
            elif s.name == "redbeat_safe_beat_passes_total":
                out["passes"] = s.value
            elif s.name == "redbeat_safe_beat_claims_total" and s.labels.get("result") == "won":
                out["won"] = s.value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--idle", type=int, default=10_000, help="idle entries stored")
    parser.add_argument("--window", type=float, default=20.0, help="seconds per window of the beat comparison")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    with Servers(work) as servers:
        metrics_port = free_port()
        beat = start_beat(servers, work, "redbeat_safe", "b1", {"BENCH_ENTRIES": "100", "BENCH_IDLE_ENTRIES": str(args.idle),
                                                                 "BENCH_METRICS_PORT": str(metrics_port)})
        app = Celery("bench-dashboard", set_as_current=False)
        app.conf.update(broker_url=servers.broker.url, redbeat_safe_redis_url=servers.store.url, redbeat_safe_key_prefix="bench",
                        timezone="UTC")
        servers_up = {}
        for series in ("late", "all", "none"):
            httpd = server.make(wsgi_app(app, entry_series=series), "127.0.0.1", 0)
            threading.Thread(target=httpd.serve_forever, daemon=True).start()
            servers_up[series] = httpd
        url = f"http://127.0.0.1:{servers_up['late'].server_port}"
        base = {k: f"http://127.0.0.1:{v.server_port}" for k, v in servers_up.items()}
        wait_for(lambda: _count(url) >= args.idle + 100, 300, interval=1.0, what="the entries")
        wait_for(lambda: beat_numbers(metrics_port).get("won", 0) > 200, 60, interval=0.5, what="the beat to fire")
        rows: list[dict[str, Any]] = []
        for what, where in (("/metrics (default: --entry-series late)", base["late"] + "/metrics"),
                            ("/metrics --entry-series none", base["none"] + "/metrics"),
                            ("/metrics --entry-series all", base["all"] + "/metrics"),
                            ("first page", url + "/"), ("search", url + "/?q=idle99"),
                            ("entry page", url + "/entry/e42"), ("/healthz", url + "/healthz")):
            get(where)  # warm
            times, size = [], 0
            for _ in range(30):
                ms, size = get(where)
                times.append(ms)
            rows.append({"request": what, "p50 ms": pct(times, 50), "p95 ms": pct(times, 95), "max ms": max(times), "bytes": size})
        print(f"\n{args.idle + 100:,} entries stored, one beat firing 100 entries/s; 30 requests each, real HTTP\n")
        print(table(rows, ["request", "p50 ms", "p95 ms", "max ms", "bytes"]))

        def window(scraping: bool) -> dict[str, Any]:
            stop = threading.Event()

            def scrape() -> None:
                while not stop.wait(1.0):
                    get(url + "/metrics")
                    get(url + "/")

            worker = threading.Thread(target=scrape, daemon=True)
            if scraping:
                worker.start()
            before, t0 = beat_numbers(metrics_port), time.monotonic()
            time.sleep(args.window)
            after, t1 = beat_numbers(metrics_port), time.monotonic()
            stop.set()
            if scraping:
                worker.join()
            span = t1 - t0
            calls = after["calls"] - before["calls"]
            return {"window": "scraping /metrics and / every second" if scraping else "no scraping",
                    "beat Redis calls/s": calls / span, "passes/s": (after["passes"] - before["passes"]) / span,
                    "claims won/s": (after["won"] - before["won"]) / span,
                    "mean round trip ms": (after["seconds"] - before["seconds"]) / max(calls, 1) * 1000}

        compare = [window(False), window(True)]
        print(f"\nthe beat's own metrics, two {args.window:g} s windows in one run\n")
        print(table(compare, ["window", "beat Redis calls/s", "passes/s", "claims won/s", "mean round trip ms"]))
        for httpd in servers_up.values():
            httpd.shutdown()
            httpd.server_close()
        beat.popen.terminate()
        beat.popen.wait(30)
        print(f"\nwrote {save('dashboard', {'requests': rows, 'beat': compare})}")


def _count(url: str) -> int:
    with urllib.request.urlopen(url + "/", timeout=60) as r:
        text = r.read().decode()
    return int(text.split('id="count">', 1)[1].split(" entr", 1)[0].strip().replace(",", ""))


if __name__ == "__main__":
    main()
